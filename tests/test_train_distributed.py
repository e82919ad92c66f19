"""Tests of `torchrun --nproc_per_node=2 -m train ...`: two CPU processes on gloo, loopback only.

Each test starts torchrun in a subprocess (`--standalone` picks a free port) on the small synthetic
MNIST of test_train.py. They check what DistributedDataParallel must give: the ranks end with
identical parameters, the loss goes down, the result matches a single process from the same seed
(the global batch is split across ranks, so the optimiser sees the same gradient), the rank-0
checkpoint resumes both under torchrun and in a single process, and a failure on one rank stops
both ranks with its message instead of hanging.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from mnist_files import metrics_of, small_mnist, write_mnist
from train import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 180  # a hang would otherwise wait for gloo's own 10-minute timeout

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is not available",
)


def torchrun(*args: str, script: list[str] | None = None) -> subprocess.CompletedProcess:
    target = script if script is not None else ["-m", "train"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *target, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("data"))


def argv(data_dir, out, *extra):
    return small_mnist(data_dir, out, "--epochs", "2", "--log-every", "1", *extra)


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "run"
    result = torchrun(*argv(data_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_two_processes_stay_in_sync_and_learn(two_process_run):
    out, result = two_process_run
    m = metrics_of(out)
    assert m["world_size"] == 2 and m["backend"] == "gloo"
    assert m["ranks_in_sync"] is True
    losses = m["logged_loss"]
    assert len(losses) == 8  # 64 samples / global batch 16 = 4 steps an epoch, for 2 epochs
    assert sum(losses[-2:]) < sum(losses[:2])
    # only rank 0 speaks: one final line, not two
    assert result.stdout.count("test accuracy") == 1


def test_one_process_and_two_agree(two_process_run, data_dir, tmp_path):
    out, _ = two_process_run
    single = tmp_path / "single"
    assert cli.main(argv(data_dir, single)) == 0
    one, two = metrics_of(single), metrics_of(out)
    assert one["world_size"] == 1 and one["backend"] is None
    # Same global batches and averaged gradients: the same trajectory up to float rounding.
    torch.testing.assert_close(torch.tensor(two["logged_loss"]), torch.tensor(one["logged_loss"]),
                               rtol=1e-4, atol=1e-5)
    assert abs(two["test_accuracy"] - one["test_accuracy"]) <= 1 / 16


def test_distributed_resume(two_process_run, data_dir, tmp_path):
    whole, _ = two_process_run
    parts = tmp_path / "parts"
    stopped = torchrun(*argv(data_dir, parts, "--stop-after-steps", "3"))
    assert stopped.returncode != 0  # each rank exits 130; torchrun reports the stop as a failure
    state = torch.load(parts / "checkpoint.pt", weights_only=True)  # written by rank 0
    assert state["global_step"] == 3 and state["world_size"] == 2 and len(state["rng"]) == 2

    # The rank-0 checkpoint also resumes in a single process (the global batches are the same).
    single = tmp_path / "single-from-two"
    shutil.copytree(parts, single)
    assert cli.main(argv(data_dir, single, "--resume")) == 0
    assert metrics_of(single)["global_steps"] == 8

    resumed = torchrun(*argv(data_dir, parts, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = metrics_of(whole), metrics_of(parts)
    assert a["logged_loss"] == b["logged_loss"]
    assert a["test_accuracy"] == b["test_accuracy"]
    pa = torch.load(whole / "checkpoint.pt", weights_only=True)["model"]
    pb = torch.load(parts / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


WORKER = textwrap.dedent('''
    """Runs `python -m train` on one rank, with a failure injected on rank 1."""
    import os
    import sys

    from train import cli, loop
    from train.data import DataError

    failure, argv = sys.argv[1], sys.argv[2:]
    if os.environ["RANK"] == "1":
        if failure == "data":
            def load_mnist(*args, **kwargs):
                raise DataError("injected: rank 1 cannot read its MNIST files")
            loop.load_mnist = load_mnist
        elif failure == "nan":
            real, calls = loop.sine_error, [0]
            def sine_error(*args, **kwargs):
                calls[0] += 1
                error = real(*args, **kwargs)
                return error * float("nan") if calls[0] == 3 else error
            loop.sine_error = sine_error
    sys.exit(cli.main(argv))
''')


@pytest.mark.parametrize("failure", ["data", "nan"])
def test_failure_on_one_rank_stops_both(failure, data_dir, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "run"
    if failure == "data":
        args = argv(data_dir, out)
    else:
        args = ["sine", "--out", str(out), "--hidden", "4", "--epochs", "1", "--train-size", "64",
                "--test-size", "8", "--seq-len", "20", "--batch-size", "16", "--quiet", "--no-plots"]
    result = torchrun(failure, *args, script=[str(worker)])  # returns: no hang
    assert result.returncode != 0
    if failure == "data":
        assert "(rank 1) injected: rank 1 cannot read its MNIST files" in result.stderr
    else:
        assert "became nan" in result.stderr and "step 3" in result.stderr
    assert not (out / "metrics.json").exists()
