"""`python -m benchmarks.profile`: where the time of one training step goes, ours and torch.nn's.

A training step of one layer (forward, then the gradients of the input and of every parameter, as
`benchmarks.run.train_step`) runs under `torch.profiler` a few times after a warm-up, and every op's
own time (not its children's) goes to one of these parts:

    input projection          x W_ihᵀ + b for all steps at once (ours: one matmul before the time loop,
                              torch.mm or the compiled kernels' own (models.cpu_kernels.own_matmul);
                              the LSTM's kernel computes a narrow input's projection in its loop)
    time loop                 the recurrence itself: ours, one compiled call forwards and one
                              backwards, which the next two lines split; torch.nn's LSTM, oneDNN's
                              LSTM primitive (input projection, recurrent matmuls and gate math
                              inside one call, so it is shown as one part)
      recurrent matmuls       h_prev W_hhᵀ and dz W_hh, every step
      gate math               σ, tanh and the products of the gates, every step, both passes
    weight-gradient matmuls   dW_hh = dZᵀ H_prev, dW_ih = dZᵀ X and dx = dZ W_ih (ours: one matmul
                              each after the loop; torch.nn's GRU: per step, inside autograd)
    everything else           copies, sums of the bias gradients, allocation, autograd, Python

torch.nn's GRU runs ATen ops step by step, so its parts come straight from the profile: matmuls by
shape (the input projection is the one over all T·B rows) and pass, pointwise ops as gate math. For
ours the profiler sees the compiled loop as one op; its split into recurrent matmuls and gate math
comes from timing the gate math alone — the per-step kernels of `models.cpu_kernels`, on the same
rows, on one thread, divided by the threads the loop shares a step among — and is marked as an
estimate.

Example: python -m benchmarks.profile --cells lstm,gru --shapes 64,28,28,128 1,100,512,512
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils import benchmark

from models import cpu_kernels
from models.kinds import KINDS

from . import report
from .run import CELLS, Shape, choice_list, make_inputs, make_layers, parse_shape, positive, train_step

DEFAULT_SHAPES = (Shape(64, 28, 28, 128), Shape(1, 100, 512, 512))
PARTS = ("input projection", "time loop", "recurrent matmuls", "gate math", "weight-gradient matmuls",
         "everything else")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm")
POINTWISE = ("aten::sigmoid", "aten::tanh", "aten::mul", "aten::add", "aten::sub", "aten::rsub", "aten::addcmul",
             "aten::sigmoid_backward", "aten::tanh_backward", "aten::lerp", "aten::mul_", "aten::add_",
             "aten::sigmoid_", "aten::tanh_", "aten::neg", "aten::unsafe_chunk", "aten::chunk")
ONEDNN = ("aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward")
OUR_LOOPS = ("LSTMFunction", "GRUFunction", "RNNFunction", "LSTMFunctionBackward", "GRUFunctionBackward",
             "RNNFunctionBackward")


def in_backward(event) -> bool:
    """Whether a profiler event ran inside autograd's backward (an ancestor is an engine call)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("autograd::engine::evaluate_function"):
            return True
        parent = parent.cpu_parent
    return False


def part_of(event, impl: str, cell: str, batch: int, rows: int) -> str:
    """Which part of PARTS an op's own time belongs to (ours: before the time loop is split).

    Matmuls are told apart by shape: one over all T·B rows is the input projection (forward) or its
    gradients dx, dW_ih (backward); in torch.nn's per-step backward, one that keeps the batch rows,
    (B, G·H)(G·H, H), is the recurrence's dh_prev and one that sums over them, (G·H, B)(B, H), a step's
    dW_hh.
    """
    name = event.name
    if name in ONEDNN or name in OUR_LOOPS:
        return "time loop"
    if name == cpu_kernels.MATMUL_EVENT:  # ours, where it does not run torch.mm: no shapes, but its place
        return "weight-gradient matmuls" if in_backward(event) else "input projection"
    if name in MATMULS:
        shapes = [s for s in (event.input_shapes or []) if s and len(s) == 2]
        over_all_rows = any(rows in s for s in shapes)
        if in_backward(event):
            if impl == "ours" or over_all_rows or not shapes:
                return "weight-gradient matmuls"
            return "recurrent matmuls" if shapes[-2][0] == batch else "weight-gradient matmuls"
        return "input projection" if over_all_rows else "recurrent matmuls"
    if name in POINTWISE and impl == "torch" and cell != "lstm":
        return "gate math"
    return "everything else"


def profile_step(layer, inputs, cell: str, steps: int) -> Dict[str, float]:
    """Milliseconds per training step in each part, from `steps` profiled steps after a warm-up."""
    for _ in range(2):
        train_step(layer, inputs)
    T, B = inputs.x.shape[:2]
    impl = "torch" if type(layer).__module__.startswith("torch.") else "ours"
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            train_step(layer, inputs)
    totals = defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CPU:
            totals[part_of(event, impl, cell, B, T * B)] += event.self_cpu_time_total / 1e3 / steps
    return dict(totals)


def gate_math_ms(cell: str, shape: Shape, dtype: torch.dtype) -> Optional[float]:
    """Our gate math of one training step (both passes), timed alone on one thread: the per-step
    kernels of models.cpu_kernels on a step's rows, T times. None where the kernels did not build."""
    from models import cpu_kernels

    if not cpu_kernels.available():
        return None
    B, T, _, H = shape
    new = lambda *size: torch.randn(*size, dtype=dtype) * 0.5  # noqa: E731
    if cell == "lstm":
        z, c_prev, c, m, k, dm, dz = new(B, 4 * H), new(B, H), new(B, H), new(B, H), new(B, 5 * H), new(B, H), new(B, 4 * H)
        acts, dc = new(B, 4 * H), new(B, H)
        stmt = ("cpu_kernels.lstm_forward_step(z, c_prev, c, m, k); "
                "cpu_kernels.lstm_backward_step(dm, dm, dc, k, acts, dz)")
    elif cell == "gru":
        hh, x, h_prev, rz, n, h = new(B, 3 * H), new(B, 3 * H), new(B, H), new(B, 2 * H), new(B, H), new(B, H)
        bias, dh, d_hh, d_xn = new(3 * H), new(B, H), new(B, 3 * H), new(B, H)
        stmt = ("cpu_kernels.gru_forward_step(hh, x, bias, h_prev, rz, n, h); "
                "cpu_kernels.gru_backward_step(dh, h, rz, n, hh, h_prev, d_hh, d_xn)")
    else:
        h = new(B, H)
        stmt = "cpu_kernels.tanh_(h); h.mul(h)"
    timer = benchmark.Timer(stmt, globals={**locals(), "cpu_kernels": cpu_kernels}, num_threads=1)
    w_hh = torch.empty(KINDS[cell].gates * H, H, dtype=dtype, device="meta")
    threads, _ = cpu_kernels.split(B, w_hh)  # the sequence kernels share each step's gate math among these
    return timer.blocked_autorange(min_run_time=0.3).median * 1e3 * T / threads


def profile_case(cell: str, shape: Shape, steps: int, dtype: torch.dtype) -> Dict[str, Dict[str, float]]:
    """{"torch": parts, "ours": parts} for one cell and shape."""
    layers = make_layers(cell, shape, ["ours"], torch.device("cpu"), dtype)
    inputs = make_inputs(cell, shape, torch.device("cpu"), dtype)
    result = {impl: profile_step(layers[impl], inputs, cell, steps) for impl in ("torch", "ours")}
    for impl, parts in result.items():  # the step timed without the profiler, whose cost is per op
        timer = benchmark.Timer("train_step(layer, inputs)", globals={"train_step": train_step,
                                                                     "layer": layers[impl], "inputs": inputs},
                                num_threads=torch.get_num_threads())  # the Timer's own default is one thread
        parts["timed"] = timer.blocked_autorange(min_run_time=0.5).median * 1e3
    gates = gate_math_ms(cell, shape, dtype)
    ours = result["ours"]
    if gates is not None and ours.get("time loop", 0) > 0:
        gates = min(gates, ours["time loop"])
        ours["gate math"] = gates
        ours["recurrent matmuls"] = ours["time loop"] - gates
        ours["estimated"] = True
    return result


def total(parts: Dict[str, float]) -> float:
    """The step's time: every part once (an estimated split of the time loop is not added again)."""
    split = ("recurrent matmuls", "gate math") if parts.get("estimated") else ()
    return sum(v for k, v in parts.items() if k in PARTS and k not in split)


def markdown(results: List[tuple], info: Dict[str, object]) -> str:
    lines = [f"# Where a training step's time goes: {info['detail']}", "",
             f"- torch {info['torch']}, Python {info['python']}, float32, {info['date']}",
             f"- command: `{info['command']}`",
             "- ms per training step (forward + gradients of the input and every parameter), own time of "
             "each op under `torch.profiler`, averaged over the profiled steps; share of the step in brackets",
             "- ours: `time loop` is the compiled forward and backward loops; its split into recurrent "
             "matmuls and gate math (marked ≈) times the gate math alone (models.cpu_kernels' per-step "
             "kernels on one thread, divided by the threads the loop uses) and gives the rest to the matmuls",
             "- torch.nn's LSTM: oneDNN's LSTM primitive does input projection, recurrent matmuls and gate "
             "math inside one call each way (`time loop`); torch.nn's GRU runs ATen ops per step",
             "- the profiler costs something per op, so a path of many small ops (torch.nn's GRU: several a "
             "step, each way) profiles slower than it runs: the last row times the same step without it "
             "(`torch.utils.benchmark`, median)"]
    for cell, shape, parts in results:
        lines += ["", f"## {cell.upper()} {shape}", "", "| part | torch.nn ms | ours ms |", "| --- | ---: | ---: |"]
        totals = {impl: total(parts[impl]) for impl in ("torch", "ours")}
        for part in PARTS:
            cells = []
            for impl in ("torch", "ours"):
                value = parts[impl].get(part)
                if value is None:
                    cells.append("–")
                    continue
                mark = "≈ " if parts[impl].get("estimated") and part in ("recurrent matmuls", "gate math") else ""
                cells.append(f"{mark}{value:.2f} ({100 * value / totals[impl]:.0f} %)")
            indent = "&nbsp;&nbsp;" if part in ("recurrent matmuls", "gate math") and "time loop" in parts["ours"] else ""
            lines.append(f"| {indent}{part} | {cells[0]} | {cells[1]} |")
        lines.append(f"| **total** | **{totals['torch']:.2f}** | **{totals['ours']:.2f}** |")
        lines.append(f"| timed without the profiler | {parts['torch']['timed']:.2f} | {parts['ours']['timed']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile",
                                     description="Split one training step's time into its parts, for "
                                                 "torch.nn and for ours, on the CPU.")
    parser.add_argument("--cells", type=choice_list(CELLS), default=["lstm", "gru"], metavar="rnn,lstm,gru",
                        help="which cells (default: lstm,gru)")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=list(DEFAULT_SHAPES), metavar="B,T,I,H",
                        help="(default: 64,28,28,128 1,100,512,512)")
    parser.add_argument("--steps", type=positive(int), default=10, help="profiled steps (default: 10)")
    parser.add_argument("--threads", type=positive(int), default=None, help="CPU threads for torch")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables to FILE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = [(cell, shape, profile_case(cell, shape, args.steps, torch.float32))
               for shape in args.shapes for cell in args.cells]
    info = report.machine_info(torch.device("cpu"), torch.get_num_threads(), "float32", 0, 0, 1,
                               "python -m benchmarks.profile " + shlex.join(argv), checked=True)
    text = markdown(results, info)
    if args.markdown:
        report.write_text(text, args.markdown)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
