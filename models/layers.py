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
the device: "fused" on CPU and CUDA, else "readable". Under torch.compile the fast path runs as custom
operators (`models.custom_ops`), one forward and one backward per layer direction in the graph.
"""
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from cells._base import init_uniform
from cells._checks import (ShapeError, autocast_enabled, check_bool, check_dtype, check_floating, check_size,
                           shape_str)
from cells.rnn import check_nonlinearity

from . import custom_ops
from .custom_ops import compiled_direction
from .fused import fused_direction, fused_supported
from .kinds import BY_MODE, IMPLS
from .unroll import readable_direction



def _compiling():
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return False


def _exporting():
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting()


def _functorch_active():
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    return level is not None and level() is not None


def readable_reason(device):
    """Why this call must take the readable path whatever `impl` says, or None when the fast path may run.

    The fast path's Functions run kernels on raw memory with a hand-written backward: they have no
    forward-mode or vmap rule, cannot be traced, and compute in one dtype. The readable path is plain
    differentiable torch ops, which every one of these features understands, and gives the same
    numbers (the tests prove both equal to torch.nn). Under torch.compile the fast path runs as custom
    operators where they apply (`select_direction`); torch.export keeps the readable path, so that an
    exported program holds torch's operators only.
    """
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if autocast_enabled(device.type):
        return "autocast"  # the readable step's matmuls follow autocast like torch.nn's
    if torch.autograd.forward_ad._current_level >= 0:
        return "forward-mode AD"
    if _functorch_active():
        return "torch.func"
    if _exporting():
        return "torch.export"
    if _compiling():
        return "torch.compile"
    return None


def select_direction(impl, x, packed, weight_hr):
    """The function that runs one direction of one layer for `impl` on input x, in the current context:
    `readable_direction`, `fused_direction`, or under torch.compile `compiled_direction` (the fast
    path as custom operators) for a plain batch on the CPU without a projection."""
    reason = readable_reason(x.device)
    if impl == "readable" or (impl == "auto" and not fused_supported(x.device)):
        return readable_direction
    if reason == "torch.compile" and custom_ops.usable(x, weight_hr, packed):
        return compiled_direction
    return readable_direction if reason is not None else fused_direction


class RNNBase(nn.Module):
    """The machinery shared by RNN, LSTM and GRU: parameters, argument checks and the layer loop."""

    def __init__(self, mode, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, nonlinearity="tanh", device=None,
                 dtype=None, impl="auto"):
        super().__init__()
        # Each message contains torch.nn's own wording for the same mistake, so code that matches it
        # keeps working, and then says what was given.
        check_size("input_size", input_size)
        check_size("hidden_size", hidden_size)
        check_size("num_layers", num_layers)
        check_bool("bias", bias)
        check_bool("batch_first", batch_first)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int):
            raise TypeError(f"proj_size should be of type int, got: {type(proj_size).__name__} ({proj_size!r})")
        if proj_size and mode != "LSTM":
            raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU; got "
                             f"proj_size={proj_size} for {mode}")
        if proj_size < 0:
            raise ValueError(f"proj_size should be a positive integer or zero to disable projections, "
                             f"got proj_size={proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
                             f">= hidden_size={hidden_size}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout should be a number in range [0, 1] representing the probability of an "
                             f"element being zeroed, got dropout={dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                          f"expects num_layers greater than 1, but got dropout={dropout} and "
                          f"num_layers={num_layers}", stacklevel=3)
        check_nonlinearity(nonlinearity)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {tuple(IMPLS)}, got {impl!r}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bidirectional, proj_size
        self.nonlinearity, self.impl = nonlinearity, impl

        factory = {"device": device, "dtype": dtype}
        gate_size = BY_MODE[mode].gates * hidden_size  # G·H
        real_hidden = proj_size or hidden_size  # P: the size of h
        directions = 2 if bidirectional else 1
        self._flat_weights_names, self._all_weights = [], []  # torch.nn's names for them
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
                self._flat_weights_names.extend(shapes)
                self._all_weights.append(list(shapes))
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialisation: every parameter uniform in ±1/√H."""
        init_uniform(self, self.hidden_size)

    def flatten_parameters(self):
        """No-op, for code written against torch.nn (cuDNN wants one flat weight buffer; we don't)."""

    @property
    def _flat_weights(self):
        """The weights in torch's order as they are now (torch.nn keeps this list; code reads it, e.g.
        to see what weight_norm replaced)."""
        return [getattr(self, name, None) for name in self._flat_weights_names]

    @property
    def all_weights(self):
        """The parameters grouped per layer and direction, in torch's order."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def extra_repr(self):
        """torch.nn's repr (which leaves out the RNN's nonlinearity), plus `impl` when not the default."""
        s = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("bidirectional", False)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)}"
        if self.impl != "auto":
            s += f", impl={self.impl!r}"
        return s

    def _weights(self, layer, direction):
        suffix = "_reverse" if direction else ""
        get = lambda name: getattr(self, f"{name}_l{layer}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    # -- forward --------------------------------------------------------------------------------

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            check_floating("input", data, self.weight_ih_l0, match_dtype=False)
            if data.dim() != 2:
                raise ShapeError(f"input must have 2 dimensions, got {data.dim()}: a PackedSequence's data is "
                                 f"(sum of lengths, input_size), got shape {shape_str(data)}")
            self._check_dtype(data)
            batched, batch_sizes = True, batch_sizes.tolist()
            batch = batch_sizes[0]
            x = data  # (N, I)
        else:
            check_floating("input", input, self.weight_ih_l0, match_dtype=False)
            if input.dim() not in (2, 3):
                tensor = " tensor" if self.mode == "RNN" else ""
                raise ShapeError(f"{self.mode}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead: "
                                 f"input must be 3-D (seq_len, batch, input_size) "
                                 f"{'[batch_first: (batch, seq_len, input_size)] ' if self.batch_first else ''}"
                                 f"or 2-D unbatched (seq_len, input_size), got shape {shape_str(input)}")
            self._check_dtype(input)
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            steps, batch = x.shape[0], x.shape[1]
            if steps == 0:
                raise ShapeError(f"Expected sequence length to be larger than 0 in RNN: {self.mode}'s input must have "
                                 f"at least one time step, got shape {shape_str(input)}")
            batch_sizes = None  # every step the whole batch: [batch] * steps, made below where needed
            sorted_indices = unsorted_indices = None
            x = x.reshape(steps * batch, x.shape[2])  # (T·B, I), time-major
        if x.shape[-1] != self.input_size:
            given = input.data if isinstance(input, PackedSequence) else input
            raise ShapeError(f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got "
                             f"{x.shape[-1]} (input shape {shape_str(given)})")

        states = self._initial_states(hx, batch, batched, x, sorted_indices)
        packed = batch_sizes is not None
        steps = len(batch_sizes) if packed else steps
        run_direction = select_direction(self.impl, x, packed, self.weight_hr_l0 if self.proj_size else None)
        if not packed and run_direction is not compiled_direction:
            # The compiled operators take T from x's shape, so that a new length is no new graph.
            batch_sizes = [batch] * steps
        if torch.jit.is_tracing():
            warnings.warn(f"{type(self).__name__} under torch.jit.trace: the trace records the readable step "
                          f"unrolled over this input's {steps} time steps, so the traced module "
                          f"accepts inputs with this sequence length (and these packed batch sizes) only. "
                          f"For other lengths call the module itself or use torch.compile; torch.jit.script is "
                          f"not supported (the time loop is Python).", torch.jit.TracerWarning, stacklevel=2)
        output, finals = self._run_layers(run_direction, x, batch_sizes, states)

        finals = tuple(s if unsorted_indices is None else s.index_select(1, unsorted_indices) for s in finals)
        if isinstance(input, PackedSequence):
            output = PackedSequence(output, input.batch_sizes, sorted_indices, unsorted_indices)
        else:
            output = output.view(steps, batch, output.shape[-1])  # (T, B, D·P)
            if not batched:
                output, finals = output.squeeze(1), tuple(s.squeeze(1) for s in finals)
            elif self.batch_first:
                output = output.transpose(0, 1)
        return (output, finals) if self.mode == "LSTM" else (output, finals[0])

    def _check_dtype(self, input):
        """The (floating) input has the weights' dtype (any dtype under autocast), in torch.nn's words."""
        weight = self.weight_ih_l0
        check_dtype("input", input, weight, message=(
            f"RNN input dtype ({input.dtype}) does not match weight dtype ({weight.dtype}). "
            f"Convert input: input.to({weight.dtype}), or convert model: model.to({input.dtype})"))

    def _initial_states(self, hx, batch, batched, x, sorted_indices):
        """hx as a list of (L·D, B, ·) tensors in the sorted order of a PackedSequence."""
        lstm = self.mode == "LSTM"
        layers = self.num_layers * (2 if self.bidirectional else 1)  # L·D
        sizes = [self.proj_size or self.hidden_size] + ([self.hidden_size] if lstm else [])
        if hx is None:
            return [x.new_zeros(layers, batch, size) for size in sizes]
        if lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError(f"LSTM: hx must be a tuple (h_0, c_0) of two tensors, got {type(hx).__name__}")
            names = ("hx[0] (h_0)", "hx[1] (c_0)")
        else:
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{self.mode}: hx must be a tensor, got {type(hx).__name__}")
            hx, names = (hx,), ("hx",)
        for name, state in zip(names, hx):
            check_floating(name, state, self.weight_ih_l0)
        dims = 3 if batched else 2
        if any(state.dim() != dims for state in hx):
            got = ", ".join(f"{state.dim()}-D" for state in hx)
            kind = "batched 3-D" if batched else "unbatched 2-D"
            said = (f"hx and cx should also be {dims}-D but got ({got}) tensors" if lstm
                    else f"hx should also be {dims}-D but got {got} tensor")
            expected = [(layers, batch, size) if batched else (layers, size) for size in sizes]
            raise ShapeError(f"For {kind} input, {said}: {' and '.join(names)} must have shape "
                             f"{', '.join(map(str, expected))}, got {', '.join(shape_str(t) for t in hx)}")
        states = []
        for i, (name, state, size) in enumerate(zip(names, hx, sizes)):
            as_batched = state if batched else state.unsqueeze(1)  # (L·D, B, ·)
            expected = (layers, batch, size)
            if tuple(as_batched.shape) != expected:
                label = f"hidden[{i}]" if lstm else "hidden"
                shown = expected if batched else (layers, size)
                raise ShapeError(f"Expected {label} size {expected}, got {list(as_batched.shape)}: {name} must have "
                                 f"shape {shown}, got {shape_str(state)}")
            states.append(as_batched if sorted_indices is None else as_batched.index_select(1, sorted_indices))
        return states

    def _run_layers(self, run_direction, x, batch_sizes, states):
        directions = 2 if self.bidirectional else 1
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
        # (L·D, B, ·) each. The fast path's final states are tensors of their own, so a single one
        # needs no copy; the readable unroll's are views of its outputs, which stack copies apart.
        if len(finals[0]) == 1 and run_direction is not readable_direction:
            return x, tuple(f[0].unsqueeze(0) for f in finals)
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
        kind = BY_MODE[self.mode]
        step = kind.readable_step(w_hh, b_hh, w_hr, self.nonlinearity)
        h = x.new_zeros(1, self.proj_size or self.hidden_size)
        state = (h, x.new_zeros(1, self.hidden_size)) if kind.has_cell_state else (h,)  # (h, c) or (h,)
        trace = {}
        for x_t in x_proj:
            gates = {}
            state = step(x_t, *state, gates=gates)
            state = state if isinstance(state, tuple) else (state,)
            for k, v in gates.items():
                trace.setdefault(k, []).append(v[0])
        return {k: torch.stack(v) for k, v in trace.items()}


def _refuse_proj_size(mode, proj_size):
    if proj_size is not None:
        raise ValueError(f"proj_size argument is only supported for LSTM, not RNN or GRU; got "
                         f"proj_size={proj_size!r} for {mode} (use models.LSTM for projections)")


class RNN(RNNBase):
    """Elman RNN layer(s), drop-in for `torch.nn.RNN` (see `cells/rnn.py` for the equations).

    RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
        dropout=0.0, bidirectional=False, device=None, dtype=None, impl="auto")
    forward(input, hx=None) -> (output, h_n), shapes as in torch.nn.RNN.
    Projections are LSTM-only: passing `proj_size` raises ValueError, as in torch.nn.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None, impl="auto", *,
                 proj_size=None):
        _refuse_proj_size("RNN", proj_size)
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
    Projections are LSTM-only: passing `proj_size` raises ValueError, as in torch.nn.
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None, impl="auto", *, proj_size=None):
        _refuse_proj_size("GRU", proj_size)
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, 0, "tanh", device, dtype, impl)
