"""`python -m benchmarks.compiled`: our layers and torch.nn's under torch.compile, from a cold cache.

For each cell, in a Python process of its own with an empty inductor cache (a user's first run):

    1. `layer.compile()` (torch.compile in place) with the default backend; the first training step (forward, then the
       gradients of x and every parameter, as `benchmarks.run.train_step`) compiles the forward and
       the backward graph: its wall time is "first call";
    2. the first step at another sequence length (T + 7): the recompilation, dynamic in T from then on,
       is "new length"; a third length must then compile nothing (the process says so if it does);
    3. the compiled layer's output, final states and gradients are checked against torch.nn's with
       the benchmark's tolerances (`benchmarks.run.check`);
    4. the steady training step of our layer compiled and eager and of torch.nn's compiled and
       eager, interleaved (`benchmarks.run.time_ms`), medians in ms.

Each of --runs repeats all of it in new processes; the report gives each number's median over the
runs and its min–max.

Example: python -m benchmarks.compiled --runs 3 --markdown benchmarks/results/cpu_compile.md
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import torch


from . import report
from .run import CELLS, BenchmarkError, Shape, check, choice_list, make_inputs, make_layers, parse_shape, positive, \
    time_ms, train_step

DEFAULT_SHAPE = Shape(64, 28, 28, 128)  # MNIST read row by row
LONGER = 7  # steps added for the "new length"
TIMED = ("ours compiled", "ours eager", "torch compiled", "torch eager")
KEYS = ("first_call_s", "new_length_s", "torch_first_call_s", "torch_new_length_s",
        *(f"{name.replace(' ', '_')}_ms" for name in TIMED), "compiled_over_eager", "recompiled_at_third_length")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compiled", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=choice_list(CELLS), default=list(CELLS), help="comma-separated cells")
    parser.add_argument("--shape", type=parse_shape, default=DEFAULT_SHAPE, help="B,T,I,H (default 64,28,28,128)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--runs", type=int, default=3, help="processes per cell (default 3)")
    parser.add_argument("--min-run-time", type=positive(float), default=2.0,
                        help="seconds of steady-step timing per implementation and run (default 2)")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--markdown", help="write the report here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one cell, one run, in this process: prints JSON
    return parser


def measure(cell: str, shape: Shape, threads: int, min_run_time: float) -> Dict[str, object]:
    """One cold run for one cell, in this process: the numbers of KEYS."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    device, dtype = torch.device("cpu"), torch.float32
    layers = make_layers(cell, shape, ["ours"], device, dtype)
    reference, ours = layers["torch"], layers["ours"]
    inputs = make_inputs(cell, shape, device, dtype)
    longer = make_inputs(cell, shape._replace(seq_len=shape.seq_len + LONGER), device, dtype)
    third = make_inputs(cell, shape._replace(seq_len=shape.seq_len + 2 * LONGER), device, dtype)
    result: Dict[str, object] = {"cell": cell}
    compiled = {}
    for name, layer, prefix in (("ours", ours, ""), ("torch", reference, "torch_")):
        compiled[name] = copy.deepcopy(layer)  # the eager layer stays as it is, for the timing
        compiled[name].compile()  # in place: the parameters keep their names, which check() matches
        start = time.perf_counter()
        train_step(compiled[name], inputs)
        result[f"{prefix}first_call_s"] = time.perf_counter() - start
        start = time.perf_counter()
        train_step(compiled[name], longer)
        result[f"{prefix}new_length_s"] = time.perf_counter() - start
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    train_step(compiled["ours"], third)
    result["recompiled_at_third_length"] = torch._dynamo.utils.counters["stats"]["unique_graphs"] > frames
    check(cell, "ours compiled", shape, compiled["ours"], reference, inputs, device, dtype)
    steps = {"ours compiled": compiled["ours"], "ours eager": ours, "torch compiled": compiled["torch"],
             "torch eager": reference}
    times = time_ms({name: (lambda layer=layer: train_step(layer, inputs)) for name, layer in steps.items()},
                    threads, min_run_time, rounds=4, label=f"{cell} {shape}")
    for name, ms in times.items():
        result[f"{name.replace(' ', '_')}_ms"] = ms
    result["compiled_over_eager"] = times["ours compiled"] / times["ours eager"]
    return result


def run_child(cell: str, args) -> Dict[str, object]:
    """measure() in a new process with an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        command = [sys.executable, "-m", "benchmarks.compiled", "--child", cell, "--threads", str(args.threads),
                   "--shape", ",".join(map(str, args.shape)), "--min-run-time", str(args.min_run_time)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"{cell}: the measuring process failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(cell: str, shape: Shape, runs: List[Dict[str, object]]) -> Dict[str, object]:
    """Medians over the runs, with min and max for each number."""
    row: Dict[str, object] = {"cell": cell, "batch": shape.batch, "seq_len": shape.seq_len,
                              "input_size": shape.input_size, "hidden_size": shape.hidden_size, "runs": len(runs)}
    for key in KEYS:
        values = [r[key] for r in runs]
        if key == "recompiled_at_third_length":
            row[key] = any(values)
            continue
        row[key], row[f"{key}_min"], row[f"{key}_max"] = statistics.median(values), min(values), max(values)
    return row


def markdown(rows: List[dict], info: Dict[str, object], shape: Shape) -> str:
    def spread(row, key, fmt):
        return f"{fmt(row[key])} ({fmt(row[key + '_min'])}–{fmt(row[key + '_max'])})"

    seconds, ms, ratio = (lambda v: f"{v:.1f}"), (lambda v: f"{v:.2f}"), (lambda v: f"{v:.2f}")
    lines = [f"# torch.compile, cold cache: {shape}", "",
             f"- device: {info['detail']}",
             f"- date: {info['date']}",
             f"- command: `{info['command']}`",
             f"- torch {info['torch']}, Python {info['python']}, float32, default backend (inductor); "
             f"{info['runs']} runs, each in a new process with an empty inductor cache; median (min–max)", "",
             "| cell | first call s | new length s | ours compiled ms | ours eager ms | compiled / eager "
             "| torch.nn first call s | torch.nn compiled ms | torch.nn eager ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(" | ".join([
            f"| {row['cell']}", spread(row, "first_call_s", seconds), spread(row, "new_length_s", seconds),
            spread(row, "ours_compiled_ms", ms), spread(row, "ours_eager_ms", ms),
            spread(row, "compiled_over_eager", ratio), spread(row, "torch_first_call_s", seconds),
            spread(row, "torch_compiled_ms", ms), spread(row, "torch_eager_ms", ms)]) + " |")
    recompiled = [row["cell"] for row in rows if row["recompiled_at_third_length"]]
    lines += ["", "A third length compiled nothing more" + (
        "." if not recompiled else f", except for {', '.join(recompiled)}.")]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.shape, args.threads, args.min_run_time)))
        return 0
    command = "python -m benchmarks.compiled " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    rows = []
    try:
        for cell in args.cells:
            runs = []
            for index in range(args.runs):
                runs.append(run_child(cell, args))
                got = runs[-1]
                print(f"{cell} run {index + 1}: first call {got['first_call_s']:.1f} s, new length "
                      f"{got['new_length_s']:.1f} s, compiled {got['ours_compiled_ms']:.2f} ms / eager "
                      f"{got['ours_eager_ms']:.2f} ms = {got['compiled_over_eager']:.2f}", flush=True)
            rows.append(summarize(cell, args.shape, runs))
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    info = report.machine_info(torch.device("cpu"), args.threads, "float32", args.min_run_time, 4, args.runs,
                               command, checked=True)
    text = markdown(rows, info, args.shape)
    print(text)
    if args.markdown:
        report.write_text(text, args.markdown)
    if args.json:
        report.write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
