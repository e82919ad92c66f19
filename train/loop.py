"""The training loop behind `python -m train`: data to the device once, shuffled index batches,
one optimiser step per batch (or per chunk, for truncated BPTT), evaluation after every epoch,
checkpoints, metrics.json and plots.

    run(config)
      ├─ _set_up           device, data (load_data: the whole set on the device, once), the model
      │                    (models.py, then DDP when distributed), optimiser, batch plan → Session
      ├─ _resume           --resume: weights, optimiser, shuffling, RNG state and Progress
      ├─ _train_epoch      epoch after epoch
      │    ├─ epoch_batches    the shuffled order from a seeded generator; this rank's shard of it
      │    ├─ _train_batch     forward, loss, StepReport (one collective: the numbers to log and
      │    │                   whether to stop), _optimizer_step (lr, backward, clip, step)
      │    ├─ evaluate         the test set, split across ranks, summed
      │    └─ _save_checkpoint
      └─ _finish           metrics.json (with the gradient flow before and after training,
                           gradient_flow.py), plots and the final line (rank 0)

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
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import distributed, gradient_flow
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


@dataclass
class EvalSums:
    """What `evaluate` adds up over the test set, each a float64 scalar on the device: 10000
    per-sample losses summed in float32 would round the mean, and staying on the device keeps the
    loop free of syncs."""

    loss: torch.Tensor  # mnist: cross-entropy; sine: squared error after the burn-in
    correct: torch.Tensor  # mnist: right answers
    count: torch.Tensor  # mnist: samples; sine: points after the burn-in
    error_all_steps: torch.Tensor  # sine: squared error over every step
    points_all_steps: torch.Tensor  # sine: every step's points

    @classmethod
    def zeros(cls, device: torch.device) -> "EvalSums":
        return cls(*(torch.zeros((), dtype=torch.float64, device=device) for _ in fields(cls)))

    def summed_over_ranks(self, dist: Dist) -> dict[str, float]:
        """The sums over every rank, in one collective, by field name."""
        names = [f.name for f in fields(self)]
        values = torch.stack([getattr(self, name) for name in names])  # (5,)
        distributed.all_sum(values, dist)
        return dict(zip(names, values.tolist()))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Data, config: Config, dist: Dist) -> dict[str, float]:
    """Test loss and accuracy (mnist) or MSE (sine), each rank scoring every world_size-th sample."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = data.x_test.device
    indices = distributed.shard(torch.arange(len(data.x_test)), dist)
    sums = EvalSums.zeros(device)
    for start in range(0, len(indices), EVAL_BATCH):
        idx = indices[start : start + EVAL_BATCH].to(device)
        x, y = data.x_test[idx], data.y_test[idx]
        if config.task == "mnist":
            logits = model(x)  # (B, 10)
            sums.loss += F.cross_entropy(logits, y, reduction="sum").double()
            sums.correct += (logits.argmax(1) == y).sum()
            sums.count += len(idx)
        else:
            pred, _ = model(x)  # (B, T, 1)
            err = sine_error(pred, y, 0, config.burn_in)
            sums.loss += err.sum().double()
            sums.count += err.numel()
            sums.error_all_steps += (pred - y).square().sum().double()
            sums.points_all_steps += pred.numel()
    total = sums.summed_over_ranks(dist)
    model.train(was_training)
    if config.task == "mnist":
        count = max(total["count"], 1)
        return {"test_loss": total["loss"] / count, "test_accuracy": total["correct"] / count}
    return {
        "test_mse": total["loss"] / max(total["count"], 1),
        "test_mse_all_steps": total["error_all_steps"] / max(total["points_all_steps"], 1),
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


@dataclass
class Session:
    """What a run sets up once and every step reads: where, on what data, which model and optimiser."""

    config: Config
    dist: Dist
    device: torch.device
    out: pathlib.Path
    data: Data
    model: torch.nn.Module  # DistributedDataParallel when distributed
    params: list
    optimizer: torch.optim.Optimizer
    n_batches: int  # per epoch, on this rank
    total_steps: int  # optimiser steps of the whole run
    shifts: Optional[torch.Tensor]  # (S, 784) pixel shifts, or None
    spans: list  # the (start, end) chunks of a sequence, one optimiser step each
    generator: torch.Generator  # the shuffling order
    log: Callable[[str], None]
    wall_start: float
    data_seconds: float

    @property
    def checkpoint_path(self) -> pathlib.Path:
        return self.out / ckpt.CHECKPOINT_NAME


@dataclass
class Progress:
    """Where a run stands: what a checkpoint keeps and `--resume` restores."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    # The records so far; a checkpoint also keeps the running Sums, as dicts (asdict): "interval",
    # the loss since the last logged point, and mid-epoch "partial_epoch", the epoch's so far.
    history: dict = field(default_factory=lambda: {"epochs": [], "logged_steps": [], "logged_loss": []})
    seconds_before: float = 0.0  # wall time of the runs this one resumes


@dataclass
class Sums:
    """Running sums of the training loss, weighted by the samples (or points) it averages over."""

    loss: float = 0.0  # loss · count
    correct: float = 0.0
    count: float = 0.0

    def add(self, other: "Sums") -> None:
        self.loss, self.correct, self.count = self.loss + other.loss, self.correct + other.correct, self.count + other.count


@dataclass
class StepReport:
    """One optimiser step's numbers, summed over the ranks in one collective, so that every rank
    logs the same loss and takes the same decision to stop at the same step."""

    sums: Sums
    non_finite: bool  # the loss is not finite on some rank
    stop: bool  # Ctrl-C, SIGTERM or stop_after_steps on some rank

    @classmethod
    def agreed(cls, loss: torch.Tensor, correct: torch.Tensor, count: int, stop: bool, session: Session):
        device = session.device
        values = torch.stack([
            loss.detach().double() * count,
            correct.double(),
            torch.tensor(float(count), dtype=torch.float64, device=device),
            (~torch.isfinite(loss.detach())).double(),
            torch.tensor(float(stop), dtype=torch.float64, device=device),
        ])
        distributed.all_sum(values, session.dist)
        loss_sum, correct_sum, count_sum, non_finite, stops = values.tolist()
        return cls(Sums(loss_sum, correct_sum, count_sum), non_finite > 0, stops > 0)


def _run(config, dist: Dist, resume, stop_after_steps, command, log, wall_start) -> dict[str, Any]:
    session = _set_up(config, dist, log, wall_start)
    progress = _resume(session) if resume else Progress()
    if not resume and dist.is_main:  # before the first step; a resumed run has it in its history
        progress.history["gradient_flow_start"] = gradient_flow.measure(unwrap(session.model), session.data, config)
    if dist.is_main:
        session.out.mkdir(parents=True, exist_ok=True)
    session.model.train()
    train_start = time.perf_counter()
    last_eval: dict[str, float] = {}
    with _StopFlag() as stop:
        while progress.epoch < config.epochs:
            last_eval = _train_epoch(session, progress, stop, stop_after_steps)
    if not last_eval:  # resumed a finished run: nothing left to train, score it again
        last_eval = evaluate(session.model, session.data, config, dist)
    return _finish(session, progress, last_eval, time.perf_counter() - train_start, command)


def _set_up(config: Config, dist: Dist, log, wall_start: float) -> Session:
    """Device, data (every rank learns of a rank's data error), model, optimiser and the batch plan."""
    device = resolve_device(config.device, dist.local_rank)
    if dist.enabled and config.batch_size % dist.world_size:
        raise TrainingError(
            f"--batch-size {config.batch_size} does not split evenly over {dist.world_size} processes: "
            f"each global batch is shared out equally, so pick a multiple of {dist.world_size}."
        )
    error, data = None, None
    try:  # loading can fail on one rank only (a file missing on one machine)
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
    n_batches = batches_per_epoch(len(data.x_train), config, dist)
    if n_batches == 0:
        raise TrainingError(
            f"{len(data.x_train)} training samples make no full batch of {config.batch_size} over "
            f"{dist.world_size} processes: lower --batch-size or raise --train-limit."
        )
    shifts = shift_table(config.shift, config.order, config.seed).to(device) if config.shift else None  # (S, 784)
    total_steps = config.epochs * n_batches * steps_per_batch(config, data.steps)
    return Session(config, dist, device, pathlib.Path(config.out), data, model, params, optimizer, n_batches,
                   total_steps, shifts, chunks(config, data.steps), torch.Generator().manual_seed(config.seed),
                   log, wall_start, data_seconds)


def _resume(session: Session) -> Progress:
    """The progress, weights, optimiser, shuffling and RNG state of the checkpoint in OUT."""
    state = ckpt.load(session.checkpoint_path)
    unwrap(session.model).load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.generator.set_state(state["generator"])
    rng, dist = state["rng"], session.dist
    ckpt.set_rng_state(rng[dist.rank] if len(rng) == dist.world_size else rng[0])
    progress = Progress(state["epoch"], state["step_in_epoch"], state["global_step"], state["history"],
                        state["wall_seconds"])
    session.log(f"resuming {session.checkpoint_path} at epoch {progress.epoch + 1}, step {progress.step_in_epoch} "
                f"of {session.n_batches}")
    return progress


def _save_checkpoint(session: Session, progress: Progress, epoch_start_generator: torch.Tensor) -> None:
    """Every rank's RNG state to rank 0, which writes the checkpoint atomically; then all wait."""
    rng = distributed.gather(ckpt.rng_state(), session.dist)
    if session.dist.is_main:
        ckpt.save_atomic(
            {
                "format": ckpt.FORMAT,
                "config": session.config.to_dict(),
                "model": unwrap(session.model).state_dict(),
                "optimizer": session.optimizer.state_dict(),
                "epoch": progress.epoch,
                "step_in_epoch": progress.step_in_epoch,
                "global_step": progress.global_step,
                "generator": epoch_start_generator,
                "rng": rng,
                "history": progress.history,
                "wall_seconds": progress.seconds_before + time.perf_counter() - session.wall_start,
                "world_size": session.dist.world_size,
            },
            session.checkpoint_path,
        )
    distributed.barrier(session.dist)


def _train_epoch(session: Session, progress: Progress, stop: "_StopFlag", stop_after_steps) -> dict[str, float]:
    """The rest of the current epoch, then its evaluation and checkpoint; returns the evaluation.
    Raises Interrupted (after a checkpoint) when asked to stop."""
    config, history = session.config, progress.history
    epoch_generator = session.generator.get_state()
    bar = _progress(session.n_batches, progress.step_in_epoch, f"epoch {progress.epoch + 1}/{config.epochs}",
                    session.dist.is_main and not config.quiet)
    epoch_start = time.perf_counter()
    # The epoch's sums, and the loss since the last logged point: a checkpoint taken mid-epoch carries
    # both over, so a resumed run logs the same points as an uninterrupted one.
    partial = history.pop("partial_epoch", None)
    sums = Sums(**partial) if progress.step_in_epoch and partial else Sums()
    interval = Sums(**history.get("interval", {}))
    for b, idx in enumerate(epoch_batches(len(session.data.x_train), config, session.generator, session.dist)):
        if b < progress.step_in_epoch:
            continue  # already trained before the checkpoint we resumed from
        stopping = _train_batch(session, progress, idx.to(device=session.device), b, sums, interval, stop,
                                stop_after_steps)
        progress.step_in_epoch = b + 1
        if bar is not None:
            bar.update(1)
            if b % 10 == 0 or progress.step_in_epoch == session.n_batches:
                bar.set_postfix(_postfix(config, sums), refresh=False)
        if stopping:
            history["partial_epoch"] = asdict(sums)
            history["interval"] = asdict(interval)
            _save_checkpoint(session, progress, epoch_generator)
            if bar is not None:
                bar.close()
            raise Interrupted(
                f"stopped at epoch {progress.epoch + 1}, step {progress.step_in_epoch} of {session.n_batches}; "
                f"checkpoint saved to {session.checkpoint_path}. Continue with the same command and --resume."
            )
    if bar is not None:
        bar.close()
    last_eval = evaluate(session.model, session.data, config, session.dist)
    record = {"epoch": progress.epoch + 1, **_train_numbers(config, sums),
              "lr": learning_rate(config, progress.global_step, session.total_steps),
              "seconds": time.perf_counter() - epoch_start, **last_eval}
    history["epochs"].append(record)
    if not config.quiet:
        session.log(_epoch_line(config, record))
    progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
    history["interval"] = asdict(interval)
    _save_checkpoint(session, progress, session.generator.get_state())
    return last_eval


def _train_batch(session: Session, progress: Progress, idx: torch.Tensor, b: int, sums: Sums, interval: Sums,
                 stop: "_StopFlag", stop_after_steps) -> bool:
    """One batch: one optimiser step per chunk of its sequences (one chunk unless `--chunk` asks for
    truncated BPTT). Adds to `sums` and `interval`; returns whether the run must stop after this batch."""
    config, data = session.config, session.data
    x, y = data.x_train[idx], data.y_train[idx]  # (B, T, I), (B,) or (B, T, 1)
    if session.shifts is not None:
        # Drawn from the global RNG, which checkpoints carry, so resuming moves the same way.
        which = torch.randint(len(session.shifts), (len(idx),)).to(session.device)  # (B,)
        x = shift_images(x, session.shifts, which)
    state, stopping = None, False
    for start, end in session.spans:
        if config.task == "mnist":
            logits = session.model(x)  # (B, 10)
            loss = F.cross_entropy(logits, y)
            count, correct = len(idx), (logits.detach().argmax(1) == y).sum()
        else:
            pred, state = session.model(x[:, start:end], state)  # (B, t, 1)
            state = detach_state(state)  # truncated BPTT: gradients stop at the chunk edge
            if end <= config.burn_in:
                continue
            err = sine_error(pred, y[:, start:end], start, config.burn_in)
            loss, count, correct = err.mean(), err.numel(), torch.zeros((), device=session.device)
        if stop_after_steps is not None and progress.global_step + 1 >= stop_after_steps:
            stop.requested = True
        report = StepReport.agreed(loss, correct, count, stop.requested, session)
        if report.non_finite:
            raise _diverged(session.checkpoint_path, progress.epoch, b, progress.global_step, "loss",
                            report.sums.loss / report.sums.count)
        _optimizer_step(session, progress, loss, b)
        sums.add(report.sums)
        interval.add(Sums(report.sums.loss, 0.0, report.sums.count))
        if progress.global_step % config.log_every == 0:
            progress.history["logged_steps"].append(progress.global_step)
            progress.history["logged_loss"].append(interval.loss / interval.count)
            interval.loss, interval.count = 0.0, 0.0
        stopping = stopping or report.stop
    return stopping


def _optimizer_step(session: Session, progress: Progress, loss: torch.Tensor, b: int) -> None:
    """Scheduled learning rate, backward, clipped gradient (refused when not finite), step."""
    for group in session.optimizer.param_groups:
        group["lr"] = learning_rate(session.config, progress.global_step, session.total_steps)
    session.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Always measured (clip=0 only skips the scaling): a non-finite gradient must not reach the
    # weights. After DDP's all-reduce it is the same number on every rank.
    clip = session.config.clip if session.config.clip > 0 else math.inf
    norm = torch.nn.utils.clip_grad_norm_(session.params, clip)
    if not torch.isfinite(norm):
        raise _diverged(session.checkpoint_path, progress.epoch, b, progress.global_step, "gradient norm", norm)
    session.optimizer.step()
    progress.global_step += 1


def _finish(session: Session, progress: Progress, last_eval: dict, train_seconds: float, command) -> dict[str, Any]:
    """The metrics of the run; on rank 0 also the plots, metrics.json and the final line."""
    config, dist, model = session.config, session.dist, unwrap(session.model)
    # DDP keeps the replicas equal by construction; checking costs one gather and catches a broken
    # setup (a rank that skipped a step, a parameter outside DDP) that would otherwise pass silently.
    digests = distributed.gather(parameter_digest(model), dist)
    history = progress.history
    metrics = {
        "task": config.task,
        "status": "completed",
        **last_eval,
        "epochs": history["epochs"],
        "logged_steps": history["logged_steps"],
        "logged_loss": history["logged_loss"],
        "train_loss_per_epoch": [e["train_loss"] for e in history["epochs"]],
        "gradient_flow": _gradient_flow(session, history),
        "global_steps": progress.global_step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_seconds": session.data_seconds,
        "train_seconds": train_seconds,
        "device": str(session.device),
        "device_name": _device_name(session.device),
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

            make_plots(metrics, model, session.data, config, session.out, session.log)
        metrics["wall_seconds"] = time.perf_counter() - session.wall_start
        metrics["wall_seconds_total"] = progress.seconds_before + metrics["wall_seconds"]
        write_json(metrics, session.out / "metrics.json")
        session.log(_final_line(config, metrics, session.out))
    return metrics


def _gradient_flow(session: Session, history: dict) -> Optional[dict[str, Any]]:
    """‖∂L/∂h_t‖ for every step t, before the first training step and after the last (rank 0)."""
    config = session.config
    why_not = gradient_flow.measurable(config)
    if why_not is not None or not session.dist.is_main:
        return None if why_not is None else {"measured": False, "why": why_not}
    return {
        "measured": True,
        "what": "batch mean of the L2 norm of dL/dh_t over the top layer's units, t = 1..T, L the mean "
                "cross-entropy on the first training images",
        "images": min(gradient_flow.BATCH, len(session.data.x_train)),
        "start": history.get("gradient_flow_start"),
        "end": gradient_flow.measure(unwrap(session.model), session.data, config),
    }


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


def _train_numbers(config: Config, sums: Sums) -> dict[str, float]:
    count = max(sums.count, 1)
    numbers = {"train_loss": sums.loss / count}
    if config.task == "mnist":
        numbers["train_accuracy"] = sums.correct / count
    return numbers


def _postfix(config: Config, sums: Sums) -> dict[str, str]:
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
