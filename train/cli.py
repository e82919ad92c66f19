"""`python -m train mnist|sine [options]`: the command line, from argv to a finished run.

    python -m train mnist                      # 1×128 LSTM on MNIST rows (what it reaches: README.md, "Results")
    python -m train mnist --cell gru --impl torch
    python -m train mnist --preset lstm128x2   # a classic tutorial setup (see --help for the list)
    python -m train sine                       # sin → cos regression
    torchrun --nproc_per_node=2 -m train mnist # the same, on 2 processes (see README.md, "Scaling out")

`main(argv)` returns the exit status instead of exiting, so tests drive it in-process. Options not
given stay None here and are filled in by `config.resolve` (defaults → task → cell → preset), so a
preset can set what the user did not, and `--resume` can tell what the user really asked to change.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
from typing import Any, Optional, Sequence

from . import config as cfg
from .data import DataError


def _int_at_least(minimum: int):
    """An argparse type: a whole number no smaller than `minimum`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _probability(text: str) -> float:
    value = _float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _common_options(p: argparse.ArgumentParser, task: str) -> None:
    presets = [name for name, values in cfg.PRESETS.items() if values["task"] == task]
    g = p.add_argument_group("model")
    g.add_argument("--preset", choices=presets,
                   help="a classic tutorial setup: " + "; ".join(f"{n}: {cfg.PRESET_HELP[n]}" for n in presets))
    g.add_argument("--cell", choices=cfg.CELLS, help="recurrent cell (default lstm)")
    g.add_argument("--impl", choices=cfg.IMPLS,
                   help="ours (= auto): our layers as a user gets them, the fast path where it is tested "
                        "(default); fused / readable: our layers forced onto the fast path / the plain "
                        "per-step unroll; torch: torch.nn, for comparison")
    g.add_argument("--cell-class", metavar="FILE.py:CLASS",
                   help="train your own cell (see `python -m cells.check --template lstm`), unrolled by our "
                        "readable path; it is checked against torch.nn first, with a warning if it differs")
    g.add_argument("--hidden", type=_positive_int, help="hidden units per layer and direction")
    g.add_argument("--layers", type=_positive_int, help="stacked layers")
    g.add_argument("--bidirectional", action="store_true", default=None, help="read the sequence both ways")
    g.add_argument("--dropout", type=_probability, help="dropout between stacked layers (needs --layers ≥ 2)")
    g.add_argument("--forget-bias", type=_float,
                   help="LSTM forget-gate bias at initialisation (default 1.0 for lstm; torch's init leaves ≈ 0)")
    g.add_argument("--init-hh", choices=cfg.INITS_HH,
                   help="initial recurrent weights W_h·: torch's uniform, orthogonal or identity blocks "
                        "(default per cell, see train/config.py)")
    g.add_argument("--nonlinearity", choices=cfg.NONLINEARITIES, help="RNN only: tanh (default) or relu")
    g.add_argument("--dtype", choices=cfg.DTYPES, help="float32 (default) or float64")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int)
    g.add_argument("--batch-size", type=_positive_int,
                   help="samples per optimiser step, summed over all processes under torchrun")
    g.add_argument("--lr", type=_positive_float, help="peak learning rate")
    g.add_argument("--schedule", choices=cfg.SCHEDULES, help="learning-rate schedule over all steps")
    g.add_argument("--optimizer", choices=cfg.OPTIMIZERS)
    g.add_argument("--clip", type=_non_negative_float, help="clip the gradient norm to this; 0 turns clipping off")
    g.add_argument("--seed", type=int, help="seeds the initial weights, the shuffling and dropout")

    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder holding MNIST/raw/ (default $MNIST_DIR, else ./data if it holds the files, "
                        "else the copy shipped in train/mnist/)")
    g.add_argument("--no-download", dest="download", action="store_false", default=None,
                   help="never fetch missing MNIST files")
    g.add_argument("--train-limit", type=_positive_int, metavar="N", help="use only the first N training samples")
    g.add_argument("--test-limit", type=_positive_int, metavar="N", help="use only the first N test samples")

    g = p.add_argument_group("running")
    g.add_argument("--device", choices=cfg.DEVICES, help="auto picks cuda when there is one")
    g.add_argument("--out", metavar="DIR", help=f"where checkpoint.pt, metrics.json and the plots go "
                                               f"(default runs/{task}-CELL-IMPL)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out where it stopped")
    g.add_argument("--log-every", type=_positive_int, metavar="STEPS", help="steps between logged loss points")
    g.add_argument("--threads", type=_positive_int,
                   help="CPU threads for torch (default 1: fastest when the machine is shared, see train/config.py)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bars or epoch lines")
    g.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="skip the PNG plots")
    # For tests and CI: act as if Ctrl-C came after this many optimiser steps.
    g.add_argument("--stop-after-steps", type=_positive_int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train our hand-written RNN/LSTM/GRU (or torch.nn's) on MNIST read as sequences, "
                    "or on sine → cosine regression.",
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{mnist,sine,evaluate,export}")
    mnist = tasks.add_parser("mnist", help="classify MNIST digits read as sequences",
                             description="Classify MNIST digits read row by row or pixel by pixel.")
    _common_options(mnist, "mnist")
    g = mnist.add_argument_group("mnist")
    g.add_argument("--order", choices=cfg.ORDERS,
                   help="rows: 28 steps of 28 pixels (default); pixels: 784 steps of 1; permuted: 784 "
                        "steps in a fixed random order")
    g.add_argument("--head", choices=cfg.HEADS, help="classify from the last step (default) or all steps")
    g.add_argument("--shift", type=_non_negative_int, metavar="PIXELS",
                   help="augment: move each training image by a random whole number of pixels in "
                        "[-PIXELS, PIXELS] along each axis, fresh every epoch (0 = off)")
    sine = tasks.add_parser("sine", help="regress cos(wt + φ) from sin(wt + φ)",
                            description="Read sin(wt + φ), predict cos(wt + φ) at every step.")
    _common_options(sine, "sine")
    g = sine.add_argument_group("sine")
    g.add_argument("--seq-len", type=_positive_int, help="steps per sequence (default 100)")
    g.add_argument("--train-size", type=_positive_int, help="training sequences")
    g.add_argument("--test-size", type=_positive_int, help="held-out sequences")
    g.add_argument("--chunk", type=_non_negative_int,
                   help="truncated BPTT: train on chunks of this many steps, carrying the state (detached)")
    g.add_argument("--burn-in", type=_non_negative_int,
                   help="leading steps left out of the loss and test MSE (the phase is unknowable at t=0)")
    evaluate = tasks.add_parser("evaluate", help="score trained weights on MNIST's test set",
                                description="Score a shipped weights file (train/pretrained/) or a run's checkpoint "
                                            "on MNIST's test set.")
    evaluate.add_argument("path", metavar="PATH", help="a file in train/pretrained/, a run's checkpoint.pt or its folder")
    evaluate.add_argument("--impl", choices=("ours", "fused", "readable", "torch"),
                          help="our layers (ours, the default; fused or readable forced) or torch.nn's (torch)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a line")
    evaluate.add_argument("--data-dir", help="folder holding MNIST/raw/ (default as for training)")
    evaluate.add_argument("--test-limit", type=_positive_int, metavar="N", help="score only the first N test images")
    evaluate.add_argument("--device", choices=cfg.DEVICES, default="cpu")
    evaluate.add_argument("--threads", type=_positive_int, help="torch's threads (default: torch's own choice)")
    export = tasks.add_parser("export", help="write a finished run's weights as a shipped file",
                              description="Write a finished run's weights, configuration and metrics as one file "
                                          "that `python -m train evaluate` and torch.load(weights_only=True) read.")
    export.add_argument("run", metavar="RUN", help="the run's --out folder (checkpoint.pt and metrics.json)")
    export.add_argument("path", metavar="PATH", help="the file to write, e.g. train/pretrained/mnist-pixels-gru.pt")
    export.add_argument("--recipe", metavar="COMMAND",
                        help="the command that trains it from scratch (default: the run's own command line)")
    export.add_argument("--machine", metavar="TEXT", help="what it trained on: CPU model, cores, vector width, threads")
    return parser


# What may differ on --resume: where and how the run executes, not what it computes.
RESUME_MAY_CHANGE = {"device", "data_dir", "download", "out", "quiet", "threads", "plots"}


def _check(config: cfg.Config, given: dict[str, Any]) -> Optional[str]:
    """A sentence for the user if the options do not fit together, else None."""
    preset = config.preset
    if preset and cfg.PRESETS[preset]["task"] != config.task:
        return f"--preset {preset} is for `python -m train {cfg.PRESETS[preset]['task']}`"
    if given.get("forget_bias") is not None and config.cell != "lstm":
        return f"--forget-bias applies to the LSTM forget gate; --cell {config.cell} has none"
    if given.get("nonlinearity") is not None and config.cell != "rnn":
        return f"--nonlinearity chooses the plain RNN's activation; --cell {config.cell} has fixed ones"
    if config.task == "sine":
        if config.burn_in >= config.seq_len:
            return f"--burn-in {config.burn_in} leaves nothing to score in --seq-len {config.seq_len}"
        if config.chunk and config.bidirectional:
            return "--chunk carries the state forward in time; a --bidirectional layer cannot"
    return None


def _resume_config(task: str, given: dict[str, Any], out: pathlib.Path) -> cfg.Config:
    from . import checkpoint

    saved = checkpoint.load(out / checkpoint.CHECKPOINT_NAME)["config"]
    if saved["task"] != task:
        raise ValueError(f"{out} holds a `{saved['task']}` run; resume it with `python -m train {saved['task']}`")
    for key, value in given.items():
        if value is None or key in RESUME_MAY_CHANGE or key not in cfg.FIELDS:
            continue
        if saved.get(key) != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(
                f"--resume continues the run in {out} with its saved configuration, where "
                f"{key} is {saved.get(key)!r}; {flag} {value!r} would change it. Use another --out "
                f"to start a new run."
            )
    saved.update({k: v for k, v in given.items() if k in RESUME_MAY_CHANGE and v is not None})
    saved["out"] = str(out)
    return cfg.Config(**{k: v for k, v in saved.items() if k in cfg.FIELDS})


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `python -m train` with `argv` (default sys.argv[1:]); the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    task = args.task
    if task in ("evaluate", "export"):
        return _trained(args)
    given = {k: v for k, v in vars(args).items() if k not in ("task", "resume", "stop_after_steps")}

    if args.cell_class:
        problem = _learner_cell(args.cell_class, given)
        if problem:
            _say(f"error: {problem}")
            return 2

    try:
        if args.resume:
            config = _resume_config(task, given, pathlib.Path(default_out(cfg.resolve(task, given))))
        else:
            config = cfg.resolve(task, given)
            problem = _check(config, given)
            if problem:
                _say(f"error: {problem}")
                return 2
            config.out = default_out(config)
    except (FileNotFoundError, ValueError) as e:
        _say(f"error: {e}")
        return 1

    from .loop import Interrupted, TrainingError, run

    try:
        run(config, resume=args.resume, stop_after_steps=args.stop_after_steps,
            command=" ".join(["python -m train", *argv]))
    except (DataError, TrainingError) as e:
        _say(f"error: {e}")  # the message is the whole story: no traceback
        return 1
    except Interrupted as e:
        _say(f"interrupted: {e}")
        return 130
    return 0


def _trained(args: argparse.Namespace) -> int:
    """`python -m train evaluate PATH` and `python -m train export RUN PATH`."""
    import json

    from .data import DataError
    from .trained import evaluate_trained, export

    try:
        if args.task == "export":
            written = export(pathlib.Path(args.run), pathlib.Path(args.path), args.recipe, args.machine)
            _say(f"wrote {args.path}: {written['task']} {written['cell']}, test accuracy {written['test_accuracy']:.2%}")
            return 0
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        result = evaluate_trained(args.path, args.impl, args.data_dir, args.test_limit, args.device)
    except (FileNotFoundError, ValueError, DataError) as e:
        _say(f"error: {e}")
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(f"test accuracy {result['test_accuracy']:.2%} on {result['images']} images — {result['task']} "
              f"{result['layers']}×{result['hidden']} {result['cell']} ({result['impl']}), {result['seconds']:.1f} s")
    return 0


def default_out(config: cfg.Config) -> str:
    if config.cell_class:
        return config.out or f"runs/{config.task}-{pathlib.Path(config.cell_class.split(':')[0]).stem}"
    return config.out or f"runs/{config.task}-{config.preset or config.cell}-{config.impl}"


def _learner_cell(spec: str, given: dict[str, Any]) -> Optional[str]:
    """Check a learner's cell (--cell-class) against torch.nn before training it: a cell that differs
    is trained anyway, after a warning; only what is not a cell at all is refused (the sentence why).
    Sets --cell to the cell's kind and --impl to readable, the unroll that runs it. Training
    differentiates the cell's forward with autograd, so a step_backward it may have is not checked
    here (`python -m cells.check` does)."""
    from cells.check import check_file

    report = check_file(spec, backward=False)
    if report.status == 2:
        return str(report)
    if given.get("cell") not in (None, report.kind):
        return f"--cell {given['cell']} does not fit --cell-class {spec}, a {report.kind} cell"
    if given.get("impl") not in (None, "readable"):
        return f"--cell-class runs your cell on our readable unroll; --impl {given['impl']} cannot apply"
    given.update(cell=report.kind, impl="readable")
    if report.equal:
        _say(f"cells.check: {report.name} equals {report.reference}")
    else:
        _say(f"warning: {report}\nTraining it anyway.")
    return None


def _say(message: str) -> None:
    """Print to stderr once per run: under torchrun only rank 0 speaks (every rank has the message)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)
