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


# Each Function's tensor arguments in apply order, by name: what the backward differentiates, and
# the names under which a Function reads its saved tensors and ctx.needs_input_grad
# (`dict(zip(INPUTS[mode], ...))`; needs_input_grad's non-tensor arguments come after these).
INPUTS = {
    "LSTM": ("x", "weight_ih", "bias_ih", "h0", "c0", "weight_hh", "bias_hh", "weight_hr"),
    "GRU": ("x", "weight_ih", "bias_ih", "h0", "weight_hh", "bias_hh"),
    "RNN": ("x", "weight_ih", "bias_ih", "h0", "weight_hh", "bias_hh"),
}


def backward_by_autograd(ctx, mode, inputs, grads, nonlinearity="tanh"):
    """The gradients of the saved `inputs` by autograd through the readable step: differentiable again.

    inputs: the Function's tensors by name (a dict holding at least INPUTS[mode]; other entries are
    ignored), or its tensor arguments in apply order; grads: the gradients of its outputs. Returns
    one gradient per name of INPUTS[mode], in order. The forward is recomputed through
    `readable_direction`, which equals the hand-derived Functions (the tests prove both equal to
    torch.nn), and differentiated with create_graph when grad mode is on.
    """
    names = INPUTS[mode]
    given = inputs if isinstance(inputs, dict) else dict(zip(names, inputs))
    state = tuple(given[name] for name in ("h0", "c0") if name in names)  # (h0,) or (h0, c0)
    need = ctx.needs_input_grad[: len(names)]
    wanted = [given[name] for name, n in zip(names, need) if n]
    with torch.enable_grad():
        out, finals = readable_direction(mode, given["x"], given["weight_ih"], given["bias_ih"], ctx.layout.sizes,
                                         state, given["weight_hh"], given["bias_hh"], given.get("weight_hr"),
                                         ctx.layout.reverse, nonlinearity)
    pairs = [(o, g) for o, g in zip((out, *finals), grads) if g is not None]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                   create_graph=torch.is_grad_enabled(), allow_unused=True))
    return tuple(next(got) if n else None for n in need)
