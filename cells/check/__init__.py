"""Check your own cell against torch.nn — its forward and, if you wrote one, its backward: equal, or
which classic mistake it makes.

    python -m cells.check my_lstm.py:MyLSTMCell        # exit 0 equal, 1 different, 2 not checkable
    python -m cells.check my_gru.py                    # the file's only cell class
    python -m cells.check my_cell.py:Cell --kind gru   # the kind, when the shapes leave it open
    python -m cells.check --template lstm > my_lstm.py # a skeleton to fill in (also gru, rnn)
    python -m cells.check --template lstm-backward > my_lstm.py   # forward given, backward to write

From Python or pytest:

    from cells.check import check_cell
    report = check_cell(MyLSTMCell)
    assert report.equal, report          # str(report) is what the command prints

The cell has torch's cell interface: `CLASS(input_size, hidden_size, bias=True)`, parameters named
and shaped like torch's (`weight_ih` (G·H, I), `weight_hh` (G·H, H), `bias_ih`, `bias_hh` (G·H,),
G = 1, 4, 3 for RNN, LSTM, GRU), and `forward(input, hx)` returning h' (RNN, GRU) or (h', c') (LSTM).
The kind is read from weight_ih's rows.

The forward is checked first (forward.py, diagnosed by mistakes.py). A cell whose forward is right
and that defines `step_backward(input, hx, grad_out)` has its backward checked against autograd
through torch.nn's cell, and then the file's `backward_through_time(cell, inputs, hx, grad_outputs,
grad_last)` if it has one (backward.py, diagnosed by backward_mistakes.py); cells/lstm.py shows both
for the LSTM, `--template lstm-backward` a skeleton.
"""
from .checker import check_cell, check_file
from .cli import main
from .loading import load_cell_class
from .report import EXIT_DIFFERENT, EXIT_EQUAL, EXIT_NOT_A_CELL, NotACell, Report

__all__ = ["check_cell", "check_file", "load_cell_class", "main", "Report", "NotACell",
           "EXIT_EQUAL", "EXIT_DIFFERENT", "EXIT_NOT_A_CELL"]
