"""The fast path (`models.fused`) against torch.nn, against the readable path, and by gradcheck.

Weights move from torch.nn.RNN / LSTM / GRU through state_dict (strict, by name); outputs, final
states and the gradients of the input, of the initial states and of every named parameter are
compared in float64 at 1e-10 with torch.testing.assert_close.
"""
import itertools
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import backends, fused
from models.layers import readable_direction, select_direction
from reference import DEVICES, LAYER_OPTIONS, LAYERS, TIGHT, assert_same, fused_pair, layer_inputs, layer_pair

KINDS = LAYERS  # name: (ours, torch.nn's, extra constructor arguments)



# -- against torch.nn ------------------------------------------------------------------------------



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers,bidirectional,proj_size,lengths,with_state", LAYER_OPTIONS)
def test_fused_equals_torch(kind, num_layers, bidirectional, proj_size, lengths, with_state, device):
    ours, ref = fused_pair(kind, 3, 4, num_layers=num_layers, bidirectional=bidirectional, device=device)
    assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, lengths, with_state), **TIGHT)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidirectional,lengths,with_state", [
    (False, None, True), (True, None, False), (True, [4, 1, 3], True), (False, [2, 4, 4], False)])
def test_fused_lstm_projection_equals_torch(bidirectional, lengths, with_state, device):
    ours, ref = fused_pair("lstm", 3, 5, num_layers=2, bidirectional=bidirectional, proj_size=2, device=device)
    assert_same(ours, ref, *layer_inputs("lstm", ours, 4, 3, lengths, with_state), **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps,batch,hidden", [(1, 1, 1), (1, 3, 2), (4, 1, 1), (3, 2, 1)])
def test_fused_edge_sizes(kind, steps, batch, hidden):
    """Hidden size 1, one step, batch 1: the views and splits degenerate, the results must not."""
    ours, ref = fused_pair(kind, 2, hidden, bidirectional=True)
    assert_same(ours, ref, *layer_inputs(kind, ours, steps, batch), **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_batch_first_unbatched_and_no_bias(kind):
    ours, ref = fused_pair(kind, 3, 4, batch_first=True, bias=False, num_layers=2)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)  # (B, T, I)
    assert_same(ours, ref, x, None, **TIGHT)
    assert_same(ours, ref, torch.randn(5, 3, dtype=torch.float64, requires_grad=True), None, **TIGHT)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), input_size=st.integers(1, 4), hidden_size=st.integers(1, 5),
       steps=st.integers(1, 5), batch=st.integers(1, 4), num_layers=st.integers(1, 2),
       bidirectional=st.booleans(), proj=st.booleans(), packed=st.booleans(), with_state=st.booleans(),
       data=st.data())
def test_fused_equals_torch_drawn(kind, input_size, hidden_size, steps, batch, num_layers, bidirectional,
                                  proj, packed, with_state, data):
    proj_size = data.draw(st.integers(1, hidden_size - 1)) if kind == "lstm" and proj and hidden_size > 1 else 0
    lengths = data.draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch)) if packed else None
    extra = {"proj_size": proj_size} if proj_size else {}  # torch.nn.GRU refuses even proj_size=0
    ours, ref = fused_pair(kind, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                          seed=data.draw(st.integers(0, 2**16)), **extra)
    if lengths is not None:
        lengths[0] = steps  # pack_padded_sequence needs the padded length to be used
    assert_same(ours, ref, *layer_inputs(kind, ours, steps, batch, lengths, with_state), **TIGHT)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_float32_at_torch_defaults(kind):
    ours, ref = fused_pair(kind, 16, 32, dtype=torch.float32, num_layers=2, bidirectional=True)
    assert_same(ours, ref, *layer_inputs(kind, ours, 7, 5, [7, 3, 6, 1, 7]))


@pytest.mark.parametrize("kind", KINDS)
def test_default_impl_is_fused_on_cpu_and_readable_stays_selectable(kind):
    x = torch.zeros(2, 3)
    assert select_direction("auto", x, False, None) is fused.fused_direction
    assert select_direction("readable", x, False, None) is readable_direction
    assert fused.fused_supported("cpu") and not fused.fused_supported("meta")
    ours, ref = layer_pair(kind, 3, 4, impl="auto", bidirectional=True)
    assert_same(ours, ref, *layer_inputs(kind, ours, 4, 3, [4, 2, 3]), **TIGHT)


# -- against the readable path, one direction at a time ----------------------------------------------


def direction_inputs(mode, batch_sizes, input_hidden=(4, 3), proj=0, bias=True, seed=0):
    """(x, w_ih, b_ih, state, w_hh, b_hh, w_hr) for one direction of one layer, all requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    I, H = input_hidden
    P = proj or H
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[mode]
    new = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    B, N = batch_sizes[0], sum(batch_sizes)
    state = (new(B, P), new(B, H)) if mode == "LSTM" else (new(B, H),)
    return (new(N, I), new(G * H, I), new(G * H) if bias else None, state, new(G * H, P),
            new(G * H) if bias else None, new(P, H) if proj else None)


@pytest.mark.parametrize("mode,nonlinearity,proj", [
    ("RNN", "tanh", 0), ("RNN", "relu", 0), ("LSTM", "tanh", 0), ("LSTM", "tanh", 2), ("GRU", "tanh", 0)])
@pytest.mark.parametrize("batch_sizes", [[3, 3, 3], [4, 3, 3, 1], [2], [3, 1, 1]])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_direction_equals_readable(mode, nonlinearity, proj, batch_sizes, reverse):
    """The same Function outputs and gradients as autograd through the cells' readable steps."""
    x, w_ih, b_ih, state, w_hh, b_hh, w_hr = direction_inputs(mode, batch_sizes, proj=proj)
    results = []
    for direction in (fused.fused_direction, readable_direction):
        out, final = direction(mode, x, w_ih, b_ih, batch_sizes, state, w_hh, b_hh, w_hr, reverse, nonlinearity)
        gen = torch.Generator().manual_seed(3)
        loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, *final))
        wrt = [x, w_ih, b_ih, *state, w_hh, b_hh] + ([w_hr] if w_hr is not None else [])
        results.append([out, *final, *torch.autograd.grad(loss, wrt)])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("mode", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_direction_takes_non_contiguous_inputs(mode, reverse):
    """x as a column slice (as the second direction's half of a bidirectional layer's output), W_ih
    and the states as transposed views give the readable path's results."""
    batch_sizes, I, H = [3, 2, 2], 4, 3
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[mode]
    gen = torch.Generator().manual_seed(4)
    new = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_()  # noqa: E731
    wide, w_ih_t, b_ih = new(7, 2 * I), new(I, G * H), new(G * H)
    h0_t, c0_t, w_hh, b_hh = new(H, 3), new(H, 3), new(G * H, H), new(G * H)
    x, w_ih, state = wide[:, I:], w_ih_t.t(), (h0_t.t(), c0_t.t()) if mode == "LSTM" else (h0_t.t(),)
    assert not x.is_contiguous() and not w_ih.is_contiguous() and not state[0].is_contiguous()
    results = []
    for direction in (fused.fused_direction, readable_direction):
        out, final = direction(mode, x, w_ih, b_ih, batch_sizes, state, w_hh, b_hh, None, reverse, "tanh")
        loss = sum((t * t.detach().cos()).sum() for t in (out, *final))
        wrt = [wide, w_ih_t, b_ih, h0_t, c0_t, w_hh, b_hh]
        results.append([out, *final, *torch.autograd.grad(loss, wrt, allow_unused=True)])
    for a, b in zip(*results):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, **TIGHT)


# -- gradcheck of each Function ----------------------------------------------------------------------

GRADCHECK_CASES = list(itertools.product([[3, 3], [3, 2, 1]], [False, True]))


@pytest.mark.parametrize("batch_sizes,reverse", GRADCHECK_CASES)
@pytest.mark.parametrize("proj,bias", [(0, True), (2, True), (0, False)])
def test_gradcheck_lstm_function(batch_sizes, reverse, proj, bias):
    x, w_ih, b_ih, (h0, c0), w_hh, b_hh, w_hr = direction_inputs("LSTM", batch_sizes, (4, 3), proj, bias)
    fn = lambda *a: fused.LSTMFunction.apply(*a, tuple(batch_sizes), reverse)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr))


@pytest.mark.parametrize("batch_sizes,reverse", GRADCHECK_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_gru_function(batch_sizes, reverse, bias):
    x, w_ih, b_ih, (h0,), w_hh, b_hh, _ = direction_inputs("GRU", batch_sizes, bias=bias)
    fn = lambda *a: fused.GRUFunction.apply(*a, tuple(batch_sizes), reverse)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w_ih, b_ih, h0, w_hh, b_hh))


@pytest.mark.parametrize("batch_sizes,reverse", GRADCHECK_CASES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_rnn_function(batch_sizes, reverse, nonlinearity):
    x, w_ih, b_ih, (h0,), w_hh, b_hh, _ = direction_inputs("RNN", batch_sizes)
    fn = lambda *a: fused.RNNFunction.apply(*a, tuple(batch_sizes), reverse, nonlinearity)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w_ih, b_ih, h0, w_hh, b_hh))


# -- second derivatives: the Functions' backward is differentiable again ------------------------------


@pytest.mark.parametrize("batch_sizes,reverse", [([3, 2, 1], False), ([3, 2, 1], True)])
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_gradgradcheck_functions(kind, batch_sizes, reverse):
    """With create_graph=True the Functions differentiate the readable step instead of their own loop
    (`fused._backward_by_autograd`): gradgradcheck proves those second derivatives right, packed
    layouts and both directions included."""
    x, w_ih, b_ih, state, w_hh, b_hh, w_hr = direction_inputs(kind, batch_sizes, (4, 3), 2 if kind == "LSTM" else 0)
    if kind == "LSTM":
        fn = lambda *a: fused.LSTMFunction.apply(*a, tuple(batch_sizes), reverse)  # noqa: E731
        inputs = (x, w_ih, b_ih, *state, w_hh, b_hh, w_hr)
    elif kind == "GRU":
        fn = lambda *a: fused.GRUFunction.apply(*a, tuple(batch_sizes), reverse)  # noqa: E731
        inputs = (x, w_ih, b_ih, *state, w_hh, b_hh)
    else:
        fn = lambda *a: fused.RNNFunction.apply(*a, tuple(batch_sizes), reverse, "tanh")  # noqa: E731
        inputs = (x, w_ih, b_ih, *state, w_hh, b_hh)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_frozen_weights_and_states_without_grad():
    """needs_input_grad: only the gradients asked for are computed, and they are still right."""
    ours, ref = fused_pair("lstm", 3, 4, bidirectional=True)
    for module in (ours, ref):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_hh_l0_reverse.requires_grad_(False)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(m(x)[0].sum(), [x, m.weight_ih_l0, m.weight_hh_l0_reverse]) for m in (ours, ref)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TIGHT)


def test_unknown_mode_is_reported():
    with pytest.raises(ValueError, match="mode"):
        fused.fused_direction("LSTN", None, None, None, [1], (None,), None, None, None, False, "tanh")


# -- the Triton kernels, on the CPU through triton's interpreter ---------------------------------------


def triton_interpreter_available():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return os.environ.get("TRITON_INTERPRET") == "1"

TRITON_CASES = [  # (kind, num_layers, bidirectional, proj_size, packed lengths, initial state given)
    ("lstm", 1, False, 0, None, True),
    ("lstm", 2, True, 2, [3, 5, 1, 5], True),
    ("lstm", 1, True, 0, [2, 5, 4, 1], False),
    ("gru", 2, True, 0, [5, 1, 3, 2], True),
    ("gru", 1, False, 0, None, False),
    ("rnn_tanh", 1, True, 0, [3, 5, 1, 5], True),
]


def triton_device():
    """Where the Triton kernels can be checked here: a GPU, or the CPU under the interpreter."""
    from models import triton_kernels
    if not triton_kernels.AVAILABLE:
        pytest.skip("triton is not installed (pip install 'rnn-by-hand[triton]')")
    if torch.cuda.is_available():
        return "cuda"
    if triton_kernels.interpreting():
        return "cpu"
    pytest.skip("no GPU, and TRITON_INTERPRET=1 was not set before triton was imported "
                "(test_triton_kernels_under_the_interpreter runs these in a subprocess that sets it)")


@pytest.mark.parametrize("kind,num_layers,bidirectional,proj_size,lengths,with_state", TRITON_CASES)
def test_triton_kernels_equal_torch(kind, num_layers, bidirectional, proj_size, lengths, with_state, monkeypatch):
    device = triton_device()
    monkeypatch.setattr(backends, "TRITON", "always")
    extra = {"proj_size": proj_size} if proj_size else {}
    ours, ref = fused_pair(kind, 3, 5, num_layers=num_layers, bidirectional=bidirectional, device=device, **extra)
    assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, lengths, with_state), **TIGHT)
    ours32, ref32 = fused_pair(kind, 8, 16, dtype=torch.float32, device=device, bidirectional=bidirectional, **extra)
    assert_same(ours32, ref32, *layer_inputs(kind, ours32, 6, 3, lengths and [6, 2, 4]))


def test_triton_kernels_under_the_interpreter():
    """Where triton is installed but neither a GPU nor the interpreter is on, check the kernels on the
    CPU in a subprocess with TRITON_INTERPRET=1 (it must be set before triton is imported)."""
    import subprocess
    import sys
    from models import triton_kernels
    if not triton_kernels.AVAILABLE:
        pytest.skip("triton is not installed (pip install 'rnn-by-hand[triton]')")
    if torch.cuda.is_available() or triton_kernels.interpreting():
        pytest.skip("test_triton_kernels_equal_torch runs the kernels in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "test_triton_kernels_equal_torch"], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize("triton_mode", ["never", "auto"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_eager_and_triton_steps_equal_torch(kind, triton_mode, monkeypatch):
    """On a GPU both step implementations (eager ops; Triton when installed) equal torch.nn."""
    monkeypatch.setattr(backends, "TRITON", triton_mode)
    ours, ref = fused_pair(kind, 3, 5, num_layers=2, bidirectional=True, device="cuda")
    assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, [3, 5, 1, 5]), **TIGHT)


def test_without_triton_the_fast_path_runs_on_its_other_backends(monkeypatch):
    """A machine without triton: the Triton backend is never picked, even when asked for, and the fast
    path (on its CPU kernels or its eager ops) still equals torch.nn."""
    from models import triton_kernels
    monkeypatch.setattr(triton_kernels, "AVAILABLE", False)
    monkeypatch.setattr(backends, "TRITON", "always")
    assert backends.step_kernels(torch.zeros(1, dtype=torch.float64)) is not triton_kernels
    for kind in KINDS:
        ours, ref = fused_pair(kind, 3, 5, bidirectional=True)
        assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, [3, 5, 1, 5]), **TIGHT)


# -- the workspace pool never hands out a buffer that is still in use --------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_buffers_are_not_reused_while_referenced(kind):
    """Two graphs alive at once, outputs kept across calls, retain_graph: the pooled buffers of one
    call must not be overwritten by the next (sizes big enough to be pooled)."""
    ours, ref = fused_pair(kind, 8, 64)
    xs = [torch.randn(40, 32, 8, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    outs_ours = [ours(x)[0] for x in xs]  # both graphs alive
    kept = [o.detach().clone() for o in outs_ours]
    outs_ref = [ref(x)[0] for x in xs]
    for o, k, r in zip(outs_ours, kept, outs_ref):
        torch.testing.assert_close(o, r, **TIGHT)
        torch.testing.assert_close(o, k, rtol=0, atol=0)
    for x, o, r in zip(xs, outs_ours, outs_ref):
        loss, loss_ref = o.square().sum(), r.square().sum()
        first = torch.autograd.grad(loss, [x, *ours.parameters()], retain_graph=True)
        again = torch.autograd.grad(loss, [x, *ours.parameters()])
        want = torch.autograd.grad(loss_ref, [x, *ref.parameters()])
        for a, b, c in zip(first, again, want):
            torch.testing.assert_close(a, c, **TIGHT)
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_pool_serves_inference_mode_with_buffers_usable_outside_it():
    """Under inference_mode the pool hands out its buffers too (a fresh buffer every call would fault
    its pages every call), and the ones it makes there are normal tensors: a later call outside
    inference mode can write them."""
    from models.workspace import Workspace
    pool = Workspace()
    if not pool.enabled:
        pytest.skip("the pool is off in this torch (no storage use count)")
    like = torch.zeros(1)
    with torch.inference_mode():
        made = pool.empty(like, 256, 1024)  # 1 MiB: pooled
        made_storage = made.untyped_storage().data_ptr()
        assert not made.is_inference()
        del made
        again = pool.empty(like, 256, 1024)
        assert again.untyped_storage().data_ptr() == made_storage  # the same buffer, not a new one
        del again
    outside = pool.empty(like, 1024, 256)  # same size, another shape, outside inference mode
    assert outside.untyped_storage().data_ptr() == made_storage
    outside.fill_(1.0)  # an inference tensor would refuse this
    assert outside.sum().item() == 256 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_inference_mode_outputs_are_inference_tensors_as_torch_nn_s(kind):
    """What a call under inference_mode returns is made there, as torch.nn's outputs are, also where
    the fast path's buffers come from the pool (sizes big enough to be pooled)."""
    ours, ref = fused_pair(kind, 8, 64)
    x = torch.randn(40, 32, 8, dtype=torch.float64)
    with torch.inference_mode():
        results = [ours(x), ref(x)]
    flat = [[out, *(states if isinstance(states, tuple) else (states,))] for out, states in results]
    assert [t.is_inference() for t in flat[0]] == [t.is_inference() for t in flat[1]] == [True] * len(flat[1])
    for a, b in zip(*flat):
        torch.testing.assert_close(a, b, **TIGHT)


@pytest.mark.parametrize("narrow_input", [0, 10**6])
@pytest.mark.parametrize("kind", KINDS)
def test_weight_ih_gradient_in_either_orientation_equals_torch(kind, narrow_input, monkeypatch):
    """dW_ih is computed as (xᵀ d x_proj)ᵀ for narrow inputs and as d x_projᵀ x otherwise: both agree."""
    from models import projection
    monkeypatch.setattr(projection, "NARROW_INPUT", narrow_input)
    ours, ref = fused_pair(kind, 3, 4, num_layers=2)
    assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4), **TIGHT)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_a_function_run_without_backward_refuses_one_and_says_why(mode):
    """for_backward=False (what the layers pass under no_grad) saves nothing; a backward through such
    a call is refused with a message naming the switch, not answered with wrong gradients."""
    gen = torch.Generator().manual_seed(3)
    new = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)  # noqa: E731
    T, B, I, H = 4, 3, 2, 5
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    x, w_ih, b_ih, h0, w_hh, b_hh = new(T * B, I), new(G * H, I), new(G * H), new(B, H), new(G * H, H), new(G * H)
    if mode == "LSTM":
        out, _, _ = fused.LSTMFunction.apply(x, w_ih, b_ih, h0, new(B, H), w_hh, b_hh, None, (B,) * T, False, False)
    elif mode == "GRU":
        out, _ = fused.GRUFunction.apply(x, w_ih, b_ih, h0, w_hh, b_hh, (B,) * T, False, False)
    else:
        out, _ = fused.RNNFunction.apply(x, w_ih, b_ih, h0, w_hh, b_hh, (B,) * T, False, "tanh", False)
    with pytest.raises(RuntimeError, match="for_backward=True"):
        out.sum().backward()
