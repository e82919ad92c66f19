"""What each cell kind is, and what each implementation is called: one table each, read by the
layers, `python -m train` and `python -m benchmarks`.

    kind   torch's mode   gate blocks   our cell   torch.nn layer / cell
    rnn    "RNN"          1             RNNCell    nn.RNN  / nn.RNNCell
    lstm   "LSTM"         4 (i f g o)   LSTMCell   nn.LSTM / nn.LSTMCell
    gru    "GRU"          3 (r z n)     GRUCell    nn.GRU  / nn.GRUCell
"""
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Kind:
    name: str  # "lstm": the command lines' name
    mode: str  # "LSTM": torch's name, and the name of our layer and cell classes' kind
    gates: int  # gate blocks stacked in weight_ih and weight_hh
    torch_layer: type
    torch_cell: type

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


KINDS = {kind.name: kind for kind in (
    Kind("rnn", "RNN", 1, nn.RNN, nn.RNNCell),
    Kind("lstm", "LSTM", 4, nn.LSTM, nn.LSTMCell),
    Kind("gru", "GRU", 3, nn.GRU, nn.GRUCell),
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
