"""Shared machinery for the equivalence tests: run ours and torch.nn on the same inputs, compare.

Weights move through state_dict by name (strict), never by parameter order; everything is compared
with torch.testing.assert_close: outputs, final states, and the gradients of the input, of the
initial states and of every named parameter.
"""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import cells
import models

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]
TIGHT = {"atol": 1e-10, "rtol": 1e-10}  # float64
LAYERS = {  # name: (ours, torch.nn's, extra constructor arguments)
    "rnn_tanh": (models.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (models.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (models.LSTM, nn.LSTM, {}),
    "gru": (models.GRU, nn.GRU, {}),
}


def impls():
    """The layer implementations to test: every value of `impl`."""
    from models.layers import IMPLS
    return list(IMPLS)


def leaves(out):
    """Flatten (output, state) structures into a list of tensors (a PackedSequence gives its data)."""
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in leaves(o)]
    return [out]


def forward_and_grads(module, inputs, upstream_seed=0):
    """Run module(*inputs); return its output tensors and the gradients of a fixed random loss
    with respect to every floating input tensor and every named parameter that requires grad."""
    outs = leaves(module(*inputs))
    gen = torch.Generator().manual_seed(upstream_seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device)).sum() for o in outs)
    in_tensors = [t for t in leaves([i for i in inputs if i is not None]) if t.requires_grad]
    names, params = zip(*[(name, p) for name, p in module.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, in_tensors + list(params), allow_unused=True)
    return outs, grads[: len(in_tensors)], dict(zip(names, grads[len(in_tensors):]))


def assert_equivalent(ours, ref, inputs_ours, inputs_ref, **tol):
    """ours and ref give the same outputs, states and gradients on the same inputs."""
    tol = tol or {}
    out_a, gin_a, gp_a = forward_and_grads(ours, inputs_ours)
    out_b, gin_b, gp_b = forward_and_grads(ref, inputs_ref)
    assert len(out_a) == len(out_b)
    for a, b in zip(out_a, out_b):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)
    for a, b in zip(gin_a, gin_b):
        torch.testing.assert_close(a, b, **tol)
    assert gp_a.keys() == gp_b.keys()
    for name in gp_a:
        torch.testing.assert_close(gp_a[name], gp_b[name], **tol, msg=lambda m: f"grad of {name}: {m}")


def clone_inputs(inputs):
    """Independent leaf copies, so ours and the reference each get their own gradients."""
    def clone(t):
        if t is None:
            return None
        if isinstance(t, PackedSequence):
            return PackedSequence(clone(t.data), t.batch_sizes, t.sorted_indices, t.unsorted_indices)
        if isinstance(t, (tuple, list)):
            return type(t)(clone(x) for x in t)
        return t.detach().clone().requires_grad_(t.requires_grad)
    return [clone(i) for i in inputs]


CELLS = {  # name: (ours, torch.nn's, extra constructor arguments)
    "rnn_tanh": (cells.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    "rnn_relu": (cells.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    "lstm": (cells.LSTMCell, nn.LSTMCell, {}),
    "gru": (cells.GRUCell, nn.GRUCell, {}),
}


def layer_pair(kind, input_size=3, hidden_size=4, impl="auto", dtype=torch.float64, device="cpu", seed=0,
               **options):
    """(ours, torch.nn's) layers of one kind with the same weights (copied by name, strict). With
    dropout both are put in eval mode: their masks come from different random streams."""
    ours_cls, ref_cls, extra = LAYERS[kind]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropout with one layer
        ref = ref_cls(input_size, hidden_size, dtype=dtype, device=device, **extra, **options)
        ours = ours_cls(input_size, hidden_size, dtype=dtype, device=device, impl=impl, **extra, **options)
    ours.load_state_dict(ref.state_dict(), strict=True)
    if options.get("dropout"):
        ours.eval(), ref.eval()
    return ours, ref


def fused_pair(kind, input_size=3, hidden_size=4, **options):
    """layer_pair with ours on the fast path (models.fused), whatever the device."""
    return layer_pair(kind, input_size, hidden_size, impl="fused", **options)


def cell_pair(kind, input_size=3, hidden_size=4, dtype=torch.float64, device="cpu", seed=0, bias=True):
    """(ours, torch.nn's) cells of one kind with the same weights (copied by name, strict)."""
    ours_cls, ref_cls, extra = CELLS[kind]
    torch.manual_seed(seed)
    ref = ref_cls(input_size, hidden_size, bias=bias, dtype=dtype, device=device, **extra)
    ours = ours_cls(input_size, hidden_size, bias=bias, dtype=dtype, device=device, **extra)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


# Layer options the fast path's tests run through:
# (num_layers, bidirectional, proj_size, packed lengths or None, initial state given)
LAYER_OPTIONS = [
    (1, False, 0, None, True),
    (1, False, 0, None, False),
    (2, True, 0, None, True),
    (1, True, 0, [3, 5, 1, 5], True),
    (2, False, 0, [2, 5, 4, 1], False),
    (2, True, 0, [5, 1, 3, 2], True),
]


def layer_inputs(kind, module, steps, batch, lengths=None, with_state=True, seed=1):
    """(input, hx): a (T, B, I) tensor or a PackedSequence of unsorted lengths; hx random or None."""
    gen = torch.Generator().manual_seed(seed)
    opts = {"dtype": module.weight_ih_l0.dtype}
    device = module.weight_ih_l0.device
    new = lambda *shape: torch.randn(*shape, generator=gen, **opts).to(device).requires_grad_()  # noqa: E731
    x = new(steps, batch, module.input_size)  # (T, B, I)
    if lengths is not None:
        x = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
    if not with_state:
        return x, None
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h0 = new(layers, batch, module.proj_size or module.hidden_size)  # (L·D, B, P)
    return x, ((h0, new(layers, batch, module.hidden_size)) if kind == "lstm" else h0)


def assert_same(ours, ref, x, hx, **tol):
    """assert_equivalent on (x, hx), each side getting its own copy of the inputs."""
    assert_equivalent(ours, ref, [x, hx], clone_inputs([x, hx]), **tol)
