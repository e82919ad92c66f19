"""Elman recurrent cell (the "vanilla" RNN), written out by hand.

For input x (B, I) and hidden state h (B, H), with nonlinearity φ = tanh or relu:

    h' = φ(W_ih x + b_ih + W_hh h + b_hh)

Parameters, named and shaped as in `torch.nn.RNNCell`:

    weight_ih  W_ih  (H, I)        bias_ih  b_ih  (H,)
    weight_hh  W_hh  (H, H)        bias_hh  b_hh  (H,)

The two biases are redundant (only their sum matters); torch keeps both because cuDNN does, and we
keep both so a state_dict moves between this cell and `torch.nn.RNNCell` unchanged.

References: J. L. Elman, "Finding structure in time", Cognitive Science 14 (1990);
https://pytorch.org/docs/stable/generated/torch.nn.RNNCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def check_nonlinearity(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'. "
                         f"(nonlinearity={nonlinearity!r})")


def rnn_step(x_proj, h, weight_hh, bias_hh, nonlinearity="tanh", gates=None):
    """One time step, given the input's projection `x_proj = W_ih x + b_ih` (B, H).

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop, so the
    step does only the recurrent matmul and the nonlinearity. `gates`, if a dict, receives the
    step's activations (for plots).
    """
    h = NONLINEARITIES[nonlinearity](x_proj + F.linear(h, weight_hh, bias_hh))  # (B, H)
    if gates is not None:
        gates["h"] = h
    return h


class RNNCell(CellBase):
    """Elman RNN cell, a drop-in for `torch.nn.RNNCell(input_size, hidden_size, bias, nonlinearity)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx (B, H) or (H,), zeros when absent.
    Returns h' with the shape of hx.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"  # torch's repr

    def forward(self, input, hx=None):
        x, batched = self.check_input(input)
        h = self.initial_state("hx", hx, x, batched)
        self.check_dtypes(input=x, hx=h)
        h = rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)

