"""What the three cells share: their parameters, torch's initialisation, and their argument checks."""
import math

import torch
from torch import nn

from ._checks import ShapeError, check_floating, check_size, check_state, shape_str


def init_uniform(module, hidden_size):
    """torch's initialisation for cells and layers: every parameter uniform in ±1/√H."""
    bound = 1.0 / math.sqrt(hidden_size)
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class CellBase(nn.Module):
    """Parameters of a cell with `num_gates` gates G, named and shaped as in torch.nn:

        weight_ih (G·H, I)    weight_hh (G·H, H)    bias_ih (G·H,)    bias_hh (G·H,)

    Each weight stacks the gates' matrices, so one matmul per weight computes all gates at once.
    """

    def __init__(self, input_size, hidden_size, bias, num_gates, device=None, dtype=None):
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        factory = {"device": device, "dtype": dtype}
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        gate_size = num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gate_size, input_size, **factory))  # (G·H, I)
        self.weight_hh = nn.Parameter(torch.empty(gate_size, hidden_size, **factory))  # (G·H, H)
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(gate_size, **factory))  # (G·H,)
            self.bias_hh = nn.Parameter(torch.empty(gate_size, **factory))  # (G·H,)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialisation: every parameter uniform in ±1/√H."""
        init_uniform(self, self.hidden_size)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False")

    def check_input(self, input):
        """Checks the input; returns it as (B, I) and whether it came batched."""
        name = type(self).__name__
        check_floating("input", input, self.weight_ih)
        if input.dim() not in (1, 2):
            raise ShapeError(f"{name}: input must be 1-D (input_size,) or 2-D (batch, input_size), got "
                             f"{input.dim()}-D tensor of shape {shape_str(input)}")
        if input.shape[-1] != self.input_size:
            raise ShapeError(f"{name}: input's last dimension must be input_size={self.input_size}, "
                             f"got shape {shape_str(input)}")
        return (input, True) if input.dim() == 2 else (input.unsqueeze(0), False)

    def initial_state(self, name, state, x, batched):
        """A state argument as (B, H): zeros when absent, else checked against the input x (B, I)."""
        if state is None:
            return x.new_zeros(x.shape[0], self.hidden_size)
        expected = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        check_state(name, state, expected, self.weight_ih)
        return state if batched else state.unsqueeze(0)
