"""The command line of `python -m cells.check`: check a file's cell, or print a template."""
import argparse
import os
import sys

from .checker import check_file
from .report import EXIT_EQUAL, EXIT_NOT_A_CELL, TORCH_CELLS
from .templates import TEMPLATES, template


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m cells.check",
        description="Check a hand-written RNN, LSTM or GRU cell against torch.nn — its forward and, when it "
                    "has one, its step_backward and the file's backward_through_time: equal, or which classic "
                    "mistake it makes.",
        epilog="exit status: 0 equal to torch.nn, 1 different (with a diagnosis), 2 not a cell "
               "(file, class, parameter names or shapes, what forward or step_backward returns).")
    parser.add_argument("cell", nargs="?", metavar="FILE.py:CLASS",
                        help="your cell class; CLASS may be left out when the file defines only one")
    parser.add_argument("--kind", choices=sorted(TORCH_CELLS),
                        help="compare with this torch.nn cell (default: read from weight_ih's rows)")
    parser.add_argument("--template", choices=sorted(TEMPLATES),
                        help="print a skeleton cell to fill in, and exit: KIND for its forward, KIND-backward "
                             "for its step_backward and backward_through_time (the forward given)")
    return parser


def main(argv=None):
    """`python -m cells.check`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.template:
        print(template(args.template), end="")
        return EXIT_EQUAL
    if not args.cell:
        parser.error("give the cell to check as FILE.py:CLASS, or --template KIND for a skeleton "
                     "(lstm, gru, rnn, lstm-backward, gru-backward, rnn-backward)")
    report = check_file(args.cell, args.kind)
    try:
        print(report, file=sys.stderr if report.status == EXIT_NOT_A_CELL else sys.stdout)
    except BrokenPipeError:  # `| head`: the verdict is the exit status; say no more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report.status
