"""Hand-written recurrent cells, drop-in for torch.nn.RNNCell, LSTMCell and GRUCell.

One file per cell; each file's docstring gives the equations in the code's own names, forward and
backward. `backward_through_time` (bptt.py) runs any cell's `step_backward` over a sequence.
"""
from ._checks import DtypeError, ShapeError
from .bptt import backward_through_time
from .gru import GRUCell, gru_step, gru_step_backward, gru_step_backward_paper, gru_step_paper
from .lstm import LSTMCell, lstm_step, lstm_step_backward
from .rnn import RNNCell, rnn_step, rnn_step_backward

__all__ = [
    "RNNCell", "LSTMCell", "GRUCell",
    "rnn_step", "lstm_step", "gru_step", "gru_step_paper",
    "rnn_step_backward", "lstm_step_backward", "gru_step_backward", "gru_step_backward_paper",
    "backward_through_time",
    "ShapeError", "DtypeError",
]
