"""Checkpoints that survive a crash mid-write and load with `torch.load(weights_only=True)`.

A checkpoint holds only tensors and plain containers of str/int/float/bool/None: the model's and the
optimiser's state_dicts, the RNG states (the shuffling generator as it was at the start of the
epoch in progress, and torch's global RNG that dropout draws from), where the run stands (epoch,
step within the epoch, global step) and its history. That is all `--resume` needs to continue
exactly as an uninterrupted run would; the learning rate is a pure function of the global step
(`loop.learning_rate`), so there is no scheduler object to save.

It is written to a temporary file in the same folder and renamed over the old one: a run killed
while saving leaves the previous checkpoint intact, never half a file.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, BinaryIO, Callable

import torch

# 2: the running sums in the history are dicts by name ({"loss", "correct", "count"}); format 1 kept
# them as lists by position and is converted on load (`_from_format_1`).
FORMAT = 2
CHECKPOINT_NAME = "checkpoint.pt"


def write_atomic(path: pathlib.Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file beside it and an atomic rename, so that a reader, or the
    next run after a crash, finds the old file or the new one and never half of one. `write(f)` fills
    the open binary file; the temporary file is removed whatever happens."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows when both sit in one folder
    finally:
        if tmp.exists():
            tmp.unlink()


def save_atomic(state: dict[str, Any], path: pathlib.Path) -> None:
    """torch.save `state` to `path` atomically (`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(state, f))


def load(path: pathlib.Path) -> dict[str, Any]:
    """A checkpoint written by `save_atomic`, on the CPU, loaded without unpickling any code."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint to resume from at {path.absolute()}: --resume continues a run in the "
            f"same --out folder; start without --resume to train from scratch."
        )
    return checked(torch.load(path, map_location="cpu", weights_only=True), path)


def checked(state: Any, path: pathlib.Path) -> dict[str, Any]:
    """`state`, as torch.load read it from `path`, as a checkpoint of this version (format 1 converted);
    ValueError when it is no checkpoint of `train`."""
    if isinstance(state, dict) and state.get("format") == 1:
        state = _from_format_1(state)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{pathlib.Path(path).absolute()} is not a checkpoint written by this version of `train`.")
    return state


def _from_format_1(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint in format 2: its history held the epoch's running sums mid-epoch as
    [loss, correct, count] and the logging interval's as [loss, count]."""
    history = state.get("history", {})
    if "partial_epoch" in history:
        history["partial_epoch"] = dict(zip(("loss", "correct", "count"), history["partial_epoch"]))
    if "interval" in history:
        loss, count = history["interval"]
        history["interval"] = {"loss": loss, "correct": 0.0, "count": count}
    return {**state, "format": FORMAT}


def rng_state() -> dict[str, Any]:
    """torch's global RNG states (CPU, and every CUDA device when there is one)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
