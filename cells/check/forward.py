"""The forward check: the learner's cell against the matching torch.nn cell holding the same weights.

It copies the weights of torch.nn's cell into the learner's through `state_dict` (strict) and
compares, in float64, h' (and c') and autograd's gradients of the input, of the states and of every
parameter over several sizes and random inputs, then runs `gradcheck` and tries `bias=False`. When
the numbers differ, `mistakes` recomputes torch's step with the learner's weights and each classic
mistake in turn, and names the one that reproduces them. `hx=None` and unbatched input are
conveniences: only noted when missing.
"""
import contextlib
import itertools

import torch
from torch import nn

from .loading import describe_error, source_file
from .mistakes import GATES, find_mistakes, rows
from .report import EXIT_DIFFERENT, EXIT_EQUAL, TIGHT, TORCH_CELLS, NotACell, Report

KIND_OF_GATES = {1: "rnn", 4: "lstm", 3: "gru"}
SIZES = [(3, 5, 4), (5, 5, 1), (1, 1, 2), (6, 2, 3)]  # (input, hidden, batch); the first is diagnosed
DRAWS = 2  # random weights and inputs per size


def _construct(cls, input_size, hidden_size, **kwargs):
    args = ", ".join([str(input_size), str(hidden_size)] + [f"{k}={v}" for k, v in kwargs.items()])
    try:
        cell = cls(input_size, hidden_size, **kwargs)
    except Exception as e:
        if kwargs:
            raise
        raise NotACell(f"{cls.__name__}({args}) raised {describe_error(e, source_file(cls))}\n"
                       f"expected: the constructor of torch's cells, {cls.__name__}(input_size, hidden_size, "
                       f"bias=True)") from None
    if not isinstance(cell, nn.Module):
        raise NotACell(f"{cls.__name__}({args}) is a {type(cell).__name__}, not a torch.nn.Module")
    return cell.double()


def expected_shapes(kind, input_size, hidden_size, bias=True):
    """torch's parameter names and shapes for a cell of `kind`."""
    G = len(GATES[kind])
    shapes = {"weight_ih": (G * hidden_size, input_size), "weight_hh": (G * hidden_size, hidden_size)}
    if bias:
        shapes.update(bias_ih=(G * hidden_size,), bias_hh=(G * hidden_size,))
    return shapes


def _describe_expected(kind, input_size, hidden_size, bias=True):
    G = len(GATES[kind])
    g = "" if G == 1 else f"{G}·"
    symbolic = {"weight_ih": f"({g}H, I)", "weight_hh": f"({g}H, H)", "bias_ih": f"({g}H,)", "bias_hh": f"({g}H,)"}
    ref = TORCH_CELLS[kind].__name__
    parts = [f"{n} {symbolic[n]} = {s}" for n, s in expected_shapes(kind, input_size, hidden_size, bias).items()]
    return f"expected, like torch.nn.{ref}({input_size}, {hidden_size}): " + ", ".join(parts)


def detect_kind(cell, input_size, hidden_size, kind=None):
    """The kind ("rnn", "lstm", "gru") from weight_ih's rows, or `kind` if given; checks every shape."""
    state = cell.state_dict()
    if kind is None:
        if "weight_ih" not in state:
            raise NotACell(_names_problem(cell, "lstm", input_size, hidden_size, "has no parameter weight_ih"))
        rows_ih = state["weight_ih"].shape[0] if state["weight_ih"].dim() == 2 else -1
        kind = KIND_OF_GATES.get(rows_ih // hidden_size) if rows_ih % hidden_size == 0 else None
        if kind is None:
            shape = tuple(state["weight_ih"].shape)
            raise NotACell(
                f"weight_ih has shape {shape} with hidden_size={hidden_size}: its rows should be 1, 4 or 3 × "
                f"hidden_size (RNN, LSTM, GRU) and its columns input_size={input_size}"
                + _transposed_hint(shape, input_size, hidden_size))
    _check_parameters(cell, kind, input_size, hidden_size, bias=True)
    return kind


def _transposed_hint(shape, input_size, hidden_size):
    if len(shape) == 2 and shape[0] in (input_size, hidden_size) and shape[1] % hidden_size == 0:
        return (f".\nIt looks transposed: torch stores weights as (out, in), weight_ih ({shape[1]}, {shape[0]}), "
                f"and computes x @ weight_ih.T (F.linear(x, weight_ih, bias_ih)).")
    return ""


def _names_problem(cell, kind, input_size, hidden_size, what, bias=True):
    found = ", ".join(f"{n} {tuple(t.shape)}" for n, t in cell.state_dict().items()) or "none"
    hint = ""
    if any("." in n for n in cell.state_dict()):
        hint = ("\nhint: submodules such as nn.Linear add their own names (ih.weight); hold the weights as "
                "nn.Parameter attributes, as `python -m cells.check --template " + kind + "` does")
    return (f"the cell {what}.\n{_describe_expected(kind, input_size, hidden_size, bias)}\n"
            f"found: {found}{hint}")


def _check_parameters(cell, kind, input_size, hidden_size, bias):
    """The cell's state_dict must have exactly torch's names and shapes (it is loaded strictly)."""
    state = {n: tuple(t.shape) for n, t in cell.state_dict().items()}
    expected = expected_shapes(kind, input_size, hidden_size, bias)
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    wrong = [n for n in expected if n in state and state[n] != expected[n]]
    if missing or unexpected or wrong:
        said = [f"lacks {', '.join(missing)}" if missing else "",
                f"has {', '.join(unexpected)}, which torch's cell has not" if unexpected else "",
                "has " + ", ".join(f"{n} of shape {state[n]}" for n in wrong) if wrong else ""]
        message = _names_problem(cell, kind, input_size, hidden_size, "; ".join(s for s in said if s), bias)
        if "weight_ih" in wrong:
            message += _transposed_hint(state["weight_ih"], input_size, hidden_size)
        raise NotACell(message)


def pair(cls, kind, nonlinearity, input_size, hidden_size, seed, bias=True):
    """The learner's cell holding the weights of a freshly initialised torch.nn cell, and that cell."""
    torch.manual_seed(seed)
    extra = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    ref = TORCH_CELLS[kind](input_size, hidden_size, bias=bias, dtype=torch.float64, **extra)
    cell = _construct(cls, input_size, hidden_size, **({} if bias else {"bias": False}))
    _check_parameters(cell, kind, input_size, hidden_size, bias)
    cell.load_state_dict(ref.state_dict(), strict=True)
    return cell, ref


# -- running one case ---------------------------------------------------------------------------


def random_inputs(kind, input_size, hidden_size, batch, seed):
    """x (B, I) and the states ((h,) or (h, c), each (B, H)); batch 0 means unbatched."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    shape = (batch,) if batch else ()
    x = torch.randn(*shape, input_size, generator=gen, dtype=torch.float64)
    states = tuple(torch.randn(*shape, hidden_size, generator=gen, dtype=torch.float64)
                   for _ in range(2 if kind == "lstm" else 1))
    return x, states


def as_hx(kind, states):
    """The states as forward's hx: (h, c) for an LSTM, h alone otherwise."""
    return tuple(states) if kind == "lstm" else states[0]


def _outputs(out, kind, shape, reference):
    """forward's result as a tuple (h',) or (h', c'), after checking its structure and shapes."""
    what = f"torch.nn.{reference}'s forward returns"
    if kind == "lstm":
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            got = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}"
            raise NotACell(f"forward returned {got}; {what} (h', c'), two tensors of shape {shape}")
        outs, names = tuple(out), ("h'", "c'")
    else:
        if not isinstance(out, torch.Tensor):
            got = f"a tuple of {len(out)}" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}"
            raise NotACell(f"forward returned {got}; {what} h' alone, a tensor of shape {shape}")
        outs, names = (out,), ("h'",)
    for name, t in zip(names, outs):
        if tuple(t.shape) != shape:
            raise NotACell(f"forward returned {name} of shape {tuple(t.shape)}; {what} {name} of shape {shape} "
                           f"(batch, hidden_size)")
    return outs


def _forward(cell, kind, x, states, source, reference):
    try:
        out = cell(x, as_hx(kind, states))
    except Exception as e:
        shapes = f"input {tuple(x.shape)}, hx " + (
            f"(h {tuple(states[0].shape)}, c {tuple(states[1].shape)})" if kind == "lstm" else str(tuple(states[0].shape)))
        hint = ""
        if "multiplied" in str(e) or "size mismatch" in str(e) or "shape" in str(e):
            hint = ("\nhint: torch's weights are (out, in): W_ih x is x @ weight_ih.T, or "
                    "F.linear(x, weight_ih, bias_ih); W_hh h is h @ weight_hh.T")
        raise NotACell(f"forward({shapes}) raised {describe_error(e, source)}{hint}") from None
    return _outputs(out, kind, tuple(states[0].shape), reference)


def _run_case(cell, kind, x, states, source, reference):
    """The outputs and the gradients of a fixed random weighting of them, by name."""
    x = x.clone().requires_grad_(True)
    states = tuple(s.clone().requires_grad_(True) for s in states)
    outs = _forward(cell, kind, x, states, source, reference)
    gen = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64)).sum() for o in outs)
    names, params = zip(*cell.named_parameters())
    wrt = [x, *states, *params]
    grads = [None] * len(wrt)
    if isinstance(loss, torch.Tensor) and loss.requires_grad:
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(wrt, grads)]
    state_names = ("h", "c")[: len(states)]
    result = dict(zip(("h'", "c'"), (o.detach() for o in outs)))
    result.update(zip(["grad input", *(f"grad {s}" for s in state_names), *(f"grad {n}" for n in names)], grads))
    return result


def _compare(kind, ours, theirs):
    """Lines saying where `ours` differs from `theirs` (both from _run_case), in that order."""
    lines = []
    for name, expected in theirs.items():
        got = ours[name].to(expected.dtype)
        if torch.allclose(got, expected, **TIGHT):
            continue
        delta = (got - expected).abs()
        line = f"{name} differs: max |Δ| = {delta.max().item():.3g}"
        parameter = name.removeprefix("grad ")
        if parameter in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") and kind != "rnn":
            line += " — " + by_gate(kind, delta)
        elif delta.dim() == 2:
            row, unit = divmod(int(delta.argmax()), delta.shape[1])
            line += f" (largest at batch row {row}, unit {unit})" if name in ("h'", "c'") else ""
        lines.append(line)
    return lines


def by_gate(kind, delta):
    """Which gates' row slices of a stacked parameter's gradient differ, and by how much."""
    gates = GATES[kind]
    said = []
    for k, (gate, block) in enumerate(zip(gates, delta.chunk(len(gates), 0))):
        worst = block.max().item()
        state = f"{worst:.3g}" if worst > TIGHT["atol"] else "equal"
        said.append(f"{gate} [{rows(k, len(gates))}] {state}")
    return "by gate: " + ", ".join(said)


@contextlib.contextmanager
def float64_everywhere():
    """float64 as the default dtype (tensors the learner creates in forward follow it), and the
    caller's random state left untouched."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_default_dtype(before)


def check_forward(cls, kind, report):
    """The forward check of the class `cls`, into `report`; returns (kind, nonlinearity) when the
    cell equals torch's, None when it differs (the report says how). Raises NotACell."""
    source = source_file(cls)
    input_size, hidden_size, _ = SIZES[0]
    probe = _construct(cls, input_size, hidden_size)
    report.kind = kind = detect_kind(probe, input_size, hidden_size, kind)
    nonlinearity = getattr(probe, "nonlinearity", "tanh")
    nonlinearity = nonlinearity if nonlinearity in ("tanh", "relu") else "tanh"
    try:
        if not _compare_sizes(cls, kind, nonlinearity, source, report, SIZES, bias=True):
            return None
    except NotACell as error:
        if not _only_square(cls, kind, nonlinearity, source, report, error):
            raise
        return None
    report.checked.append(_what_was_compared(kind, nonlinearity, probe))
    if not _gradcheck(cls, kind, nonlinearity, source, report):
        return None
    _check_without_bias(cls, kind, nonlinearity, source, report)
    if report.status != EXIT_EQUAL:
        return None
    _note_conveniences(cls, kind, nonlinearity, source, report)
    return kind, nonlinearity


def _what_was_compared(kind, nonlinearity, cell):
    reference = TORCH_CELLS[kind].__name__ + (f"(nonlinearity={nonlinearity!r})" if kind == "rnn" else "")
    states = "h, c" if kind == "lstm" else "h"
    outputs = "h' and c'" if kind == "lstm" else "h'"
    params = ", ".join(n for n, _ in cell.named_parameters())
    sizes = sizes_text(SIZES)
    return (f"{outputs} and the gradients of input, {states}, {params}, against torch.nn.{reference} "
            f"holding the same weights (state_dict, strict), in float64 to 1e-10, for (input, hidden, batch) "
            f"= {sizes}, {DRAWS} random draws each")


def sizes_text(sizes):
    return ", ".join("(" + ",".join(str(n) for n in size) + ")" for size in sizes)  # unbroken when wrapped


def _compare_sizes(cls, kind, nonlinearity, source, report, sizes, bias, label=""):
    """Compare at every size and draw; on the first difference fill in the diagnosis, return False."""
    reference = TORCH_CELLS[kind].__name__
    for (input_size, hidden_size, batch), draw in itertools.product(sizes, range(DRAWS)):
        seed = 100 * draw + input_size * 10 + hidden_size
        cell, ref = pair(cls, kind, nonlinearity, input_size, hidden_size, seed, bias)
        x, states = random_inputs(kind, input_size, hidden_size, batch, seed)
        ours = _run_case(cell, kind, x, states, source, reference)
        theirs = _run_case(ref, kind, x, states, source, reference)
        differences = _compare(kind, ours, theirs)
        if differences:
            where = f"input {input_size}, hidden {hidden_size}, batch {batch}{label}"
            _diagnose(report, kind, nonlinearity, where, differences, ours, theirs, x, states, ref.state_dict())
            return False
    return True


def _diagnose(report, kind, nonlinearity, where, differences, ours, theirs, x, states, params):
    """Fill in the report for a case where the learner's numbers differ from torch's."""
    report.status = EXIT_DIFFERENT
    outs = tuple(ours[n] for n in ("h'", "c'") if n in ours)
    report.mistakes = find_mistakes(kind, outs, x, states, params, nonlinearity)
    if report.mistakes:  # the outputs say enough; every gradient differs with them
        differences = [d for d in differences if not d.startswith("grad")] or differences
    report.differences = [f"at {where}:"] + ["  " + d for d in differences]
    report.differences += _hints(kind, ours, theirs, report.mistakes)


def _only_square(cls, kind, nonlinearity, source, report, error):
    """A forward that raises on input_size != hidden_size may run when they are equal: a weight used
    transposed. True when that is what happened (report filled in), else the error stands."""
    square = [(SIZES[0][1], SIZES[0][1], SIZES[0][2])]  # input = hidden
    attempt = Report(report.name, kind)
    try:
        equal = _compare_sizes(cls, kind, nonlinearity, source, attempt, square, bias=True)
    except NotACell:
        return False
    if equal or not attempt.mistakes:
        return False
    report.status, report.mistakes = attempt.status, attempt.mistakes
    report.differences = ([f"with input_size != hidden_size your forward raises: {str(error).splitlines()[0]}"]
                          + attempt.differences)
    return True


def _hints(kind, ours, theirs, mistakes):
    if mistakes:
        return []
    outputs_equal = all(torch.allclose(ours[n], theirs[n], **TIGHT) for n in ("h'", "c'") if n in theirs)
    if outputs_equal:
        return ["Your outputs are right but a gradient is not: something cuts or changes the backward pass "
                "(.detach(), .data, torch.no_grad(), an in-place op on a tensor autograd needs, a custom "
                "autograd.Function)."]
    if kind == "lstm" and torch.allclose(ours["c'"], theirs["c'"], **TIGHT):
        return ["c' is right, so i, f, g and the cell update are; look at o and at h' = o ⊙ tanh(c')."]
    return []


def _gradcheck(cls, kind, nonlinearity, source, report):
    """torch.autograd.gradcheck through the learner's cell, w.r.t. input, states and parameters."""
    cell, _ = pair(cls, kind, nonlinearity, 2, 3, seed=7)
    x, states = random_inputs(kind, 2, 3, 2, seed=7)
    names = [n for n, _ in cell.named_parameters()]
    reference = TORCH_CELLS[kind].__name__

    def through_cell(x, *rest):
        values = dict(zip(names, rest[len(states):]))
        out = torch.func.functional_call(cell, values, (x, as_hx(kind, rest[: len(states)])))
        return _outputs(out, kind, tuple(x.shape[:1]) + (3,), reference)

    inputs = (x, *states, *(p.detach().clone() for p in cell.parameters()))
    inputs = tuple(t.requires_grad_(True) for t in inputs)
    try:
        ok = torch.autograd.gradcheck(through_cell, inputs, raise_exception=False)
    except NotACell:
        raise
    except Exception as e:
        ok, why = False, f": {describe_error(e, source)}"
    else:
        why = ""
    if ok:
        report.checked.append("gradcheck: autograd's gradients through your cell equal finite differences "
                              "(input, states and every parameter)")
        return True
    report.status = EXIT_DIFFERENT
    report.differences.append(f"gradcheck failed{why}: the gradients autograd computes through your cell "
                              f"do not match finite differences")
    return False


def _check_without_bias(cls, kind, nonlinearity, source, report):
    """bias=False, if the constructor takes it: a difference there is a difference; its absence a note."""
    reference = TORCH_CELLS[kind].__name__
    try:
        cell = cls(3, 5, bias=False)
    except Exception as e:
        report.notes.append(f"{cls.__name__}(3, 5, bias=False) raised {describe_error(e).splitlines()[0]}; torch's "
                            f"cells take bias=False (no bias_ih, bias_hh). Optional.")
        return
    if any(n in cell.state_dict() for n in ("bias_ih", "bias_hh")):
        report.notes.append(f"{cls.__name__}(3, 5, bias=False) still has bias_ih/bias_hh; torch.nn.{reference}"
                            f"(..., bias=False) has none (register_parameter('bias_ih', None)). Optional.")
        return
    if _compare_sizes(cls, kind, nonlinearity, source, report, SIZES[:2], bias=False, label=", bias=False"):
        report.checked.append(f"bias=False: equal to torch.nn.{reference}(..., bias=False) at "
                              f"(input, hidden, batch) = {sizes_text(SIZES[:2])}")


def _note_conveniences(cls, kind, nonlinearity, source, report):
    """hx=None and unbatched input, which torch's cells accept; a note when the learner's do not."""
    reference = TORCH_CELLS[kind].__name__
    cell, ref = pair(cls, kind, nonlinearity, 3, 5, seed=11)
    x, states = random_inputs(kind, 3, 5, 4, seed=11)
    tries = {
        "hx=None": (lambda c: c(x, None), "torch's cells start from zeros when hx is None"),
        "unbatched input": (lambda c: c(x[0], as_hx(kind, tuple(s[0] for s in states))),
                            "torch's cells also take input (I,) with hx (H,)"),
    }
    for what, (call, torch_does) in tries.items():
        expected = call(ref)
        expected = expected if isinstance(expected, tuple) else (expected,)
        try:
            got = _outputs(call(cell), kind, tuple(expected[0].shape), reference)
            same = all(torch.allclose(g, e, **TIGHT) for g, e in zip(got, expected))
            problem = None if same else "gives other numbers than torch's"
        except NotACell as e:
            problem = str(e).splitlines()[0]
        except Exception as e:
            problem = f"raised {describe_error(e, source).splitlines()[0]}"
        if problem:
            report.notes.append(f"{what}: your cell {problem}; {torch_does}. Optional — the verdict "
                                f"does not depend on it.")
        else:
            report.checked.append(f"{what}: equal")


