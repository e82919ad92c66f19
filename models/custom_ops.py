"""The fast path as PyTorch custom operators, so that torch.compile keeps it.

torch.compile cannot look inside `LSTMFunction` and its siblings (their forward and backward run
compiled kernels on raw memory), so without these operators a compiled layer takes the readable
unroll: T steps of small ops traced one by one, a graph whose size and compile time grow with the
sequence length, and one graph per length. Here each cell's whole-sequence forward and its
hand-derived backward are one operator each (`torch.library.custom_op`):

    rnn_by_hand::lstm_forward   rnn_by_hand::lstm_backward
    rnn_by_hand::gru_forward    rnn_by_hand::gru_backward
    rnn_by_hand::rnn_forward    rnn_by_hand::rnn_backward

Their fake implementations give every output's shape from the inputs' shapes alone (N = T·B rows, B
from h0), so the compiled graph holds one operator per layer and direction whatever T is, and a new
sequence length reuses it (dynamic shapes). `register_autograd` joins each forward to its backward.

They run exactly the Functions' code: `lstm_forward` / `lstm_backward` of models/lstm_function.py and
their GRU and RNN siblings, which the Functions call too. An operator may not return views of its
inputs or of its other outputs, so what the backward reads comes out as whole buffers (h's history
rather than the two overlapping views of it, h_prev and out) and the backward takes the views again.
tests/test_custom_ops.py proves them equal to torch.nn and runs `torch.library.opcheck` on each.

Used by the layers only under torch.compile, for a plain (not packed) batch on the CPU without a
projection or autocast (`usable`); the layers otherwise keep their routes (`models.layers`).
torch.export keeps the readable unroll, so that an exported program holds only torch's own
operators and runs where this package is not installed (ONNX, AOTInductor).
"""
from functools import partial
from typing import Optional

import torch
from torch import Tensor

from .double_backward import INPUTS, backward_by_autograd
from .gru_function import gru_backward, gru_forward
from .layout import Layout
from .lstm_function import lstm_backward, lstm_forward
from .rnn_function import rnn_backward, rnn_forward


def usable(x, weight_hr, packed):
    """Whether the layers may run a direction through the operators under torch.compile: a plain
    (not packed), non-empty float32 or float64 batch x (T·B, I) on the CPU, without a projection."""
    return (not packed and weight_hr is None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.shape[0] > 0)


def compiled_direction(mode, x, weight_ih, bias_ih, batch_sizes, state, weight_hh, bias_hh, weight_hr, reverse,
                       nonlinearity):
    """One direction of one layer through the operators; returns (out (N, H), final states).

    The arguments of `models.unroll.readable_direction`, for a plain batch (batch_sizes is ignored: the
    batch is h0's rows, every step) without a projection (weight_hr None).
    """
    # As in `models.fused.fused_direction`: whether a backward can follow, so the forward saves for it.
    for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight_ih, bias_ih, *state, weight_hh, bias_hh))
    if mode == "LSTM":
        out, h_n, c_n, *_ = lstm_forward_op(x, weight_ih, bias_ih, state[0], state[1], weight_hh, bias_hh,
                                            bool(reverse), for_backward)
        return out, (h_n, c_n)
    if mode == "GRU":
        out, h_n, *_ = gru_forward_op(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, bool(reverse), for_backward)
        return out, (h_n,)
    out, h_n, _ = rnn_forward_op(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, bool(reverse),
                                 nonlinearity == "relu", for_backward)
    return out, (h_n,)


def _layout(x, h0, reverse):
    """The uniform layout of x (T·B, ·) in batches of B = h0's rows."""
    B = h0.shape[0]
    return Layout([B] * (x.shape[0] // B), reverse)


def _fresh(out):
    """out as a tensor of its own: without a backward the fast path hands out a view of h's history,
    at an offset that the fake implementation, which sees shapes only, cannot know."""
    return out.clone() if out.storage_offset() else out


def _none(like):
    """What an operator returns in place of a tensor it did not compute (it cannot return None)."""
    return like.new_empty(0)


# -- LSTM ---------------------------------------------------------------------------------------

@torch.library.custom_op("rnn_by_hand::lstm_forward", mutates_args=())
def lstm_forward_op(x: Tensor, weight_ih: Tensor, bias_ih: Optional[Tensor], h0: Tensor, c0: Tensor,
                    weight_hh: Tensor, bias_hh: Optional[Tensor], reverse: bool,
                    for_backward: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTMFunction's forward: (out (N, H), h_n (B, H), c_n (B, H), k (N, 5H), acts (N, 4H), history
    (N + B, H)); the last three are empty when not for_backward."""
    layout = _layout(x, h0, reverse)
    with torch.no_grad():
        (out, h_n, c_n), saved = lstm_forward(layout, x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, None,
                                              for_backward)
    if saved is None:
        return _fresh(out), h_n, c_n, _none(x), _none(x), _none(x)
    acts, H = saved["acts"], c0.shape[1]
    if saved["f_only"]:
        # An operator's outputs must be the same on every call, so what the backward does not read
        # is zeroed rather than left as the buffer pool had it.
        acts[:, :H].zero_()
        acts[:, 2 * H:].zero_()
    return out, h_n, c_n, saved["k"], acts, saved["history"]


@lstm_forward_op.register_fake
def _(x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, reverse, for_backward):
    N, B, H = x.shape[0], h0.shape[0], c0.shape[1]
    saved = (x.new_empty(N, 5 * H), x.new_empty(N, 4 * H), x.new_empty(N + B, H)) if for_backward else (
        _none(x), _none(x), _none(x))
    return (x.new_empty(N, H), h0.new_empty(B, H), c0.new_empty(B, H), *saved)


@torch.library.custom_op("rnn_by_hand::lstm_backward", mutates_args=())
def lstm_backward_op(d_out: Optional[Tensor], d_hn: Optional[Tensor], d_cn: Optional[Tensor], x: Tensor,
                     weight_ih: Tensor, h0: Tensor, weight_hh: Tensor, k: Tensor, acts: Tensor, history: Tensor,
                     reverse: bool, needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """LSTMFunction's backward: the gradients of x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh,
    each empty where `needs` (the same seven) says no."""
    layout = _layout(x, h0, reverse)
    saved = dict(x=x, weight_ih=weight_ih, weight_hh=weight_hh, weight_hr=None, k=k, acts=acts,
                 h_prev=layout.stacked_previous(history, None), m_buf=None)
    with torch.no_grad():
        grads = lstm_backward(layout, saved, (d_out, d_hn, d_cn), _need("LSTM", needs))
    return _present(grads[:7], x)


@lstm_backward_op.register_fake
def _(d_out, d_hn, d_cn, x, weight_ih, h0, weight_hh, k, acts, history, reverse, needs):
    bias = weight_ih[:, 0]
    return _fake_grads((x, weight_ih, bias, h0, h0, weight_hh, bias), needs)


# -- GRU ----------------------------------------------------------------------------------------

@torch.library.custom_op("rnn_by_hand::gru_forward", mutates_args=())
def gru_forward_op(x: Tensor, weight_ih: Tensor, bias_ih: Optional[Tensor], h0: Tensor, weight_hh: Tensor,
                   bias_hh: Optional[Tensor], reverse: bool,
                   for_backward: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GRUFunction's forward: (out (N, H), h_n (B, H), rz (N, 2H), n (N, H), hh (N, 3H), history
    (N + B, H)); the last four are empty when not for_backward."""
    layout = _layout(x, h0, reverse)
    with torch.no_grad():
        (out, h_n), saved = gru_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, for_backward)
    if saved is None:
        return _fresh(out), h_n, _none(x), _none(x), _none(x), _none(x)
    return out, h_n, saved["rz"], saved["n"], saved["hh"], saved["history"]


@gru_forward_op.register_fake
def _(x, weight_ih, bias_ih, h0, weight_hh, bias_hh, reverse, for_backward):
    N, (B, H) = x.shape[0], h0.shape
    saved = ((x.new_empty(N, 2 * H), x.new_empty(N, H), x.new_empty(N, 3 * H), x.new_empty(N + B, H))
             if for_backward else tuple(_none(x) for _ in range(4)))
    return (x.new_empty(N, H), h0.new_empty(B, H), *saved)


@torch.library.custom_op("rnn_by_hand::gru_backward", mutates_args=())
def gru_backward_op(d_out: Optional[Tensor], d_hn: Optional[Tensor], x: Tensor, weight_ih: Tensor, h0: Tensor,
                    weight_hh: Tensor, rz: Tensor, n: Tensor, hh: Tensor, history: Tensor, reverse: bool,
                    needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GRUFunction's backward: the gradients of x, weight_ih, bias_ih, h0, weight_hh, bias_hh, each
    empty where `needs` (the same six) says no."""
    layout = _layout(x, h0, reverse)
    saved = dict(x=x, weight_ih=weight_ih, weight_hh=weight_hh, rz=rz, n=n, hh=hh,
                 h_prev=layout.stacked_previous(history, None))
    with torch.no_grad():
        grads = gru_backward(layout, saved, (d_out, d_hn), _need("GRU", needs))
    return _present(grads, x)


@gru_backward_op.register_fake
def _(d_out, d_hn, x, weight_ih, h0, weight_hh, rz, n, hh, history, reverse, needs):
    return _fake_grads((x, weight_ih, weight_ih[:, 0], h0, weight_hh, weight_hh[:, 0]), needs)


# -- RNN ----------------------------------------------------------------------------------------

@torch.library.custom_op("rnn_by_hand::rnn_forward", mutates_args=())
def rnn_forward_op(x: Tensor, weight_ih: Tensor, bias_ih: Optional[Tensor], h0: Tensor, weight_hh: Tensor,
                   bias_hh: Optional[Tensor], reverse: bool, relu: bool,
                   for_backward: bool) -> tuple[Tensor, Tensor, Tensor]:
    """RNNFunction's forward: (out (N, H), h_n (B, H), history (N + B, H), empty when not
    for_backward)."""
    layout = _layout(x, h0, reverse)
    with torch.no_grad():
        (out, h_n), saved = rnn_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, relu, for_backward)
    if saved is None:
        return _fresh(out), h_n, _none(x)
    return out, h_n, saved["history"]


@rnn_forward_op.register_fake
def _(x, weight_ih, bias_ih, h0, weight_hh, bias_hh, reverse, relu, for_backward):
    N, (B, H) = x.shape[0], h0.shape
    return x.new_empty(N, H), h0.new_empty(B, H), (x.new_empty(N + B, H) if for_backward else _none(x))


@torch.library.custom_op("rnn_by_hand::rnn_backward", mutates_args=())
def rnn_backward_op(d_out: Optional[Tensor], d_hn: Optional[Tensor], x: Tensor, weight_ih: Tensor, h0: Tensor,
                    weight_hh: Tensor, history: Tensor, reverse: bool, relu: bool,
                    needs: list[bool]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """RNNFunction's backward: the gradients of x, weight_ih, bias_ih, h0, weight_hh, bias_hh, each
    empty where `needs` (the same six) says no."""
    layout = _layout(x, h0, reverse)
    saved = dict(x=x, weight_ih=weight_ih, weight_hh=weight_hh, out=layout.outputs(history),
                 h_prev=layout.stacked_previous(history, None))
    with torch.no_grad():
        grads = rnn_backward(layout, saved, (d_out, d_hn), _need("RNN", needs), relu)
    return _present(grads, x)


@rnn_backward_op.register_fake
def _(d_out, d_hn, x, weight_ih, h0, weight_hh, history, reverse, relu, needs):
    return _fake_grads((x, weight_ih, weight_ih[:, 0], h0, weight_hh, weight_hh[:, 0]), needs)


# -- autograd: one setup and one backward for the three forward operators ------------------------
#
# A forward operator's arguments are its cell's tensors in INPUTS order (the LSTM's without
# weight_hr), then `reverse`, the cell's options (the RNN's `relu`) and `for_backward`; its outputs are
# the layer's (OUTPUTS[mode] of them), then what the backward operator reads, in the order it takes them.

OUTPUTS = {"LSTM": 3, "GRU": 2, "RNN": 2}


def _tensor_names(mode):
    return [name for name in INPUTS[mode] if name != "weight_hr"]


def _setup(mode, ctx, inputs, output):
    n = len(_tensor_names(mode))
    ctx.save_for_backward(*inputs[:n], *output[OUTPUTS[mode]:])
    ctx.reverse, ctx.options, ctx.for_backward = inputs[n], tuple(inputs[n + 1:-1]), inputs[-1]


def _backward(mode, backward_op, ctx, *grads):
    """The forward operator's backward: the backward operator, or, when autograd wants a backward it
    can differentiate again (create_graph=True), the readable step's."""
    names = _tensor_names(mode)
    tensors, saved = ctx.saved_tensors[: len(names)], ctx.saved_tensors[len(names):]
    inputs = dict(zip(names, tensors))
    grads = grads[: OUTPUTS[mode]]  # the saved buffers' gradients are never used
    needs = list(ctx.needs_input_grad[: len(names)])
    not_tensors = (None,) * (len(ctx.needs_input_grad) - len(names))  # reverse, options, for_backward
    if torch.is_grad_enabled():
        nonlinearity = "relu" if ctx.options and ctx.options[0] else "tanh"  # the RNN's `relu`
        return _by_autograd(ctx, mode, inputs, grads, needs, nonlinearity) + not_tensors
    _check_saved(ctx, mode)
    result = backward_op(*grads, inputs["x"], inputs["weight_ih"], inputs["h0"], inputs["weight_hh"], *saved,
                         ctx.reverse, *ctx.options, needs)
    return _optional(result) + not_tensors


for _mode, _forward, _backward_op in (("LSTM", lstm_forward_op, lstm_backward_op),
                                      ("GRU", gru_forward_op, gru_backward_op),
                                      ("RNN", rnn_forward_op, rnn_backward_op)):
    torch.library.register_autograd(_forward, partial(_backward, _mode, _backward_op),
                                    setup_context=partial(_setup, _mode))


# -- shared -------------------------------------------------------------------------------------

def _need(mode, needs):
    """`needs` (one flag per name of INPUTS[mode] but the LSTM's weight_hr) as the backward's dict."""
    return dict(zip(INPUTS[mode], [*needs, False]))


def _present(grads, like):
    """The backward's gradients as an operator returns them: an empty tensor for each None."""
    return tuple(t if t is not None else like.new_empty(0) for t in grads)


def _optional(grads):
    """The operator's gradients as autograd takes them: None for each empty one."""
    return tuple(None if t.numel() == 0 else t for t in grads)


def _fake_grads(likes, needs):
    return tuple(like.new_empty(like.shape) if wanted else like.new_empty(0) for like, wanted in zip(likes, needs))


def _check_saved(ctx, mode):
    if not ctx.for_backward:
        raise RuntimeError(f"rnn_by_hand::{mode.lower()}_forward ran with for_backward=False, so it saved nothing "
                           f"to backpropagate through; call it with for_backward=True when a gradient is wanted")


def _by_autograd(ctx, mode, inputs, grads, needs, nonlinearity):
    """The gradients by autograd through the readable step (`models.double_backward`), differentiable
    again: the route of create_graph=True, as in the Functions."""
    x, h0 = inputs["x"], inputs["h0"]
    shim = _Context(_layout(x, h0, ctx.reverse), (*needs, False))
    return backward_by_autograd(shim, mode, inputs, grads, nonlinearity)[: len(needs)]


class _Context:
    """What `backward_by_autograd` reads of an autograd Function's ctx."""

    def __init__(self, layout, needs_input_grad):
        self.layout, self.needs_input_grad = layout, needs_input_grad
