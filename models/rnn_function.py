"""The Elman RNN's fast path: one direction of one layer, forward and hand-derived backward through time.

Equals `models.unroll.readable_direction("RNN", …)`, the readable unroll of `cells.RNNCell`; the
tests prove both equal to torch.nn.RNN. `models/fused.py` says what the fast path saves over the
readable one.
"""
import torch

from . import cpu_kernels
from .backends import step_kernels, whole_sequence
from .double_backward import INPUTS, backward_by_autograd, needs_autograd
from .layout import Layout, grad_buffer
from .projection import input_grads, input_projection, mm, summed_bias
from .workspace import workspace

# What forward saves, in order: the inputs, then every step's h (`out`) and h_prev.
SAVED = (*INPUTS["RNN"], "out", "h_prev")


class RNNFunction(torch.autograd.Function):
    """One Elman RNN direction, forward and hand-derived backward through time.

    apply(x (N, I), weight_ih (H, I), bias_ih (H,) or None, h0 (B, H), weight_hh (H, H),
          bias_hh (H,) or None, batch_sizes, reverse, nonlinearity, for_backward=True)
        -> (out (N, H), h_n (B, H))

    `for_backward=False` (no backward will follow) skips saving what the backward needs.

    Forward (`cells/rnn.py`), with x_proj = x W_ihᵀ + b_ih + b_hh for all steps in one matmul (the
    CPU's sequence kernel adds the biases in each step instead):
        h = φ(x_proj + h_prev W_hhᵀ).
    Saved: every h, which is also φ's derivative: tanh' = 1 − h², relu' = [h > 0] (torch's choice at
    0, where relu is not differentiable).

    Backward, with dh the output's gradient plus what step t+1 sends back:
        dz = dh ⊙ φ'          dh_prev = dz W_hh  (b, H)          d x_proj = dz
    and after the loop dW_hh = dZᵀ H_prev, db_hh = db_ih = Σ dZ, dW_ih = dZᵀ X, dx = dZ W_ih.

    A step is one matmul and one activation, so there is no step kernel; on the CPU a uniform batch
    runs the whole loop in one call of `cpu_kernels.rnn_forward_sequence` / `rnn_backward_sequence`.
    Proven equal to torch.nn.RNN and to the readable path by tests/test_fused.py and
    tests/test_cpu_kernels.py (every route, float64, 1e-10).
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, batch_sizes, reverse, nonlinearity,
                for_backward=True):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        layout = Layout(batch_sizes, reverse)
        relu = nonlinearity == "relu"
        ctx.layout, ctx.relu, ctx.for_backward = layout, relu, for_backward
        outputs, saved = rnn_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, relu, for_backward)
        if for_backward:
            ctx.save_for_backward(x, weight_ih, bias_ih, h0, weight_hh, bias_hh,
                                  *(saved[name] for name in SAVED[len(INPUTS["RNN"]):]))
        return outputs  # out (N, H), h_n (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn):
        if not ctx.for_backward:
            raise RuntimeError("RNNFunction ran with for_backward=False, so it saved nothing to backpropagate "
                               "through; call it with for_backward=True when a gradient is wanted")
        saved = dict(zip(SAVED, ctx.saved_tensors))
        if needs_autograd(d_out, d_hn):
            nonlinearity = "relu" if ctx.relu else "tanh"
            return backward_by_autograd(ctx, "RNN", saved, (d_out, d_hn), nonlinearity) + (None,) * 4
        need = dict(zip(INPUTS["RNN"], ctx.needs_input_grad))
        return rnn_backward(ctx.layout, saved, (d_out, d_hn), need, ctx.relu) + (None,) * 4


def rnn_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, relu, for_backward):
    """RNNFunction's forward without autograd: ((out (N, H), h_n (B, H)), saved).

    saved: what the backward reads by name (`rnn_backward`): "out" (every step's h) and "h_prev",
    both views of "history" (h0 and every step's h); None when not for_backward.
    """
    sequence = whole_sequence(layout, x)
    # The sequence kernel adds b_ih + b_hh in each step itself, where it reads x_proj anyway.
    x_proj = input_projection(x, weight_ih, *(() if sequence else (bias_ih, bias_hh)))  # (N, H), read only
    # Without a backward to follow nothing is saved, so h's history can be a buffer of the
    # caller's own and the output a view of it.
    own_output = sequence and not for_backward
    h_buf, out, outs, h_init = layout.history(h0, x_proj, pooled=not own_output)  # (N + B, H)
    h_prevs = None
    if sequence:
        cpu_kernels.rnn_forward_sequence(x_proj, summed_bias(bias_ih, bias_hh), h_buf, weight_hh.contiguous(),
                                         layout.B, layout.reverse, relu)
    else:
        # the CPU kernels' tanh, where they run, is a vectorised loop; torch's CPU tanh is not
        cpu_tanh = step_kernels(x_proj) is cpu_kernels
        act = torch.Tensor.relu_ if relu else cpu_kernels.tanh_ if cpu_tanh else torch.Tensor.tanh_
        xs, w_hh_t, h_prevs = layout.split(x_proj), weight_hh.t(), [None] * layout.T
        for t in layout.order:
            h_prev = h_prevs[t] = layout.previous(t, outs, h_init)
            act(torch.addmm(xs[t], h_prev, w_hh_t, out=outs[t]))  # h = φ(x_proj + h_prev W_hhᵀ)  (b, H)
    saved = None
    if for_backward:
        saved = dict(out=out, h_prev=layout.stacked_previous(h_buf, h_prevs), history=h_buf)
    return (out if own_output else out.clone(), layout.final(outs, h_init)), saved


def rnn_backward(layout, saved, grads, need, relu):
    """RNNFunction's hand-derived backward: the gradients of INPUTS["RNN"], in order (None where
    `need`, a dict by those names, says no). saved: the inputs and what `rnn_forward` saved, by name;
    grads: (d_out, d_hn), either None."""
    d_out, d_hn = grads
    x, weight_ih, weight_hh = saved["x"], saved["weight_ih"], saved["weight_hh"]
    out, h_prev = saved["out"], saved["h_prev"]
    N, H = layout.N, out.shape[1]
    dz = workspace.empty(out, N, H)  # (N, H): dz = d x_proj
    dh = grad_buffer(d_hn, (layout.B, H), out)  # (B, H): running ∂L/∂h
    d_out = d_out.contiguous() if d_out is not None else out.new_zeros(N, H)
    if whole_sequence(layout, out):
        cpu_kernels.rnn_backward_sequence(d_out, dh, out, dz, weight_hh.contiguous(), layout.B, layout.reverse, relu)
    else:
        slope = (out > 0).to(out.dtype) if relu else 1 - out * out  # (N, H): φ'(z) from h = φ(z)
        steps = list(zip(layout.split(d_out), layout.split(dz), layout.split(slope), layout.heads(dh)))
        for t in layout.back_order:
            d_out_t, dz_t, slope_t, dh_t = steps[t]
            torch.mul(dh_t.add_(d_out_t), slope_t, out=dz_t)  # dz = (dh + d_out) ⊙ φ'
            torch.mm(dz_t, weight_hh, out=dh_t)  # dh_prev = dz W_hh  (b, H)

    needs = tuple(need[name] for name in INPUTS["RNN"])
    d_x, d_w_ih, d_b_ih, d_b_hh = input_grads(needs, dz, x, weight_ih, (need["bias_ih"], need["bias_hh"]))
    d_w_hh = mm(dz.t(), h_prev) if need["weight_hh"] else None  # dW_hh = dZᵀ H_prev  (H, H)
    return d_x, d_w_ih, d_b_ih, dh if need["h0"] else None, d_w_hh, d_b_hh
