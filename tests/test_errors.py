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

@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
@pytest.mark.parametrize("argument", ["input_size", "hidden_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_nonpositive_sizes(cls, argument, value):
    kwargs = {"input_size": 4, "hidden_size": 5, argument: value}
    with raises(ValueError, f"{argument} must be greater than zero", str(value)):  # torch's words, then ours
        cls(**kwargs)


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
@pytest.mark.parametrize("argument", ["input_size", "hidden_size"])
def test_cell_sizes(cls, argument):
    """torch.nn's cells accept zero sizes (and so do ours); negative sizes are refused."""
    kwargs = {"input_size": 4, "hidden_size": 5, argument: 0}
    ours, ref = cls(**kwargs), getattr(torch.nn, cls.__name__)(**kwargs)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, kwargs["input_size"])
    for a, b in zip(*(out if isinstance(out, tuple) else (out,) for out in (ours(x), ref(x)))):
        torch.testing.assert_close(a, b)
    with raises(ValueError, argument, "-3"):
        cls(**{**kwargs, argument: -3})


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
@pytest.mark.parametrize("argument", ["bias", "batch_first"])
def test_flags_must_be_bool(cls, argument):
    """`batch_first='False'` is truthy: torch.nn refuses it, and so do we, rather than run batch-first."""
    with raises(TypeError, f"{argument} should be of type bool, got: str"):
        cls(4, 5, **{argument: "False"})


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
@pytest.mark.parametrize("proj_size", [0, 2])
def test_proj_size_only_for_lstm(cls, proj_size):
    with raises(ValueError, "proj_size argument is only supported for LSTM, not RNN or GRU"):
        cls(4, 5, proj_size=proj_size)


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
    with raises(ShapeError, "Expected input to be 2D or 3D", f"got {len(shape)}D", "input", "3-D", "2-D",
                str(tuple(shape))):
        cls(4, 5)(torch.randn(*shape))


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU])
def test_layer_wrong_feature_size(cls):
    with raises(ShapeError, "input.size(-1) must be equal to input_size. Expected 4, got 6", "(3, 2, 6)"):
        cls(4, 5)(torch.randn(3, 2, 6))
    with raises(ShapeError, "input.size(-1) must be equal to input_size. Expected 4, got 6", "(5, 6)"):
        cls(4, 5)(pack_sequence([torch.randn(3, 6), torch.randn(2, 6)]))


@pytest.mark.parametrize("cls", [models.RNN, models.LSTM, models.GRU, cells.RNNCell, cells.LSTMCell, cells.GRUCell])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_non_floating_input(cls, dtype):
    shape = (3, 2, 4) if cls.__module__.startswith("models") else (2, 4)
    with raises(DtypeError, "input", "floating", str(dtype)):
        cls(4, 5)(torch.zeros(*shape, dtype=dtype))


def test_dtype_mismatch_names_both_and_the_fix():
    with raises(DtypeError, "RNN input dtype (torch.float64) does not match weight dtype (torch.float32)",
                "input.to(torch.float32)", "model.to(torch.float64)"):
        models.LSTM(4, 5)(torch.zeros(3, 2, 4, dtype=torch.float64))


def test_not_a_tensor():
    with raises(TypeError, "input", "list"):
        models.GRU(4, 5)([[0.0] * 4])


def test_empty_sequence():
    with raises(ShapeError, "Expected sequence length to be larger than 0 in RNN", "at least one time step"):
        models.LSTM(4, 5)(torch.zeros(0, 2, 4))


@pytest.mark.parametrize("cls", [models.RNN, models.GRU])
def test_hx_wrong_batch(cls):
    layer = cls(4, 5, num_layers=2)
    with raises(ShapeError, "Expected hidden size (2, 3, 5), got [2, 4, 5]", "hx", "(2, 3, 5)", "(2, 4, 5)"):
        layer(torch.randn(6, 3, 4), torch.randn(2, 4, 5))


@pytest.mark.parametrize("cls", [models.RNN, models.GRU])
def test_hx_wrong_layers(cls):
    with raises(ShapeError, "hx", "(2, 3, 5)", "(1, 3, 5)"):
        cls(4, 5, bidirectional=True)(torch.randn(6, 3, 4), torch.randn(1, 3, 5))


def test_lstm_h0_wrong_size_with_projection():
    layer = models.LSTM(4, 5, proj_size=2)
    with raises(ShapeError, "Expected hidden[0] size (1, 3, 2), got [1, 3, 5]", "h_0", "(1, 3, 2)", "(1, 3, 5)"):
        layer(torch.randn(6, 3, 4), (torch.randn(1, 3, 5), torch.randn(1, 3, 5)))
    with raises(ShapeError, "Expected hidden[1] size (1, 3, 5), got [1, 3, 2]", "c_0", "(1, 3, 5)", "(1, 3, 2)"):
        layer(torch.randn(6, 3, 4), (torch.randn(1, 3, 2), torch.randn(1, 3, 2)))


def test_lstm_hx_not_a_pair():
    with raises(TypeError, "hx", "tuple"):
        models.LSTM(4, 5)(torch.randn(6, 3, 4), torch.randn(1, 3, 5))


def test_batched_hx_for_unbatched_input():
    with raises(ShapeError, "For unbatched 2-D input, hx should also be 2-D but got 3-D tensor", "hx", "(1, 5)",
                "(1, 1, 5)"):
        models.GRU(4, 5)(torch.randn(6, 4), torch.randn(1, 1, 5))
    with raises(ShapeError, "For batched 3-D input, hx and cx should also be 3-D but got (2-D, 3-D) tensors"):
        models.LSTM(4, 5)(torch.randn(6, 2, 4), (torch.randn(2, 5), torch.randn(1, 2, 5)))


def test_hx_for_packed_input_checks_the_batch():
    packed = pack_sequence([torch.randn(3, 4), torch.randn(2, 4)])
    with raises(ShapeError, "hx", "(1, 2, 5)", "(1, 3, 5)"):
        models.RNN(4, 5)(packed, torch.randn(1, 3, 5))


def test_hx_dtype():
    with raises(DtypeError, "hx", "torch.float32"):
        models.RNN(4, 5)(torch.randn(6, 3, 4), torch.zeros(1, 3, 5, dtype=torch.int32))


# -- forward: cells -------------------------------------------------------------------------------

def test_cell_state_batch_and_size_in_torch_words():
    cell = cells.LSTMCell(4, 5)
    with raises(ShapeError, "Input batch size 2 doesn't match hidden0 batch size 3", "hx[0] (h)", "(2, 5)"):
        cell(torch.randn(2, 4), (torch.randn(3, 5), torch.randn(2, 5)))
    with raises(ShapeError, "hidden1 has inconsistent hidden_size: got 4, expected 5", "hx[1] (c)", "(2, 4)"):
        cell(torch.randn(2, 4), (torch.randn(2, 5), torch.randn(2, 4)))
    with raises(ShapeError, "GRUCell: Expected hidden to be 1D or 2D, got 3D instead", "hx"):
        cells.GRUCell(4, 5)(torch.randn(2, 4), torch.randn(1, 2, 5))


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
def test_cell_wrong_rank(cls):
    with raises(ShapeError, f"{cls.__name__}: Expected input to be 1D or 2D, got 3D instead", "input", "1-D", "2-D",
                "(2, 3, 4)"):
        cls(4, 5)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
def test_cell_wrong_feature_size(cls):
    with raises(ShapeError, "input has inconsistent input_size: got 7 expected 4", "input_size=4", "(2, 7)"):
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


@pytest.mark.parametrize("cls", [cells.RNNCell, cells.LSTMCell, cells.GRUCell])
def test_cell_checks_shapes_before_dtype(cls):
    """As torch.nn: a wrong-sized input of another dtype is reported for its size."""
    with raises(ShapeError, "input has inconsistent input_size: got 11 expected 10"):
        cls(10, 20)(torch.randn(3, 11, dtype=torch.float64))
    state = torch.randn(3, 21, dtype=torch.float64)
    with raises(ShapeError, "hidden0 has inconsistent hidden_size: got 21, expected 20"):
        cls(10, 20)(torch.randn(3, 10, dtype=torch.float64), (state, state) if cls is cells.LSTMCell else state)
