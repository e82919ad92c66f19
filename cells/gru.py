"""Gated recurrent unit (GRU) cell, written out by hand.

For input x (B, I) and hidden state h (B, H), torch's equations with the gates in torch's order
r, z, n (σ is the logistic sigmoid, ⊙ the elementwise product):

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)             reset gate: how much of h the candidate sees
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)             update gate: how much of h to keep
    n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))    candidate
    h' = (1 - z) ⊙ n + z ⊙ h

This is torch's (cuDNN's) GRU: the reset gate multiplies W_hn h + b_hn *after* the matmul, so W_hn h
can be computed with the other gates in one matmul. The 2014 paper puts r before the matmul,

    n  = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

which `GRUCell(..., reset_after=False)` offers; it cannot be compared with `torch.nn.GRUCell` and is
tested against its own equations instead.

Parameters, named and shaped as in `torch.nn.GRUCell`; the three gates' weights are stacked so one
matmul per weight computes all gates at once:

    weight_ih = [W_ir | W_iz | W_in]   (3H, I)      bias_ih = [b_ir | b_iz | b_in]   (3H,)
    weight_hh = [W_hr | W_hz | W_hn]   (3H, H)      bias_hh = [b_hr | b_hz | b_hn]   (3H,)

The biases of r and z are redundant (only b_i* + b_h* matters), but b_hn is not: it sits inside
r ⊙ (W_hn h + b_hn), so the reset gate scales it and it cannot be folded into b_in.

References: K. Cho et al., "Learning phrase representations using RNN encoder-decoder for statistical
machine translation", EMNLP 2014; https://pytorch.org/docs/stable/generated/torch.nn.GRUCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase


def gru_step(x_proj, h, weight_hh, bias_hh, gates=None):
    """One time step of torch's GRU, given `x_proj = W_ih x + b_ih` (B, 3H); returns h'.

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop. `gates`,
    if a dict, receives the step's activations (for plots).
    """
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, 1)  # each (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h = (1 - z) * n + z * h
    if gates is not None:
        gates.update(r=r, z=z, n=n, h=h)
    return h


def gru_step_paper(x_proj, h, weight_hh, bias_hh, gates=None):
    """One time step of the 2014 paper's GRU: the reset gate is applied to h before W_hn."""
    H = h.shape[1]
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    b_rz, b_n = (None, None) if bias_hh is None else (bias_hh[: 2 * H], bias_hh[2 * H :])
    h_r, h_z = F.linear(h, weight_hh[: 2 * H], b_rz).chunk(2, 1)  # each (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + F.linear(r * h, weight_hh[2 * H :], b_n))
    h = (1 - z) * n + z * h
    if gates is not None:
        gates.update(r=r, z=z, n=n, h=h)
    return h


class GRUCell(CellBase):
    """GRU cell, a drop-in for `torch.nn.GRUCell(input_size, hidden_size, bias)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx (B, H) or (H,), zeros when absent.
    Returns h' with the shape of hx. `reset_after=False` selects the 2014 paper's candidate (see the
    module docstring); the default is torch's.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, reset_after=True):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)
        self.reset_after = reset_after

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def forward(self, input, hx=None):
        x, batched = self.check_input(input)
        h = self.initial_state("hx", hx, x, batched)
        self.check_dtypes(input=x, hx=h)
        step = gru_step if self.reset_after else gru_step_paper
        h = step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh)
        return h if batched else h.squeeze(0)
