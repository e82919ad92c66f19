"""Hand-written recurrent cells, drop-in for torch.nn.RNNCell, LSTMCell and GRUCell.

One file per cell; each file's docstring gives the equations in the code's own names.
"""
from ._checks import DtypeError, ShapeError
from .gru import GRUCell, gru_step, gru_step_paper
from .lstm import LSTMCell, lstm_step
from .rnn import RNNCell, rnn_step

__all__ = [
    "RNNCell", "LSTMCell", "GRUCell",
    "rnn_step", "lstm_step", "gru_step", "gru_step_paper",
    "ShapeError", "DtypeError",
]
