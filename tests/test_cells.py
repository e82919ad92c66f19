"""Each hand-written cell against its torch.nn cell, with weights copied through state_dict."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cells import GRUCell
from reference import CELLS, DEVICES, TIGHT, assert_equivalent, cell_pair, clone_inputs



def make_inputs(kind, batch, input_size, hidden_size, with_state, dtype=torch.float64, device="cpu"):
    shape = (batch,) if batch else ()  # batch 0 here means unbatched
    x = torch.randn(*shape, input_size, dtype=dtype, device=device, requires_grad=True)
    if not with_state:
        return [x]
    state = lambda: torch.randn(*shape, hidden_size, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    return [x, (state(), state()) if kind == "lstm" else state()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [0, 1, 5])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_equals_torch(kind, bias, batch, with_state, device):
    ours, ref = cell_pair(kind, 4, 3, bias=bias, device=device)
    inputs = make_inputs(kind, batch, 4, 3, with_state, device=device)
    assert_equivalent(ours, ref, inputs, clone_inputs(inputs), **TIGHT)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(sorted(CELLS)), input_size=st.integers(1, 6), hidden_size=st.integers(1, 6),
       batch=st.integers(0, 4), bias=st.booleans(), with_state=st.booleans(), seed=st.integers(0, 2**16))
def test_cell_equals_torch_drawn(kind, input_size, hidden_size, batch, bias, with_state, seed):
    ours, ref = cell_pair(kind, input_size, hidden_size, bias=bias, seed=seed)
    inputs = make_inputs(kind, batch, input_size, hidden_size, with_state)
    assert_equivalent(ours, ref, inputs, clone_inputs(inputs), **TIGHT)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_float32_at_torch_defaults(kind):
    ours, ref = cell_pair(kind, 16, 32, dtype=torch.float32)
    inputs = make_inputs(kind, 8, 16, 32, True, dtype=torch.float32)
    assert_equivalent(ours, ref, inputs, clone_inputs(inputs))


@pytest.mark.parametrize("kind", CELLS)
def test_cell_gradcheck(kind):
    ours, _ = cell_pair(kind, 3, 2)
    x, state = make_inputs(kind, 2, 3, 2, True)
    states = list(state) if isinstance(state, tuple) else [state]

    # Parameters are checked through torch.func.functional_call so gradcheck sees them as inputs.
    names = [n for n, _ in ours.named_parameters()]

    def g(x, *rest):
        state_in = tuple(rest[: len(states)]) if kind == "lstm" else rest[0]
        param_values = dict(zip(names, rest[len(states):]))
        return torch.func.functional_call(ours, param_values, (x, state_in))

    p_in = [p.detach().clone().requires_grad_(True) for p in ours.parameters()]
    assert torch.autograd.gradcheck(g, (x, *states, *p_in))


@pytest.mark.parametrize("kind", CELLS)
def test_state_dict_round_trip_both_ways(kind):
    ours_cls, ref_cls, kwargs = CELLS[kind]
    ours, ref = ours_cls(5, 7, **kwargs), ref_cls(5, 7, **kwargs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(v, ours.state_dict()[k], rtol=0, atol=0)
    fresh = ours_cls(5, 7, **kwargs)
    fresh.load_state_dict(ref_cls(5, 7, **kwargs).state_dict(), strict=True)


@pytest.mark.parametrize("kind", CELLS)
def test_initialisation_is_torchs(kind):
    """uniform in ±1/√H for every parameter, like torch."""
    ours_cls, _, kwargs = CELLS[kind]
    torch.manual_seed(0)  # the spread check below is about one draw; seeded, it cannot flake
    cell = ours_cls(10, 25, **kwargs)
    for name, p in cell.named_parameters():
        assert p.abs().max() <= 1 / 5, name
        assert p.abs().max() > 0.15, name  # really spread over the interval
    assert [n for n, _ in cell.named_parameters()] == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def test_gru_paper_variant_follows_its_equations():
    """reset_after=False: n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn), written out step by step."""
    torch.manual_seed(0)
    cell = GRUCell(4, 3, reset_after=False, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    h = torch.randn(5, 3, dtype=torch.float64)
    W_ir, W_iz, W_in = cell.weight_ih.chunk(3)
    W_hr, W_hz, W_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(x @ W_ir.T + b_ir + h @ W_hr.T + b_hr)
    z = torch.sigmoid(x @ W_iz.T + b_iz + h @ W_hz.T + b_hz)
    n = torch.tanh(x @ W_in.T + b_in + (r * h) @ W_hn.T + b_hn)
    expected = (1 - z) * n + z * h
    torch.testing.assert_close(cell(x, h), expected, **TIGHT)
    torch.testing.assert_close(cell(x[0], h[0]), expected[0], **TIGHT)
    # ... and it really differs from torch's variant
    cell.reset_after = True
    assert not torch.allclose(cell(x, h), expected)


def test_gru_paper_variant_without_bias_and_gradcheck():
    torch.manual_seed(0)
    cell = GRUCell(3, 2, bias=False, reset_after=False, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x, h))
