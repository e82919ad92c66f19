"""The packed-sequence layout of the fast path: where each step's rows lie, and in which order steps run.

The layout is PackedSequence's (see `models/unroll.py`): step t holds `batch_sizes[t]` rows,
non-increasing, and only those rows are updated at step t: running forwards the rows of sequences
that ended keep their final state, running backwards the rows of sequences not yet begun keep h0.
The backward keeps the state gradients dh, dc in (B, ·) buffers and updates their first b rows at
step t, mirroring the forward, so a row whose sequence is inactive carries its gradient through
unchanged to where it came from: the final state's gradient to the sequence's last step, and the
first step's dh_prev to h0.
"""
import itertools

import torch

from .workspace import workspace


class Layout:
    """Where every step's rows lie, and in which order the steps run.

    A history buffer holds the initial state and each step's new state back to back, so each step's
    output is a view of it and the previous state is (almost always) a view too:
        forwards   [h0 | step 0 | step 1 | ... | step T-1]    (B + N, ·)
        backwards  [step 0 | step 1 | ... | step T-1 | h0]    (N + B, ·)
    Running forwards, step t's previous state is the first b_t rows of step t-1 (b_t ≤ b_{t-1}).
    Running backwards it is step t+1's rows followed, when b_t > b_{t+1}, by the h0 rows of the
    sequences that start at step t; only then is a copy (torch.cat) needed.
    """

    def __init__(self, batch_sizes, reverse):
        self.sizes = list(batch_sizes)  # b_t, non-increasing
        self.T, self.B, self.N = len(self.sizes), self.sizes[0], sum(self.sizes)
        self.reverse = reverse
        self.uniform = self.sizes.count(self.B) == self.T
        self.order = range(self.T - 1, -1, -1) if reverse else range(self.T)
        self.back_order = range(self.T) if reverse else range(self.T - 1, -1, -1)

    def split(self, t):
        """Per-step views of a (N, ·) tensor in the packed layout."""
        return t.split(self.sizes)

    def history(self, init, like, pooled=True):
        """(buffer (N + B, ·), its outputs (N, ·), per-step output views, its initial rows (B, ·)),
        with `init` copied into the initial rows. pooled=False: a buffer of its own, not the pool's,
        whose outputs can be handed to the caller without a copy."""
        N, B = self.N, self.B
        shape = (N + B, init.shape[1])
        buf = workspace.empty(like, *shape) if pooled else like.new_empty(shape)  # (N + B, ·)
        out, init_rows = self.outputs(buf), (buf[N:] if self.reverse else buf[:B])
        init_rows.copy_(init)
        return buf, out, StepViews(out, self.sizes), init_rows

    def outputs(self, buf):
        """The rows of a history buffer (N + B, ·) that hold the steps' states (N, ·)."""
        return buf[: self.N] if self.reverse else buf[self.B :]

    def previous(self, t, outs, init):
        """Step t's previous state (b_t, ·): a view when it can be, else a cat with h0's rows."""
        b = self.sizes[t]
        if self.reverse:
            if t == self.T - 1:
                return init if b == self.B else init[:b]
            before = outs[t + 1]
            b_before = before.shape[0]
            return before if b_before == b else torch.cat((before, init[b_before:b]))
        before = init if t == 0 else outs[t - 1]
        return before if before.shape[0] == b else before[:b]

    def stacked_previous(self, buf, prevs):
        """All steps' previous states in the packed layout (N, ·), for dW = dZᵀ H_prev."""
        if self.uniform:
            return buf[self.B:] if self.reverse else buf[: self.N]
        return torch.cat(prevs)

    def final(self, outs, init):
        """The final state (B, ·): each sequence's state after its last step (a copy)."""
        if self.reverse or self.uniform:
            return (outs[0] if self.reverse else outs[-1]).clone()
        # Forwards, the sequences that end at step t are rows b_{t+1}..b_t of step t's output.
        sizes = self.sizes + [0]
        pieces = [outs[t][sizes[t + 1]:] for t in range(self.T - 1, -1, -1) if sizes[t + 1] < sizes[t]]
        return torch.cat(pieces)

    def heads(self, state):
        """Views state[:b] of a (B, ·) state(-gradient) buffer for each step (in step order)."""
        views = {b: state if b == self.B else state[:b] for b in set(self.sizes)}
        return [views[b] for b in self.sizes]


class StepViews:
    """Each step's rows of a (N, ·) tensor in the packed layout, as `t.split(sizes)` gives them, made
    when asked for: a whole-sequence kernel never asks for most of them."""

    def __init__(self, tensor, sizes):
        self.tensor, self.sizes = tensor, sizes
        self.starts = list(itertools.accumulate(sizes[:-1], initial=0))

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, t):
        t = range(len(self.sizes))[t]  # negative indices as a list's; out of range raises IndexError
        return self.tensor.narrow(0, self.starts[t], self.sizes[t])


def grad_buffer(grad, shape, like):
    """A writable, contiguous copy of an incoming gradient (zeros where autograd gave none)."""
    if grad is None:
        return like.new_zeros(shape)
    return grad.clone(memory_format=torch.contiguous_format)
