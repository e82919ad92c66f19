"""The `python -m benchmarks` command: parse the options, check every implementation, time it.

For each shape and cell the steps are:

    1. build the torch.nn layer and copy its state_dict into each of ours (strict);
    2. draw one input x (T, B, I), initial states (1, B, H) and upstream gradients for the output
       (T, B, H) and the final states (1, B, H), shared by every implementation;
    3. check: each implementation's output, final states and gradients (of x and of every named
       parameter) against torch.nn's, with float tolerances that grow with the sequence length;
    4. time the forward pass (under `torch.no_grad()`, as in inference) and the train step (forward
       and backward through the output and the final states), every implementation in turn,
       in several rounds so that a noisy neighbour slows them all alike; report medians in ms.

The train step is `torch.autograd.grad([out, *states], [x, *parameters], [grad_out,
*grad_states])`, the same for every implementation: it is what `loss.backward()` does for
loss = Σ out ⊙ grad_out + Σ h_n ⊙ grad_h (+ Σ c_n ⊙ grad_c), minus the loss and the `.grad`
bookkeeping, which would cost every implementation the same.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import statistics
import sys
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch
from torch import nn
from torch.utils import benchmark

from models.kinds import COMMAND_IMPLS, KINDS, layer_impl

from . import onnx_peer

CELLS = tuple(KINDS)
# The implementation names of models.kinds: "torch" is torch.nn (cuDNN on a GPU); "ours" (= "auto")
# our layers on their default path, the fastest correct one for the device; "fused" and "readable"
# our layers forced onto the fast path or onto the Python unroll of the cell; "onnxruntime" torch.nn's
# layer exported to ONNX and run by ONNX Runtime, a forward-only peer (benchmarks/onnx_peer.py).
IMPLS = (*COMMAND_IMPLS, onnx_peer.NAME)
FORWARD_ONLY = {onnx_peer.NAME}
DEFAULT_IMPLS = ("torch", "readable", "ours")
DEVICES = ("cpu", "cuda")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
ROW_KEYS = ("cell", "impl", "device", "batch", "seq_len", "input_size", "hidden_size", "runs",
            "forward_ms", "train_ms", "forward_ratio", "train_ratio",
            "forward_ratio_min", "forward_ratio_max", "train_ratio_min", "train_ratio_max",
            "forward_over_onnxruntime", "forward_over_onnxruntime_min", "forward_over_onnxruntime_max")


class Shape(NamedTuple):
    """One benchmark case: batch B, sequence length T, input size I, hidden size H."""

    batch: int
    seq_len: int
    input_size: int
    hidden_size: int

    def __str__(self):
        return f"B={self.batch} T={self.seq_len} I={self.input_size} H={self.hidden_size}"


DEFAULT_SHAPES = (
    Shape(64, 28, 28, 128),  # MNIST read row by row
    Shape(64, 784, 1, 128),  # pixel MNIST: long and thin, the time loop is everything
    Shape(64, 100, 512, 512),  # PyTorch's benchmarks/fastrnns default
    Shape(1, 100, 512, 512),  # batch of one: latency, every matmul is a matrix-vector product
)


class BenchmarkError(Exception):
    """An implementation disagrees with torch.nn, so its timing would mean nothing."""


# -- command line ----------------------------------------------------------------------------------


def parse_shape(text: str) -> Shape:
    """'B,T,I,H' -> Shape; argparse reports the ArgumentTypeError under the option's name."""
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"a shape is four comma-separated positive integers B,T,I,H (batch, seq_len, input_size, "
            f"hidden_size), e.g. 64,28,28,128; got {text!r} ({len(parts)} value{'s' * (len(parts) != 1)})")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a shape is four comma-separated positive integers B,T,I,H, e.g. 64,28,28,128; "
            f"{text!r} has a value that is not an integer") from None
    for name, n in zip(Shape._fields, numbers):
        if n <= 0:
            raise argparse.ArgumentTypeError(f"every size in a shape must be positive; {text!r} has {name}={n}")
    return Shape(*numbers)


def choice_list(choices: Sequence[str]) -> Callable[[str], List[str]]:
    """A parser for a comma-separated subset of `choices`, in the order given, without repeats."""

    def parse(text: str) -> List[str]:
        picked = [c.strip().lower() for c in text.split(",") if c.strip()]
        if not picked:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list from {','.join(choices)}, got {text!r}")
        unknown = [c for c in picked if c not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(map(repr, unknown))}: choose from {','.join(choices)}, comma-separated")
        return list(dict.fromkeys(picked))

    return parse


def positive(kind: type) -> Callable[[str], float]:
    """A parser for a positive int or float."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    shapes = " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time our RNN/LSTM/GRU layers against torch.nn after checking they give the same "
                    "outputs and gradients. Times are medians in milliseconds; ratios are over torch.nn "
                    "on the same shape (below 1 is faster).",
        epilog="example: python -m benchmarks --device cpu --cells lstm --shapes 64,28,28,128 --json b.json")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default: cpu)")
    parser.add_argument("--cells", type=choice_list(CELLS), default=list(CELLS), metavar="rnn,lstm,gru",
                        help="which cells, comma-separated (default: all three)")
    parser.add_argument("--impls", type=choice_list(IMPLS), default=list(DEFAULT_IMPLS),
                        metavar=",".join(IMPLS),
                        help="which implementations, comma-separated (default: torch,readable,ours); "
                             "ours = auto, our layers' default path; onnxruntime = torch.nn's layer in ONNX "
                             "Runtime, forward only (CPU; pip install -e \".[onnx]\"); the ratios need torch")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=list(DEFAULT_SHAPES),
                        metavar="B,T,I,H", help=f"batch,seq_len,input_size,hidden_size per case "
                                                f"(default: {shapes})")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="(default: float32)")
    parser.add_argument("--min-run-time", type=positive(float), default=1.0, metavar="SECONDS",
                        help="measuring time per implementation, shape and pass, split over the rounds "
                             "(default: 1.0)")
    parser.add_argument("--rounds", type=positive(int), default=5, metavar="N",
                        help="interleaved rounds per measurement; the median is over all of them "
                             "(default: 5)")
    parser.add_argument("--runs", type=positive(int), default=1, metavar="N",
                        help="time every case N times, one after another; the report gives the median "
                             "ratio and the smallest and largest of the N (default: 1)")
    parser.add_argument("--threads", type=positive(int), default=None, metavar="N",
                        help=f"CPU threads for torch (default: torch's current, {torch.get_num_threads()} here)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and inputs (default: 0)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the comparison with torch.nn before timing (not for published numbers)")
    parser.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    parser.add_argument("--markdown", metavar="FILE", help="write the report as markdown tables")
    parser.add_argument("--plot", metavar="FILE", help="plot the ratios over torch.nn (needs matplotlib)")
    parser.add_argument("--quiet", action="store_true", help="print only the final tables")
    return parser


# -- one case: layers, inputs, the two passes ------------------------------------------------------


def make_layers(cell: str, shape: Shape, impls: Sequence[str], device: torch.device,
                dtype: torch.dtype) -> Dict[str, nn.Module]:
    """torch.nn's layer under "torch" and ours under their names, all with torch.nn's weights. Our
    layers are imported here (`Kind.layer`), so that `--help` and the parser work even while they are
    broken."""
    reference = KINDS[cell].torch_layer(shape.input_size, shape.hidden_size, device=device, dtype=dtype)
    layers = {"torch": reference}
    for impl in impls:
        if impl not in ("torch", *FORWARD_ONLY):
            ours = KINDS[cell].layer(shape.input_size, shape.hidden_size, device=device, dtype=dtype,
                                     impl=layer_impl(impl))
            ours.load_state_dict(reference.state_dict())  # strict: the names must be torch's
            layers[impl] = ours
    return layers


class Inputs(NamedTuple):
    """What every implementation of one case receives: input, initial states, upstream gradients."""

    x: torch.Tensor  # (T, B, I), requires grad
    hx: object  # (1, B, H), or the pair (h_0, c_0) for LSTM
    grad_out: torch.Tensor  # (T, B, H)
    grad_states: tuple  # ((1, B, H),) or ((1, B, H), (1, B, H)) for LSTM


def make_inputs(cell: str, shape: Shape, device: torch.device, dtype: torch.dtype) -> Inputs:
    B, T, I, H = shape
    new = lambda *size: torch.randn(*size, device=device, dtype=dtype)  # noqa: E731
    x = new(T, B, I).requires_grad_()  # (T, B, I)
    # Non-zero initial states, so the check also covers how h_0 (and c_0) enter the first step.
    states = tuple(new(1, B, H) for _ in range(KINDS[cell].states))  # (h_0,) or (h_0, c_0)
    hx = states if KINDS[cell].has_cell_state else states[0]
    grad_states = tuple(new(1, B, H) for _ in states)  # each (1, B, H)
    return Inputs(x, hx, new(T, B, H), grad_states)


def forward(layer: nn.Module, inputs: Inputs):
    """(output (T, B, H), final states as a tuple)."""
    out, state = layer(inputs.x, inputs.hx)
    return out, (state if isinstance(state, tuple) else (state,))


def train_step(layer: nn.Module, inputs: Inputs):
    """Forward and backward; returns output, final states and the gradients of x and the parameters."""
    out, states = forward(layer, inputs)
    wrt = [inputs.x, *layer.parameters()]
    grads = torch.autograd.grad([out, *states], wrt, [inputs.grad_out, *inputs.grad_states])
    return out, states, grads


def tolerances(dtype: torch.dtype, seq_len: int):
    """(rtol, atol) for comparing with torch.nn; check() scales atol by each tensor's largest value.

    The kernels add in different orders. A parameter's gradient is a sum over all B·T positions,
    so it is large (hundreds at the default shapes) and its rounding error is relative to that size,
    not to each element: atol scaled by max|expected| covers it, where a fixed atol fails on the
    elements that cancel out. The error also grows along the sequence, roughly as √T (a random walk).
    Rounding stays well inside these, while a wrong gate or weight is off by the order of the values
    themselves.
    """
    rtol, atol = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-7, 1e-9)}[dtype]
    scale = max(1.0, math.sqrt(seq_len / 25))  # 1 up to T = 25, 5.6 at T = 784
    return rtol * scale, atol * scale


def check(cell: str, impl: str, shape: Shape, layer: nn.Module, reference: nn.Module, inputs: Inputs,
          device: torch.device, dtype: torch.dtype, expected=None):
    """Raise BenchmarkError unless `layer` gives torch.nn's outputs and gradients on `inputs`.

    `expected` is reference's train_step result, computed once per case and passed in.
    """
    out, states, grads = train_step(layer, inputs)
    r_out, r_states, r_grads = expected if expected is not None else train_step(reference, inputs)
    names = ["input"] + [name for name, _ in layer.named_parameters()]
    r_names = ["input"] + [name for name, _ in reference.named_parameters()]
    if sorted(names) != sorted(r_names):
        raise BenchmarkError(f"{impl} {cell} at {shape}: parameter names {names[1:]} are not torch.nn's {r_names[1:]}")
    # Gradients are matched by parameter name, not by order.
    r_by_name = dict(zip(r_names, r_grads))
    _assert_close(cell, impl, shape, device, dtype, _output_pairs(out, states, r_out, r_states)
                  + [(f"gradient of {n}", g, r_by_name[n]) for n, g in zip(names, grads)])


def check_forward(cell: str, impl: str, shape: Shape, layer, inputs: Inputs, device: torch.device,
                  dtype: torch.dtype, expected):
    """Raise BenchmarkError unless a forward-only `layer` gives torch.nn's output and final states."""
    with torch.no_grad():
        out, states = forward(layer, inputs)
    r_out, r_states, _ = expected
    _assert_close(cell, impl, shape, device, dtype, _output_pairs(out, states, r_out, r_states))


def _output_pairs(out, states, r_out, r_states):
    """(what, ours, torch.nn's) for the output and each final state."""
    return [("output", out, r_out)] + [(f"final state {i}", s, r) for i, (s, r) in enumerate(zip(states, r_states))]


def _assert_close(cell, impl, shape, device, dtype, pairs):
    """Raise BenchmarkError at the first (what, actual, want) of `pairs` outside `tolerances`."""
    rtol, base_atol = tolerances(dtype, shape.seq_len)
    for what, actual, want in pairs:
        atol = base_atol * max(1.0, want.abs().max().item())
        try:
            torch.testing.assert_close(actual, want.detach(), rtol=rtol, atol=atol)
        except AssertionError as e:
            detail = " ".join(str(e).split("\n")[:4])
            raise BenchmarkError(
                f"{impl} {cell} differs from torch.nn.{KINDS[cell].torch_layer.__name__} at {shape} "
                f"({str(dtype).replace('torch.', '')}, {device.type}) in the {what} "
                f"(rtol={rtol:.1e}, atol={atol:.1e}): {detail}") from None


# -- timing -----------------------------------------------------------------------------------------


def time_ms(functions: Dict[str, Callable[[], object]], threads: int, min_run_time: float,
            rounds: int, label: str) -> Dict[str, float]:
    """Median milliseconds per call of each function, measured in interleaved rounds.

    Each round gives every function min_run_time / rounds of `blocked_autorange` (which starts
    with a warm-up and synchronises the GPU around each block), starting with a different function
    each round so that none always runs first or last; the median is over all blocks of all rounds.
    A function whose calls outlast a round (the readable unroll on a long sequence takes seconds)
    gets one block a round, and no more rounds once it has three blocks and its min_run_time, or
    ten times its min_run_time: a call that takes a minute needs no second decimal.
    """
    names = list(functions)
    timers = {name: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label,
                                    description=name) for name, fn in functions.items()}
    times = {name: [] for name in names}
    spent = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if spent[name] >= min_run_time and (len(times[name]) >= 3 or spent[name] >= 10 * min_run_time):
                continue
            m = timers[name].blocked_autorange(min_run_time=min_run_time / rounds)
            times[name] += m.times
            spent[name] += sum(m.times) * m.number_per_run
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def peak_train_memory(fn: Callable[[], object]) -> int:
    """Bytes of GPU memory at the peak of one train step (weights and inputs included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


@contextlib.contextmanager
def ieee_float32(device: torch.device):
    """Run cuDNN's RNNs in full float32 for the duration.

    Recent torch lets cuDNN's RNNs use TF32 tensor cores by default (10-bit mantissa), which no
    float32 tolerance can match; our layers use ordinary float32 matmuls. Setting both to IEEE makes
    the check meaningful and the timing a like-for-like comparison.
    """
    if device.type != "cuda":
        yield
        return
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):  # torch ≥ 2.9's per-backend precision API
        saved = rnn.fp32_precision
        rnn.fp32_precision = "ieee"
        try:
            yield
        finally:
            rnn.fp32_precision = saved
    else:
        saved = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved


class Case(NamedTuple):
    """One cell and shape, checked and ready to time: its layers and the inputs they share."""

    cell: str
    shape: Shape
    layers: Dict[str, nn.Module]
    inputs: Inputs


def prepare_case(cell: str, shape: Shape, args, device: torch.device, dtype: torch.dtype) -> Case:
    """Build every implementation of one cell and shape and check it against torch.nn."""
    layers = make_layers(cell, shape, args.impls, device, dtype)
    inputs = make_inputs(cell, shape, device, dtype)
    if onnx_peer.NAME in args.impls:
        layers[onnx_peer.NAME] = onnx_peer.OnnxRuntimeLayer(layers["torch"], inputs.x, inputs.hx,
                                                            torch.get_num_threads())
    if not args.no_check:
        expected = train_step(layers["torch"], inputs)
        for impl in args.impls:
            if impl in FORWARD_ONLY:
                check_forward(cell, impl, shape, layers[impl], inputs, device, dtype, expected)
            elif impl != "torch":
                check(cell, impl, shape, layers[impl], layers["torch"], inputs, device, dtype, expected)
    return Case(cell, shape, layers, inputs)


def time_case(case: Case, args, threads: int) -> Dict[str, Dict[str, float]]:
    """{"forward": {impl: ms}, "train": {impl: ms}}: one run's medians for every implementation."""

    def inference(layer):
        def fn():
            with torch.no_grad():
                return forward(layer, case.inputs)
        return fn

    label = f"{case.cell} {case.shape}"
    train_fns = {impl: (lambda layer=case.layers[impl]: train_step(layer, case.inputs))
                 for impl in args.impls if impl not in FORWARD_ONLY}
    return {"forward": time_ms({impl: inference(case.layers[impl]) for impl in args.impls}, threads,
                               args.min_run_time, args.rounds, label + " forward"),
            "train": time_ms(train_fns, threads, args.min_run_time, args.rounds, label + " train")}


def summarize(case: Case, runs: List[Dict[str, Dict[str, float]]], args, device: torch.device) -> List[dict]:
    """One row per implementation: medians over the runs of its times and of its ratios over torch.nn's
    (each run's ratio from that run's times), with the smallest and largest ratio of any run."""
    rows = []
    for impl in args.impls:
        row = {"cell": case.cell, "impl": impl, "device": device.type, "batch": case.shape.batch,
               "seq_len": case.shape.seq_len, "input_size": case.shape.input_size,
               "hidden_size": case.shape.hidden_size, "runs": len(runs)}
        for pass_ in ("forward", "train"):
            if impl not in runs[0][pass_]:  # a forward-only peer has no train time
                row.update(dict.fromkeys((f"{pass_}_ms", f"{pass_}_ratio", f"{pass_}_ratio_min", f"{pass_}_ratio_max")))
                continue
            row[f"{pass_}_ms"] = statistics.median(r[pass_][impl] for r in runs)
            ratios = [r[pass_][impl] / r[pass_]["torch"] for r in runs] if "torch" in args.impls else None
            row[f"{pass_}_ratio"] = statistics.median(ratios) if ratios else None
            row[f"{pass_}_ratio_min"] = min(ratios) if ratios else None
            row[f"{pass_}_ratio_max"] = max(ratios) if ratios else None
        peer = [r["forward"][impl] / r["forward"][onnx_peer.NAME] for r in runs] \
            if onnx_peer.NAME in args.impls and impl not in ("torch", onnx_peer.NAME) else None
        row["forward_over_onnxruntime"] = statistics.median(peer) if peer else None
        row["forward_over_onnxruntime_min"] = min(peer) if peer else None
        row["forward_over_onnxruntime_max"] = max(peer) if peer else None
        if device.type == "cuda":
            train_fn = lambda layer=case.layers[impl]: train_step(layer, case.inputs)  # noqa: E731
            row["peak_mem_bytes"] = peak_train_memory(train_fn)
        rows.append(row)
    return rows


def log_run(case: Case, timing, run_index: int, log: Callable[[str], None]) -> None:
    for impl, fwd in timing["forward"].items():
        train = timing["train"].get(impl)
        ratios = "" if "torch" not in timing["forward"] else (
            f"  ({fwd / timing['forward']['torch']:.2f}x" + (f" / {train / timing['train']['torch']:.2f}x"
                                                             if train is not None else "") + " torch)")
        trained = f"train {train:9.3f} ms" if train is not None else "train         –   "
        log(f"run {run_index + 1}  {case.cell:4} {str(case.shape):28} {impl:11} forward {fwd:9.3f} ms  "
            f"{trained}{ratios}")


# -- entry point ------------------------------------------------------------------------------------


def say(text: str) -> None:
    """Print and flush; if the reader has gone (`| head`), go on quietly so the files still get written."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command; returns the exit status (0 ok, 1 a check failed; the parser exits with 2)."""
    from . import report

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if onnx_peer.NAME in args.impls:
        why_not = onnx_peer.unavailable() or ("it runs on the CPU here" if args.device != "cpu" else None)
        if why_not:
            parser.error(f"--impls {onnx_peer.NAME}: {why_not}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here (no GPU, or a CPU-only build of torch "
                     f"{torch.__version__}); use --device cpu")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    log = (lambda line: None) if args.quiet else say

    saved_threads = torch.get_num_threads()
    threads = args.threads or saved_threads
    torch.set_num_threads(threads)
    rows = []
    try:
        with ieee_float32(device):
            cases = []
            for shape in args.shapes:
                for cell in args.cells:
                    torch.manual_seed(args.seed)
                    cases.append(prepare_case(cell, shape, args, device, dtype))
            # Every case once per run, so that a slow spell of a shared machine lands in one run of
            # each case rather than in every run of one.
            timings = {i: [] for i in range(len(cases))}
            for run_index in range(args.runs):
                for i, case in enumerate(cases):
                    timings[i].append(time_case(case, args, threads))
                    log_run(case, timings[i][-1], run_index, log)
            for i, case in enumerate(cases):
                rows += summarize(case, timings[i], args, device)
    except BenchmarkError as e:
        print(f"python -m benchmarks: check failed, nothing timed for this case: {e}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(saved_threads)

    info = report.machine_info(device, threads, args.dtype, args.min_run_time, args.rounds, args.runs,
                               "python -m benchmarks " + shlex.join(argv), checked=not args.no_check)
    text = report.markdown(rows, info)
    # Files first: minutes of measurements must not be lost to a closed stdout (`| head`).
    if args.json:
        report.write_json(rows, args.json)
    if args.markdown:
        report.write_text(text, args.markdown)
    if args.plot:
        report.plot(rows, args.plot, title=info["device_name"])
    say(text)
    return 0
