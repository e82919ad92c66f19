"""Tests of `python -m train`: the command end to end, its parser, its data errors, resuming, stopping
cleanly, and training parity between our layers and torch.nn.

Everything runs on small MNIST-shaped IDX files written into tmp_path (64 training and 32 test
images whose class is a bright vertical bar at column 2 + 2·label, so a tiny LSTM learns them in a few steps),
tiny hidden sizes and one or two epochs: the whole file takes seconds. The command is driven
in-process through `train.cli.main(argv)`; one test starts a real `python -m train` subprocess, and
one reads the real MNIST files when $MNIST_DIR points at them.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from mnist_files import metrics_of, small_mnist, write_mnist
from train import cli, loop
from train.config import PRESETS, Config, resolve

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Synthetic MNIST


@pytest.fixture
def mnist_dir(tmp_path):
    return write_mnist(tmp_path / "data")


@pytest.fixture(autouse=True)
def _few_threads():
    # The CI box has 2 shared cores; these models are tiny, one thread is fastest and fair to others.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_sine(out, *extra) -> list[str]:
    return ["sine", "--out", str(out), "--hidden", "8", "--epochs", "1", "--train-size", "64",
            "--test-size", "16", "--seq-len", "30", "--batch-size", "16", "--device", "cpu",
            "--quiet", "--no-plots", *extra]


# ----------------------------------------------------------------------------------------------
# End to end


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_mnist_end_to_end(mnist_dir, tmp_path, cell):
    out = tmp_path / "run"
    assert cli.main(small_mnist(mnist_dir, out, "--cell", cell, "--epochs", "2")) == 0
    m = metrics_of(out)
    assert 0.0 <= m["test_accuracy"] <= 1.0
    assert m["status"] == "completed" and m["device"] == "cpu" and m["world_size"] == 1
    assert m["config"]["cell"] == cell and m["config"]["hidden"] == 8
    assert len(m["epochs"]) == 2 and len(m["train_loss_per_epoch"]) == 2
    assert m["logged_loss"] and all(np.isfinite(m["logged_loss"]))
    assert m["wall_seconds"] > 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and "rnn.weight_ih_l0" in state["model"]


@pytest.mark.parametrize("impl", ["ours", "torch"])  # torch: the gate trace comes from our copy of it
def test_mnist_learns_and_plots(mnist_dir, tmp_path, impl):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    argv = small_mnist(mnist_dir, out, "--hidden", "16", "--epochs", "4", "--batch-size", "8", "--lr", "0.02",
                       "--impl", impl)
    argv.remove("--no-plots")
    assert cli.main(argv) == 0
    m = metrics_of(out)
    assert m["test_accuracy"] > 0.5, m["epochs"]  # chance is 0.1; the bars are easy
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    assert (out / "curves.png").stat().st_size > 0
    assert (out / "gates.png").stat().st_size > 0


@pytest.mark.parametrize("extra", [
    ["--order", "pixels", "--train-limit", "16", "--test-limit", "8", "--hidden", "4"],
    ["--order", "permuted", "--train-limit", "16", "--test-limit", "8", "--hidden", "4"],
    ["--head", "all", "--bidirectional", "--layers", "2", "--dropout", "0.2"],
    ["--bidirectional", "--cell", "gru"],
    ["--preset", "lstm64", "--hidden", "8", "--epochs", "1", "--train-limit", "32"],
    ["--impl", "torch", "--dtype", "float64", "--schedule", "cosine", "--optimizer", "sgd"],
    ["--cell", "rnn", "--nonlinearity", "relu", "--init-hh", "identity", "--shift", "2"],
    ["--order", "permuted", "--train-limit", "16", "--test-limit", "8", "--hidden", "4", "--shift", "1"],
])
def test_mnist_options(mnist_dir, tmp_path, extra):
    out = tmp_path / "run"
    assert cli.main(small_mnist(mnist_dir, out, *extra)) == 0
    m = metrics_of(out)
    assert 0.0 <= m["test_accuracy"] <= 1.0
    if "--order" in extra:
        assert m["config"]["order"] == extra[1]
    if "--preset" in extra:
        # the preset sets what was not given; what was given wins
        assert m["config"]["lr"] == 1e-3 and m["config"]["batch_size"] == 16 and m["config"]["hidden"] == 8


def test_plots_skipped_without_matplotlib(mnist_dir, tmp_path, monkeypatch, capsys):
    from train import plots

    monkeypatch.setattr(plots, "_pyplot", lambda: None)  # as if `import matplotlib` failed
    out = tmp_path / "run"
    argv = small_mnist(mnist_dir, out)
    argv.remove("--no-plots")
    assert cli.main(argv) == 0
    assert "plots skipped: matplotlib is not installed" in capsys.readouterr().out
    assert metrics_of(out)["status"] == "completed" and not list(out.glob("*.png"))


def test_sine_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    argv = small_sine(out, "--epochs", "2")
    argv.remove("--no-plots")
    assert cli.main(argv) == 0
    m = metrics_of(out)
    assert m["test_mse"] >= 0 and m["test_mse_all_steps"] >= 0
    assert m["epochs"][-1]["train_loss"] < m["epochs"][0]["train_loss"]
    assert (out / "predictions.png").stat().st_size > 0


def test_sine_tbptt_preset(tmp_path):
    out = tmp_path / "run"
    assert cli.main(small_sine(out, "--preset", "sine-tbptt", "--chunk", "10", "--burn-in", "5")) == 0
    m = metrics_of(out)
    # 30 steps in chunks of 10, none wholly inside the 5-step burn-in: 3 optimiser steps per batch
    assert m["global_steps"] == 3 * 64 // 16
    assert m["config"]["hidden"] == 8 and m["config"]["chunk"] == 10


def test_subprocess_smoke(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "train", *small_sine(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test MSE" in result.stdout
    assert metrics_of(out)["command"].startswith("python -m train sine")


# ----------------------------------------------------------------------------------------------
# The parser refuses bad values


@pytest.mark.parametrize("argv", [
    ["mnist", "--cell", "lstmm"],
    ["mnist", "--impl", "keras"],
    ["mnist", "--epochs", "0"],
    ["mnist", "--epochs", "two"],
    ["mnist", "--batch-size", "-4"],
    ["mnist", "--lr", "0"],
    ["mnist", "--lr", "nan"],
    ["mnist", "--clip", "-1"],
    ["mnist", "--dropout", "1.0"],
    ["mnist", "--order", "columns"],
    ["mnist", "--head", "first"],
    ["mnist", "--device", "tpu"],
    ["mnist", "--dtype", "float16"],
    ["mnist", "--train-limit", "0"],
    ["mnist", "--preset", "sine-tbptt"],
    ["mnist", "--chunk", "10"],
    ["mnist", "--init-hh", "zeros"],
    ["mnist", "--nonlinearity", "sigmoid"],
    ["mnist", "--shift", "-1"],
    ["sine", "--shift", "1"],
    ["sine", "--order", "rows"],
    ["sine", "--chunk", "-1"],
    ["fashion"],
    [],
])
def test_parser_refuses(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["mnist", "--cell", "gru", "--forget-bias", "1"], "--forget-bias"),
    (["mnist", "--cell", "lstm", "--nonlinearity", "relu"], "--nonlinearity"),
    (["sine", "--burn-in", "100"], "--burn-in"),
    (["sine", "--chunk", "10", "--bidirectional"], "--bidirectional"),
])
def test_options_that_do_not_fit_together(argv, words, capsys):
    assert cli.main(argv) == 2
    assert words in capsys.readouterr().err


def test_cell_defaults_and_layering():
    lstm = resolve("mnist", {})
    assert (lstm.cell, lstm.hidden, lstm.forget_bias) == ("lstm", 128, 1.0)
    assert resolve("mnist", {"cell": "gru"}).forget_bias is None
    assert resolve("mnist", {"lr": 0.5}).lr == 0.5
    assert lstm.shift > 0 and lstm.init_hh == "torch"
    rnn = resolve("mnist", {"cell": "rnn"})
    assert (rnn.nonlinearity, rnn.init_hh) == ("relu", "identity")  # the IRNN
    assert resolve("mnist", {"cell": "rnn", "init_hh": "orthogonal"}).init_hh == "orthogonal"
    preset = resolve("mnist", {"preset": "lstm128x2"})
    assert (preset.layers, preset.hidden, preset.lr, preset.batch_size, preset.epochs) == (2, 128, 0.01, 100, 2)
    # The tutorials did not augment: a preset keeps them as they were, whatever the cell defaults say.
    for name, values in PRESETS.items():
        if values["task"] == "mnist":
            assert resolve("mnist", {"preset": name}).shift == 0, name
    assert resolve("sine", {}).burn_in > 0


# ----------------------------------------------------------------------------------------------
# Data errors: the reader's message, no traceback, a non-zero exit


def _run_failing(argv, capsys) -> str:
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_missing_files(tmp_path, capsys):
    err = _run_failing(small_mnist(tmp_path / "empty", tmp_path / "run"), capsys)
    assert "train-images-idx3-ubyte" in err and "--data-dir" in err


def test_truncated_file(mnist_dir, tmp_path, capsys):
    path = mnist_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    content = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(content[: len(content) - 100]))
    err = _run_failing(small_mnist(mnist_dir, tmp_path / "run"), capsys)
    assert "truncated" in err and str(path.absolute()) in err


def test_corrupt_file(mnist_dir, tmp_path, capsys):
    path = mnist_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"\x1f\x8b this is not gzip")
    err = _run_failing(small_mnist(mnist_dir, tmp_path / "run"), capsys)
    assert "corrupt" in err and "t10k-labels-idx1-ubyte" in err


def test_swapped_files(mnist_dir, tmp_path, capsys):
    raw = mnist_dir / "MNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte.gz", raw / "train-labels-idx1-ubyte.gz"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    err = _run_failing(small_mnist(mnist_dir, tmp_path / "run"), capsys)
    assert "magic" in err


def test_data_error_in_subprocess_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train", *small_mnist(tmp_path / "nothing", tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "not found" in result.stderr or "missing" in result.stderr


def test_cuda_refused_without_cuda(mnist_dir, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = small_mnist(mnist_dir, tmp_path / "run")
    argv[argv.index("--device") + 1] = "cuda"
    assert "CUDA" in _run_failing(argv, capsys)


# ----------------------------------------------------------------------------------------------
# Resume equals uninterrupted; Ctrl-C saves; a non-finite loss keeps the last good checkpoint


def _params(out) -> dict:
    return torch.load(pathlib.Path(out) / "checkpoint.pt", weights_only=True)["model"]


def _same_run(a, b):
    ma, mb = metrics_of(a), metrics_of(b)
    for key in ("logged_steps", "logged_loss", "train_loss_per_epoch", "global_steps"):
        assert ma[key] == mb[key], key
    assert [e.get("test_accuracy", e.get("test_mse")) for e in ma["epochs"]] == \
           [e.get("test_accuracy", e.get("test_mse")) for e in mb["epochs"]]
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


@pytest.mark.parametrize("stop_after", [4, 6])  # 4 steps = the end of epoch 1; 6 = mid epoch 2
def test_resume_equals_uninterrupted_mnist(mnist_dir, tmp_path, stop_after):
    # Two layers with dropout: resuming must also restore the RNG that draws the dropout masks.
    # Logged every 3 steps: a stop at step 4 must carry the half-filled logging interval over.
    # Random shifts: resuming must also restore the RNG that draws them.
    common = ["--epochs", "3", "--layers", "2", "--dropout", "0.3", "--log-every", "3", "--shift", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(small_mnist(mnist_dir, whole, *common)) == 0
    assert cli.main(small_mnist(mnist_dir, parts, *common, "--stop-after-steps", str(stop_after))) == 130
    assert torch.load(parts / "checkpoint.pt", weights_only=True)["global_step"] == stop_after
    assert cli.main(small_mnist(mnist_dir, parts, *common, "--resume")) == 0
    _same_run(whole, parts)


def test_resume_reads_a_format_1_checkpoint(mnist_dir, tmp_path):
    """A checkpoint from before the history's running sums were named (lists by position) resumes
    exactly as one of today's."""
    from train import checkpoint

    common = ["--epochs", "2", "--log-every", "4"]  # step 6: mid epoch 2, two steps into an interval
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(small_mnist(mnist_dir, whole, *common)) == 0
    assert cli.main(small_mnist(mnist_dir, parts, *common, "--stop-after-steps", "6")) == 130
    path = parts / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    history = state["history"]
    assert history["interval"]["count"] > 0 and history["partial_epoch"]["count"] > 0
    history["partial_epoch"] = [history["partial_epoch"][k] for k in ("loss", "correct", "count")]
    history["interval"] = [history["interval"]["loss"], history["interval"]["count"]]
    checkpoint.save_atomic({**state, "format": 1}, path)
    assert cli.main(small_mnist(mnist_dir, parts, *common, "--resume")) == 0
    _same_run(whole, parts)


def test_resume_equals_uninterrupted_sine_tbptt(tmp_path):
    common = ["--chunk", "10", "--burn-in", "5", "--epochs", "2", "--log-every", "1"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli.main(small_sine(whole, *common)) == 0
    # step 7 is a chunk in the middle of batch 3: the run stops after the batch, at step 9
    assert cli.main(small_sine(parts, *common, "--stop-after-steps", "7")) == 130
    assert torch.load(parts / "checkpoint.pt", weights_only=True)["global_step"] == 9
    assert cli.main(small_sine(parts, *common, "--resume")) == 0
    _same_run(whole, parts)


def test_resume_refuses_a_changed_configuration(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(small_mnist(mnist_dir, out)) == 0
    assert cli.main(small_mnist(mnist_dir, out, "--resume", "--lr", "0.5")) == 1
    assert "--lr" in capsys.readouterr().err
    # where and how it runs may change
    assert cli.main(small_mnist(mnist_dir, out, "--resume", "--threads", "1")) == 0


def test_resume_without_checkpoint(mnist_dir, tmp_path, capsys):
    assert cli.main(small_mnist(mnist_dir, tmp_path / "none", "--resume")) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint(mnist_dir, tmp_path, monkeypatch, capsys):
    real = loop.learning_rate

    def ctrl_c_at_step_3(config, step, total):
        if step == 2:
            signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        return real(config, step, total)

    monkeypatch.setattr(loop, "learning_rate", ctrl_c_at_step_3)
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    assert cli.main(small_mnist(mnist_dir, out, "--epochs", "2")) == 130
    assert "--resume" in capsys.readouterr().err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    # all ranks agree on stopping in the next step's collective, so the run stops one step later
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 4, 4)
    # the handler is gone again: a later Ctrl-C is not swallowed
    assert signal.getsignal(signal.SIGINT) is handler


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(mnist_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = loop.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls["n"] += 1
        # call 1: the gradient flow before training; 2-5: epoch 1's steps, 6: its evaluation, 7: the
        # first step of epoch 2
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(loop.F, "cross_entropy", poisoned)
    assert cli.main(small_mnist(mnist_dir, out, "--epochs", "3")) == 1
    err = capsys.readouterr().err
    assert "nan" in err and "last good checkpoint" in err and "Traceback" not in err
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    from train import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "x": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "x": torch.zeros(2)}, path)
    assert torch.equal(checkpoint.load(path)["x"], torch.ones(2))  # the old one, intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary left behind


# ----------------------------------------------------------------------------------------------
# Training parity: ours and torch.nn, same seed and weights, float64, 50 steps


def _losses(config: Config) -> list[float]:
    metrics = loop.run(config, log=lambda *_: None)
    return metrics["logged_loss"][:50]


@pytest.mark.parametrize("cell, extra, ours", [
    ("lstm", {}, "ours"),
    ("gru", {}, "ours"),
    ("rnn", {}, "ours"),
    ("lstm", {"layers": 2, "bidirectional": True, "head": "all"}, "ours"),
    ("lstm", {}, "readable"),  # the plain per-step unroll a learner reads
    ("gru", {}, "readable"),
    ("rnn", {"nonlinearity": "relu", "init_hh": "identity", "shift": 2}, "ours"),
    ("gru", {"init_hh": "orthogonal", "shift": 1}, "ours"),
])
def test_training_parity_mnist(mnist_dir, tmp_path, cell, extra, ours):
    pytest.importorskip("models")
    losses = {}
    for impl in ("torch", ours):
        config = resolve("mnist", dict(
            cell=cell, impl=impl, hidden=6, epochs=4, batch_size=4, dtype="float64", data_dir=str(mnist_dir),
            download=False, device="cpu", out=str(tmp_path / impl), quiet=True, plots=False, log_every=1,
            **extra,
        ))
        losses[impl] = _losses(config)
    assert len(losses["torch"]) == 50
    torch.testing.assert_close(torch.tensor(losses[ours]), torch.tensor(losses["torch"]), atol=1e-8, rtol=0)
    assert losses["torch"][-1] < losses["torch"][0]


def test_training_parity_sine_tbptt(tmp_path):
    pytest.importorskip("models")
    losses = {}
    for impl in ("torch", "ours"):
        config = resolve("sine", dict(
            preset="sine-tbptt", impl=impl, hidden=6, epochs=5, batch_size=16, train_size=64, test_size=8,
            seq_len=40, chunk=10, dtype="float64", device="cpu", out=str(tmp_path / impl), quiet=True,
            plots=False, log_every=1,
        ))
        losses[impl] = _losses(config)
    assert len(losses["torch"]) == 50
    torch.testing.assert_close(torch.tensor(losses["ours"]), torch.tensor(losses["torch"]), atol=1e-8, rtol=0)


def test_same_seed_same_start_for_ours_and_torch(tmp_path):
    pytest.importorskip("models")
    from train.models import build_model

    base = dict(hidden=5, layers=2, bidirectional=True)
    a = build_model(resolve("mnist", {**base, "impl": "torch"}), 28, 28).state_dict()
    b = build_model(resolve("mnist", {**base, "impl": "ours"}), 28, 28).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # forget bias 1.0 (the LSTM default) sits in b_if; b_hf is zero
    assert torch.all(a["rnn.bias_ih_l1_reverse"][5:10] == 1.0) and torch.all(a["rnn.bias_hh_l0"][5:10] == 0.0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_init_hh_sets_only_the_recurrent_weights(cell):
    from train.models import build_model

    base = dict(cell=cell, hidden=6, layers=2, bidirectional=True, forget_bias=None)
    plain = build_model(resolve("mnist", {**base, "init_hh": "torch"}), 28, 28).state_dict()
    for how in ("orthogonal", "identity"):
        model = build_model(resolve("mnist", {**base, "init_hh": how}), 28, 28)
        state = model.state_dict()
        for name, value in state.items():
            if "weight_hh" not in name:
                assert torch.equal(value, plain[name]), name  # the same draws as torch.nn's init
                continue
            for block in value.split(6):  # (H, H) per gate
                expected = torch.eye(6)
                got = block @ block.T if how == "orthogonal" else block
                torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
            assert not torch.equal(value, plain[name])


def test_default_data_is_the_shipped_copy_offline(tmp_path, monkeypatch):
    from train import data

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("MNIST_DIR", raising=False)
    out = tmp_path / "run"
    argv = ["mnist", "--out", str(out), "--cell", "rnn", "--hidden", "8", "--epochs", "1", "--train-limit", "256",
            "--test-limit", "64", "--device", "cpu", "--quiet", "--no-plots"]
    assert cli.main(argv) == 0
    m = metrics_of(out)
    assert m["data_dir"] == str(data.BUNDLED_DIR) and m["config"]["data_dir"] is None
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------------------------
# The real MNIST files: $MNIST_DIR (CI: ../shared/data), else the copy shipped in train/mnist/


def test_real_mnist(tmp_path):
    from train import data

    out = tmp_path / "run"
    root = os.environ.get("MNIST_DIR") or str(data.BUNDLED_DIR)
    argv = ["mnist", "--data-dir", root, "--out", str(out), "--train-limit", "3000",
            "--test-limit", "500", "--epochs", "1", "--hidden", "32", "--batch-size", "64", "--lr", "0.01",
            "--device", "cpu", "--quiet", "--no-plots", "--no-download", "--impl", "torch"]
    assert cli.main(argv) == 0
    assert metrics_of(out)["test_accuracy"] > 0.5


def test_bidirectional_last_step_features_are_the_top_layer_h_n():
    from train.models import SequenceClassifier

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    model = SequenceClassifier(rnn, "last", steps=5)
    captured = {}
    model.head.register_forward_hook(lambda module, args, output: captured.update(features=args[0]))
    x = torch.randn(2, 5, 3)
    model(x)
    _, (h_n, _) = rnn(x)  # (layers·2, B, H)
    top = torch.cat([h_n[-2], h_n[-1]], dim=1)  # forward and backward final states of the top layer
    torch.testing.assert_close(captured["features"], top)
