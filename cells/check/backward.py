"""The backward check: a learner's `step_backward` and `backward_through_time` against autograd.

Run after the forward check has found the cell equal to torch.nn's, on cells that define

    step_backward(input, hx, grad_out) -> (grad_input, grad_hx, grads)
    backward_through_time(cell, inputs, hx, grad_outputs, grad_last) -> (grad_inputs, grad_hx, grads)

(the second a function of the cell's file; cells/lstm.py and cells/bptt.py are the project's own).
Each returned gradient is compared in float64 with autograd's through torch.nn's cell holding the same
weights — one step at the forward check's sizes, then a sequence of several steps. When they differ,
the report says which gradient (input, h, c, which parameter and gate, at which step) and
`backward_mistakes` names the classic mistake that reproduces every number.
"""
import itertools
from collections.abc import Mapping

import torch

from .backward_mistakes import find_loop_mistakes, find_step_mistakes, named_bptt_result
from .forward import DRAWS, SIZES, as_hx, by_gate, pair, random_inputs, sizes_text
from .loading import describe_error, source_file
from .report import EXIT_DIFFERENT, TIGHT, TORCH_CELLS, NotACell

SEQUENCES = [(3, 4, 3, 5), (2, 3, 1, 4)]  # (input, hidden, batch, steps); steps ≥ 3 tell the loop's slips apart
PARAMETERS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def check_backward(cls, kind, nonlinearity, report, backward_through_time=None):
    """The backward check of `cls` (whose forward equals torch's), into `report`. Raises NotACell."""
    source = source_file(cls)
    if not callable(getattr(pair(cls, kind, nonlinearity, 3, 5, seed=0)[0], "step_backward", None)):
        if backward_through_time is not None:
            report.notes.append("the file has backward_through_time but the cell no step_backward; "
                                "backward_through_time(cell, ...) calls cell.step_backward: not checked.")
        return
    report.part = "step_backward"
    if not _steps_equal(cls, kind, nonlinearity, source, report, SIZES, bias=True):
        return
    report.checked.append(_what_the_step_compared(kind, nonlinearity))
    if _takes_bias_false(cls):
        if not _steps_equal(cls, kind, nonlinearity, source, report, SIZES[:2], bias=False, label=", bias=False"):
            return
        report.checked.append(f"step_backward with bias=False: equal at (input, hidden, batch) = "
                              f"{sizes_text(SIZES[:2])}")
    if backward_through_time is None:
        report.part = "forward"
        report.notes.append("no backward_through_time(cell, inputs, hx, grad_outputs, grad_last) in the cell's "
                            "file: only step_backward was checked (`python -m cells.check --template "
                            f"{kind}-backward` shows one to write).")
        return
    report.part = "backward_through_time"
    if _sequences_equal(cls, kind, nonlinearity, backward_through_time, report):
        report.part = "forward"
        report.checked.append("backward_through_time: the gradients of the inputs (every step), of the initial "
                              f"states and of every parameter, against autograd through torch.nn."
                              f"{TORCH_CELLS[kind].__name__} unrolled over (input, hidden, batch, steps) = "
                              + ", ".join("(" + ",".join(map(str, case)) + ")" for case in SEQUENCES))


def _takes_bias_false(cls):
    try:
        cell = cls(3, 5, bias=False)
    except Exception:  # the forward check has noted it
        return False
    return not any(n in cell.state_dict() for n in ("bias_ih", "bias_hh"))


def _what_the_step_compared(kind, nonlinearity):
    reference = TORCH_CELLS[kind].__name__ + (f"(nonlinearity={nonlinearity!r})" if kind == "rnn" else "")
    states = "(h, c)" if kind == "lstm" else "h"
    return (f"step_backward: the gradients of input, {states} and every parameter, against autograd through "
            f"torch.nn.{reference} with the same weights and the same gradients arriving at its outputs, "
            f"float64 to 1e-10, at (input, hidden, batch) = {sizes_text(SIZES)}, {DRAWS} random draws each")


# -- one step ---------------------------------------------------------------------------------


def _steps_equal(cls, kind, nonlinearity, source, report, sizes, bias, label=""):
    """step_backward at every size and draw; on the first difference fill in the diagnosis, return False."""
    for (input_size, hidden_size, batch), draw in itertools.product(sizes, range(DRAWS)):
        seed = 100 * draw + input_size * 10 + hidden_size
        cell, ref = pair(cls, kind, nonlinearity, input_size, hidden_size, seed, bias)
        x, states = random_inputs(kind, input_size, hidden_size, batch, seed)
        _, grad_out = random_inputs(kind, input_size, hidden_size, batch, seed + 1)
        theirs = autograd_step(ref, kind, x, states, grad_out)
        ours = _learner_step(cell, kind, x, states, grad_out, source)
        differences = compare_gradients(kind, ours, theirs)
        if differences:
            report.status = EXIT_DIFFERENT
            report.mistakes = find_step_mistakes(kind, ours, x, states, grad_out, ref.state_dict(), nonlinearity)
            report.differences = [f"at input {input_size}, hidden {hidden_size}, batch {batch}{label}, one step:"]
            report.differences += ["  " + d for d in differences] + _step_hints(kind, ours, theirs, report.mistakes)
            return False
    return True


def autograd_step(ref, kind, x, states, grad_out):
    """Autograd's gradients through one step of torch.nn's cell `ref`, by the check's names."""
    x = x.clone().requires_grad_(True)
    states = tuple(s.clone().requires_grad_(True) for s in states)
    out = ref(x, as_hx(kind, states))
    names, params = zip(*ref.named_parameters())
    grads = torch.autograd.grad(out if isinstance(out, tuple) else (out,), [x, *states, *params], grad_out)
    return dict(zip(["grad input", *(f"grad {s}" for s in ("h", "c")[: len(states)]), *(f"grad {n}" for n in names)],
                    grads))


def _learner_step(cell, kind, x, states, grad_out, source):
    shapes = f"input {tuple(x.shape)}, " + ("hx (h, c) and grad_out (dh', dc'), each " if kind == "lstm"
                                           else "hx and grad_out, each ") + str(tuple(states[0].shape))
    try:
        with torch.no_grad():  # a step_backward that caches what its forward computed finds it
            cell(x.clone(), as_hx(kind, tuple(s.clone() for s in states)))
        result = cell.step_backward(x.clone(), as_hx(kind, tuple(s.clone() for s in states)),
                                    as_hx(kind, tuple(g.clone() for g in grad_out)))
    except Exception as e:
        raise NotACell(f"step_backward({shapes}) raised {describe_error(e, source)}") from None
    expected = ("(grad_input, grad_hx, grads): grad_input (B, I), grad_hx shaped like hx"
                + (" — a tuple (dh, dc) —" if kind == "lstm" else " — dh (B, H) —")
                + " and grads a dict from parameter name to its gradient")
    return _named(result, "step_backward", "input", cell, kind, expected)


def _named(result, function, first, cell, kind, expected):
    """What `function` returned, (grad_<first>, grad_hx, grads), by the check's names, after checking
    its structure: a NotACell saying what was `expected` otherwise."""
    if not (isinstance(result, (tuple, list)) and len(result) == 3):
        raise NotACell(f"{function} returned {_what(result)}; expected {expected}")
    grad_first, grad_hx, grads = result
    named = {f"grad {first}": _tensor(f"grad_{first}", grad_first, expected)}
    named.update(_states("grad_hx", grad_hx, kind, expected))
    named.update(_parameters(cell, grads, "grads"))
    return named


def _what(value):
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def _tensor(name, value, expected):
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        value = torch.stack(list(value))  # one gradient per step, as a list: stacked, as (T, ·)
    if not isinstance(value, torch.Tensor):
        raise NotACell(f"{name} is {_what(value)}, not a tensor; expected {expected}")
    return value.detach().to(torch.float64)


def _states(name, value, kind, expected):
    """The gradient of the states (a tuple (dh, dc) for the LSTM, dh otherwise) by the check's names."""
    if kind == "lstm":
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise NotACell(f"{name} is {_what(value)}; for an LSTM it is a tuple (dh, dc) of two tensors, "
                           f"like hx = (h, c)")
        return {"grad h": _tensor(f"{name}[0] (dh)", value[0], "(dh, dc)"),
                "grad c": _tensor(f"{name}[1] (dc)", value[1], "(dh, dc)")}
    return {"grad h": _tensor(name, value, expected)}


def _parameters(cell, grads, name):
    """The parameters' gradients by the check's names, after checking they are one per parameter."""
    params = [n for n, _ in cell.named_parameters()]
    if not isinstance(grads, Mapping):
        raise NotACell(f"{name} is {_what(grads)}; expected a dict from parameter name to its gradient: "
                       + ", ".join(params))
    missing = [n for n in params if n not in grads]
    unexpected = [str(n) for n in grads if n not in params]
    if missing or unexpected:
        said = [f"lacks {', '.join(missing)}" if missing else "",
                f"has {', '.join(unexpected)}, which the cell has not" if unexpected else ""]
        raise NotACell(f"{name} {'; '.join(s for s in said if s)}: it must hold one gradient per parameter, "
                       f"by the parameter's name: {', '.join(params)}")
    return {f"grad {n}": _tensor(f"{name}[{n!r}]", grads[n], "a tensor shaped like the parameter") for n in params}


def compare_gradients(kind, ours, theirs, steps=False):
    """Lines saying which of `ours` differ from `theirs` (both by the check's names), and how.

    steps: "grad inputs" is (T, B, I), said step by step."""
    lines = []
    for name, expected in theirs.items():
        got = ours[name]
        if got.shape != expected.shape:
            line = f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
            if got.dim() == 2 and tuple(got.shape) == tuple(expected.shape)[::-1]:
                line += " (it is transposed)"
            lines.append(line)
            continue
        if torch.allclose(got, expected, **TIGHT):
            continue
        delta = (got - expected).abs()
        line = f"{name} differs: max |Δ| = {delta.max().item():.3g}"
        if steps and name == "grad inputs":
            worst = delta.flatten(1).max(1).values
            wrong = [t for t in range(len(worst)) if worst[t] > TIGHT["atol"] + TIGHT["rtol"] * expected[t].abs().max()]
            line = (f"grad inputs differs at step{'s' if len(wrong) > 1 else ''} {', '.join(map(str, wrong))} of "
                    f"0–{len(worst) - 1}: max |Δ| = {delta.max().item():.3g}")
        elif name.removeprefix("grad ") in PARAMETERS and kind != "rnn":
            line += " — " + by_gate(kind, delta)
        lines.append(line)
    return lines


def _step_hints(kind, ours, theirs, mistakes):
    if mistakes:
        return []
    equal = {n for n, t in theirs.items() if ours[n].shape == t.shape and torch.allclose(ours[n], t, **TIGHT)}
    z = "dz" if kind != "gru" else "dx_proj and dh_proj"
    if {"grad input", "grad h"} <= equal:
        return [f"grad input and grad h are right, so {z} (the gates' pre-activation gradients) are: look at how "
                f"the parameters' gradients are made from them, dW = {z}ᵀ x or h, db = Σ over the batch."]
    if kind == "lstm" and "grad c" not in equal and "grad input" in equal:
        return ["grad input is right but grad c is not: dc = dc' ⊙ f, with dc' the whole gradient at c' "
                "(what arrived plus what came through h')."]
    return []


# -- a sequence -------------------------------------------------------------------------------


def _sequences_equal(cls, kind, nonlinearity, backward_through_time, report):
    source = getattr(getattr(backward_through_time, "__code__", None), "co_filename", None)
    for draw, (input_size, hidden_size, batch, steps) in enumerate(SEQUENCES):
        seed = 1000 + draw
        cell, ref = pair(cls, kind, nonlinearity, input_size, hidden_size, seed)
        gen = torch.Generator().manual_seed(seed)
        inputs = torch.randn(steps, batch, input_size, generator=gen, dtype=torch.float64)
        states = tuple(torch.randn(batch, hidden_size, generator=gen, dtype=torch.float64)
                       for _ in range(2 if kind == "lstm" else 1))
        grad_outputs = torch.randn(steps, batch, hidden_size, generator=gen, dtype=torch.float64)
        grad_last = tuple(torch.randn(batch, hidden_size, generator=gen, dtype=torch.float64) for _ in states)
        theirs = autograd_through_time(ref, kind, inputs, states, grad_outputs, grad_last)
        ours = _learner_sequence(backward_through_time, cell, kind, inputs, states, grad_outputs, grad_last, source)
        differences = compare_gradients(kind, ours, theirs, steps=True)
        if differences:
            report.status = EXIT_DIFFERENT
            report.mistakes = find_loop_mistakes(kind, ours, cell, inputs, as_hx(kind, states), grad_outputs,
                                                 as_hx(kind, grad_last))
            report.differences = [f"at input {input_size}, hidden {hidden_size}, batch {batch}, {steps} steps "
                                  f"(grad h{' and grad c' if kind == 'lstm' else ''}: of the initial state):"]
            report.differences += ["  " + d for d in differences]
            return False
    return True


def autograd_through_time(ref, kind, inputs, states, grad_outputs, grad_last):
    """Autograd's gradients through torch.nn's cell `ref` unrolled over inputs (T, B, I), with the loss
    Σ_t grad_outputs[t] · h_t + grad_last · (final states), by the check's names."""
    inputs = inputs.clone().requires_grad_(True)
    states = tuple(s.clone().requires_grad_(True) for s in states)
    state, loss = as_hx(kind, states), 0
    for t in range(len(inputs)):
        state = ref(inputs[t], state)
        finals = state if isinstance(state, tuple) else (state,)
        loss = loss + (finals[0] * grad_outputs[t]).sum()
    loss = loss + sum((s * g).sum() for s, g in zip(finals, grad_last))
    names, params = zip(*ref.named_parameters())
    grads = torch.autograd.grad(loss, [inputs, *states, *params])
    return named_bptt_result(grads[0], tuple(grads[1: 1 + len(states)]),
                             dict(zip(names, grads[1 + len(states):])))


def _learner_sequence(backward_through_time, cell, kind, inputs, states, grad_outputs, grad_last, source):
    try:
        result = backward_through_time(cell, inputs.clone(), as_hx(kind, tuple(s.clone() for s in states)),
                                       grad_outputs.clone(), as_hx(kind, tuple(g.clone() for g in grad_last)))
    except Exception as e:
        raise NotACell(f"backward_through_time(cell, inputs {tuple(inputs.shape)}, hx, grad_outputs "
                       f"{tuple(grad_outputs.shape)}, grad_last) raised {describe_error(e, source)}") from None
    expected = ("(grad_inputs, grad_hx, grads): grad_inputs (T, B, I), grad_hx shaped like hx, grads a dict "
                "from parameter name to its gradient summed over the steps")
    return _named(result, "backward_through_time", "inputs", cell, kind, expected)
