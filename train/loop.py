"""The training loop behind `python -m train`: data to the device once, shuffled index batches,
one optimiser step per batch (or per chunk, for truncated BPTT), evaluation after every epoch,
checkpoints, metrics.json and plots.

    run(config)
      ├─ load_data         the whole set on the device as tensors, once
      ├─ build_model       (models.py) the one place the network is built, then DDP when distributed
      ├─ epoch after epoch
      │    ├─ epoch_batches    the shuffled order from a seeded generator; this rank's shard of it
      │    ├─ train_step       forward, loss, agree on finiteness, backward, clip, step
      │    └─ evaluate         the test set, split across ranks, summed
      └─ checkpoint.pt, metrics.json, plots (rank 0)

Stopping early is always clean: Ctrl-C (or SIGTERM) finishes the step in flight, saves a checkpoint
and exits; a loss or gradient that is not finite stops before it reaches the weights and leaves the
last good checkpoint in place.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import platform
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed
from .config import Config
from .data import DataError, default_data_dir, load_mnist, mnist_sequences, shift_images, shift_table, shuffled_batches, sine_cosine
from .distributed import Dist
from .models import build_model, unwrap

# The sine test set is drawn from its own fixed seed: the same held-out sequences for every --seed.
SINE_TEST_SEED = 1_000_003
EVAL_BATCH = 1000


class TrainingError(RuntimeError):
    """A run cannot go on (a non-finite loss, a bad configuration); the message says why and what to do."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: a checkpoint was saved; `--resume` continues."""


@dataclass
class Data:
    """A task's tensors, already on the device in the run's dtype."""

    x_train: torch.Tensor  # (N, T, I)
    y_train: torch.Tensor  # (N,) class labels, or (N, T, 1) targets
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_size(self) -> int:
        return self.x_train.shape[-1]

    @property
    def steps(self) -> int:
        return self.x_train.shape[1]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """--device auto|cpu|cuda as a torch.device, refusing cuda where there is none."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(
                f"--device cuda was asked for, but torch {torch.__version__} sees no CUDA device; "
                f"use --device cpu (or auto)."
            )
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def load_data(config: Config, device: torch.device) -> Data:
    """The task's train and test sets, moved to `device` once; batches are drawn from them by index."""
    dtype = getattr(torch, config.dtype)
    if config.task == "mnist":
        sets = []
        for split, limit in (("train", config.train_limit), ("test", config.test_limit)):
            images, labels = load_mnist(config.data_dir, split, download=config.download)  # (N, 28, 28)
            if limit is not None:
                images, labels = images[:limit], labels[:limit]
            x = mnist_sequences(images, config.order, permutation_seed=config.seed)  # (N, T, I)
            sets += [x.to(device, dtype), labels.to(device)]
        return Data(*sets)
    train_n = min(config.train_size, config.train_limit or config.train_size)
    test_n = min(config.test_size, config.test_limit or config.test_size)
    x, y = sine_cosine(train_n, config.seq_len, seed=config.seed)  # (N, T, 1) each
    xt, yt = sine_cosine(test_n, config.seq_len, seed=SINE_TEST_SEED)
    return Data(*(t.to(device, dtype) for t in (x, y, xt, yt)))


def learning_rate(config: Config, step: int, total_steps: int) -> float:
    """The learning rate at optimiser step `step` of `total_steps`: a pure function of the step, so
    resuming needs no scheduler state.

    onecycle: linear warm-up from lr/25 over the first 15 % of the steps, then half a cosine down to
    lr/1e4 (Smith & Topin 2017, without the momentum cycle); cosine: half a cosine from lr to 0
    (Loshchilov & Hutter 2017); constant: lr throughout.
    """
    if config.schedule == "constant":
        return config.lr
    progress = min(step / max(total_steps, 1), 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    warmup = 0.15
    if progress < warmup:
        return config.lr * (1 / 25 + (1 - 1 / 25) * progress / warmup)
    tail = (progress - warmup) / (1 - warmup)
    floor = config.lr * 1e-4
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * tail))


def make_optimizer(config: Config, params) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9)


def chunks(config: Config, steps: int) -> list[tuple[int, int]]:
    """The [start, end) time spans trained one optimiser step each: the whole sequence, or, for
    truncated BPTT, consecutive `--chunk`-step spans (spans wholly inside the burn-in are only read)."""
    if config.task != "sine" or config.chunk <= 0:
        return [(0, steps)]
    return [(s, min(s + config.chunk, steps)) for s in range(0, steps, config.chunk)]


def steps_per_batch(config: Config, steps: int) -> int:
    return sum(1 for _, end in chunks(config, steps) if end > config.burn_in) if config.task == "sine" else 1


def batches_per_epoch(n: int, config: Config, dist: Dist) -> int:
    # With several ranks the last, short batch is dropped so every rank does the same number of steps.
    return n // config.batch_size if dist.enabled else math.ceil(n / config.batch_size)


def epoch_batches(n: int, config: Config, generator: torch.Generator, dist: Dist):
    """This rank's index batches for one epoch: one shuffled order shared by all ranks, each global
    batch split into disjoint shards (`distributed.shard`)."""
    for indices in shuffled_batches(n, config.batch_size, generator, drop_last=dist.enabled):
        yield distributed.shard(indices, dist)  # (batch_size / world_size,)


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def sine_error(pred: torch.Tensor, target: torch.Tensor, start: int, burn_in: int) -> torch.Tensor:
    """Squared errors of the steps at or after the burn-in; `start` is the chunk's first time step."""
    skip = max(0, burn_in - start)
    return (pred[:, skip:] - target[:, skip:]).square()  # (B, T', 1)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, config: Config, dist: Dist) -> dict[str, float]:
    """Test loss and accuracy (mnist) or MSE (sine), each rank scoring every world_size-th sample."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = data.x_test.device
    indices = distributed.shard(torch.arange(len(data.x_test)), dist)
    # Summed in float64: 10000 per-sample losses in float32 would round the mean.
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss/sq-error, correct/all-steps sq, count, steps
    for start in range(0, len(indices), EVAL_BATCH):
        idx = indices[start : start + EVAL_BATCH].to(device)
        x, y = data.x_test[idx], data.y_test[idx]
        if config.task == "mnist":
            logits = model(x)  # (B, 10)
            sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += len(idx)
        else:
            pred, _ = model(x)  # (B, T, 1)
            err = sine_error(pred, y, 0, config.burn_in)
            sums[0] += err.sum().double()
            sums[1] += (pred - y).square().sum().double()
            sums[2] += err.numel()
            sums[3] += pred.numel()
    distributed.all_sum(sums, dist)
    model.train(was_training)
    if config.task == "mnist":
        count = max(sums[2].item(), 1)
        return {"test_loss": sums[0].item() / count, "test_accuracy": sums[1].item() / count}
    return {
        "test_mse": sums[0].item() / max(sums[2].item(), 1),
        "test_mse_all_steps": sums[1].item() / max(sums[3].item(), 1),
    }


class _StopFlag:
    """Set by Ctrl-C / SIGTERM; the loop finishes the step in flight, saves and stops. A second
    Ctrl-C is not caught: it stops at once, as a learner expects."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _progress(total: int, initial: int, desc: str, enabled: bool):
    """A tqdm bar, or None when quiet, not rank 0, or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, leave=True)


def run(
    config: Config,
    *,
    resume: bool = False,
    stop_after_steps: Optional[int] = None,
    command: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train as `config` says and return the metrics (also written to OUT/metrics.json).

    resume: continue from OUT/checkpoint.pt. stop_after_steps: behave as if Ctrl-C came after that
    many optimiser steps in total (for tests of resuming). command: recorded in metrics.json.

    Raises DataError, TrainingError, or Interrupted (after saving a checkpoint).
    """
    wall_start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    use_cuda = resolve_device(config.device).type == "cuda"
    dist = distributed.setup(use_cuda)
    try:
        quiet_log = log if dist.is_main else (lambda *_: None)
        return _run(config, dist, resume, stop_after_steps, command, quiet_log, wall_start)
    finally:
        distributed.teardown(dist)


def _run(config, dist: Dist, resume, stop_after_steps, command, log, wall_start) -> dict[str, Any]:
    device = resolve_device(config.device, dist.local_rank)
    out = pathlib.Path(config.out)
    ckpt_path = out / ckpt.CHECKPOINT_NAME
    if dist.enabled and config.batch_size % dist.world_size:
        raise TrainingError(
            f"--batch-size {config.batch_size} does not split evenly over {dist.world_size} processes: "
            f"each global batch is shared out equally, so pick a multiple of {dist.world_size}."
        )

    # Loading can fail on one rank only (a file missing on one machine): every rank learns of it.
    error = None
    try:
        data = load_data(config, device)
    except DataError as e:
        error = str(e)
    error = distributed.agree(error, dist)
    if error is not None:
        raise DataError(error)
    data_seconds = time.perf_counter() - wall_start

    model = build_model(config, data.input_size, data.steps).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config, params)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    n_train = len(data.x_train)
    n_batches = batches_per_epoch(n_train, config, dist)
    if n_batches == 0:
        raise TrainingError(
            f"{n_train} training samples make no full batch of {config.batch_size} over "
            f"{dist.world_size} processes: lower --batch-size or raise --train-limit."
        )
    per_batch = steps_per_batch(config, data.steps)
    shifts = shift_table(config.shift, config.order, config.seed).to(device) if config.shift else None  # (S, 784)
    total_steps = config.epochs * n_batches * per_batch
    generator = torch.Generator().manual_seed(config.seed)

    epoch, step_in_epoch, global_step = 0, 0, 0
    history: dict[str, Any] = {"epochs": [], "logged_steps": [], "logged_loss": []}
    seconds_before = 0.0
    if resume:
        state = ckpt.load(ckpt_path)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step_in_epoch, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        history = state["history"]
        seconds_before = state["wall_seconds"]
        generator.set_state(state["generator"])
        rng = state["rng"]
        ckpt.set_rng_state(rng[dist.rank] if len(rng) == dist.world_size else rng[0])
        log(f"resuming {ckpt_path} at epoch {epoch + 1}, step {step_in_epoch} of {n_batches}")

    def save_checkpoint(epoch_start_generator: torch.Tensor) -> None:
        rng = distributed.gather(ckpt.rng_state(), dist)
        if dist.is_main:
            ckpt.save_atomic(
                {
                    "format": ckpt.FORMAT,
                    "config": config.to_dict(),
                    "model": unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "global_step": global_step,
                    "generator": epoch_start_generator,
                    "rng": rng,
                    "history": history,
                    "wall_seconds": seconds_before + time.perf_counter() - wall_start,
                    "world_size": dist.world_size,
                },
                ckpt_path,
            )
        distributed.barrier(dist)

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    model.train()
    train_start = time.perf_counter()
    last_eval: dict[str, float] = {}
    spans = chunks(config, data.steps)
    # Loss·n and n since the last logged point; kept in the checkpoint so a resumed run logs the
    # same points as an uninterrupted one.
    interval = torch.tensor(history.get("interval", [0.0, 0.0]), dtype=torch.float64, device=device)
    with _StopFlag() as stop:
        while epoch < config.epochs:
            epoch_generator = generator.get_state()
            bar = _progress(n_batches, step_in_epoch, f"epoch {epoch + 1}/{config.epochs}",
                            dist.is_main and not config.quiet)
            epoch_start = time.perf_counter()
            # Sums over this epoch's batches; a checkpoint taken mid-epoch carries them over.
            sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, correct, n
            if step_in_epoch and "partial_epoch" in history:
                sums += torch.tensor(history["partial_epoch"], dtype=torch.float64, device=device)
            history.pop("partial_epoch", None)
            for b, idx in enumerate(epoch_batches(n_train, config, generator, dist)):
                if b < step_in_epoch:
                    continue  # already trained before the checkpoint we resumed from
                idx = idx.to(device)
                x, y = data.x_train[idx], data.y_train[idx]  # (B, T, I), (B,) or (B, T, 1)
                if shifts is not None:
                    # Drawn from the global RNG, which checkpoints carry, so resuming moves the same way.
                    which = torch.randint(len(shifts), (len(idx),)).to(device)  # (B,)
                    x = shift_images(x, shifts, which)
                state = None
                for start, end in spans:
                    if config.task == "mnist":
                        logits = model(x)  # (B, 10)
                        loss = F.cross_entropy(logits, y)
                        count = len(idx)
                        correct = (logits.detach().argmax(1) == y).sum()
                    else:
                        pred, state = model(x[:, start:end], state)  # (B, t, 1)
                        state = detach_state(state)  # truncated BPTT: gradients stop at the chunk edge
                        if end <= config.burn_in:
                            continue
                        err = sine_error(pred, y[:, start:end], start, config.burn_in)
                        loss = err.mean()
                        count, correct = err.numel(), torch.zeros((), device=device)
                    if stop_after_steps is not None and global_step + 1 >= stop_after_steps:
                        stop.requested = True
                    # One collective per step carries the numbers to log and the two ways to stop,
                    # so every rank takes the same decision at the same step.
                    flags = torch.stack([
                        loss.detach().double() * count,
                        correct.double(),
                        torch.tensor(float(count), dtype=torch.float64, device=device),
                        (~torch.isfinite(loss.detach())).double(),
                        torch.tensor(float(stop.requested), dtype=torch.float64, device=device),
                    ])
                    distributed.all_sum(flags, dist)
                    if flags[3] > 0:
                        raise _diverged(ckpt_path, epoch, b, global_step, "loss", flags[0] / flags[2])
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(config, global_step, total_steps)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    # Always measured (clip=0 only skips the scaling): a non-finite gradient must not
                    # reach the weights. After DDP's all-reduce it is the same number on every rank.
                    norm = torch.nn.utils.clip_grad_norm_(params, config.clip if config.clip > 0 else math.inf)
                    if not torch.isfinite(norm):
                        raise _diverged(ckpt_path, epoch, b, global_step, "gradient norm", norm)
                    optimizer.step()
                    global_step += 1
                    sums += flags[:3]
                    interval += flags[[0, 2]]
                    if global_step % config.log_every == 0:
                        history["logged_steps"].append(global_step)
                        history["logged_loss"].append(interval[0].item() / interval[1].item())
                        interval.zero_()
                step_in_epoch = b + 1
                if bar is not None:
                    bar.update(1)
                    if b % 10 == 0 or step_in_epoch == n_batches:
                        bar.set_postfix(_postfix(config, sums), refresh=False)
                if flags[4] > 0:
                    history["partial_epoch"] = sums.tolist()
                    history["interval"] = interval.tolist()
                    save_checkpoint(epoch_generator)
                    if bar is not None:
                        bar.close()
                    raise Interrupted(
                        f"stopped at epoch {epoch + 1}, step {step_in_epoch} of {n_batches}; checkpoint "
                        f"saved to {ckpt_path}. Continue with the same command and --resume."
                    )
            if bar is not None:
                bar.close()
            last_eval = evaluate(model, data, config, dist)
            record = {"epoch": epoch + 1, **_train_numbers(config, sums),
                      "lr": learning_rate(config, global_step, total_steps),
                      "seconds": time.perf_counter() - epoch_start, **last_eval}
            history["epochs"].append(record)
            if not config.quiet:
                log(_epoch_line(config, record))
            epoch, step_in_epoch = epoch + 1, 0
            history["interval"] = interval.tolist()
            save_checkpoint(generator.get_state())

    if not last_eval:  # resumed a finished run: nothing left to train, score it again
        last_eval = evaluate(model, data, config, dist)
    # DDP keeps the replicas equal by construction; checking costs one gather and catches a broken
    # setup (a rank that skipped a step, a parameter outside DDP) that would otherwise pass silently.
    digests = distributed.gather(parameter_digest(unwrap(model)), dist)
    train_seconds = time.perf_counter() - train_start
    metrics = {
        "task": config.task,
        "status": "completed",
        **last_eval,
        "epochs": history["epochs"],
        "logged_steps": history["logged_steps"],
        "logged_loss": history["logged_loss"],
        "train_loss_per_epoch": [e["train_loss"] for e in history["epochs"]],
        "global_steps": global_step,
        "parameters": sum(p.numel() for p in unwrap(model).parameters()),
        "data_seconds": data_seconds,
        "train_seconds": train_seconds,
        "device": str(device),
        "device_name": _device_name(device),
        "world_size": dist.world_size,
        "backend": dist.backend,
        "ranks_in_sync": len(set(digests)) == 1,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "command": command,
        "config": config.to_dict(),
        # Where MNIST was read from, once --data-dir's default chain is resolved.
        "data_dir": str(pathlib.Path(config.data_dir or default_data_dir()).absolute())
        if config.task == "mnist" else None,
    }
    if dist.is_main:
        if config.plots:
            from .plots import make_plots

            make_plots(metrics, unwrap(model), data, config, out, log)
        metrics["wall_seconds"] = time.perf_counter() - wall_start
        metrics["wall_seconds_total"] = seconds_before + metrics["wall_seconds"]
        write_json(metrics, out / "metrics.json")
        log(_final_line(config, metrics, out))
    return metrics


def parameter_digest(model: torch.nn.Module) -> str:
    """A fingerprint of every parameter's exact bytes."""
    digest = hashlib.sha1()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _diverged(path, epoch, batch, step, what, value) -> TrainingError:
    value = float(value)
    keep = f"the last good checkpoint is {path}" if path.exists() else "no checkpoint was written yet"
    return TrainingError(
        f"the {what} became {value} at epoch {epoch + 1}, batch {batch + 1} (step {step + 1}); "
        f"training stopped before it reached the weights and {keep}. Try a lower --lr, "
        f"--clip 1.0, or --dtype float64."
    )


def _train_numbers(config: Config, sums: torch.Tensor) -> dict[str, float]:
    loss_sum, correct, count = sums.tolist()
    count = max(count, 1)
    numbers = {"train_loss": loss_sum / count}
    if config.task == "mnist":
        numbers["train_accuracy"] = correct / count
    return numbers


def _postfix(config: Config, sums: torch.Tensor) -> dict[str, str]:
    numbers = _train_numbers(config, sums)
    postfix = {"loss": f"{numbers['train_loss']:.4f}"}
    if "train_accuracy" in numbers:
        postfix["acc"] = f"{numbers['train_accuracy']:.2%}"
    return postfix


def _epoch_line(config: Config, r: dict[str, Any]) -> str:
    if config.task == "mnist":
        return (f"epoch {r['epoch']}: train loss {r['train_loss']:.4f} acc {r['train_accuracy']:.2%} | "
                f"test loss {r['test_loss']:.4f} acc {r['test_accuracy']:.2%} | {r['seconds']:.1f} s")
    return f"epoch {r['epoch']}: train MSE {r['train_loss']:.2e} | test MSE {r['test_mse']:.2e} | {r['seconds']:.1f} s"


def _final_line(config: Config, m: dict[str, Any], out: pathlib.Path) -> str:
    what = (f"test accuracy {m['test_accuracy']:.2%}" if config.task == "mnist"
            else f"test MSE {m['test_mse']:.2e} (after a {config.burn_in}-step burn-in)")
    return (f"{what} — {config.cell} {config.impl}, {len(m['epochs'])} epoch{'s' if len(m['epochs']) != 1 else ''}, {m['wall_seconds']:.1f} s on "
            f"{m['device']} — {out / 'metrics.json'}")


def write_json(obj: dict[str, Any], path: pathlib.Path) -> None:
    ckpt.write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
