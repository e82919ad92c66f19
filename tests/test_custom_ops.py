"""The fast path as custom operators (models/custom_ops.py): what torch.compile runs, proven equal.

Each operator passes `torch.library.opcheck` (schema, fake implementation against the real one,
autograd registration, AOT dispatch with dynamic shapes); a compiled layer runs through them and
equals torch.nn in float64 (outputs, final states, the gradients of the input, the initial states
and every parameter); a new sequence length reuses the compiled graph; the cases the operators do
not take (packed batches, projections, torch.export) compile the readable path and equal torch.nn
too; the operators' backward is differentiable again through the readable step.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from models import custom_ops  # noqa: F401  (registers the operators)
from reference import LAYERS, TIGHT, assert_same, layer_inputs, layer_pair

KINDS = list(LAYERS)  # rnn_tanh, rnn_relu, lstm, gru
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}


def _op(kind, stage="forward"):
    name = "rnn" if kind.startswith("rnn") else kind
    return getattr(torch.ops.rnn_by_hand, f"{name}_{stage}").default


def _forward_args(kind, T=5, B=3, I=4, H=6, bias=True, reverse=False, for_backward=True, grad=True, seed=0):
    """The forward operator's arguments: random float64 tensors, requiring grad when `grad`."""
    gen = torch.Generator().manual_seed(seed)
    new = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_(grad)  # noqa: E731
    G = GATES[kind]
    x, h0, w_ih, w_hh = new(T * B, I), new(B, H), new(G * H, I), new(G * H, H)
    b_ih, b_hh = (new(G * H), new(G * H)) if bias else (None, None)
    if kind == "lstm":
        return (x, w_ih, b_ih, h0, new(B, H), w_hh, b_hh, reverse, for_backward)
    if kind == "gru":
        return (x, w_ih, b_ih, h0, w_hh, b_hh, reverse, for_backward)
    return (x, w_ih, b_ih, h0, w_hh, b_hh, reverse, kind == "rnn_relu", for_backward)


def _outputs(kind):
    """How many of a forward operator's outputs are the layer's (the rest are saved for the backward)."""
    return 3 if kind == "lstm" else 2


def _recording(graphs, backend="eager"):
    """A torch.compile backend that keeps each graph dynamo hands it, then compiles it with `backend`."""
    def compile_graph(gm, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)
    return compile_graph


def _operators_in(graphs):
    return {str(node.target) for gm in graphs for node in gm.graph.nodes if "rnn_by_hand" in str(node.target)}


# -- the operators themselves ----------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_operator_passes_opcheck(kind, reverse, bias):
    torch.library.opcheck(_op(kind), _forward_args(kind, bias=bias, reverse=reverse))
    torch.library.opcheck(_op(kind), _forward_args(kind, bias=bias, reverse=reverse, for_backward=False, grad=False))


@pytest.mark.parametrize("kind", KINDS)
def test_backward_operator_passes_opcheck(kind):
    args = _forward_args(kind, grad=False)
    outputs = _op(kind)(*args)
    x, w_ih, h0, w_hh = args[0], args[1], args[3], args[5 if kind == "lstm" else 4]
    grads = [torch.randn_like(t) for t in outputs[: _outputs(kind)]]
    saved = outputs[_outputs(kind):]
    if kind == "lstm":
        backward_args = (*grads, x, w_ih, h0, w_hh, *saved, False, [True] * 7)
    elif kind == "gru":
        backward_args = (*grads, x, w_ih, h0, w_hh, *saved, False, [True, False, True, True, True, False])
    else:
        backward_args = (*grads, x, w_ih, h0, w_hh, *saved, False, kind == "rnn_relu", [False, True, True, True, True, True])
    torch.library.opcheck(_op(kind, "backward"), backward_args)


@pytest.mark.parametrize("kind", KINDS)
def test_operators_gradients_are_autograds_and_differentiable_again(kind):
    """gradcheck and gradgradcheck through the forward operator (its backward; the readable step's
    for the second derivative)."""
    args = _forward_args(kind, T=3, B=2, I=2, H=3)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]

    def run(*ts):
        full = list(args)
        for i, t in zip(tensors, ts):
            full[i] = t
        return _op(kind)(*full)[: _outputs(kind)]

    inputs = tuple(args[i] for i in tensors)
    assert torch.autograd.gradcheck(run, inputs)
    assert torch.autograd.gradgradcheck(run, inputs)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_without_saving_says_why(kind):
    args = list(_forward_args(kind))
    args[-1] = False  # for_backward
    out = _op(kind)(*args)[0]
    with pytest.raises(RuntimeError, match="for_backward=False"):
        out.sum().backward()


# -- layers under torch.compile -----------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"num_layers": 2, "bidirectional": True}, {"bias": False},
                                     {"batch_first": True}])
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_layer_runs_the_operators_and_equals_torch_nn(kind, options):
    """aot_eager traces forward and backward through the fake implementations, as inductor does."""
    torch._dynamo.reset()
    ours, ref = layer_pair(kind, 3, 5, **options)
    graphs = []
    ours.compile(backend=_recording(graphs, "aot_eager"))
    x, hx = layer_inputs(kind, ours, 6, 4)
    if options.get("batch_first"):
        x = x.detach().transpose(0, 1).requires_grad_()  # (B, T, I)
    assert_same(ours, ref, x, hx, **TIGHT)
    assert _operators_in(graphs) == {str(_op(kind))}


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_layer_without_initial_state_or_input_grad(kind):
    """Training on data: x needs no gradient and hx is not given."""
    torch._dynamo.reset()
    ours, ref = layer_pair(kind, 3, 5)
    ours.compile(backend="aot_eager")
    x, _ = layer_inputs(kind, ours, 6, 4)
    x = x.detach()
    assert_same(ours, ref, x, None, **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_inference_equals_torch_nn(kind):
    torch._dynamo.reset()
    ours, ref = layer_pair(kind, 3, 5, num_layers=2)
    graphs = []
    ours.compile(backend=_recording(graphs))
    x, hx = layer_inputs(kind, ours, 6, 4)
    with torch.no_grad():
        got, expected = ours(x, hx), ref(x, hx)
    torch.testing.assert_close(got, expected, **TIGHT)
    assert _operators_in(graphs) == {str(_op(kind))}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_a_new_sequence_length_reuses_the_compiled_graph(kind):
    """The second length makes the graph dynamic in T; every later length runs it as it is (but
    length 1, which torch.compile specialises, as every size 1)."""
    torch._dynamo.reset()
    ours, ref = layer_pair(kind, 3, 5)
    graphs = []
    ours.compile(backend=_recording(graphs, "aot_eager"))
    for steps in (4, 7, 9, 12, 30):
        assert_same(ours, ref, *layer_inputs(kind, ours, steps, 3), **TIGHT)
    assert len(graphs) == 2
    assert _operators_in(graphs[1:]) == {str(_op(kind))}


def test_compiled_with_inductor_equals_torch_nn():
    """The default backend, as users call it (generates C++: about 10 s)."""
    torch._dynamo.reset()
    ours, ref = layer_pair("lstm", 3, 5, dtype=torch.float32)
    ours.compile()
    x, hx = layer_inputs("lstm", ours, 6, 4)
    assert_same(ours, ref, x, hx, atol=1e-5, rtol=1e-5)


# -- what the operators leave to the readable path ---------------------------------------------------


@pytest.mark.parametrize("case", ["packed", "proj_size"])
def test_compiled_cases_without_operators_take_the_readable_path(case):
    torch._dynamo.reset()
    options = {"proj_size": 3} if case == "proj_size" else {}
    ours, ref = layer_pair("lstm", 3, 5, **options)
    graphs = []
    ours.compile(backend=_recording(graphs, "aot_eager"))
    lengths = [4, 2, 3] if case == "packed" else None
    assert_same(ours, ref, *layer_inputs("lstm", ours, 4, 3, lengths), **TIGHT)
    assert graphs and not _operators_in(graphs)


def test_compiled_empty_batch_takes_the_readable_path():
    """Batch 0 (torch.nn accepts it): the operators take B from h0's rows, so they leave it alone."""
    torch._dynamo.reset()
    ours, ref = layer_pair("lstm", 3, 5)
    graphs = []
    ours.compile(backend=_recording(graphs))
    x = torch.randn(4, 0, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x), **TIGHT)
    assert not _operators_in(graphs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_export_keeps_torch_operators_only(kind):
    """An exported program runs without this package: no rnn_by_hand operator in it."""
    ours, ref = layer_pair(kind, 3, 5)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    program = torch.export.export(ours, (x,))
    assert not _operators_in([program.graph_module])
    torch.testing.assert_close(program.module()(x), ref(x), **TIGHT)
