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
import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import ShapeError, check_floating, check_size, check_state, shape_str

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def check_nonlinearity(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(
            f"Unknown nonlinearity {nonlinearity!r}: expected one of {sorted(NONLINEARITIES)}"
        )


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


class RNNCell(nn.Module):
    """Elman RNN cell, a drop-in for `torch.nn.RNNCell(input_size, hidden_size, bias, nonlinearity)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx (B, H) or (H,), zeros when absent.
    Returns h' with the shape of hx.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_nonlinearity(nonlinearity)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size = input_size, hidden_size
        self.bias, self.nonlinearity = bias, nonlinearity
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **factory))  # (H, I)
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **factory))  # (H, H)
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **factory))  # (H,)
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **factory))  # (H,)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialisation: every parameter uniform in ±1/√H."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def forward(self, input, hx=None):
        x, batched = check_cell_input(self, input)
        h = initial_state(self, "hx", hx, x, self.hidden_size, batched)
        h = rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)


def check_cell_input(cell, input):
    """Checks a cell's input; returns it as (B, I) and whether it came batched."""
    name = type(cell).__name__
    check_floating("input", input, cell.weight_ih)
    if input.dim() not in (1, 2):
        raise ShapeError(
            f"{name}: input must be 1-D (input_size,) or 2-D (batch, input_size), got {input.dim()}-D "
            f"tensor of shape {shape_str(input)}"
        )
    if input.shape[-1] != cell.input_size:
        raise ShapeError(
            f"{name}: input's last dimension must be input_size={cell.input_size}, got shape {shape_str(input)}"
        )
    return (input, True) if input.dim() == 2 else (input.unsqueeze(0), False)


def initial_state(cell, name, state, x, size, batched):
    """A cell's state argument as (B, size): zeros when absent, else checked against the input."""
    if state is None:
        return x.new_zeros(x.shape[0], size)
    expected = (x.shape[0], size) if batched else (size,)
    check_state(name, state, expected, cell.weight_ih)
    return state if batched else state.unsqueeze(0)
