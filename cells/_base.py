"""What the three cells share: their parameters, torch's initialisation, and their argument checks."""
import math

import torch
from torch import nn

from ._checks import ShapeError, check_dtype, check_floating, check_size, shape_str


def init_uniform(module, hidden_size):
    """torch's initialisation for cells and layers: every parameter uniform in ±1/√H."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0  # a zero-width cell has nothing to draw
    for p in module.parameters():
        nn.init.uniform_(p, -bound, bound)


class CellBase(nn.Module):
    """Parameters of a cell with `num_gates` gates G, named and shaped as in torch.nn:

        weight_ih (G·H, I)    weight_hh (G·H, H)    bias_ih (G·H,)    bias_hh (G·H,)

    Each weight stacks the gates' matrices, so one matmul per weight computes all gates at once.
    """

    def __init__(self, input_size, hidden_size, bias, num_gates, device=None, dtype=None):
        super().__init__()
        # Zero sizes are allowed, as torch.nn's cells allow them (an empty cell is a valid edge case).
        check_size("input_size", input_size, minimum=0)
        check_size("hidden_size", hidden_size, minimum=0)
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
        return f"{self.input_size}, {self.hidden_size}" + ("" if self.bias is True else f", bias={self.bias}")

    def check_input(self, input):
        """Checks the input; returns it as (B, I) and whether it came batched.

        Each message starts with torch.nn's own wording for the mistake, then says what came; as in
        torch.nn the shapes (of the states too) are checked before the dtypes (`check_dtypes`).
        """
        name = type(self).__name__
        check_floating("input", input, self.weight_ih, match_dtype=False)
        if input.dim() not in (1, 2):
            raise ShapeError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead: input must be "
                             f"1-D (input_size,) or 2-D (batch, input_size), got shape {shape_str(input)}")
        if input.shape[-1] != self.input_size:
            raise ShapeError(f"input has inconsistent input_size: got {input.shape[-1]} expected {self.input_size}: "
                             f"{name}'s input's last dimension must be input_size={self.input_size}, got shape "
                             f"{shape_str(input)}")
        return (input, True) if input.dim() == 2 else (input.unsqueeze(0), False)

    def initial_state(self, name, state, x, batched, index=0, torch_name="hidden"):
        """A state argument as (B, H): zeros when absent, else checked against the input x (B, I).

        `index` and `torch_name` are how torch.nn's messages call this state (hidden0, hx[1], …).
        """
        if state is None:
            return x.new_zeros(x.shape[0], self.hidden_size)
        check_floating(name, state, self.weight_ih, match_dtype=False)
        expected = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        if state.dim() not in (1, 2):
            raise ShapeError(f"{type(self).__name__}: Expected {torch_name} to be 1D or 2D, got {state.dim()}D "
                             f"instead: {name} must have shape {expected}, got {shape_str(state)}")
        if tuple(state.shape) != expected:
            rows = state if state.dim() == 2 else state.unsqueeze(0)  # (b, h)
            if rows.shape[0] != x.shape[0]:
                said = f"Input batch size {x.shape[0]} doesn't match hidden{index} batch size {rows.shape[0]}"
            elif rows.shape[1] != self.hidden_size:
                said = f"hidden{index} has inconsistent hidden_size: got {rows.shape[1]}, expected {self.hidden_size}"
            else:
                said = f"{name} must be {'2-D' if batched else '1-D'} like the input"
            raise ShapeError(f"{said}: {name} must have shape {expected}, got {shape_str(state)}")
        return state if batched else state.unsqueeze(0)

    def check_dtypes(self, **tensors):
        """The input and states have the weights' dtype (after their shapes, as torch.nn checks)."""
        for name, tensor in tensors.items():
            check_dtype(name, tensor, self.weight_ih)

    def check_step_backward(self, input, hx, grad_out, states):
        """step_backward's arguments: input (B, I) and, for each state named in `states` ("h", or "h"
        and "c"), its tensor in hx and its gradient in grad_out, each (B, H) — batched only, a tuple
        when there are two states, all of the weights' dtype. Returns hx."""
        where = f"{type(self).__name__}.step_backward"
        check_floating("input", input, self.weight_ih)
        if input.dim() != 2 or input.shape[1] != self.input_size:
            raise ShapeError(f"{where}: input must be 2-D (batch, input_size={self.input_size}), got shape "
                             f"{shape_str(input)}")
        expected = (input.shape[0], self.hidden_size)
        for argument, value in (("hx", hx), ("grad_out", grad_out)):
            if len(states) > 1 and not (isinstance(value, (tuple, list)) and len(value) == len(states)):
                raise TypeError(f"{where}: {argument} must be a tuple ({', '.join(states)}) of {len(states)} "
                                f"tensors, got {type(value).__name__}")
            tensors = tuple(value) if len(states) > 1 else (value,)
            for k, (state, tensor) in enumerate(zip(states, tensors)):
                name = f"{argument}[{k}] ({state})" if len(states) > 1 else argument
                check_floating(name, tensor, self.weight_ih)
                if tuple(tensor.shape) != expected:
                    raise ShapeError(f"{where}: {name} must have shape (batch, hidden_size) = {expected} like the "
                                     f"input, got {shape_str(tensor)}")
        return hx
