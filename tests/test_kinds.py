"""models.kinds, the one table of cell kinds and implementation names, against what it describes."""
import subprocess
import sys

import pytest
import torch

from models.kinds import BY_MODE, COMMAND_IMPLS, IMPLS, KINDS, layer_impl
from train import cli


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_names_classes_that_match(name):
    kind = KINDS[name]
    assert BY_MODE[kind.mode] is kind
    ours, ref = kind.layer(3, 5), kind.torch_layer(3, 5)
    assert ours.mode == kind.mode and ref.mode.startswith(kind.mode)  # torch: "RNN_TANH", "RNN_RELU"
    assert ours.weight_ih_l0.shape == ref.weight_ih_l0.shape == (kind.gates * 5, 3)
    assert kind.cell(3, 5).weight_hh.shape == kind.torch_cell(3, 5).weight_hh.shape == (kind.gates * 5, 5)


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_names_its_readable_step_and_states(name):
    """kind.readable_step with a cell's weights bound is that cell's step: torch.nn's cell's output."""
    kind = KINDS[name]
    torch.manual_seed(0)
    reference = kind.torch_cell(3, 5, dtype=torch.float64)  # nn.RNNCell (tanh), nn.LSTMCell, nn.GRUCell
    ours = kind.cell(3, 5, dtype=torch.float64)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, dtype=torch.float64)
    states = tuple(torch.randn(2, 5, dtype=torch.float64) for _ in range(kind.states))  # (h,) or (h, c)
    step = kind.readable_step(ours.weight_hh, ours.bias_hh)
    got = step(torch.nn.functional.linear(x, ours.weight_ih, ours.bias_ih), *states)
    expected = reference(x, states if kind.has_cell_state else states[0])
    torch.testing.assert_close(got, expected)
    assert kind.has_cell_state == (name == "lstm")


def test_one_vocabulary_of_implementations():
    assert set(IMPLS) == {"auto", "fused", "readable"}
    assert set(COMMAND_IMPLS) == {*IMPLS, "ours", "torch"}
    assert layer_impl("ours") == "auto" and all(layer_impl(name) == name for name in IMPLS)
    with pytest.raises(ValueError, match="'torch'"):
        layer_impl("torch")


def test_the_table_imports_without_our_layers_or_cells():
    """torch.nn's side of a comparison must run while a learner's edit has broken the cells."""
    code = "import sys, models.kinds; print('models.layers' in sys.modules, 'cells' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("impl", ["auto", "fused", "readable"])
def test_train_takes_every_implementation_name(impl, tmp_path):
    torch.manual_seed(0)
    argv = ["sine", "--out", str(tmp_path), "--hidden", "4", "--epochs", "1", "--train-size", "16",
            "--test-size", "8", "--seq-len", "12", "--batch-size", "8", "--device", "cpu", "--quiet",
            "--no-plots", "--impl", impl]
    assert cli.main(argv) == 0
