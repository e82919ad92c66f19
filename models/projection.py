"""The input projection of a whole sequence and its gradients: the time-independent part of a layer.

x_proj = x W_ihᵀ + b does not depend on the recurrence, so the fast path computes it for all steps in
one matmul before the time loop, and its gradients (dx, dW_ih, db) in one op each after the backward
loop, from d x_proj (which is the loop's dz). These and the Functions' dW_hh are the fast path's large
matmuls: `mm` runs each in torch's BLAS or in the compiled kernels' own (`cpu_kernels.own_matmul`).
"""
import torch

from . import cpu_kernels
from .workspace import workspace

# A product with a side shorter than this is a matrix–vector product in all but name (a pixel MNIST
# input of size 1): memory-bound, which torch's BLAS handles as well as any kernel, so it goes there.
OWN_MATMUL_MIN = 16


def mm(a, b, bias=None, out=None):
    """a @ b (+ bias (N,) on every row), into `out` where given: one of the fast path's large matmuls,
    in the compiled kernel where `cpu_kernels.own_matmul` says it is the faster, else in torch.mm /
    torch.addmm. The two differ only in the order of the additions."""
    if (min(a.shape[0], a.shape[1], b.shape[1]) >= OWN_MATMUL_MIN and a.dtype == b.dtype
            and cpu_kernels.own_matmul(a) and (out is None or out.dtype == a.dtype)):
        return cpu_kernels.matmul(a, b, bias=bias, out=out)
    if bias is None:
        return torch.mm(a, b, out=out)
    return torch.addmm(bias, a, b, out=out)


def input_projection(x, weight_ih, *biases):
    """x W_ihᵀ + the biases that are not None: (N, G·H), the whole sequence's input in one matmul.

    The biases are summed first (b_ih + b_hh: both shift every step's pre-activation alike); the
    result comes from the buffer pool (`models.workspace`), as the Functions' other (N, ·) buffers.
    """
    out = workspace.empty(x, x.shape[0], weight_ih.shape[0])  # (N, G·H)
    bias = summed_bias(*biases)
    return mm(x, weight_ih.t(), bias, out=out)


def summed_bias(*biases):
    """The sum of the biases that are not None (contiguous), or None when all are."""
    present = [b for b in biases if b is not None]
    if not present:
        return None
    return (present[0] if len(present) == 1 else present[0] + present[1]).contiguous()


# Below this input size dW_ih is computed as the transpose of (I, G·H) = xᵀ d x_proj, which MKL's gemm
# runs faster than the narrow (G·H, I) product (benchmarks/results/dw_ih_orientation.md).
NARROW_INPUT = 64


def input_grads(need, d_proj, x, weight_ih, bias_grads, d_x=None, d_b=None):
    """The gradients of x, W_ih and each bias from d x_proj (N, G·H), as needs_input_grad asks.

    x_proj = x W_ihᵀ + b:  dx = d x_proj W_ih,  dW_ih = d x_projᵀ x,  db = Σ_rows d x_proj, the same
    sum for every bias that was added (each gets its own copy: they are different parameters' grads).
    d_x, d_b: those two where the backward loop has computed them already.
    """
    if need[0] and d_x is None:
        d_x = mm(d_proj, weight_ih)  # (N, I)
    d_w_ih = None
    if need[1] and x.shape[1] < NARROW_INPUT:  # as (xᵀ d x_proj)ᵀ: the BLAS handles a wide product better
        d_w_ih = mm(x.t(), d_proj).t().contiguous()  # (G·H, I)
    elif need[1]:
        d_w_ih = mm(d_proj.t(), x)  # (G·H, I)
    if any(bias_grads) and d_b is None:
        d_b = d_proj.sum(0)  # (G·H,)
    d_biases, shared = [], False
    for wanted in bias_grads:
        d_biases.append((d_b.clone() if shared else d_b) if wanted else None)
        shared |= bool(wanted)
    return (d_x, d_w_ih, *d_biases)
