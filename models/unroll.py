"""The readable unroll: run one cell over time, one direction of one layer.

Sequences arrive in PackedSequence's layout, which also covers plain (T, B, ·) tensors: the steps lie
back to back in one 2-D tensor, step t holding `batch_sizes[t]` rows, longest sequences first. A plain
batch is the special case batch_sizes = [B] * T. At step t only the first batch_sizes[t] sequences
are still running; the others keep their state, which is how each sequence ends with its own final
state (and, running backwards, starts from its own initial state).
"""
import torch
import torch.nn.functional as F

from .kinds import BY_MODE


def unroll(step, x_proj, batch_sizes, state, reverse=False):
    """Apply `step(x_t, *state) -> new state` over time.

    x_proj: (N, G·H) input projections of all steps, N = sum(batch_sizes).
    state: tuple of initial states, each (B, ·), B = max(batch_sizes); the first one is the output.
    Returns the outputs (N, ·) in the same layout and the tuple of final states.
    """
    # split, not slicing in the loop: autograd then sums one gradient per piece instead of
    # building a zero tensor the size of the whole sequence for every step (quadratic in T).
    x_steps = x_proj.split(batch_sizes)  # T tensors of (batch_sizes[t], G·H)
    outputs = [None] * len(batch_sizes)
    steps = range(len(batch_sizes) - 1, -1, -1) if reverse else range(len(batch_sizes))
    for t in steps:
        b = batch_sizes[t]
        new = step(x_steps[t], *(s[:b] for s in state))
        new = new if isinstance(new, tuple) else (new,)
        # Sequences that have ended (or, backwards, not yet begun) keep their state.
        state = tuple(n if b == s.shape[0] else torch.cat([n, s[b:]]) for n, s in zip(new, state))
        outputs[t] = new[0]
    return torch.cat(outputs), state


def readable_direction(mode, x, weight_ih, bias_ih, batch_sizes, state, weight_hh, bias_hh, weight_hr, reverse,
                       nonlinearity):
    """One direction of one layer through the cell's readable step; returns (out (N, P), final states).

    x: (N, I) the layer's input in the packed layout; state: the initial states, each (B, ·).
    Every op is a plain differentiable torch op, so this path works under every autograd feature
    (double backward, forward-mode AD, torch.func, autocast, tracing, torch.compile).
    """
    x_proj = F.linear(x, weight_ih, bias_ih)  # (N, G·H): the whole sequence's input in one matmul
    step = BY_MODE[mode].readable_step(weight_hh, bias_hh, weight_hr, nonlinearity)
    return unroll(step, x_proj, batch_sizes, state, reverse)
