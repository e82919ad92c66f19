"""The input projection of a whole sequence and its gradients: the time-independent part of a layer.

x_proj = x W_ihᵀ + b does not depend on the recurrence, so the fast path computes it for all steps in
one matmul before the time loop, and its gradients (dx, dW_ih, db) in one op each after the backward
loop, from d x_proj (which is the loop's dz).
"""
import torch

from .workspace import workspace


def input_projection(x, weight_ih, *biases):
    """x W_ihᵀ + the biases that are not None: (N, G·H), the whole sequence's input in one matmul.

    The biases are summed first (b_ih + b_hh: both shift every step's pre-activation alike); the
    result comes from the buffer pool (`models.workspace`), as the Functions' other (N, ·) buffers.
    """
    out = workspace.empty(x, x.shape[0], weight_ih.shape[0])  # (N, G·H)
    bias = summed_bias(*biases)
    if bias is None:
        return torch.mm(x, weight_ih.t(), out=out)
    return torch.addmm(bias, x, weight_ih.t(), out=out)


def summed_bias(*biases):
    """The sum of the biases that are not None (contiguous), or None when all are."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return (present[0] if len(present) == 1 else present[0] + present[1]).contiguous()


# Below this input size dW_ih is computed as the transpose of (I, G·H) = xᵀ d x_proj, which MKL's gemm
# runs faster than the narrow (G·H, I) product (benchmarks/results/dw_ih_orientation.md).
NARROW_INPUT = 64


def input_grads(need, d_proj, x, weight_ih, bias_grads):
    """The gradients of x, W_ih and each bias from d x_proj (N, G·H), as needs_input_grad asks.

    x_proj = x W_ihᵀ + b:  dx = d x_proj W_ih,  dW_ih = d x_projᵀ x,  db = Σ_rows d x_proj, the same
    sum for every bias that was added (each gets its own copy: they are different parameters' grads).
    """
    d_x = torch.mm(d_proj, weight_ih) if need[0] else None  # (N, I)
    d_w_ih = None
    if need[1] and x.shape[1] < NARROW_INPUT:  # as (xᵀ d x_proj)ᵀ: the BLAS handles a wide product better
        d_w_ih = torch.mm(x.t(), d_proj).t().contiguous()  # (G·H, I)
    elif need[1]:
        d_w_ih = torch.mm(d_proj.t(), x)  # (G·H, I)
    d_b = d_proj.sum(0) if any(bias_grads) else None  # (G·H,)
    d_biases, shared = [], False
    for wanted in bias_grads:
        d_biases.append((d_b.clone() if shared else d_b) if wanted else None)
        shared |= bool(wanted)
    return (d_x, d_w_ih, *d_biases)
