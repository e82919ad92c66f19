"""The GRU's fast path: one direction of one layer, forward and hand-derived backward through time.

Equals `models.unroll.readable_direction("GRU", …)`, the readable unroll of `cells.GRUCell`; the
tests prove both equal to torch.nn.GRU. `models/fused.py` says what the fast path saves over the
readable one.
"""
import torch

from . import cpu_kernels
from .backends import step_kernels, whole_sequence
from .double_backward import INPUTS, backward_by_autograd, needs_autograd
from .layout import Layout, grad_buffer
from .projection import input_grads, input_projection, mm
from .workspace import workspace

# What forward saves, in order: the inputs, then what the backward reads (h_prev: every step's).
SAVED = (*INPUTS["GRU"], "rz", "n", "hh", "h_prev")


class GRUFunction(torch.autograd.Function):
    """One GRU direction (torch's GRU), forward and hand-derived backward through time.

    apply(x (N, I), weight_ih (3H, I), bias_ih (3H,) or None, h0 (B, H), weight_hh (3H, H),
          bias_hh (3H,) or None, batch_sizes, reverse, for_backward=True) -> (out (N, H), h_n (B, H))

    `for_backward=False` (no backward will follow) skips saving what the backward needs.

    Forward, one step in the code's names (`cells/gru.py`); x_proj = x W_ihᵀ + b_ih = [x_r | x_z | x_n]
    for all steps in one matmul before the loop, and the
    recurrent matmul hh = [hh_r | hh_z | hh_n] keeps the whole b_hh, because b_hn sits inside
    r ⊙ (W_hn h + b_hn) and cannot be folded into x_proj:

        hh = h_prev W_hhᵀ + b_hh                      (b, 3H)
        r  = σ(x_r + hh_r)     z = σ(x_z + hh_z)
        n  = tanh(x_n + r ⊙ hh_n)
        h  = (1 − z) ⊙ n + z ⊙ h_prev  = n + z ⊙ (h_prev − n)   (torch.lerp)

    Saved: r, z, n, hh (for hh_n) and every h (which gives h_prev).

    Backward, with dh the sum of the output's gradient and what step t+1 sends back:

        dn      = dh ⊙ (1 − z)            dz = dh ⊙ (h_prev − n)          d h_prev (direct) = dh ⊙ z
        dn_pre  = dn ⊙ (1 − n²)                                          n = tanh(n_pre)
        dr      = dn_pre ⊙ hh_n           d hh_n = dn_pre ⊙ r
        dr_pre  = dr ⊙ r(1 − r)           dz_pre = dz ⊙ z(1 − z)          σ' = σ(1 − σ)

        d x_proj = [dr_pre | dz_pre | dn_pre]       d hh = [dr_pre | dz_pre | dn_pre ⊙ r]
        dh_prev  = dh ⊙ z + d hh W_hh               (b, H): the one matmul per step

    and after the loop dW_hh = d HHᵀ H_prev (3H, H), db_hh = Σ d HH, and from d x_proj:
    dW_ih = d X_projᵀ X, db_ih = Σ d X_proj, dx = d X_proj W_ih. The factors multiplying dh,
    k_n = (1 − z)(1 − n²) and k = [k_n hh_n r(1 − r) | (h_prev − n) z(1 − z) | k_n r], are computed in
    each step from the saved r, z, n, hh_n and h_prev (so no (N, 3H) buffer of them is built), and a
    step is: dh += d_out[t]; d hh = dh ⊗ k; dn_pre = dh ⊙ k_n; dh ⊙= z; dh += d hh W_hh.

    Each step's gate math is `gru_forward_step` / `gru_backward_step` of the backend
    `models.backends.step_kernels` picks (torch ops, compiled C++ or Triton: the same signature and
    formulas). On the CPU a uniform batch runs the whole loop,
    matmuls included, in one call of `cpu_kernels.gru_forward_sequence` / `gru_backward_sequence`.
    Proven equal to torch.nn.GRU and to the readable path by tests/test_fused.py and
    tests/test_cpu_kernels.py (every route, float64, 1e-10).
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, batch_sizes, reverse, for_backward=True):
        layout = Layout(batch_sizes, reverse)
        ctx.layout, ctx.for_backward = layout, for_backward
        outputs, saved = gru_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, for_backward)
        if for_backward:
            ctx.save_for_backward(x, weight_ih, bias_ih, h0, weight_hh, bias_hh,
                                  *(saved[name] for name in SAVED[len(INPUTS["GRU"]):]))
        return outputs  # out (N, H), h_n (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn):
        if not ctx.for_backward:
            raise RuntimeError("GRUFunction ran with for_backward=False, so it saved nothing to backpropagate "
                               "through; call it with for_backward=True when a gradient is wanted")
        saved = dict(zip(SAVED, ctx.saved_tensors))
        if needs_autograd(d_out, d_hn):
            return backward_by_autograd(ctx, "GRU", saved, (d_out, d_hn)) + (None,) * 3
        need = dict(zip(INPUTS["GRU"], ctx.needs_input_grad))
        return gru_backward(ctx.layout, saved, (d_out, d_hn), need) + (None,) * 3


def gru_forward(layout, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, for_backward):
    """GRUFunction's forward without autograd: ((out (N, H), h_n (B, H)), saved).

    saved: what the backward reads by name (`gru_backward`): "rz", "n", "hh", "h_prev", and "history",
    the buffer h_prev is a view of (h0 and every step's h); None when not for_backward.
    """
    N, H = layout.N, h0.shape[1]
    x_proj = input_projection(x, weight_ih, bias_ih)  # (N, 3H)
    sequence = whole_sequence(layout, x_proj)
    # Without a backward to follow nothing is saved: the sequence kernel keeps each step's r, z, n
    # and hh to itself, and h's history can be a buffer of the caller's own and the output a view of it.
    own_output = sequence and not for_backward
    h_buf, out, outs, h_init = layout.history(h0, x_proj, pooled=not own_output)  # (N + B, H)
    hh = rz = n = h_prevs = None
    if not own_output:
        hh = workspace.empty(x_proj, N, 3 * H)  # (N, 3H): h_prev W_hhᵀ + b_hh
        rz = workspace.empty(x_proj, N, 2 * H)  # (N, 2H): r | z
        n = workspace.empty(x_proj, N, H)  # (N, H)
    if sequence:
        bias = bias_hh.contiguous() if bias_hh is not None else None
        cpu_kernels.gru_forward_sequence(x_proj, bias, hh, rz, n, h_buf, weight_hh.contiguous(), layout.B,
                                         layout.reverse)
    else:
        h_prevs = _forward_steps(layout, x_proj, hh, rz, n, weight_hh, bias_hh, outs, h_init)
    saved = None
    if for_backward:
        saved = dict(rz=rz, n=n, hh=hh, h_prev=layout.stacked_previous(h_buf, h_prevs), history=h_buf)
    return (out if own_output else out.clone(), layout.final(outs, h_init)), saved


def gru_backward(layout, saved, grads, need):
    """GRUFunction's hand-derived backward: the gradients of INPUTS["GRU"], in order (None where
    `need`, a dict by those names, says no). saved: the inputs and what `gru_forward` saved, by name;
    grads: (d_out, d_hn), either None."""
    d_out, d_hn = grads
    x, weight_ih, weight_hh = saved["x"], saved["weight_ih"], saved["weight_hh"]
    rz, n, hh, h_prev = saved["rz"], saved["n"], saved["hh"], saved["h_prev"]
    N, H = layout.N, n.shape[1]
    d_hh = workspace.empty(rz, N, 3 * H)  # (N, 3H): d hh = [dr_pre | dz_pre | dn_pre ⊙ r]
    d_xn = workspace.empty(rz, N, H)  # (N, H): dn_pre
    dh = grad_buffer(d_hn, (layout.B, H), rz)  # (B, H): running ∂L/∂h
    d_out = d_out.contiguous() if d_out is not None else rz.new_zeros(N, H)
    if whole_sequence(layout, rz):
        cpu_kernels.gru_backward_sequence(d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, weight_hh.contiguous(),
                                          layout.B, layout.reverse)
    else:
        _backward_steps(layout, d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, weight_hh)

    d_x, d_w_ih, d_b_ih = (None, None, None)
    if need["x"] or need["weight_ih"] or need["bias_ih"]:
        d_proj = torch.cat((d_hh[:, : 2 * H], d_xn), 1)  # (N, 3H): d x_proj = [dr_pre | dz_pre | dn_pre]
        needs = tuple(need[name] for name in INPUTS["GRU"])
        d_x, d_w_ih, d_b_ih = input_grads(needs, d_proj, x, weight_ih, (need["bias_ih"],))
    d_w_hh = mm(d_hh.t(), h_prev) if need["weight_hh"] else None  # dW_hh = d HHᵀ H_prev  (3H, H)
    d_b_hh = d_hh.sum(0) if need["bias_hh"] else None  # db_hh = Σ d HH  (3H,)
    return d_x, d_w_ih, d_b_ih, dh if need["h0"] else None, d_w_hh, d_b_hh


def _forward_steps(layout, x_proj, hh, rz, n, weight_hh, bias_hh, outs, h_init):
    """GRUFunction.forward's time loop, one step at a time: the route of packed batches and devices
    without the sequence kernel. Returns every step's h_prev."""
    xs, hhs, rzs, ns = layout.split(x_proj), layout.split(hh), layout.split(rz), layout.split(n)
    w_hh_t = weight_hh.t()
    kernels = step_kernels(x_proj)
    h_prevs = [None] * layout.T
    for t in layout.order:
        h_prev = h_prevs[t] = layout.previous(t, outs, h_init)
        torch.mm(h_prev, w_hh_t, out=hhs[t])  # hh = h_prev W_hhᵀ  (b, 3H); the step adds b_hh
        kernels.gru_forward_step(hhs[t], xs[t], bias_hh, h_prev, rzs[t], ns[t], outs[t])
    return h_prevs


def _backward_steps(layout, d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, weight_hh):
    """GRUFunction.backward's time loop, one step at a time, each step computing its own factors."""
    d_outs, rzs, ns, hhs, h_prevs = (layout.split(t) for t in (d_out, rz, n, hh, h_prev))
    d_hhs, d_xns, dhs = layout.split(d_hh), layout.split(d_xn), layout.heads(dh)
    kernels = step_kernels(rz)
    for t in layout.back_order:
        kernels.gru_backward_step(dhs[t], d_outs[t], rzs[t], ns[t], hhs[t], h_prevs[t], d_hhs[t], d_xns[t])
        dhs[t].addmm_(d_hhs[t], weight_hh)  # dh_prev = dh ⊙ z + d hh W_hh  (b, H)

