"""Second derivatives and batched gradients of the fast path, by autograd through the readable step.

The hand-written backward of each Function writes into buffers in place and reads raw memory, so it
is itself not differentiable and cannot run under vmap. When autograd asks for a backward that must
be differentiable (`create_graph=True`: a gradient penalty, `gradgradcheck`, grad-mode on inside
backward) or passes batched gradients (`is_grads_batched=True`, `jacobian(vectorize=True)`,
`gradcheck(check_batched_grad=True)`), the Functions instead recompute the forward through the
readable step (`models.unroll.readable_direction`) and differentiate that with autograd: the same
first derivatives, and correct second ones.
"""
import torch

from .unroll import readable_direction


def _is_batched_or_wrapped(t):
    """Whether `t` is a wrapper tensor without plain memory: batched under vmap (torch.func's, or the
    legacy one behind `is_grads_batched=True`) or tracked under torch.func.grad."""
    checks = ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor")
    return any(getattr(torch._C._functorch, name, lambda _: False)(t) for name in checks)


def needs_autograd(*grads):
    """Whether this backward must itself be differentiable (grad mode is on inside backward exactly
    when autograd was asked for create_graph=True) or receives batched gradients (under vmap)."""
    return torch.is_grad_enabled() or any(g is not None and _is_batched_or_wrapped(g) for g in grads)


def backward_by_autograd(ctx, mode, inputs, grads, nonlinearity="tanh"):
    """The gradients of the saved `inputs` by autograd through the readable step: differentiable again.

    inputs: the Function's tensor arguments in apply order (x, weight_ih, bias_ih, h0, [c0,] weight_hh,
    bias_hh[, weight_hr]); grads: the gradients of its outputs. The forward is recomputed through
    `readable_direction`, which equals the hand-derived Functions (the tests prove both equal to
    torch.nn), and differentiated with create_graph when grad mode is on.
    """
    if mode == "LSTM":
        x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr = inputs
        state = (h0, c0)
    else:
        x, weight_ih, bias_ih, h0, weight_hh, bias_hh = inputs
        state, weight_hr = (h0,), None
    need = ctx.needs_input_grad[: len(inputs)]
    wanted = [t for t, n in zip(inputs, need) if n]
    with torch.enable_grad():
        out, finals = readable_direction(mode, x, weight_ih, bias_ih, ctx.layout.sizes, state, weight_hh, bias_hh,
                                         weight_hr, ctx.layout.reverse, nonlinearity)
    pairs = [(o, g) for o, g in zip((out, *finals), grads) if g is not None]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                   create_graph=torch.is_grad_enabled(), allow_unused=True))
    return tuple(next(got) if n else None for n in need)
