"""The readable backward of every cell (`step_backward`) and `backward_through_time` equal autograd
through torch.nn's cells holding the same weights (float64, 1e-10): the gradient of the input, of the
states and of every named parameter, for every cell and option.

torch.nn has no cell for the 2014 paper's GRU (reset_after=False); its backward is compared with
autograd through our own forward of it, which tests/test_cells.py compares with its equations.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cells
from cells._checks import DtypeError, ShapeError

TIGHT = {"atol": 1e-10, "rtol": 1e-10}
F64 = torch.float64
# name: (ours, the reference, constructor options, how many states)
CELLS = {
    "lstm": (cells.LSTMCell, nn.LSTMCell, {}, 2),
    "gru": (cells.GRUCell, nn.GRUCell, {}, 1),
    "gru_paper": (cells.GRUCell, cells.GRUCell, {"reset_after": False}, 1),
    "rnn_tanh": (cells.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}, 1),
    "rnn_relu": (cells.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}, 1),
}


def pair(name, input_size, hidden_size, bias=True, seed=0):
    """Our cell and the reference with the same weights (state_dict by name, strict)."""
    ours_cls, ref_cls, options, _ = CELLS[name]
    torch.manual_seed(seed)
    ref = ref_cls(input_size, hidden_size, bias=bias, dtype=F64, **options)
    ours = ours_cls(input_size, hidden_size, bias=bias, dtype=F64, **options)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def as_hx(states):
    """A list of state tensors as a cell's hx: (h, c) for the LSTM, h alone otherwise."""
    return tuple(states) if len(states) == 2 else states[0]


def as_list(hx):
    return list(hx) if isinstance(hx, (tuple, list)) else [hx]


def random_states(count, batch, hidden_size, gen):
    return [torch.randn(batch, hidden_size, generator=gen, dtype=F64) for _ in range(count)]


def autograd_step(ref, x, states, grad_out):
    """Autograd's gradients through one step of `ref`: [dx, *dstates], {name: dparam}."""
    x = x.clone().requires_grad_(True)
    states = [s.clone().requires_grad_(True) for s in states]
    names, params = zip(*ref.named_parameters())
    grads = torch.autograd.grad(as_list(ref(x, as_hx(states))), [x, *states, *params], grad_out)
    return list(grads[: 1 + len(states)]), dict(zip(names, grads[1 + len(states):]))


def assert_step_backward_equal(name, input_size, hidden_size, batch, bias=True, seed=0):
    ours, ref = pair(name, input_size, hidden_size, bias, seed)
    count = CELLS[name][3]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, input_size, generator=gen, dtype=F64)
    states = random_states(count, batch, hidden_size, gen)
    grad_out = random_states(count, batch, hidden_size, gen)
    expected, expected_params = autograd_step(ref, x, states, grad_out)
    dx, grad_hx, grads = ours.step_backward(x, as_hx(states), as_hx(grad_out))
    assert isinstance(grad_hx, tuple) == (count == 2)
    torch.testing.assert_close([dx, *as_list(grad_hx)], expected, **TIGHT)
    assert grads.keys() == expected_params.keys()  # every parameter by torch's name, no more
    for param, grad in expected_params.items():
        torch.testing.assert_close(grads[param], grad, **TIGHT, msg=f"{name} grad {param}")


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_size, hidden_size, batch", [(3, 5, 4), (5, 5, 1), (1, 1, 1), (7, 2, 3)])
def test_step_backward_equals_autograd(name, bias, input_size, hidden_size, batch):
    assert_step_backward_equal(name, input_size, hidden_size, batch, bias)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(CELLS)), bias=st.booleans(), input_size=st.integers(1, 9),
       hidden_size=st.integers(1, 9), batch=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_step_backward_equals_autograd_at_drawn_sizes(name, bias, input_size, hidden_size, batch, seed):
    assert_step_backward_equal(name, input_size, hidden_size, batch, bias, seed)


def test_relu_step_backward_at_an_exact_zero_is_torchs():
    """relu′(0) is 0 in torch: a unit whose pre-activation is exactly zero passes no gradient."""
    ours, ref = pair("rnn_relu", 2, 3, bias=False)
    with torch.no_grad():
        ours.weight_hh.zero_(), ref.weight_hh.zero_()
    x = torch.zeros(2, 2, dtype=F64)
    h, grad_out = torch.randn(2, 3, dtype=F64), torch.ones(2, 3, dtype=F64)
    expected, expected_params = autograd_step(ref, x, [h], [grad_out])
    dx, dh, grads = ours.step_backward(x, h, grad_out)
    torch.testing.assert_close([dx, dh, grads["weight_hh"]], [*expected, expected_params["weight_hh"]], **TIGHT)


def autograd_through_time(ref, inputs, states, grad_outputs, grad_last):
    """Autograd's gradients through `ref` unrolled over inputs (T, B, I)."""
    inputs = inputs.clone().requires_grad_(True)
    states = [s.clone().requires_grad_(True) for s in states]
    hx, loss = as_hx(states), 0
    for t in range(len(inputs)):
        hx = ref(inputs[t], hx)
        loss = loss + (as_list(hx)[0] * grad_outputs[t]).sum()
    loss = loss + sum((s * g).sum() for s, g in zip(as_list(hx), grad_last))
    names, params = zip(*ref.named_parameters())
    grads = torch.autograd.grad(loss, [inputs, *states, *params], allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip([inputs, *states, *params], grads)]
    return grads[0], grads[1: 1 + len(states)], dict(zip(names, grads[1 + len(states):]))


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("steps, batch, bias", [(6, 4, True), (1, 3, True), (5, 1, False), (3, 2, False)])
def test_backward_through_time_equals_autograd(name, steps, batch, bias):
    ours, ref = pair(name, 3, 4, bias, seed=steps)
    count = CELLS[name][3]
    gen = torch.Generator().manual_seed(steps)
    inputs = torch.randn(steps, batch, 3, generator=gen, dtype=F64)
    states = random_states(count, batch, 4, gen)
    grad_outputs = torch.randn(steps, batch, 4, generator=gen, dtype=F64)
    grad_last = random_states(count, batch, 4, gen)
    expected_inputs, expected_states, expected_params = autograd_through_time(ref, inputs, states, grad_outputs,
                                                                              grad_last)
    grad_inputs, grad_hx, grads = cells.backward_through_time(ours, inputs, as_hx(states), grad_outputs,
                                                              as_hx(grad_last))
    torch.testing.assert_close(grad_inputs, expected_inputs, **TIGHT)
    torch.testing.assert_close(as_list(grad_hx), expected_states, **TIGHT)
    assert grads.keys() == expected_params.keys()
    for param, grad in expected_params.items():
        torch.testing.assert_close(grads[param], grad, **TIGHT, msg=f"{name} grad {param}")


def test_backward_through_time_leaves_the_cell_and_autograd_alone():
    """No graph is built and the parameters' .grad stay untouched: it is all by hand."""
    cell = cells.LSTMCell(2, 3, dtype=F64)
    inputs, h, c = torch.randn(4, 2, 2, dtype=F64), torch.zeros(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)
    grad_inputs, (dh, dc), grads = cells.backward_through_time(cell, inputs, (h, c), torch.ones(4, 2, 3, dtype=F64),
                                                               (torch.zeros(2, 3, dtype=F64),) * 2)
    assert not grad_inputs.requires_grad and not any(g.requires_grad for g in grads.values())
    assert all(p.grad is None for p in cell.parameters())


@pytest.mark.parametrize("call, error, words", [
    (lambda cell: cell.step_backward(torch.zeros(3, dtype=F64), (torch.zeros(1, 4, dtype=F64),) * 2,
                                     (torch.zeros(1, 4, dtype=F64),) * 2),
     ShapeError, "input must be 2-D (batch, input_size=3), got shape (3,)"),
    (lambda cell: cell.step_backward(torch.zeros(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64),
                                     (torch.zeros(2, 4, dtype=F64),) * 2),
     TypeError, "hx must be a tuple (h, c) of 2 tensors, got Tensor"),
    (lambda cell: cell.step_backward(torch.zeros(2, 3, dtype=F64), (torch.zeros(2, 4, dtype=F64),) * 2,
                                     (torch.zeros(2, 4, dtype=F64), torch.zeros(1, 4, dtype=F64))),
     ShapeError, "grad_out[1] (c) must have shape (batch, hidden_size) = (2, 4) like the input, got (1, 4)"),
    (lambda cell: cell.step_backward(torch.zeros(2, 3), (torch.zeros(2, 4, dtype=F64),) * 2,
                                     (torch.zeros(2, 4, dtype=F64),) * 2),
     DtypeError, "input has dtype torch.float32 but the weights are torch.float64"),
])
def test_step_backward_bad_arguments_say_which_and_what(call, error, words):
    with pytest.raises(error) as caught:
        call(cells.LSTMCell(3, 4, dtype=F64))
    assert words in str(caught.value)
