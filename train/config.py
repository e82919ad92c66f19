"""What a training run is: one `Config`, the defaults behind it, and the named presets.

A run's configuration is built in layers, each overriding the one before:

    1. `DEFAULTS`              what every run starts from
    2. `TASK_DEFAULTS[task]`   sine needs a different model and data than MNIST
    3. `CELL_DEFAULTS[(task, cell)]`  tuned per cell so the bare command reaches its target within
                                      its time limit on one CPU thread; the targets and what each
                                      recipe reaches are in README.md, "Results" (every run in
                                      benchmarks/results/train_defaults.md)
    4. `PRESETS[name]`         the classic tutorial setups, picked with `--preset`
    5. the options given on the command line

The whole resolved `Config` is written into `metrics.json` and the checkpoint, so a run can be
repeated or resumed from either.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from models.kinds import COMMAND_IMPLS, KINDS

CELLS = tuple(KINDS)  # rnn, lstm, gru
# The implementation names of models.kinds, the layers' `impl=` and the benchmark's: "ours" (= "auto")
# our layers as a user gets them, "fused" and "readable" forced onto one path, "torch" torch.nn.
IMPLS = COMMAND_IMPLS
ORDERS = ("rows", "pixels", "permuted")
HEADS = ("last", "all")
DTYPES = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("onecycle", "cosine", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")
INITS_HH = ("torch", "orthogonal", "identity")
NONLINEARITIES = ("tanh", "relu")


@dataclass
class Config:
    """Every knob of a run. Only plain str/int/float/bool/None, so it pickles as JSON and loads
    with `torch.load(weights_only=True)`."""

    task: str = "mnist"
    preset: Optional[str] = None
    # model
    cell: str = "lstm"
    impl: str = "ours"
    cell_class: Optional[str] = None  # "FILE.py:CLASS": a learner's own cell (train/learner.py)
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    forget_bias: Optional[float] = None  # LSTM only; None keeps torch's init
    init_hh: str = "torch"  # how weight_hh starts: torch's uniform, orthogonal blocks, or identity (RNN)
    nonlinearity: str = "tanh"  # RNN only: tanh or relu, as torch.nn.RNN
    head: str = "last"  # mnist: classify from the last step or from all steps concatenated
    # optimisation
    optimizer: str = "adam"
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    schedule: str = "onecycle"
    clip: float = 1.0  # max gradient norm; 0 turns clipping off
    seed: int = 0
    dtype: str = "float32"
    # data
    order: str = "rows"
    shift: int = 0  # mnist: move each training image by up to this many pixels along each axis
    data_dir: Optional[str] = None
    download: bool = True
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None
    # sine only
    seq_len: int = 100
    train_size: int = 4000  # sequences
    test_size: int = 500
    chunk: int = 0  # > 0: truncated BPTT over chunks of this many steps, state carried and detached
    burn_in: int = 0  # leading steps left out of the sine loss and MSE (see TASK_DEFAULTS)
    # running
    device: str = "auto"
    out: Optional[str] = None
    log_every: int = 20  # steps between the logged training-loss points in metrics.json
    threads: Optional[int] = None  # None: torch's own choice
    quiet: bool = False
    plots: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name for f in dataclasses.fields(Config)}

DEFAULTS: dict[str, Any] = {
    # One CPU thread. These models run many small parallel regions per step, in each of which every
    # thread must arrive; on a shared machine one descheduled thread stalls them all (README.md,
    # "Training", has what that cost on the CI machine). `--threads N` asks for more.
    "threads": 1,
}

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": {},
    # Reading sin(wt + φ) at t = 0 cannot tell cos's sign, and the frequency shows only after a few
    # steps: the first steps carry an error no model can remove (≈ 0.5 at step 0 alone, which is
    # 5e-3 averaged over 100 steps). The loss and test MSE therefore skip a short burn-in.
    "sine": dict(
        cell="lstm", hidden=32, epochs=12, batch_size=32, lr=1e-2, clip=1.0, burn_in=10, log_every=20
    ),
}

CELL_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # 128 units, one layer, Adam with a one-cycle schedule and clipping. A 128-unit layer learns the
    # training set almost perfectly within a few epochs; what it lacks is data, so every training
    # image is moved by up to 2 pixels each way, fresh every epoch, and the run is long enough to
    # use that. The width stays at 128: a wider layer costs more per epoch, so fewer epochs fit in
    # the time limit (README.md, "Results", has the trials).
    ("mnist", "lstm"): dict(hidden=128, epochs=18, lr=3e-3, forget_bias=1.0, shift=2),
    ("mnist", "gru"): dict(hidden=128, epochs=18, lr=3e-3, shift=2),
    # The IRNN (Le, Jaitly & Hinton 2015): relu units and W_hh starting at the identity, so the
    # state is carried forward unchanged until the net learns otherwise. A plain RNN is unstable at
    # the LSTM's learning rate; its step has one gate block where the LSTM's has four, so an epoch
    # costs less and more of them fit in the same time limit.
    ("mnist", "rnn"): dict(hidden=128, epochs=30, lr=1e-3, clip=1.0, nonlinearity="relu",
                           init_hh="identity", shift=2),
    # Sine: more epochs are cheap (a 32-unit layer on 4000 short sequences).
    ("sine", "lstm"): dict(forget_bias=1.0, epochs=25),
    ("sine", "gru"): dict(),
    ("sine", "rnn"): dict(lr=3e-3),
}

# The classic tutorial setups, with our cells. Each names its task; what they reach is in README.md.
# They sit on top of CELL_DEFAULTS, so each sets every knob the tutorial fixed, augmentation included.
PRESETS: dict[str, dict[str, Any]] = {
    # The smallest classic: one 64-unit LSTM layer read from its last step, plain Adam.
    "lstm64": dict(
        task="mnist", cell="lstm", hidden=64, layers=1, head="last", optimizer="adam", lr=1e-3,
        schedule="constant", clip=0.0, forget_bias=None, shift=0, batch_size=64, epochs=5,
    ),
    # The pytorch-tutorial (yunjey) RNN: 2 × 128 LSTM, Adam 0.01, batch 100, 2 epochs.
    "lstm128x2": dict(
        task="mnist", cell="lstm", hidden=128, layers=2, head="last", optimizer="adam", lr=0.01,
        schedule="constant", clip=0.0, forget_bias=None, shift=0, batch_size=100, epochs=2,
    ),
    # 2 × 256 LSTM classifying from every step's output concatenated (28 · 256 features).
    "lstm256x2-all": dict(
        task="mnist", cell="lstm", hidden=256, layers=2, head="all", optimizer="adam", lr=0.005,
        schedule="constant", clip=0.0, forget_bias=None, shift=0, batch_size=64, epochs=3,
    ),
    # The stateful sine → cosine LSTM: 20 units; each sequence is fed in chunks and the hidden state
    # is carried from one chunk to the next but detached, so gradients stop at the chunk boundary
    # (truncated backpropagation through time).
    "sine-tbptt": dict(
        task="sine", cell="lstm", hidden=20, layers=1, chunk=20, optimizer="adam", lr=1e-2,
        schedule="cosine", clip=1.0, batch_size=32, epochs=12,
    ),
}

# Sequential MNIST: the 784 pixels one at a time (Le, Jaitly & Hinton 2015), in order or in one fixed
# random order ("permuted"), the standard long-sequence tests of a recurrent cell. One 128-unit layer
# read from its last step, Adam with a one-cycle schedule, clipping at 1, batch 128, no augmentation
# (a shifted digit is a different pixel sequence, not the same one moved). The same budget for every
# cell, so the plain tanh RNN's failure to learn across 784 steps shows as it is.
_SEQUENTIAL = dict(task="mnist", hidden=128, layers=1, head="last", optimizer="adam", schedule="onecycle",
                   clip=1.0, shift=0, batch_size=128, epochs=20)
_SEQUENTIAL_CELLS = {
    # The forget gate starts open (b_f = 1) so the cell state carries from the first step. Not yet a
    # recipe that learns pixel MNIST in this budget: benchmarks/results/pixels_lstm_trials.md has the
    # three tried (this one started best).
    "lstm": dict(cell="lstm", lr=1e-3, forget_bias=1.0, init_hh="orthogonal"),
    "gru": dict(cell="gru", lr=2e-3),
    # The IRNN: relu units, W_hh starting at the identity; unstable at the gated cells' rate.
    "irnn": dict(cell="rnn", nonlinearity="relu", init_hh="identity", lr=2e-4),
    "rnn": dict(cell="rnn", nonlinearity="tanh", init_hh="torch", lr=2e-3),
}
for _order in ("pixels", "permuted"):
    for _name, _cell in _SEQUENTIAL_CELLS.items():
        PRESETS[f"{_order}-{_name}"] = dict(_SEQUENTIAL, order=_order, **_cell)

PRESET_HELP = {
    "lstm64": "1×64 LSTM, last step, Adam 1e-3, batch 64, 5 epochs",
    "lstm128x2": "2×128 LSTM, Adam 0.01, batch 100, 2 epochs",
    "lstm256x2-all": "2×256 LSTM, all-steps head, Adam 0.005, batch 64, 3 epochs",
    "sine-tbptt": "1×20 LSTM, state carried across 20-step chunks and detached (TBPTT)",
    **{f"{order}-{name}": f"sequential MNIST{' (permuted)' if order == 'permuted' else ''}: 784 steps of one "
                          f"pixel, 1×128 {name.upper()}, Adam {cell['lr']:g}, batch 128, 20 epochs"
       for order in ("pixels", "permuted") for name, cell in _SEQUENTIAL_CELLS.items()},
}


def resolve(task: str, given: dict[str, Any]) -> Config:
    """The Config for `task` from the options the user gave (None = not given), layered as above."""
    values: dict[str, Any] = {"task": task}
    values.update(DEFAULTS)
    values.update(TASK_DEFAULTS[task])
    preset = given.get("preset")
    preset_values = PRESETS.get(preset, {}) if preset else {}
    # The cell decides which per-cell defaults apply: from the command line first, then the preset.
    cell = given.get("cell") or preset_values.get("cell") or values.get("cell", "lstm")
    values.update(CELL_DEFAULTS.get((task, cell), {}))
    values.update({k: v for k, v in preset_values.items() if k != "task"})
    values.update({k: v for k, v in given.items() if v is not None and k in FIELDS})
    values["cell"] = cell
    if values["cell"] != "lstm" and given.get("forget_bias") is None:
        values["forget_bias"] = None
    return Config(**{k: v for k, v in values.items() if k in FIELDS})
