"""What a check found (`Report`) and how it is said: the verdict, the diagnosis, where the numbers
differ, what was checked; and the exit statuses of `python -m cells.check`."""
import textwrap
from dataclasses import dataclass, field
from typing import Optional

from torch import nn

TORCH_CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
TIGHT = {"atol": 1e-10, "rtol": 1e-10}  # float64, as in tests/
EXIT_EQUAL, EXIT_DIFFERENT, EXIT_NOT_A_CELL = 0, 1, 2


class NotACell(Exception):
    """The class cannot be compared with a torch.nn cell; the message says what was expected."""


# What each part of the check compares, how its verdict is said, and what a diagnosis recomputed.
PARTS = {
    "forward": dict(
        differs="{name} differs from {reference}.",
        unusable="{name} is not a cell this check can compare with torch.nn:",
        recomputed="torch's step recomputed with your weights and this one change",
        tried="the gate order, σ/tanh on each gate, each bias missing or twice, transposed weights, hx "
              "ignored, and this cell's classic slips"),
    "step_backward": dict(
        differs="{name}.step_backward differs from autograd through {reference} (the forward is right).",
        unusable="{name}.step_backward cannot be compared with autograd through {reference}:",
        recomputed="the right backward of the step, recomputed with your weights and this one change,",
        tried="each local derivative missing or written for the other nonlinearity, the gates' "
              "gradients stacked in another order, c's and h's paths, weight gradients transposed or from "
              "h', bias gradients not summed over the batch, and this cell's classic slips"),
    "backward_through_time": dict(
        differs="backward_through_time differs from autograd through {reference} unrolled over the "
                "sequence (the cell's step_backward is right).",
        unusable="backward_through_time cannot be compared with autograd through {reference}:",
        recomputed="the right loop over your step_backward with this one change",
        tried="the gradient from the next step not carried back (h, c or both), the output's gradient "
              "not added, parameter gradients not summed over the steps, grad_last unused, the steps in "
              "the wrong order or given the wrong state, the input gradients stored in reverse"),
}


@dataclass
class Report:
    """What `check_cell` found. `equal` is the verdict; `str(report)` the text the command prints.

    `part` is where the verdict was reached: "forward" (the cell's outputs and autograd's gradients
    through them), "step_backward" or "backward_through_time" (the learner's own backward)."""

    name: str
    kind: Optional[str] = None
    status: int = EXIT_EQUAL  # the command's exit status: 0 equal, 1 different, 2 not a cell
    part: str = "forward"
    checked: list = field(default_factory=list)  # what was compared, one line each
    notes: list = field(default_factory=list)  # missing conveniences; never change the verdict
    mistakes: list = field(default_factory=list)  # Mistakes (cells.check.mistakes) reproducing the numbers
    differences: list = field(default_factory=list)  # where the numbers first differ, one line each
    error: Optional[str] = None  # why it cannot be compared (status 2)

    @property
    def equal(self):
        return self.status == EXIT_EQUAL

    @property
    def reference(self):
        return f"torch.nn.{TORCH_CELLS[self.kind].__name__}" if self.kind else "torch.nn"

    def __str__(self):
        part = PARTS[self.part]
        if self.status == EXIT_NOT_A_CELL:
            lines = [part["unusable"].format(name=self.name, reference=self.reference), _indent(self.error)]
            if self.checked:  # a learner's backward that cannot be compared: the forward still is right
                lines.append("Checked:")
                lines += [line for c in self.checked for line in _wrap(c, "  ")]
            return "\n".join(lines)
        if self.equal:
            lines = [f"{self.name} equals {self.reference}."]
        else:
            lines = [part["differs"].format(name=self.name, reference=self.reference)]
        if self.mistakes:
            lines += _wrap("Diagnosis: " + self.mistakes[0].text)
            for m in self.mistakes[1:]:
                lines += _wrap("Also reproduces your numbers: " + m.text)
            lines += _wrap(f"({part['recomputed']} gives your numbers to 1e-9.)")
        elif not self.equal:
            lines += _wrap(f"No known mistake reproduces your numbers (tried: {part['tried']}).")
        if self.differences:
            lines.append("Where it differs:")
            lines += [line for d in self.differences for line in _wrap(d, "  ")]
        if self.checked:
            lines.append("Checked:" if self.equal else "Checked before the first difference:")
            lines += [line for c in self.checked for line in _wrap(c, "  ")]
        if self.notes:
            lines.append("Notes:")
            lines += [line for n in self.notes for line in _wrap(n, "  ")]
        return "\n".join(lines)


def _wrap(text, indent=""):
    """Lines of at most 100 characters; continuation lines indented two more."""
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent + "  ",
                         break_long_words=False, break_on_hyphens=False)


def _indent(text):
    return "\n".join("  " + line for line in text.splitlines())


