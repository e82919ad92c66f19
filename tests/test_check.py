"""`cells.check`: learners' cells, correct in several styles or with a classic mistake planted, are
judged equal to torch.nn or diagnosed by name; files that are not cells get exit 2 and one message.

The learner's cells live in tests/learner_cells/; `plant` (conftest.py) copies one with a single
line changed. Most tests call `check_file` in-process; a few run `python -m cells.check` for real.
"""
import functools
import json
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import cells
from cells.check import check_cell, check_file, main
from cells.check.templates import template

ROOT = pathlib.Path(__file__).resolve().parents[1]

LSTM_LINEAR = "gates = F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)"
GRU_CANDIDATE = "n = torch.tanh(i_n + r * h_n)"
RNN_LINE = "return torch.tanh(F.linear(input, self.weight_ih, self.bias_ih) + F.linear(hx, self.weight_hh, self.bias_hh))"

# (base file, line as written, the mistake, the id of the diagnosis, words the diagnosis must say)
MISTAKES = {
    "lstm gates i, f, o, g": ("lstm_fused.py", "i, f, g, o = gates.chunk(4, 1)", "i, f, o, g = gates.chunk(4, 1)",
                              "gate_order", ["order i, f, o, g", "torch's order is i, f, g, o", "rows [2H:3H] are g"]),
    "lstm gates f, i, g, o": ("lstm_fused.py", "i, f, g, o = gates.chunk(4, 1)", "f, i, g, o = gates.chunk(4, 1)",
                              "gate_order", ["order f, i, g, o"]),
    "lstm σ on g": ("lstm_fused.py", "g = torch.tanh(g)", "g = torch.sigmoid(g)", "activation", ["gate g", "σ"]),
    "lstm tanh on o": ("lstm_fused.py", "o = torch.sigmoid(o)", "o = torch.tanh(o)", "activation", ["gate o"]),
    "lstm σ and tanh swapped between i and g": (
        "lstm_fused.py", "i = torch.sigmoid(i)\n        f = torch.sigmoid(f)\n        g = torch.tanh(g)",
        # c' = f ⊙ c + i ⊙ g is symmetric in i and g: this is also the order g, f, i, o, and both are said
        "i = torch.tanh(i)\n        f = torch.sigmoid(f)\n        g = torch.sigmoid(g)", ("gate_order", "activation"),
        ["gate i", "gate g", "order g, f, i, o"]),
    "lstm tanh(c') missing": ("lstm_fused.py", "h = o * torch.tanh(c)", "h = o * c", "tanh_c_missing", ["tanh(c')"]),
    "lstm h' from the old c": ("lstm_fused.py", "c = f * c + i * g\n        h = o * torch.tanh(c)",
                               "h = o * torch.tanh(c)\n        c = f * c + i * g", "h_from_old_c", ["old cell state"]),
    "lstm bias_hh twice": ("lstm_fused.py", LSTM_LINEAR, LSTM_LINEAR + " + self.bias_hh", "bias_twice",
                           ["bias_hh is added twice"]),
    "lstm bias_ih missing": ("lstm_fused.py", "F.linear(input, self.weight_ih, self.bias_ih)",
                             "F.linear(input, self.weight_ih)", "bias_missing", ["bias_ih is never added"]),
    "lstm weight_hh transposed": ("lstm_fused.py", "F.linear(h, self.weight_hh, self.bias_hh)",
                                  "torch.cat([h @ w for w in self.weight_hh.chunk(4, 0)], 1) + self.bias_hh",
                                  "transposed", ["transposed"]),
    "lstm hx ignored": ("lstm_fused.py", "h, c = hx", "h, c = torch.zeros_like(hx[0]), torch.zeros_like(hx[1])",
                        "ignores_state", ["ignores hx"]),
    "gru gates z, r, n": ("gru_fused.py", "i_r, i_z, i_n = gi.chunk(3, 1)\n        h_r, h_z, h_n = gh.chunk(3, 1)",
                          "i_z, i_r, i_n = gi.chunk(3, 1)\n        h_z, h_r, h_n = gh.chunk(3, 1)",
                          "gate_order", ["order z, r, n", "torch's order is r, z, n"]),
    "gru σ on n": ("gru_fused.py", GRU_CANDIDATE, "n = torch.sigmoid(i_n + r * h_n)", "activation", ["gate n"]),
    "gru update the other way round": ("gru_fused.py", "return (1 - z) * n + z * h", "return z * n + (1 - z) * h",
                                       "update_reversed", ["h' = z ⊙ n + (1 − z) ⊙ h", "other way round"]),
    "gru reset before the matmul (2014 paper)": (
        "gru_fused.py", GRU_CANDIDATE,
        "n = torch.tanh(i_n + F.linear(r * h, self.weight_hh[2 * H:], self.bias_hh[2 * H:]))",
        "reset_before_matmul", ["before the recurrent matmul", "reset_after=False"]),
    "gru b_hn outside r": ("gru_fused.py", GRU_CANDIDATE,
                           "n = torch.tanh(i_n + r * (h_n - self.bias_hh[2 * H:]) + self.bias_hh[2 * H:])",
                           "b_hn_outside_reset", ["b_hn is outside the reset gate"]),
    "gru bias_ih twice": ("gru_fused.py", "gi = F.linear(input, self.weight_ih, self.bias_ih)",
                          "gi = F.linear(input, self.weight_ih, self.bias_ih) + self.bias_ih", "bias_twice",
                          ["bias_ih is added twice"]),
    "gru both biases missing": ("gru_fused.py", "self.bias_ih)\n        gh = F.linear(h, self.weight_hh, self.bias_hh)",
                                "None)\n        gh = F.linear(h, self.weight_hh)", "bias_missing",
                                ["bias_ih is never added and bias_hh is never added"]),
    "gru weight_hh transposed": ("gru_fused.py", "gh = F.linear(h, self.weight_hh, self.bias_hh)",
                                 "gh = torch.cat([h @ w for w in self.weight_hh.chunk(3, 0)], 1) + self.bias_hh",
                                 "transposed", ["transposed"]),
    "rnn relu": ("rnn_plain.py", "return torch.tanh(", "return torch.relu(", "nonlinearity", ["relu"]),
    "rnn weight_hh transposed": ("rnn_plain.py", "F.linear(hx, self.weight_hh, self.bias_hh)",
                                 "hx @ self.weight_hh + self.bias_hh", "transposed", ["transposed", "h @ W.T"]),
    "rnn weight_ih transposed (runs only when input == hidden)": (
        "rnn_plain.py", "F.linear(input, self.weight_ih, self.bias_ih)", "input @ self.weight_ih + self.bias_ih",
        "transposed", ["weight_ih is used transposed", "your forward raises"]),
    "lstm both weights transposed": (
        "lstm_fused.py", LSTM_LINEAR, "gates = torch.cat([input @ w for w in self.weight_ih.chunk(4, 0)], 1) + "
        "self.bias_ih + torch.cat([h @ w for w in self.weight_hh.chunk(4, 0)], 1) + self.bias_hh",
        "transposed", ["weight_ih and weight_hh are used transposed"]),
    "rnn bias_hh missing": ("rnn_plain.py", "F.linear(hx, self.weight_hh, self.bias_hh)",
                            "F.linear(hx, self.weight_hh)", "bias_missing", ["bias_hh is never added"]),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", MISTAKES)
def test_planted_mistake_is_diagnosed(plant, name):
    base, old, new, mistake, words = MISTAKES[name]
    report = check_file(str(plant(base, old, new)))
    assert report.status == 1 and not report.equal, str(report)
    expected = list(mistake) if isinstance(mistake, tuple) else [mistake]
    assert [m.name for m in report.mistakes] == expected, str(report)
    text = str(report)
    for word in words:
        assert word in text, text
    assert "Diagnosis: " in text and "h' differs" in text


@pytest.mark.parametrize("spec", [
    "lstm_fused.py:LearnerLSTMCell",   # two matmuls, chunk, F.linear
    "lstm_slices.py:SlicedLSTM",       # explicit slices, eight matmuls, its own σ, hx=None, unbatched
    "lstm_xw.py:XWLSTM",               # x @ W.T through addmm, no bias option
    "gru_fused.py:LearnerGRUCell",
    "gru_slices.py:SlicedGRU",         # six matmuls on slices
    "rnn_plain.py:LearnerRNNCell",
])
def test_correct_cells_in_other_styles_pass(spec):
    report = check_file(str(pathlib.Path(__file__).parent / "learner_cells" / spec))
    assert report.equal and report.status == 0, str(report)
    assert not report.mistakes and not report.differences
    assert report.kind == spec.split("_")[0]
    assert any("gradcheck" in line for line in report.checked)


def test_missing_conveniences_are_notes_not_failures():
    report = check_file(str(pathlib.Path(__file__).parent / "learner_cells" / "lstm_xw.py"))
    assert report.equal
    notes = "\n".join(report.notes)
    assert "bias=False" in notes and "hx=None" in notes and "unbatched" in notes
    sliced = check_file(str(pathlib.Path(__file__).parent / "learner_cells" / "lstm_slices.py"))
    assert sliced.notes == [] and any("bias=False: equal" in c for c in sliced.checked)


@pytest.mark.parametrize("cls, kind", [
    (cells.LSTMCell, "lstm"), (cells.GRUCell, "gru"), (cells.RNNCell, "rnn"),
    (functools.partial(cells.RNNCell, nonlinearity="relu"), "rnn"),
    (nn.LSTMCell, "lstm"), (nn.GRUCell, "gru"),
])
def test_this_projects_cells_and_torchs_own_pass(cls, kind):
    report = check_cell(cls)
    assert report.equal and report.kind == kind, str(report)
    assert report.notes == []  # they take hx=None, unbatched input and bias=False


def test_paper_gru_is_named():
    """The project's own 2014-paper GRU is the 'reset before the matmul' mistake, as torch sees it."""
    report = check_cell(functools.partial(cells.GRUCell, reset_after=False))
    assert [m.name for m in report.mistakes] == ["reset_before_matmul"]


def test_kind_can_be_forced_and_is_checked():
    assert check_cell(cells.GRUCell, kind="gru").equal
    report = check_cell(cells.GRUCell, kind="lstm")
    assert report.status == 2 and "weight_ih of shape (15, 3)" in report.error and "(20, 3)" in report.error


def test_wrong_bias_false_is_a_difference(plant):
    path = plant("rnn_plain.py", "F.linear(hx, self.weight_hh, self.bias_hh)",
                 "F.linear(hx, self.weight_hh, self.bias_hh) + (0 if self.bias_hh is not None else 0.1)")
    report = check_file(str(path))
    assert report.status == 1 and "bias=False" in report.differences[0]


def test_gradient_only_difference_names_the_gate_slice(plant):
    """Right numbers, wrong backward: a detached forget gate. The report says which slice differs."""
    path = plant("lstm_fused.py", "f = torch.sigmoid(f)", "f = torch.sigmoid(f).detach()")
    report = check_file(str(path))
    assert report.status == 1 and not report.mistakes
    text = str(report)
    assert "No known mistake" in text and "outputs are right but a gradient is not" in text
    assert "grad weight_ih differs" in text and "f [H:2H]" in text and "i [0:H] equal" in text


def test_unknown_mistake_says_where(plant):
    path = plant("lstm_fused.py", "h = o * torch.tanh(c)", "h = o * torch.tanh(c) * 0.5")
    report = check_file(str(path))
    assert report.status == 1 and not report.mistakes
    text = str(report)
    assert "h' differs: max |Δ|" in text and "c' differs" not in text
    assert "c' is right, so i, f, g and the cell update are" in text


# -- not a cell: exit 2 with one message -----------------------------------------------------------

NOT_A_CELL = {
    "missing file": (None, None, "no file"),
    "missing class": ("lstm_fused.py", None, "has no class 'Nope'; it defines LearnerLSTMCell"),
    "nn.Linear instead of parameters": (
        "rnn_plain.py", ("self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size).uniform_(-k, k))",
                         "self.ih = nn.Linear(input_size, hidden_size)\n        self.weight_ih = self.ih.weight"),
        "has ih.weight, ih.bias, which torch's cell has not"),
    "transposed shape": ("lstm_fused.py", ("torch.empty(4 * hidden_size, input_size)", "torch.empty(input_size, 4 * hidden_size)"),
                         "looks transposed"),
    "forward raises": ("lstm_fused.py", ("h, c = hx", "h, c = hx\n        raise ValueError('not yet')"),
                       "raised ValueError: not yet"),
    "gru returns a tuple": ("gru_fused.py", ("return (1 - z) * n + z * h", "return (1 - z) * n + z * h, None"),
                            "forward returned a tuple of 2; torch.nn.GRUCell's forward returns h' alone"),
    "lstm returns h only": ("lstm_fused.py", ("return h, c", "return h"),
                            "forward returned a Tensor; torch.nn.LSTMCell's forward returns (h', c')"),
    "syntax error": ("rnn_plain.py", ("def forward(self, input, hx):", "def forward(self, input, hx)"),
                     "SyntaxError"),
    "constructor takes other arguments": ("rnn_plain.py", ("def __init__(self, input_size, hidden_size, bias=True):",
                                                           "def __init__(self, sizes, bias=True):"),
                                          "expected: the constructor of torch's cells"),
}


@pytest.mark.parametrize("name", NOT_A_CELL)
def test_not_a_cell_is_exit_2_with_a_message(plant, tmp_path, name):
    base, change, words = NOT_A_CELL[name]
    if base is None:
        spec = str(tmp_path / "nowhere.py") + ":Cell"
    else:
        path = plant(base, *(change or (None, None)))
        spec = f"{path}:Nope" if name == "missing class" else str(path)
    report = check_file(spec)
    assert report.status == 2 and not report.equal
    assert words in str(report), str(report)
    assert "Traceback" not in str(report)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cells.check", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_exit_statuses(plant, tmp_path):
    """One real process per verdict: 0 equal, 1 different with its diagnosis, 2 not a cell."""
    good = run_cli(str(ROOT / "tests" / "learner_cells" / "gru_fused.py") + ":LearnerGRUCell")
    assert good.returncode == 0 and "equals torch.nn.GRUCell" in good.stdout
    bad = run_cli(str(plant("gru_fused.py", "return (1 - z) * n + z * h", "return z * n + (1 - z) * h")))
    assert bad.returncode == 1 and "Diagnosis: the update is written the other way round" in bad.stdout
    (tmp_path / "shapes.py").write_text(
        "import torch\nclass Cell(torch.nn.Module):\n    def __init__(self, i, h, bias=True):\n"
        "        super().__init__()\n        self.weight_ih = torch.nn.Parameter(torch.zeros(h, i))\n")
    broken = run_cli(str(tmp_path / "shapes.py") + ":Cell", "--kind", "rnn")
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert "lacks weight_hh, bias_ih, bias_hh" in broken.stderr and "weight_hh (H, H) = (5, 5)" in broken.stderr
    assert run_cli().returncode == 2 and run_cli("--kind", "lstm").returncode == 2


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_template_has_torchs_names_and_a_todo_per_equation(kind, tmp_path, capsys):
    assert main(["--template", kind]) == 0
    text = capsys.readouterr().out
    assert text == template(kind)
    assert text.count("TODO") >= {"lstm": 5, "gru": 6, "rnn": 1}[kind]
    path = tmp_path / f"my_{kind}.py"
    path.write_text(text)
    report = check_file(str(path))  # the skeleton is a cell whose forward is still to write
    assert report.status == 2 and "NotImplementedError: write My" in report.error


SOLUTIONS = {  # the TODOs filled in, as a learner would
    "lstm": """gates = F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)
        i, f, g, o = gates.chunk(4, 1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g
        return o * torch.tanh(c), c""",
    "gru": """r_i, z_i, n_i = F.linear(input, self.weight_ih, self.bias_ih).chunk(3, 1)
        r_h, z_h, n_h = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, 1)
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        n = torch.tanh(n_i + r * n_h)
        return (1 - z) * n + z * h""",
    "rnn": "return torch.tanh(F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh))",
}


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_template_filled_in_passes(kind, tmp_path):
    lines = template(kind).splitlines()
    raise_line = next(k for k, line in enumerate(lines) if "raise NotImplementedError" in line)
    lines[raise_line] = "        " + SOLUTIONS[kind]
    path = tmp_path / f"my_{kind}.py"
    path.write_text("import torch.nn.functional as F\n" + "\n".join(lines) + "\n")
    report = check_file(str(path))
    assert report.equal, str(report)
    assert report.notes == [f"unbatched input: {n.split('unbatched input: ')[1]}" for n in report.notes]


# -- train it: python -m train ... --cell-class FILE.py:CLASS ----------------------------------------

LEARNER_CELLS = pathlib.Path(__file__).parent / "learner_cells"


def sine_options(out, **extra):
    return dict(hidden=4, epochs=3, batch_size=16, train_size=64, test_size=8, seq_len=20, dtype="float64",
                device="cpu", out=str(out), quiet=True, plots=False, log_every=1, **extra)


@pytest.mark.parametrize("spec, extra", [
    ("gru_fused.py:LearnerGRUCell", {"cell": "gru"}),
    # two layers both ways, and the LSTM's forget-gate bias set in the learner's cells too
    ("lstm_slices.py:SlicedLSTM", {"cell": "lstm", "layers": 2, "bidirectional": True}),
])
def test_a_correct_learner_cell_trains_like_torch(tmp_path, spec, extra):
    """Same seed, same initial weights: the learner's cell on our readable unroll gives torch.nn's
    losses step by step (float64)."""
    from train import loop
    from train.config import resolve

    losses = {}
    for name, options in (("torch", {"impl": "torch"}),
                          ("learner", {"impl": "readable", "cell_class": str(LEARNER_CELLS / spec)})):
        config = resolve("sine", sine_options(tmp_path / name, **extra, **options))
        losses[name] = loop.run(config, log=lambda *_: None)["logged_loss"]
    assert len(losses["torch"]) == 12
    torch.testing.assert_close(torch.tensor(losses["learner"]), torch.tensor(losses["torch"]), atol=1e-8, rtol=0)


def cli_sine(out, *extra):
    return ["sine", "--out", str(out), "--hidden", "4", "--epochs", "1", "--train-size", "32", "--test-size", "8",
            "--seq-len", "15", "--batch-size", "16", "--device", "cpu", "--quiet", "--no-plots", *extra]


def test_train_warns_but_trains_a_cell_that_differs(plant, tmp_path, capsys):
    from train import cli

    path = plant("gru_fused.py", "return (1 - z) * n + z * h", "return z * n + (1 - z) * h")
    assert cli.main(cli_sine(tmp_path / "run", "--cell-class", f"{path}:LearnerGRUCell")) == 0
    err = capsys.readouterr().err
    assert "warning: LearnerGRUCell" in err and "differs from torch.nn.GRUCell" in err
    assert "Diagnosis: the update is written the other way round" in err and "Training it anyway" in err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["cell_class"] == f"{path}:LearnerGRUCell" and metrics["config"]["cell"] == "gru"


def test_train_refuses_what_is_not_a_cell(plant, tmp_path, capsys):
    from train import cli

    path = plant("rnn_plain.py", "return torch.tanh(", "return 2, torch.tanh(")
    assert cli.main(cli_sine(tmp_path / "run", "--cell-class", str(path))) == 2
    assert "forward returned a tuple of 2" in capsys.readouterr().err
    good = str(LEARNER_CELLS / "rnn_plain.py")
    assert cli.main(cli_sine(tmp_path / "run", "--cell-class", good, "--cell", "lstm")) == 2
    assert "--cell lstm does not fit" in capsys.readouterr().err
    assert cli.main(cli_sine(tmp_path / "run", "--cell-class", good, "--impl", "torch")) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("spec, panels", [
    ("lstm_fused.py:LearnerLSTMCell", ["i", "f", "o", "c"]),  # keeps its gates in self.gates
    ("lstm_xw.py:XWLSTM", ["c"]),                              # exposes none: the cell state alone
])
def test_gate_plot_of_a_learner_cell(tmp_path, spec, panels):
    pytest.importorskip("matplotlib")
    from train import plots
    from train.config import resolve
    from train.loop import Data
    from train.models import build_model

    config = resolve("mnist", dict(cell="lstm", impl="readable", hidden=3, cell_class=str(LEARNER_CELLS / spec)))
    model = build_model(config, 28, 28)
    x = torch.rand(2, 28, 28)
    trace = model.rnn.gate_trace(x[0])
    assert [k for k, _ in plots.GATE_PANELS["lstm"] if k in trace] == panels
    assert all(v.shape == (28, 3) for v in trace.values())
    path = plots.plot_gates(plots._pyplot(), model, Data(x, torch.zeros(2), x, torch.zeros(2)), config,
                            tmp_path / "gates.png")
    assert path.stat().st_size > 0
