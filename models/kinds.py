"""What each cell kind is, and what each implementation is called: one table each, read by the
layers, `python -m train` and `python -m benchmarks`.

    kind   torch's mode   gate blocks   states   our cell / readable step   torch.nn layer / cell
    rnn    "RNN"          1             h        RNNCell  / rnn_step        nn.RNN  / nn.RNNCell
    lstm   "LSTM"         4 (i f g o)   h, c     LSTMCell / lstm_step       nn.LSTM / nn.LSTMCell
    gru    "GRU"          3 (r z n)     h        GRUCell  / gru_step        nn.GRU  / nn.GRUCell
"""
from dataclasses import dataclass
from functools import partial

from torch import nn


@dataclass(frozen=True)
class Kind:
    name: str  # "lstm": the command lines' name
    mode: str  # "LSTM": torch's name, and the name of our layer and cell classes' kind
    gates: int  # gate blocks stacked in weight_ih and weight_hh
    has_cell_state: bool  # the LSTM's c beside h: a step carries (h, c), torch.nn takes hx as a pair
    torch_layer: type
    torch_cell: type
    step_options: tuple  # what the readable step takes besides x_proj, the states, weight_hh, bias_hh

    # Ours are looked up on use: importing this table imports neither, so torch.nn's side of a
    # comparison runs even while a learner's edit has broken the cells.
    @property
    def layer(self) -> type:
        """Our drop-in layer (models.RNN, models.LSTM, models.GRU)."""
        from . import layers
        return getattr(layers, self.mode)

    @property
    def cell(self) -> type:
        """Our cell (cells.RNNCell, cells.LSTMCell, cells.GRUCell)."""
        import cells
        return getattr(cells, f"{self.mode}Cell")

    @property
    def states(self) -> int:
        """How many state tensors a step carries: 2, (h, c), for the LSTM; 1, h, otherwise."""
        return 2 if self.has_cell_state else 1

    def readable_step(self, weight_hh, bias_hh, weight_hr=None, nonlinearity="tanh"):
        """Our readable step (cells.rnn_step, lstm_step, gru_step) with one direction's recurrent
        weights bound: step(x_proj (b, G·H), *states, gates=None) -> h', or (h', c') for the LSTM.

        weight_hr (the LSTM's projection) and nonlinearity (the RNN's) reach the steps that take them.
        """
        import cells
        options = {"weight_hr": weight_hr, "nonlinearity": nonlinearity}
        return partial(getattr(cells, f"{self.name}_step"), weight_hh=weight_hh, bias_hh=bias_hh,
                       **{name: options[name] for name in self.step_options})


KINDS = {kind.name: kind for kind in (
    Kind("rnn", "RNN", 1, False, nn.RNN, nn.RNNCell, ("nonlinearity",)),
    Kind("lstm", "LSTM", 4, True, nn.LSTM, nn.LSTMCell, ("weight_hr",)),
    Kind("gru", "GRU", 3, False, nn.GRU, nn.GRUCell, ()),
)}
BY_MODE = {kind.mode: kind for kind in KINDS.values()}

# A layer's implementations: `impl=` of models.RNN / LSTM / GRU. `python -m train --impl` and
# `python -m benchmarks --impls` take the same names, and also "torch" (torch.nn's layer, the
# reference) and "ours", their name for impl="auto": our layers as a user gets them.
IMPLS = {
    "auto": "the fast path where it is tested (CPU, CUDA), else the readable one; the default",
    "fused": "the fast path: hand-derived backprop through time (models/fused.py)",
    "readable": "the readable unroll of the cell (models/unroll.py)",
}
COMMAND_IMPLS = ("ours", *IMPLS, "torch")


def layer_impl(name: str) -> str:
    """The `impl=` of our layers for a command-line implementation name ("ours" is "auto")."""
    if name == "ours":
        return "auto"
    if name not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(map(repr, IMPLS))} (or 'ours'), got {name!r}")
    return name
