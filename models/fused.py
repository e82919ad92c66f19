"""The fast path: one direction of one layer, with the backward through time derived by hand.

`fused_direction` has the signature of `models.unroll.readable_direction` and computes the same thing
(the tests prove it equal to the readable path and to torch.nn, to 1e-10 in float64). What it saves:

- **autograd's bookkeeping.** The readable path records every pointwise op of every step in the
  autograd graph and replays it backwards. Here each cell is one `torch.autograd.Function`
  (`LSTMFunction`, `GRUFunction`, `RNNFunction`) whose forward runs with autograd off and saves only
  what its backward needs: the gate activations, the states and the recurrent matmul's inputs.
- **per-step weight gradients.** The backward walks the sequence in reverse with one recurrent matmul
  per step (dh_prev = dz W_hh); the weight and bias gradients are one matmul / one sum over all steps
  after the loop: dW_hh = dZᵀ H_prev, db_hh = Σ_rows dZ. The input projection
  x_proj = x W_ihᵀ + b_ih of all steps is one matmul before the loop, inside the Function, and the
  gradient of x_proj is dZ itself, so dW_ih = dZᵀ X, dx = dZ W_ih and db_ih = Σ_rows dZ (the same sum
  as db_hh, where the cell adds both biases alike) are one op each.
- **allocations and Python in the hot loop.** Every buffer is allocated once per call (large CPU
  ones come from a pool reused across calls, `models.workspace`); the loop reads per-step views made
  by one `split(batch_sizes)` per buffer, and writes with in-place ops and `out=`. On the CPU, with
  a uniform batch, the whole loop runs in one compiled call (`models.cpu_kernels`), so a step costs
  no Python at all, and its work is split over torch's threads. The factors of the backward that
  depend only on activations (σ'(z) = σ(1 − σ), tanh'(z) = 1 − tanh², …) come from the saved
  activations, never from pre-activations: the LSTM's forward writes them while its gates are in
  cache, the GRU's and RNN's backward step computes them from the saved r, z, n and h.

The sequence layout is PackedSequence's (`models.layout`): step t holds `batch_sizes[t]` rows.

What the caller receives never aliases memory this path writes again: outputs and final states
are fresh tensors (the output is copied out of the pooled history buffer once per call, or written
there by the sequence kernel beside the history; without a backward the history is the caller's own),
and gradients are fresh too. So an output can be modified in place, kept across calls, or handed to
another process (whose shared memory the pool would otherwise overwrite). Under
`torch.inference_mode()` the pool serves as well, with buffers made outside it (normal tensors, which
a later call outside inference mode can still write), and what the caller receives is made inside it,
as torch.nn's outputs are.

Second derivatives and gradients under vmap go through the readable step instead
(`models.double_backward`).

Where the pieces live:

    models/fused.py            this entry point: one direction of one layer, by cell kind
    models/lstm_function.py    LSTMFunction  } forward, hand-derived backward, and their time loops
    models/gru_function.py     GRUFunction   }
    models/rnn_function.py     RNNFunction   }
    models/backends.py         which code runs a step: eager_steps | cpu_kernels | triton_kernels
    models/eager_steps.py      one step's gate math in torch ops (the reference backend)
    models/cpu_kernels.py      … as compiled C++, and whole sequences in one call (CPU)
    models/triton_kernels.py   … as Triton kernels (CUDA)
    models/projection.py       x W_ihᵀ + b for all steps, and its gradients
    models/layout.py           the packed-sequence layout: where each step's rows lie
    models/workspace.py        the pool of large CPU buffers
    models/double_backward.py  second derivatives and vmap, through the readable step
    models/custom_ops.py       the same forward and backward as torch.library operators, for torch.compile
"""
import torch

from .backends import fused_supported
from .gru_function import GRUFunction
from .lstm_function import LSTMFunction
from .rnn_function import RNNFunction

__all__ = ["fused_direction", "fused_supported", "LSTMFunction", "GRUFunction", "RNNFunction"]


def fused_direction(mode, x, weight_ih, bias_ih, batch_sizes, state, weight_hh, bias_hh, weight_hr, reverse,
                    nonlinearity):
    """One direction of one layer through the hand-derived Functions; returns (out (N, P), final states).

    Same arguments and results as `models.unroll.readable_direction`.
    """
    batch_sizes = tuple(map(int, batch_sizes))
    # Inside forward, grad mode is always off and needs_input_grad ignores it, so the Function learns
    # here whether a backward can follow (and it must save what that backward needs).
    for_backward = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight_ih, bias_ih, *state, weight_hh, bias_hh, weight_hr))
    if mode == "LSTM":
        out, h, c = LSTMFunction.apply(x, weight_ih, bias_ih, state[0], state[1], weight_hh, bias_hh, weight_hr,
                                       batch_sizes, bool(reverse), for_backward)
        return out, (h, c)
    if mode == "GRU":
        out, h = GRUFunction.apply(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, batch_sizes, bool(reverse),
                                   for_backward)
        return out, (h,)
    if mode == "RNN":
        out, h = RNNFunction.apply(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, batch_sizes, bool(reverse),
                                   nonlinearity, for_backward)
        return out, (h,)
    raise ValueError(f"mode must be 'RNN', 'LSTM' or 'GRU', got {mode!r}")
