"""Bad input gets an error that names the argument, what was expected and what came.

The errors subclass ValueError and RuntimeError (TypeError too, for dtypes), so code that catches
what torch.nn raises for the same mistake keeps working.
"""
import re

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import cells
import models
from cells import DtypeError, ShapeError


def raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment (case-insensitive)."""
    return pytest.raises(exc, match="(?is)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


# -- constructors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU, cells.RNNCell, cells.LSTMCell, cells.GRUCell])
@pytest.mark.parametrize("argument", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_nonpositive_sizes(cls, argument, value):
    kwargs = {"input_size": 4, "hidden_size": 5, argument: value}
    with raises(ValueError, argument, str(value)):
        cls(**kwargs)


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
def test_nonpositive_num_layers(cls):
    with raises(ValueError, "num_layers", "-1"):
        cls(4, 5, num_layers=-1)


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, cells.GRUCell])
def test_non_integer_size(cls):
    with raises(TypeError, "hidden_size", "float"):
        cls(4, 5.0)


@pytest.mark.parametrize("proj_size", [5, 7])
def test_proj_size_not_smaller_than_hidden(proj_size):
    with raises(ValueError, "proj_size", "hidden_size", str(proj_size)):
        models.LSTM(4, 5, proj_size=proj_size)


def test_negative_proj_size():
    with raises(ValueError, "proj_size", "-1"):
        models.LSTM(4, 5, proj_size=-1)


@pytest.mark.parametrize("cls", [models.RNN, models.GRU])
def test_proj_size_only_for_lstm(cls):
    with raises(TypeError, "proj_size"):  # not an argument of these, as in torch
        cls(4, 5, proj_size=2)


@pytest.mark.parametrize("cls", [models.RNN, cells.RNNCell])
def test_unknown_nonlinearity(cls):
    with raises(ValueError, "nonlinearity", "sigmoid", "tanh", "relu"):
        cls(4, 5, nonlinearity="sigmoid")


@pytest.mark.parametrize("dropout", [-0.1, 1.5, True, "0.5"])
def test_bad_dropout(dropout):
    with raises(ValueError, "dropout", "[0, 1]"):
        models.GRU(4, 5, num_layers=2, dropout=dropout)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout"):
        models.LSTM(4, 5, dropout=0.5)


def test_unknown_impl():
    with raises(ValueError, "impl", "'cudnn'", "readable"):
        models.LSTM(4, 5, impl="cudnn")


# -- forward: layers ------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 4)])
def test_layer_wrong_input_rank(cls, shape):
    with raises(ShapeError, "input", "3-D", "2-D", f"{len(shape)}-D", str(tuple(shape))):
        cls(4, 5)(torch.randn(*shape))


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
def test_layer_wrong_feature_size(cls):
    with raises(ShapeError, "input_size=4", "got 6"):
        cls(4, 5)(torch.randn(3, 2, 6))
    with raises(ShapeError, "input_size=4", "got 6"):
        cls(4, 5)(pack_sequence([torch.randn(3, 6), torch.randn(2, 6)]))


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU, cells.RNNCell, cells.LSTMCell, cells.GRUCell])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_non_floating_input(cls, dtype):
    shape = (3, 2, 4) if cls.__module__.startswith("models") else (2, 4)
    with raises(DtypeError, "input", "floating", str(dtype)):
        cls(4, 5)(torch.zeros(*shape, dtype=dtype))


def test_dtype_mismatch_names_both_and_the_fix():
    with raises(DtypeError, "input", "torch.float64", "torch.float32", ".to("):
        models.LSTM(4, 5)(torch.zeros(3, 2, 4, dtype=torch.float64))


def test_not_a_tensor():
    with raises(TypeError, "input", "list"):
        models.GRU(4, 5)([[0.0] * 4])


def test_empty_sequence():
    with raises(ShapeError, "at least one time step"):
        models.LSTM(4, 5)(torch.zeros(0, 2, 4))


@pytest.mark.parametrize("cls", [models.RNN, models.GRU])
def test_hx_wrong_batch(cls):
    layer = cls(4, 5, num_layers=2)
    with raises(ShapeError, "hx", "(2, 3, 5)", "(2, 4, 5)"):
        layer(torch.randn(6, 3, 4), torch.randn(2, 4, 5))


@pytest.mark.parametrize("cls", [models.RNN, models.GRU])
def test_hx_wrong_layers(cls):
    with raises(ShapeError, "hx", "(2, 3, 5)", "(1, 3, 5)"):
        cls(4, 5, bidirectional=True)(torch.randn(6, 3, 4), torch.randn(1, 3, 5))


def test_lstm_h0_wrong_size_with_projection():
    layer = models.LSTM(4, 5, proj_size=2)
    with raises(ShapeError, "h_0", "(1, 3, 2)", "(1, 3, 5)"):
        layer(torch.randn(6, 3, 4), (torch.randn(1, 3, 5), torch.randn(1, 3, 5)))
    with raises(ShapeError, "c_0", "(1, 3, 5)", "(1, 3, 2)"):
        layer(torch.randn(6, 3, 4), (torch.randn(1, 3, 2), torch.randn(1, 3, 2)))


def test_lstm_hx_not_a_pair():
    with raises(TypeError, "hx", "tuple"):
        models.LSTM(4, 5)(torch.randn(6, 3, 4), torch.randn(1, 3, 5))


def test_batched_hx_for_unbatched_input():
    with raises(ShapeError, "hx", "(1, 5)", "(1, 1, 5)"):
        models.GRU(4, 5)(torch.randn(6, 4), torch.randn(1, 1, 5))


def test_hx_for_packed_input_checks_the_batch():
    packed = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    with raises(ShapeError, "hx", "(1, 2, 5)", "(1, 3, 5)"):
        models.RNN(4, 5)(packed, torch.randn(1, 3, 5))


def test_hx_dtype():
    with raises(DtypeError, "hx", "torch.float32"):
        models.RNN(4, 5)(torch.randn(6, 3, 4), torch.zeros(1, 3, 5, dtype=torch.int32))


# -- forward: cells -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
def test_cell_wrong_rank(cls):
    with raises(ShapeError, "input", "1-D", "2-D", "3-D", "(2, 3, 4)"):
        cls(4, 5)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
def test_cell_wrong_feature_size(cls):
    with raises(ShapeError, "input_size=4", "(2, 7)"):
        cls(4, 5)(torch.randn(2, 7))


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.GRUCell])
def test_cell_hx_wrong_batch(cls):
    with raises(ShapeError, "hx", "(2, 5)", "(3, 5)"):
        cls(4, 5)(torch.randn(2, 4), torch.randn(3, 5))


def test_cell_batched_hx_for_unbatched_input():
    with raises(ShapeError, "hx", "(5,)", "(1, 5)"):
        cells.GRUCell(4, 5)(torch.randn(4), torch.randn(1, 5))


def test_lstm_cell_c_wrong_size():
    with raises(ShapeError, "hx[1]", "(2, 5)", "(2, 6)"):
        cells.LSTMCell(4, 5)(torch.randn(2, 4), (torch.randn(2, 5), torch.randn(2, 6)))


def test_lstm_cell_hx_not_a_pair():
    with raises(TypeError, "hx", "tuple"):
        cells.LSTMCell(4, 5)(torch.randn(2, 4), torch.randn(2, 5))


def test_errors_are_caught_as_torch_errors():
    """Code written against torch.nn catches RuntimeError or ValueError; ours are both."""
    for exc in (ValueError, RuntimeError):
        with pytest.raises(exc):
            models.LSTM(4, 5)(torch.randn(3, 2, 6))
        with pytest.raises(exc):
            models.LSTM(4, 5)(torch.zeros(3, 2, 4, dtype=torch.long))
