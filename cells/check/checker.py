"""`check_cell` and `check_file`: the forward check, then the learner's backward when there is one."""
import functools
import sys

from .backward import check_backward
from .forward import check_forward, float64_everywhere
from .loading import load_cell_class
from .report import EXIT_NOT_A_CELL, NotACell, Report


def check_cell(cls, kind=None, name=None, backward=True, backward_through_time=None):
    """Compare the cell class `cls` with the matching torch.nn cell; returns a `Report`.

    kind: "rnn", "lstm" or "gru" (default: read from weight_ih's rows). backward: also check the
    cell's `step_backward`, if it has one, and `backward_through_time` (default: the one in the
    module defining `cls`, if any). `report.equal` is the verdict, `report.status` the exit status
    of `python -m cells.check`, `str(report)` its text.
    """
    report = Report(name=name or getattr(cls, "__name__", str(cls)))
    try:
        with float64_everywhere():
            checked = check_forward(cls, kind, report)
            if checked and backward:
                bptt = backward_through_time or getattr(sys.modules.get(_module_name(cls)), "backward_through_time", None)
                check_backward(cls, *checked, report, bptt if callable(bptt) else None)
    except NotACell as e:
        report.status, report.error = EXIT_NOT_A_CELL, str(e)
    return report


def check_file(spec, kind=None, backward=True):
    """`check_cell` on the class named by "FILE.py:CLASS"."""
    try:
        cls = load_cell_class(spec)
    except NotACell as e:
        return Report(name=spec, status=EXIT_NOT_A_CELL, error=str(e))
    return check_cell(cls, kind, name=f"{cls.__name__} ({spec.rpartition(':')[0] or spec})", backward=backward)


def _module_name(cls):
    while isinstance(cls, functools.partial):  # check_cell(partial(RNNCell, nonlinearity="relu"))
        cls = cls.func
    return getattr(cls, "__module__", None)

