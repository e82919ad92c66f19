"""train.gradient_flow: ‖∂L/∂h_t‖ per step equals autograd's gradient at each h_t of the same network
unrolled step by step through torch.nn's cells (float64), for every cell, ours and torch.nn's layers,
one and two layers, both heads; and what a run records of it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.config import resolve
from train.gradient_flow import hidden_state_gradients, measurable
from train.models import build_model

TORCH_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


def reference_norms(model, x, y, cell):
    """Autograd through torch.nn's cells holding the layer's weights, each h_t kept with retain_grad."""
    rnn, inputs, kept = model.rnn, x, []
    for layer in range(rnn.num_layers):
        extra = {"nonlinearity": rnn.nonlinearity} if cell == "rnn" else {}
        step = TORCH_CELLS[cell](inputs.shape[-1], rnn.hidden_size, dtype=x.dtype, **extra)
        step.load_state_dict({name: getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh",
                                                                                    "bias_ih", "bias_hh")})
        state, outputs = None, []
        for t in range(x.shape[1]):
            state = step(inputs[:, t], state)
            h = state[0] if cell == "lstm" else state
            if layer == rnn.num_layers - 1:
                h.retain_grad()
                kept.append(h)
            outputs.append(h)
        inputs = torch.stack(outputs, 1)
    features = inputs.reshape(len(x), -1) if model.head_kind == "all" else inputs[:, -1]
    F.cross_entropy(model.head(features), y).backward()
    return torch.stack([h.grad.norm(dim=1).mean() for h in kept])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("impl, layers, head", [("ours", 1, "last"), ("torch", 2, "all"), ("readable", 1, "all")])
def test_hidden_state_gradients_equal_autograd_at_every_step(cell, impl, layers, head):
    config = resolve("mnist", dict(cell=cell, impl=impl, hidden=5, layers=layers, head=head, dtype="float64",
                                   nonlinearity="relu" if cell == "rnn" else None, seed=3))
    model = build_model(config, input_size=3, steps=7)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (4,), generator=gen)
    got = hidden_state_gradients(model, x, y, config)
    assert got.shape == (7,) and not any(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(got, reference_norms(model, x, y, cell), atol=1e-12, rtol=1e-10)
    if head == "last":  # the loss reads the last step: the gradient reaching earlier steps is smaller
        assert got[0] < got[-1]


def test_what_is_not_measured_says_why():
    assert measurable(resolve("mnist", dict(bidirectional=True))) == "a bidirectional layer's state has two time directions"
    assert measurable(resolve("sine", {})) is not None
    assert measurable(resolve("mnist", {})) is None
