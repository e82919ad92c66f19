"""Trained weights: `python -m train export` writes a finished run as one file that loads with
weights_only=True (torch.nn's layers take its weights too), `python -m train evaluate` scores it — or
a run's checkpoint — with our layers or torch.nn's and gets the run's own test accuracy; and a run
records its gradient flow. The shipped files in train/pretrained/ are scored on the real test set."""
import json
import pathlib

import pytest
import torch
from torch import nn

from mnist_files import metrics_of, small_mnist, write_mnist
from train import cli
from train.trained import FORMAT, evaluate_trained

ROOT = pathlib.Path(__file__).resolve().parents[1]
PRETRAINED = sorted((ROOT / "train" / "pretrained").glob("*.pt"))

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny GRU trained on synthetic MNIST, pixel by pixel would be slow: rows, 8 units, 2 epochs."""
    root = tmp_path_factory.mktemp("trained")
    data, out = write_mnist(root / "data"), root / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    assert cli.main(small_mnist(data, out, "--cell", "gru", "--epochs", "2")) == 0
    torch.set_num_threads(before)
    return data, out


def test_export_then_evaluate_gives_the_runs_accuracy(finished_run, tmp_path, capsys):
    data, out = finished_run
    shipped = tmp_path / "mnist-rows-gru.pt"
    assert cli.main(["export", str(out), str(shipped)]) == 0
    state = torch.load(shipped, weights_only=True)
    recorded = metrics_of(out)["test_accuracy"]
    assert state["format"] == FORMAT and state["task"] == "mnist-rows" and state["cell"] == "gru"
    assert state["test_accuracy"] == recorded and state["recipe"].startswith("python -m train mnist")
    assert json.loads(state["metrics"])["config"]["hidden"] == 8
    reference = nn.GRU(28, 8, batch_first=True)  # torch.nn's layer takes the weights by name, strictly
    reference.load_state_dict({k.removeprefix("rnn."): v for k, v in state["model"].items() if k.startswith("rnn.")})
    capsys.readouterr()
    for impl in ("ours", "torch", "readable"):
        assert cli.main(["evaluate", str(shipped), "--json", "--impl", impl, "--data-dir", str(data)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["task"] == "mnist-rows" and result["cell"] == "gru" and result["impl"] == impl
        assert result["test_accuracy"] == recorded and result["images"] == 32


def test_evaluate_a_checkpoint_folder_and_a_line_for_people(finished_run, capsys):
    data, out = finished_run
    assert cli.main(["evaluate", str(out), "--data-dir", str(data), "--test-limit", "16"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("test accuracy ") and "on 16 images — mnist-rows 1×8 gru (ours)" in line


def test_evaluate_refuses_what_is_not_trained_weights(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nothing.pt")]) == 1
    assert "no such file" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    assert cli.main(["evaluate", str(tmp_path / "other.pt")]) == 1
    assert "neither a shipped weights file" in capsys.readouterr().err


def test_a_run_records_its_gradient_flow(finished_run):
    _, out = finished_run
    flow = metrics_of(out)["gradient_flow"]
    assert flow["measured"] and flow["images"] == 64
    assert len(flow["start"]) == len(flow["end"]) == 28 and all(v > 0 for v in flow["start"] + flow["end"])
    assert flow["start"] != flow["end"]  # the weights moved


def test_a_run_draws_its_gradient_flow(tmp_path):
    pytest.importorskip("matplotlib")
    data, out = write_mnist(tmp_path / "data"), tmp_path / "run"
    argv = [a for a in small_mnist(data, out, "--cell", "rnn") if a != "--no-plots"]
    assert cli.main(argv) == 0
    assert (out / "gradient_flow.png").stat().st_size > 0


@pytest.mark.skipif(not PRETRAINED, reason="no shipped weights in train/pretrained/")
@pytest.mark.parametrize("path", PRETRAINED, ids=[p.name for p in PRETRAINED])
def test_shipped_weights_score_what_they_record_on_the_real_test_set(path):
    """train/mnist/ ships MNIST's files: the whole test set with our layers, and the first 1000 images
    with ours and with torch.nn's (which runs 784 steps of a pixel model several times slower)."""
    recorded = torch.load(path, weights_only=True)["test_accuracy"]
    data_dir = str(ROOT / "train" / "mnist")
    result = evaluate_trained(path, impl="ours", data_dir=data_dir)
    assert result["images"] == 10_000
    # Summation order differs between kernels and thread counts: a borderline digit may flip.
    assert abs(result["test_accuracy"] - recorded) <= 2e-4, (result["test_accuracy"], recorded)
    part = {impl: evaluate_trained(path, impl=impl, data_dir=data_dir, test_limit=1000) for impl in ("ours", "torch")}
    assert part["ours"]["images"] == part["torch"]["images"] == 1000
    assert abs(part["ours"]["test_accuracy"] - part["torch"]["test_accuracy"]) <= 1e-3, part


def test_sequential_mnist_presets_give_every_cell_one_budget():
    from train.config import PRESETS, resolve

    names = [f"{order}-{cell}" for order in ("pixels", "permuted") for cell in ("lstm", "gru", "irnn", "rnn")]
    assert all(name in PRESETS for name in names)
    configs = {name: resolve("mnist", {"preset": name}) for name in names}
    budgets = {(c.hidden, c.layers, c.batch_size, c.epochs, c.optimizer, c.schedule, c.clip, c.shift)
               for c in configs.values()}
    assert budgets == {(128, 1, 128, 20, "adam", "onecycle", 1.0, 0)}
    assert configs["pixels-irnn"].nonlinearity == "relu" and configs["pixels-irnn"].init_hh == "identity"
    assert configs["permuted-rnn"].nonlinearity == "tanh" and configs["permuted-rnn"].order == "permuted"
    assert configs["pixels-lstm"].forget_bias == 1.0 and configs["pixels-gru"].forget_bias is None
