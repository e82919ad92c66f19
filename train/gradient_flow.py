"""How much of the loss's gradient reaches each time step: ‖∂L/∂h_t‖ for t = 1 … T.

The loss of a classifier that reads the last step reaches h_t only through h_{t+1}, h_{t+2}, …, each
step multiplying the gradient by its Jacobian ∂h_{t+1}/∂h_t. For a tanh RNN that product shrinks
geometrically (the vanishing gradient), so the first steps of a 784-step sequence get nothing and
the network cannot learn from them; the LSTM's cell state and the GRU's update gate give the
gradient a path that is only multiplied by gates near 1. `hidden_state_gradients` measures it.

∂L/∂h_t here is the total derivative — through the head and through every later step — taken with
autograd on the top layer's readable unroll: a zero "probe" is added to each step's h_t (changing
nothing in the forward), and ∂L/∂probe_t = ∂L/∂h_t. `python -m train mnist` records it on a fixed
batch of training images before the first step and after the last, in metrics.json
("gradient_flow") and gradient_flow.png.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from models.kinds import KINDS

from .config import Config

BATCH = 256  # training images the numbers are averaged over: the first ones, as stored


def measurable(config: Config) -> Optional[str]:
    """Why the gradient flow of this run's model is not measured, or None when it is."""
    if config.task != "mnist":
        return "only MNIST runs classify from the steps' states"
    if config.bidirectional:
        return "a bidirectional layer's state has two time directions"
    if config.cell_class:
        return "a learner's cell keeps its own parameter names"
    return None


def hidden_state_gradients(model, x: torch.Tensor, y: torch.Tensor, config: Config) -> torch.Tensor:
    """(T,) float64: the batch mean of ‖∂L/∂h_t‖₂ over the top layer's hidden units, for each step t,
    L the mean cross-entropy of `model` (a train.models.SequenceClassifier, torch.nn's layer or ours
    inside) on x (B, T, I) and labels y (B,). Dropout is off, as in evaluation."""
    rnn, kind = model.rnn, KINDS[config.cell]
    params = dict(rnn.named_parameters())
    probes = []
    with torch.enable_grad():
        inputs = x  # (B, T, I)
        for layer in range(rnn.num_layers):
            get = lambda name: params.get(f"{name}_l{layer}")  # noqa: E731 - absent when bias=False
            step = kind.readable_step(get("weight_hh"), get("bias_hh"), get("weight_hr"), config.nonlinearity)
            x_proj = F.linear(inputs, get("weight_ih"), get("bias_ih"))  # (B, T, G·H)
            batch, hidden = x.shape[0], rnn.hidden_size
            size = getattr(rnn, "proj_size", 0) or hidden  # h's size: P with the LSTM's projection
            state = (x.new_zeros(batch, size),) + ((x.new_zeros(batch, hidden),) if kind.has_cell_state else ())
            outputs = []
            for t in range(x.shape[1]):
                new = step(x_proj[:, t], *state)
                new = new if isinstance(new, tuple) else (new,)
                if layer == rnn.num_layers - 1:
                    probe = torch.zeros_like(new[0], requires_grad=True)  # (B, P): h_t + 0
                    probes.append(probe)
                    new = (new[0] + probe, *new[1:])
                state = new
                outputs.append(new[0])
            inputs = torch.stack(outputs, 1)  # (B, T, P): the next layer's input
        features = inputs.reshape(len(x), -1) if model.head_kind == "all" else inputs[:, -1]
        loss = F.cross_entropy(model.head(features), y)
        grads = torch.autograd.grad(loss, probes)
    return torch.stack([g.double().norm(dim=1).mean() for g in grads]).cpu()  # (T,)


def measure(model, data, config: Config) -> Optional[list]:
    """`hidden_state_gradients` on the first BATCH training images, as a list; None when not measurable."""
    if measurable(config) is not None:
        return None
    n = min(BATCH, len(data.x_train))
    return hidden_state_gradients(model, data.x_train[:n], data.y_train[:n], config).tolist()


def figure(order: str, path, pretrained_dir=None, data_dir=None) -> dict:
    """Draw the four cells of the sequential-MNIST presets side by side (`{order}-lstm`, -gru, -irnn,
    -rnn): the gradient flow of each preset's initial weights, and of its shipped trained weights
    (train/pretrained/mnist-{order}-{cell}.pt) where there are some. Returns the numbers drawn."""
    import pathlib

    from .config import resolve
    from .data import load_mnist, mnist_sequences
    from .models import build_model
    from .plots import _pyplot, plot_gradient_flow
    from .trained import load_trained

    pretrained_dir = pathlib.Path(pretrained_dir or pathlib.Path(__file__).parent / "pretrained")
    images, labels = load_mnist(data_dir, "train")
    flows = {}
    for name in ("lstm", "gru", "irnn", "rnn"):
        config = resolve("mnist", {"preset": f"{order}-{name}"})
        x = mnist_sequences(images[:BATCH], order, permutation_seed=config.seed)
        model = build_model(config, x.shape[-1], x.shape[1])
        flow = {"start": hidden_state_gradients(model, x, labels[:BATCH], config).tolist()}
        shipped = pretrained_dir / f"mnist-{order}-{name}.pt"
        if shipped.is_file():
            trained, weights, _ = load_trained(shipped)
            x = mnist_sequences(images[:BATCH], order, permutation_seed=trained.seed)
            model = build_model(trained, x.shape[-1], x.shape[1])
            model.load_state_dict(weights)
            flow["end"] = hidden_state_gradients(model, x, labels[:BATCH], trained).tolist()
        flows[f"{name.upper()} ({config.nonlinearity})" if name == "rnn" else name.upper()] = flow
    plt = _pyplot()
    if plt is not None:
        plot_gradient_flow(plt, flows, pathlib.Path(path),
                           f"MNIST {order}, 784 steps: ‖∂L/∂h_t‖ before training (dashed) and trained (solid)")
    return flows


if __name__ == "__main__":
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m train.gradient_flow",
                                     description="Draw the four cells' gradient flow on sequential MNIST.")
    parser.add_argument("--order", choices=("pixels", "permuted"), default="pixels")
    parser.add_argument("--out", default="docs/gradient_flow_pixels.png", help="the PNG to write")
    parser.add_argument("--json", help="also write the numbers drawn")
    args = parser.parse_args()
    numbers = figure(args.order, args.out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(numbers, f)
    print(f"wrote {args.out}")
    sys.exit(0)
