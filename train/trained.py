"""Trained weights: shipped files in train/pretrained/, `python -m train export` to make one from a
run, and `python -m train evaluate PATH` to score one (or a run's checkpoint) on MNIST's test set.

A shipped file is a dict that `torch.load(path, weights_only=True)` reads without unpickling code:

    format         "rnn-by-hand/pretrained/1"
    task           "mnist-rows" | "mnist-pixels" | "mnist-permuted"
    cell           "lstm" | "gru" | "rnn"
    model          the network's state_dict, in torch.nn's names (rnn.weight_ih_l0, …, head.weight), so
                   torch.nn's layers load it as well as ours
    config         the run's whole configuration (train.config.Config): the sizes, the order, the
                   seed that drew the permutation, the recipe's optimiser settings
    test_accuracy  on the full test set when exported
    recipe         the command that trained it; metrics its metrics.json, less the per-step log
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Optional

import torch

from . import checkpoint as ckpt
from .config import FIELDS, Config

FORMAT = "rnn-by-hand/pretrained/1"
TASK_NAMES = {"rows": "mnist-rows", "pixels": "mnist-pixels", "permuted": "mnist-permuted"}


def task_name(config: Config) -> str:
    """"mnist-rows", "mnist-pixels" or "mnist-permuted"; "sine" for a sine run."""
    return TASK_NAMES[config.order] if config.task == "mnist" else config.task


def load_trained(path: pathlib.Path) -> tuple[Config, dict[str, torch.Tensor], dict[str, Any]]:
    """The configuration, the network's weights and what else `path` records, from a shipped file or
    from a run's checkpoint.pt (or its folder)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / ckpt.CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path} (give a file in train/pretrained/, a run's checkpoint.pt, "
                                f"or the run's --out folder)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(state, dict) and state.get("format") == FORMAT):
        try:
            state = ckpt.checked(state, path)
        except ValueError:
            raise ValueError(f"{path} is neither a shipped weights file ({FORMAT}) nor a checkpoint of "
                             f"`python -m train`") from None
    config = Config(**{k: v for k, v in state["config"].items() if k in FIELDS})
    info = {k: v for k, v in state.items() if k not in ("model", "optimizer", "generator", "rng")}
    epochs = state.get("history", {}).get("epochs") or [{}]
    info.setdefault("test_accuracy", epochs[-1].get("test_accuracy"))  # a checkpoint: its last epoch's
    return config, state["model"], info


def evaluate_trained(path, impl: Optional[str] = None, data_dir: Optional[str] = None,
                     test_limit: Optional[int] = None, device: str = "cpu") -> dict[str, Any]:
    """Score the weights in `path` on MNIST's test set (its first `test_limit` images if given) with
    our layers (`impl` "ours", the default, "fused" or "readable") or torch.nn's ("torch")."""
    from .data import load_mnist, mnist_sequences
    from .distributed import Dist
    from .loop import Data, evaluate, resolve_device
    from .models import build_model

    start = time.perf_counter()
    config, weights, info = load_trained(path)
    if config.task != "mnist":
        raise ValueError(f"{path} holds a {config.task} run; evaluate scores MNIST classifiers")
    config.impl = impl or "ours"
    config.data_dir = data_dir  # where this machine keeps MNIST, not where the run found it
    config.test_limit = test_limit
    config.cell_class = None if config.impl == "torch" else config.cell_class
    dev = resolve_device(device)
    images, labels = load_mnist(config.data_dir, "test", download=config.download)  # (10000, 28, 28)
    if test_limit is not None:
        images, labels = images[:test_limit], labels[:test_limit]
    x = mnist_sequences(images, config.order, permutation_seed=config.seed).to(dev, getattr(torch, config.dtype))
    model = build_model(config, x.shape[-1], x.shape[1]).to(dev)
    model.load_state_dict(weights, strict=True)
    scores = evaluate(model, Data(x[:0], labels[:0].to(dev), x, labels.to(dev)), config, Dist())
    return {
        "path": str(path),
        "task": task_name(config),
        "cell": config.cell,
        "impl": config.impl,
        "hidden": config.hidden,
        "layers": config.layers,
        "images": len(labels),
        **scores,
        "recorded_test_accuracy": info.get("test_accuracy"),
        "seconds": time.perf_counter() - start,
    }


def export(run: pathlib.Path, path: pathlib.Path, recipe: Optional[str] = None,
           machine: Optional[str] = None) -> dict[str, Any]:
    """Write the shipped file `path` from the finished run in the folder `run` (its checkpoint.pt and
    metrics.json); `recipe`: the command that trains it from scratch, when the run's own command line
    is not (a run resumed with --resume); `machine`: what it trained on (CPU model, cores, vector width,
    threads), kept in the file's metrics. Returns what was written, less the weights."""
    run = pathlib.Path(run)
    config, weights, info = load_trained(run)
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} is missing: export a run that has finished")
    metrics = json.loads(metrics_path.read_text())
    metrics = {k: v for k, v in metrics.items() if k not in ("logged_steps", "logged_loss")}
    if machine:
        metrics["machine"] = machine
    shipped = {
        "format": FORMAT,
        "task": task_name(config),
        "cell": config.cell,
        "model": {k: v.detach().to("cpu").clone() for k, v in weights.items()},
        "config": config.to_dict(),
        "test_accuracy": metrics.get("test_accuracy"),
        "recipe": recipe or metrics.get("command"),
        "metrics": json.dumps(metrics),  # one string: every value weights_only can read back
    }
    ckpt.save_atomic(shipped, pathlib.Path(path))
    return {k: v for k, v in shipped.items() if k != "model"}
