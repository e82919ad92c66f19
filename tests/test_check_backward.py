"""`cells.check` on a learner's backward: correct `step_backward` / `backward_through_time` in other
styles pass; each classic mistake, planted one at a time, is diagnosed by name, with the gradient
(and step) that differs; what cannot be compared exits 2 with one message, never a traceback.

The learner's cells live in tests/learner_cells/*_backward.py; `plant` (conftest.py) copies one with a
single line changed.
"""
import pathlib
import subprocess
import sys

import pytest
import torch

import cells
from cells.check import check_cell, check_file, main
from cells.check.templates import template

ROOT = pathlib.Path(__file__).resolve().parents[1]
LEARNER_CELLS = ROOT / "tests" / "learner_cells"


def flat(text):
    """The report's text with its line wrapping undone."""
    return " ".join(text.split())


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("spec", ["lstm_backward.py", "gru_backward.py", "rnn_backward.py"])
def test_correct_learner_backwards_pass(spec):
    report = check_file(str(LEARNER_CELLS / spec))
    assert report.equal and report.status == 0, str(report)
    checked = "\n".join(report.checked)
    assert "step_backward: the gradients of input" in checked and "step_backward with bias=False: equal" in checked
    assert "backward_through_time: the gradients of the inputs (every step)" in checked


@pytest.mark.parametrize("spec", ["cells/lstm.py:LSTMCell", "cells/gru.py:GRUCell", "cells/rnn.py:RNNCell"])
def test_this_projects_cells_pass_with_their_backward(spec):
    """`python -m cells.check cells/lstm.py:LSTMCell`: the file is imported as the package module it is."""
    report = check_file(str(ROOT / spec))
    assert report.equal and report.notes == [], str(report)
    assert any(line.startswith("backward_through_time:") for line in report.checked)


def test_relu_rnn_backward_passes():
    import functools
    report = check_cell(functools.partial(cells.RNNCell, nonlinearity="relu"))
    assert report.equal and any(line.startswith("step_backward:") for line in report.checked), str(report)


LSTM_DCELL = "dcell = dnext_c + dnext_h * o * (1 - tc * tc)"
GRU_DN = "dn = dh_out * (1 - z)"
GRU_DIRECT = "dh = dh_out * z"
LSTM_DA = "da = torch.cat((da_i, da_f, da_g, da_o), dim=1)"

# (base file, line as written, the mistake, the ids of the diagnoses, words the report must say)
STEP_MISTAKES = {
    "lstm dc without the forget gate": ("lstm_backward.py", "dprev_c = dcell * f", "dprev_c = dcell",
                                        ["dc_missing_forget_gate"], ["missing ⊙ f (the forget gate)", "grad c differs"]),
    "lstm tanh′(c') missing": ("lstm_backward.py", LSTM_DCELL, "dcell = dnext_c + dnext_h * o",
                               ["tanh_prime_c_missing"], ["tanh′(c') wrong", "nothing (the derivative left out)"]),
    "lstm σ′ as tanh′ on every gate": (
        "lstm_backward.py", "da_i = di * i * (1 - i)\n        da_f = df * f * (1 - f)",
        "da_i = di * (1 - i * i)\n        da_f = df * (1 - f * f)", ["sigma_prime"], []),  # o too, below
    "lstm σ′ missing on o": ("lstm_backward.py", "da_o = do * o * (1 - o)", "da_o = do",
                             ["sigma_prime"], ["σ′ is written wrong for the gate o", "left out"]),
    "lstm σ′ without the factor s on f": ("lstm_backward.py", "da_f = df * f * (1 - f)", "da_f = df * (1 - f)",
                                          ["sigma_prime"], ["the gate f", "(1 − s) alone"]),
    "lstm σ′ applied to the gate's value": ("lstm_backward.py", "da_i = di * i * (1 - i)",
                                            "da_i = di * sigmoid(i) * (1 - sigmoid(i))",
                                            ["sigma_prime"], ["the gate i", "σ′ applied to σ's output"]),
    "lstm tanh′ of g as σ′": ("lstm_backward.py", "da_g = dg * (1 - g * g)", "da_g = dg * g * (1 - g)",
                              ["tanh_prime"], ["tanh′ is written wrong for the candidate g", "σ's derivative"]),
    "lstm gates stacked i, f, o, g": ("lstm_backward.py", LSTM_DA, "da = torch.cat((da_i, da_f, da_o, da_g), dim=1)",
                                      ["gradient_order"], ["order i, f, o, g", "the weights' order i, f, g, o"]),
    "lstm dW_hh from h'": ("lstm_backward.py", '"weight_hh": torch.mm(da.t(), h)}',
                           '"weight_hh": torch.mm(da.t(), o * torch.tanh(next_c))}',
                           ["dW_hh_from_h_next"], ["new state h'", "grad weight_hh differs"]),
    "lstm dW_hh transposed": ("lstm_backward.py", '"weight_hh": torch.mm(da.t(), h)}', '"weight_hh": torch.mm(h.t(), da)}',
                              ["transposed_weight_gradient"], ["gradient of weight_hh is transposed",
                                                                "grad weight_hh has shape (5, 20), expected (20, 5)"]),
    "lstm bias gradient not summed": ("lstm_backward.py", 'grads["bias_hh"] = torch.sum(da, dim=0)',
                                      'grads["bias_hh"] = da', ["bias_not_summed"],
                                      ["gradient of bias_hh is not summed over the batch", "grad bias_hh has shape (4, 20)"]),
    "lstm tanh′(c') without the square": ("lstm_backward.py", LSTM_DCELL, "dcell = dnext_c + dnext_h * o * (1 - tc)",
                                          ["tanh_prime_c"], ["1 − t, without the square"]),
    "lstm tanh(c') instead of tanh′(c')": ("lstm_backward.py", LSTM_DCELL, "dcell = dnext_c + dnext_h * o * tc",
                                           ["tanh_prime_c"], ["tanh(·) itself instead of its derivative"]),
    "lstm tanh′ of c' itself": ("lstm_backward.py", LSTM_DCELL, "dcell = dnext_c + dnext_h * o * (1 - next_c * next_c)",
                                ["tanh_prime_c"], ["1 − a² of the pre-activation a"]),
    "lstm σ′ of the pre-activation on i": ("lstm_backward.py", "da_i = di * i * (1 - i)",
                                           "a = torch.mm(x, self.weight_ih.t()) + torch.mm(h, self.weight_hh.t()) + "
                                           "self.bias_ih + self.bias_hh\n        a_i = a[:, :self.hidden_size]\n"
                                           "        da_i = di * a_i * (1 - a_i)",
                                           ["sigma_prime"], ["the gate i", "of the pre-activation a"]),
    "lstm no path from h' to c'": ("lstm_backward.py", LSTM_DCELL, "dcell = dnext_c", ["no_h_path"], ["through h'"]),
    "gru direct term (1 − z)": ("gru_backward.py", GRU_DIRECT, "dh = dh_out * (1 - z)",
                                ["direct_term_swapped"], ["h's direct gradient uses (1 − z) where it is z", "grad h differs"]),
    "gru z and (1 − z) swapped in both": ("gru_backward.py", f"{GRU_DN}\n        dz = dh_out * (h - n)\n        {GRU_DIRECT}",
                                          "dn = dh_out * z\n        dz = dh_out * (h - n)\n        dh = dh_out * (1 - z)",
                                          ["update_terms_swapped"], ["swapped in both terms"]),
    "gru reset gradient without b_hn": ("gru_backward.py", "dr = dn_pre * hn",
                                        "dr = dn_pre * (h @ self.weight_hh[2 * self.hidden_size:].T)",
                                        ["reset_gradient_without_b_hn"], ["leaves out b_hn"]),
    "gru reset gradient from h": ("gru_backward.py", "dr = dn_pre * hn", "dr = dn_pre * h",
                                  ["reset_gradient_from_h"], ["taken from h"]),
    "gru reset gradient without W_hn h + b_hn": ("gru_backward.py", "dr = dn_pre * hn", "dr = dn_pre",
                                                 ["reset_gradient_without_h_n"], ["lacks ⊙ (W_hn h + b_hn)"]),
    "lstm dc from the dc' that arrived": ("lstm_backward.py", "dprev_c = dcell * f", "dprev_c = dnext_c * f",
                                          ["dc_from_arriving"], ["made from the dc' that arrived"]),
    "lstm bias gradients averaged": ("lstm_backward.py",
                                     'grads["bias_ih"] = torch.sum(da, dim=0)\n            grads["bias_hh"] = torch.sum(da, dim=0)',
                                     'grads["bias_ih"] = da.mean(0)\n            grads["bias_hh"] = da.mean(0)',
                                     ["bias_mean"], ["averaged over the batch"]),
    "gru dh_n without r": ("gru_backward.py", "dhn = dn_pre * r", "dhn = dn_pre", ["dh_n_without_r"], ["missing ⊙ r"]),
    "gru σ′ missing on z": ("gru_backward.py", "dz_pre = dz * z * (1 - z)", "dz_pre = dz", ["sigma_prime"], ["the gate z"]),
    "gru dW_ih transposed": ("gru_backward.py", "weight_ih=dgi.T @ x", "weight_ih=x.T @ dgi",
                             ["transposed_weight_gradient"], ["gradient of weight_ih is transposed"]),
    "gru both bias gradients not summed": ("gru_backward.py", "grads.update(bias_ih=dgi.sum(0), bias_hh=dgh.sum(0))",
                                           "grads.update(bias_ih=dgi, bias_hh=dgh)", ["bias_not_summed"],
                                           ["the bias gradients are not summed over the batch"]),
    "rnn tanh′ missing": ("rnn_backward.py", "dz = (1 - h_next ** 2) * dh_next", "dz = dh_next",
                          ["act_prime_missing"], ["tanh′ is missing"]),
    "rnn dW_hh from h'": ("rnn_backward.py", '"weight_hh": dz.T @ h}', '"weight_hh": dz.T @ h_next}',
                          ["dW_hh_from_h_next"], ["new state h'"]),
    "rnn dW_hh transposed (square: same shape)": ("rnn_backward.py", '"weight_hh": dz.T @ h}', '"weight_hh": h.T @ dz}',
                                                  ["transposed_weight_gradient"], ["grad weight_hh differs"]),
}


def test_every_sigma_gate_with_tanh_prime_is_one_mistake(plant):
    path = plant("lstm_backward.py", "da_i = di * i * (1 - i)\n        da_f = df * f * (1 - f)",
                 "da_i = di * (1 - i * i)\n        da_f = df * (1 - f * f)")
    path.write_text(path.read_text().replace("da_o = do * o * (1 - o)", "da_o = do * (1 - o * o)"))
    report = check_file(str(path))
    assert [m.name for m in report.mistakes] == ["sigma_prime"], str(report)
    assert "every σ gate (i, f, o)" in flat(str(report)) and "tanh's derivative" in flat(str(report))


@pytest.mark.parametrize("name", STEP_MISTAKES)
def test_planted_step_backward_mistake_is_diagnosed(plant, name):
    base, old, new, mistakes, words = STEP_MISTAKES[name]
    report = check_file(str(plant(base, old, new)))
    assert report.status == 1 and report.part == "step_backward", str(report)
    assert [m.name for m in report.mistakes] == mistakes, str(report)
    text = str(report)
    assert ".step_backward differs from autograd through torch.nn." in text and "Diagnosis: " in text
    assert "the right backward of the step, recomputed with your weights and this one change" in text
    for word in words:
        assert word in flat(text), text
    assert "Checked before the first difference:" in text and "gradcheck" in text  # the forward is right


LSTM_LOOP_CARRY = "dh = dh + grad_outputs[t]"
LOOP_MISTAKES = {
    "lstm: nothing carried from the next step": (
        "lstm_backward.py", "dx, (dh, dc), grads = cell.step_backward(inputs[t], states[t], (dh, dc))",
        "dx, (dh, dc), grads = cell.step_backward(inputs[t], states[t], (dh, dc))\n"
        "        dh, dc = torch.zeros_like(dh), torch.zeros_like(dc)", ["no_carry"],
        ["not carried back", "grad inputs differs at steps 0, 1, 2, 3 of 0–4"]),
    "lstm: c's gradient not carried": (
        "lstm_backward.py", "dx, (dh, dc), grads = cell.step_backward(inputs[t], states[t], (dh, dc))",
        "dx, (dh, dc), grads = cell.step_backward(inputs[t], states[t], (dh, dc))\n        dc = torch.zeros_like(dc)",
        ["no_carry_c"], ["c's gradient from the next step is not carried back"]),
    "lstm: the output's gradient not added": ("lstm_backward.py", LSTM_LOOP_CARRY, "dh = dh", ["no_output_gradient"],
                                              ["output's gradient at each step is not added"]),
    "lstm: parameter gradients kept from one step": (
        "lstm_backward.py", "            for name in total:\n                total[name] = total[name] + grads[name]",
        "            total = dict(grads)", ["parameter_gradients_not_summed"], ["only the gradient of step 0"]),
    "lstm: grad_last unused": ("lstm_backward.py", "dh, dc = grad_last", "dh, dc = (torch.zeros_like(g) for g in grad_last)",
                               ["grad_last_unused"], ["grad_last is not used"]),
    "lstm: input gradients left reversed": ("lstm_backward.py", "    dxs.reverse()\n", "", ["input_gradients_reversed"],
                                            ["stored in reverse order"]),
    "gru: nothing carried from the next step": (
        "gru_backward.py", "dx, dh, step = cell.step_backward(inputs[t], hs[t], dh + grad_outputs[t])",
        "dx, _, step = cell.step_backward(inputs[t], hs[t], (dh if t == T - 1 else 0) + grad_outputs[t])",
        ["no_carry"], ["not carried back"]),
    "rnn: parameter gradients averaged over the steps": ("rnn_backward.py", "return torch.stack(dxs), dh_next, dW",
                                                         "return torch.stack(dxs), dh_next, "
                                                         "{k: v / len(inputs) for k, v in dW.items()}",
                                                         ["parameter_gradients_averaged"], ["averaged over the steps"]),
    "gru: the output's gradient added at the last step only": (
        "gru_backward.py", "cell.step_backward(inputs[t], hs[t], dh + grad_outputs[t])",
        "cell.step_backward(inputs[t], hs[t], dh + (grad_outputs[t] if t == T - 1 else 0))",
        ["no_output_gradient"], ["at the last step only"]),
    "gru: parameter gradients not summed": ("gru_backward.py", "grads[name] += g.detach()", "grads[name] = g.detach()",
                                            ["parameter_gradients_not_summed"], ["not summed over the steps"]),
    "gru: each step given the state it produced": (
        "gru_backward.py", "cell.step_backward(inputs[t], hs[t], dh + grad_outputs[t])",
        "cell.step_backward(inputs[t], hs[t + 1], dh + grad_outputs[t])", ["state_after_the_step"],
        ["the state the step produced"]),
    "rnn: the output's gradient not added": ("rnn_backward.py", "grad_outputs[t] + dh_next", "dh_next",
                                             ["no_output_gradient"], ["not added"]),
    "rnn: the loop walks forwards": ("rnn_backward.py", "for t in reversed(range(len(inputs))):",
                                     "for t in range(len(inputs)):", ["steps_forwards"], ["walks forwards"]),
}


@pytest.mark.parametrize("name", LOOP_MISTAKES)
def test_planted_backward_through_time_mistake_is_diagnosed(plant, name):
    base, old, new, mistakes, words = LOOP_MISTAKES[name]
    report = check_file(str(plant(base, old, new)))
    assert report.status == 1 and report.part == "backward_through_time", str(report)
    assert [m.name for m in report.mistakes] == mistakes, str(report)
    text = str(report)
    assert text.startswith("backward_through_time differs from autograd through torch.nn.")
    assert any(line.startswith("step_backward: ") for line in report.checked)  # the step is right
    for word in words:
        assert word in flat(text), text


def test_unknown_backward_slip_says_which_gradient(plant):
    path = plant("lstm_backward.py", "dx = torch.mm(da, self.weight_ih)", "dx = 2 * torch.mm(da, self.weight_ih)")
    report = check_file(str(path))
    assert report.status == 1 and not report.mistakes
    text = str(report)
    assert "No known mistake reproduces your numbers" in text and "grad input differs: max |Δ|" in text
    assert "grad h differs" not in text and "grad weight_ih" not in text


def test_wrong_parameter_gradient_is_said_by_gate(plant):
    path = plant("lstm_backward.py", "da_g = dg * (1 - g * g)", "da_g = dg * (1 - g * g) * 1.5")
    text = str(check_file(str(path)))
    assert "grad weight_hh differs" in text and "g [2H:3H]" in text and "i [0:H] equal" in text, text


def test_a_forward_mistake_is_diagnosed_before_the_backward(plant):
    path = plant("lstm_backward.py", "next_h = o * torch.tanh(next_c)", "next_h = o * next_c")
    report = check_file(str(path))
    assert report.part == "forward" and [m.name for m in report.mistakes] == ["tanh_c_missing"]


NOT_COMPARABLE = {
    "step_backward raises": ("lstm_backward.py", "h, c = state\n        dnext_h", "h, c = state\n        1 / 0\n        dnext_h",
                             "step_backward(input (4, 3), hx (h, c) and grad_out (dh', dc'), each (4, 5)) raised "
                             "ZeroDivisionError"),
    "step_backward returns two things": ("rnn_backward.py", "return dz @ self.weight_ih, dz @ self.weight_hh, grads",
                                         "return dz @ self.weight_ih, grads",
                                         "step_backward returned a tuple of 2; expected (grad_input, grad_hx, grads)"),
    "lstm grad_hx is one tensor": ("lstm_backward.py", "return dx, (dprev_h, dprev_c), grads", "return dx, dprev_h, grads",
                                   "grad_hx is a Tensor; for an LSTM it is a tuple (dh, dc)"),
    "grads lacks a bias": ("gru_backward.py", "grads.update(bias_ih=dgi.sum(0), bias_hh=dgh.sum(0))",
                           "grads.update(bias_ih=dgi.sum(0))", "grads lacks bias_hh"),
    "grads is a list": ("rnn_backward.py", "return dz @ self.weight_ih, dz @ self.weight_hh, grads",
                        "return dz @ self.weight_ih, dz @ self.weight_hh, list(grads.values())",
                        "grads is a list of 4; expected a dict from parameter name"),
    "backward_through_time raises": ("gru_backward.py", "T = inputs.shape[0]", "T = inputs.shape[0]\n    raise ValueError('todo')",
                                     "backward_through_time(cell, inputs (5, 3, 3), hx, grad_outputs (5, 3, 4), "
                                     "grad_last) raised ValueError: todo"),
}


@pytest.mark.parametrize("name", NOT_COMPARABLE)
def test_a_backward_that_cannot_be_compared_is_exit_2_with_a_message(plant, name):
    base, old, new, words = NOT_COMPARABLE[name]
    report = check_file(str(plant(base, old, new)))
    assert report.status == 2, str(report)
    text = str(report)
    assert words in text and "Traceback" not in text, text
    assert "Checked:" in text  # what was right is still said


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_backward_template_has_a_todo_per_equation_and_exits_2(kind, tmp_path, capsys):
    assert main(["--template", f"{kind}-backward"]) == 0
    text = capsys.readouterr().out
    assert text == template(f"{kind}-backward")
    assert text.count("# TODO") >= {"lstm": 12, "gru": 12, "rnn": 8}[kind]
    path = tmp_path / f"my_{kind}.py"
    path.write_text(text)
    report = check_file(str(path))  # the forward is written: its check passes, the backward is to write
    assert report.status == 2 and report.part == "step_backward", str(report)
    assert "raised NotImplementedError: write My" in report.error and "step_backward: one line per TODO" in report.error
    assert any("gradcheck" in line for line in report.checked)


STEP_SOLUTIONS = {  # the backward templates' TODOs filled in, as a learner would
    "lstm": """tc = torch.tanh(c_next)
        do = dh_next * tc
        dc_next = dc_next + dh_next * o * (1 - tc**2)
        df, di, dg, dc = dc_next * c, dc_next * g, dc_next * i, dc_next * f
        dz = torch.cat([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2), do * o * (1 - o)], 1)
        grads = {"weight_ih": dz.T @ input, "weight_hh": dz.T @ h}
        if self.bias_ih is not None:
            grads["bias_ih"] = grads["bias_hh"] = dz.sum(0)
        return dz @ self.weight_ih, (dz @ self.weight_hh, dc), grads""",
    "gru": """dn, dz = dh_next * (1 - z), dh_next * (h - n)
        dx_n = dn * (1 - n**2)
        dr, dh_n = dx_n * h_n, dx_n * r
        dx_r, dx_z = dr * r * (1 - r), dz * z * (1 - z)
        dx_proj, dh_proj = torch.cat([dx_r, dx_z, dx_n], 1), torch.cat([dx_r, dx_z, dh_n], 1)
        grads = {"weight_ih": dx_proj.T @ input, "weight_hh": dh_proj.T @ h}
        if self.bias_ih is not None:
            grads.update(bias_ih=dx_proj.sum(0), bias_hh=dh_proj.sum(0))
        return dx_proj @ self.weight_ih, dh_next * z + dh_proj @ self.weight_hh, grads""",
    "rnn": """dz = dh_next * (1 - h_next**2)
        grads = {"weight_ih": dz.T @ input, "weight_hh": dz.T @ h}
        if self.bias_ih is not None:
            grads["bias_ih"] = grads["bias_hh"] = dz.sum(0)
        return dz @ self.weight_ih, dz @ self.weight_hh, grads""",
}
BPTT_SOLUTION = """starts = [hx]
    for x in inputs[:-1]:
        starts.append(cell(x, starts[-1]))
    carried, total, grad_inputs = grad_last, {}, []
    for t in reversed(range(len(inputs))):
        if isinstance(carried, tuple):
            grad_out = (carried[0] + grad_outputs[t], carried[1])
        else:
            grad_out = carried + grad_outputs[t]
        dx, carried, step = cell.step_backward(inputs[t], starts[t], grad_out)
        grad_inputs.insert(0, dx)
        total = {name: total.get(name, 0) + g for name, g in step.items()}
    return torch.stack(grad_inputs), carried, total"""


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_backward_template_filled_in_passes(kind, tmp_path):
    lines = template(f"{kind}-backward").splitlines()
    raises = [k for k, line in enumerate(lines) if "raise NotImplementedError" in line]
    lines[raises[0]] = "        " + STEP_SOLUTIONS[kind]
    lines[raises[1]] = "    " + BPTT_SOLUTION
    path = tmp_path / f"my_{kind}.py"
    path.write_text("\n".join(lines) + "\n")
    report = check_file(str(path))
    assert report.equal, str(report)
    assert any(line.startswith("backward_through_time:") for line in report.checked)
    path.write_text(path.read_text().replace("dx, carried, step", "dx, _, step"))  # now forget to carry
    report = check_file(str(path))
    assert [m.name for m in report.mistakes] == ["no_carry"], str(report)


def test_cli_checks_the_backward(plant):
    run = lambda *args: subprocess.run([sys.executable, "-m", "cells.check", *args], cwd=ROOT, capture_output=True,
                                       text=True, timeout=120)
    good = run("cells/lstm.py:LSTMCell")
    assert good.returncode == 0 and "backward_through_time: the gradients" in good.stdout, good.stdout + good.stderr
    bad = run(str(plant("lstm_backward.py", "dprev_c = dcell * f", "dprev_c = dcell")))
    assert bad.returncode == 1 and "Diagnosis: the gradient sent back to c is missing ⊙ f" in bad.stdout


def test_training_a_learner_cell_does_not_need_its_backward(tmp_path, capsys):
    """`python -m train --cell-class` trains with autograd: a backward still to write is no obstacle."""
    from train import cli

    path = tmp_path / "my_lstm.py"
    path.write_text(template("lstm-backward"))
    args = ["sine", "--out", str(tmp_path / "run"), "--hidden", "4", "--epochs", "1", "--train-size", "16",
            "--test-size", "8", "--seq-len", "15", "--batch-size", "8", "--device", "cpu", "--quiet", "--no-plots",
            "--cell-class", str(path)]
    assert cli.main(args) == 0
    assert "equals torch.nn.LSTMCell" in capsys.readouterr().err


def test_grad_inputs_as_a_list_of_steps_is_taken(plant):
    """One gradient per step in a list, as a loop collects them: stacked, and checked as (T, B, I)."""
    report = check_file(str(plant("rnn_backward.py", "return torch.stack(dxs), dh_next, dW", "return dxs, dh_next, dW")))
    assert report.equal, str(report)
