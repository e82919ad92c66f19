"""Multi-layer, optionally bidirectional RNN, LSTM and GRU layers built on the hand-written cells.

Drop-in replacements for `torch.nn.RNN`, `torch.nn.LSTM` and `torch.nn.GRU`: the same constructor
arguments, forward signature, outputs, and parameter names (`weight_ih_l{k}`, `weight_hh_l{k}`,
`bias_ih_l{k}`, `bias_hh_l{k}`, `weight_hr_l{k}`, with `_reverse` for the backward direction), so a
state_dict moves between ours and torch's in strict mode.

For each layer and direction, the input projection W_ih x + b_ih of the whole sequence is one matmul
before the time loop; the loop does only the recurrent matmul and the gate math of the cell's step
(`cells.rnn_step`, `cells.lstm_step`, `cells.gru_step`).

`impl` picks how the loop runs: "readable" unrolls the cell's step in Python with autograd
(`models.unroll`); "fused" is the fast path of `models.fused` (one autograd Function per cell with
the backward through time derived by hand; the gate math of a step is one compiled C++ kernel on
the CPU, `models.cpu_kernels`, and one Triton kernel on CUDA when triton is installed), proven equal
to "readable" and to torch.nn by the tests; "auto" (the default) takes the fastest correct path for
the device: "fused" on CPU and CUDA, else "readable".
"""
import numbers
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from cells import gru_step, lstm_step, rnn_step
from cells._base import init_uniform
from cells._checks import ShapeError, check_floating, check_size, check_state, shape_str
from cells.rnn import check_nonlinearity

from .fused import fused_direction, fused_supported
from .unroll import unroll

GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}
IMPLS = ("auto", "readable", "fused")


def readable_direction(mode, x, weight_ih, bias_ih, batch_sizes, state, weight_hh, bias_hh, weight_hr, reverse,
                       nonlinearity):
    """One direction of one layer through the cell's readable step; returns (out (N, P), final states).

    x: (N, I) the layer's input in the packed layout; state: the initial states, each (B, ·).
    """
    x_proj = F.linear(x, weight_ih, bias_ih)  # (N, G·H): the whole sequence's input in one matmul
    if mode == "LSTM":
        step = partial(lstm_step, weight_hh=weight_hh, bias_hh=bias_hh, weight_hr=weight_hr)
    elif mode == "GRU":
        step = partial(gru_step, weight_hh=weight_hh, bias_hh=bias_hh)
    else:
        step = partial(rnn_step, weight_hh=weight_hh, bias_hh=bias_hh, nonlinearity=nonlinearity)
    return unroll(step, x_proj, batch_sizes, state, reverse)


def select_direction(impl, device):
    """The function that runs one direction of one layer for `impl` on `device`."""
    if impl == "readable" or (impl == "auto" and not fused_supported(device)):
        return readable_direction
    return fused_direction


class RNNBase(nn.Module):
    """The machinery shared by RNN, LSTM and GRU: parameters, argument checks and the layer loop."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, nonlinearity="tanh", device=None,
                 dtype=None, impl="auto"):
        super().__init__()
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_size("num_layers", num_layers)
        check_size("proj_size", proj_size, minimum=0)
        if proj_size and mode != "LSTM":
            raise ValueError(f"proj_size is only supported for LSTM, not {mode}; got proj_size={proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size must be smaller than hidden_size, got proj_size={proj_size} "
                             f">= hidden_size={hidden_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1] (the probability of zeroing an "
                             f"element), got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout={dropout} and num_layers=1: dropout acts between layers only, "
                          f"so it has no effect here")
        check_nonlinearity(nonlinearity)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        self.nonlinearity, self.impl = nonlinearity, impl

        factory = {"device": device, "dtype": dtype}
        gate_size = GATES[mode] * hidden_size  # G·H
        real_hidden = proj_size or hidden_size  # P: the size of h
        directions = 2 if bidirectional else 1
        self._flat_weights_names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else real_hidden * directions
            for suffix in ["", "_reverse"][:directions]:
                shapes = {
                    f"weight_ih_l{layer}{suffix}": (gate_size, layer_input),
                    f"weight_hh_l{layer}{suffix}": (gate_size, real_hidden),
                }
                if bias:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (gate_size,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (gate_size,)
                if proj_size:
                    shapes[f"weight_hr_l{layer}{suffix}"] = (proj_size, hidden_size)
                for name, shape in shapes.items():
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialisation: every parameter uniform in ±1/√H."""
        init_uniform(self, self.hidden_size)

    def flatten_parameters(self):
        """No-op, for code written against torch.nn (cuDNN wants one flat weight buffer; we don't)."""

    @property
    def all_weights(self):
        """The parameters grouped per layer and direction, in torch's order."""
        per_direction = len(self._flat_weights_names) // (self.num_layers * (2 if self.bidirectional else 1))
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i : i + per_direction]]
                for i in range(0, len(names), per_direction)]

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False), ("impl", "auto")):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        if self.mode == "RNN" and self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        return s

    def _weights(self, layer, direction):
        suffix = "_reverse" if direction else ""
        get = lambda name: getattr(self, f"{name}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    # -- forward --------------------------------------------------------------------------------

    def forward(self, input, hx=None):
        name = type(self).__name__
        weight = self.weight_ih_l0
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            check_floating("input", data, weight)
            batched, batch_sizes = True, batch_sizes.tolist()
            batch = batch_sizes[0]
            x = data  # (N, I)
        else:
            check_floating("input", input, weight)
            if input.dim() not in (2, 3):
                raise ShapeError(f"{name}: input must be 3-D (seq_len, batch, input_size) "
                                 f"{'[batch_first: (batch, seq_len, input_size)] ' if self.batch_first else ''}"
                                 f"or 2-D unbatched (seq_len, input_size), got {input.dim()}-D tensor "
                                 f"of shape {shape_str(input)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            steps, batch = x.shape[0], x.shape[1]
            if steps == 0:
                raise ShapeError(f"{name}: input must have at least one time step, got shape {shape_str(input)}")
            batch_sizes = [batch] * steps
            sorted_indices = unsorted_indices = None
            x = x.reshape(steps * batch, x.shape[2])  # (T·B, I), time-major
        if x.shape[-1] != self.input_size:
            given = input.data if isinstance(input, PackedSequence) else input
            raise ShapeError(f"{name}: input's last dimension must be input_size={self.input_size}, "
                             f"got {x.shape[-1]} (input shape {shape_str(given)})")

        states = self._initial_states(hx, batch, batched, x, sorted_indices)
        output, finals = self._run_layers(x, batch_sizes, states)

        finals = tuple(s if unsorted_indices is None else s.index_select(1, unsorted_indices) for s in finals)
        if isinstance(input, PackedSequence):
            output = PackedSequence(output, input.batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = output.view(len(batch_sizes), batch, output.shape[-1])  # (T, B, D·P)
            if not batched:
                output, finals = output.squeeze(1), tuple(s.squeeze(1) for s in finals)
            elif self.batch_first:
                output = output.transpose(0, 1)
        return (output, finals) if self.mode == "LSTM" else (output, finals[0])

    def _initial_states(self, hx, batch, batched, x, sorted_indices):
        """hx as a tuple of (L·D, B, ·) tensors in the sorted order of a PackedSequence."""
        directions = 2 if self.bidirectional else 1
        sizes = [self.proj_size or self.hidden_size]
        names = ["hx"]
        if self.mode == "LSTM":
            sizes, names = sizes + [self.hidden_size], ["hx[0] (h_0)", "hx[1] (c_0)"]
            if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
        elif hx is not None and not isinstance(hx, torch.Tensor):
            raise TypeError(f"{type(self).__name__}: hx must be a tensor, got {type(hx).__name__}")
        hx = (hx,) if self.mode != "LSTM" and hx is not None else hx
        states = []
        for i, (size, name) in enumerate(zip(sizes, names)):
            if hx is None:
                states.append(x.new_zeros(self.num_layers * directions, batch, size))
                continue
            expected = (self.num_layers * directions, batch, size) if batched else (self.num_layers * directions, size)
            check_state(name, hx[i], expected, self.weight_ih_l0)
            s = hx[i] if batched else hx[i].unsqueeze(1)
            states.append(s if sorted_indices is None else s.index_select(1, sorted_indices))
        return states

    def _run_layers(self, x, batch_sizes, states):
        directions = 2 if self.bidirectional else 1
        run_direction = select_direction(self.impl, x.device)
        finals = [[] for _ in states]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                w_ih, w_hh, b_ih, b_hh, w_hr = self._weights(layer, direction)
                index = layer * directions + direction
                out, state = run_direction(self.mode, x, w_ih, b_ih, batch_sizes, tuple(s[index] for s in states),
                                           w_hh, b_hh, w_hr, direction == 1, self.nonlinearity)
                outputs.append(out)
                for f, s in zip(finals, state):
                    f.append(s)
            x = outputs[0] if directions == 1 else torch.cat(outputs, 1)  # (N, D·P)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, tuple(torch.stack(f) for f in finals)

    @torch.no_grad()
    def gate_trace(self, x):
        """Gate activations of layer 0, forward direction, zero initial state, for one sequence.

        x: (T, I) unbatched. Returns {name: (T, H)}: LSTM "i", "f", "g", "o", "c", "h"; GRU "r", "z",
        "n", "h"; RNN "h". For plots of what the gates do while the model reads.
        """
        check_floating("x", x, self.weight_ih_l0)
        if x.dim() != 2 or x.shape[1] != self.input_size:
            raise ShapeError(f"gate_trace: x must have shape (seq_len, {self.input_size}), got {shape_str(x)}")
        w_ih, w_hh, b_ih, b_hh, w_hr = self._weights(0, 0)
        x_proj = F.linear(x, w_ih, b_ih).unsqueeze(1)  # (T, 1, G·H)
        h = x.new_zeros(1, self.proj_size or self.hidden_size)
        c = x.new_zeros(1, self.hidden_size)
        trace = {}
        for x_t in x_proj:
            gates = {}
            if self.mode == "LSTM":
                h, c = lstm_step(x_t, h, c, w_hh, b_hh, w_hr, gates=gates)
            elif self.mode == "GRU":
                h = gru_step(x_t, h, w_hh, b_hh, gates=gates)
            else:
                h = rnn_step(x_t, h, w_hh, b_hh, self.nonlinearity, gates=gates)
            for k, v in gates.items():
                trace.setdefault(k, []).append(v[0])
        return {k: torch.stack(v) for k, v in trace.items()}


class RNN(RNNBase):
    """Elman RNN layer(s), drop-in for `torch.nn.RNN` (see `cells/rnn.py` for the equations).

    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
        dropout=0.0, bidirectional=False, device=None, dtype=None, impl="auto")
    forward(input, hx=None) -> (output, h_n), shapes as in torch.nn.RNN.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, impl="auto"):
        super().__init__("RNN", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, nonlinearity, device, dtype, impl)


class LSTM(RNNBase):
    """LSTM layer(s), drop-in for `torch.nn.LSTM` (see `cells/lstm.py` for the equations).

    LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
         bidirectional=False, proj_size=0, device=None, dtype=None, impl="auto")
    forward(input, hx=None) -> (output, (h_n, c_n)), shapes as in torch.nn.LSTM.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None, impl="auto"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, proj_size, "tanh", device, dtype, impl)


class GRU(RNNBase):
    """GRU layer(s), drop-in for `torch.nn.GRU` (torch's GRU; see `cells/gru.py` for the equations).

    GRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
        bidirectional=False, device=None, dtype=None, impl="auto")
    forward(input, hx=None) -> (output, h_n), shapes as in torch.nn.GRU.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, impl="auto"):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, "tanh", device, dtype, impl)
