"""The pictures a run leaves in OUT/ (rank 0, after training), so a learner sees what was learnt.

    curves.png        training loss (every logged step and per epoch) and accuracy per epoch
    predictions.png   sine: the predicted against the true cosine on held-out sequences
    gates.png         mnist: the gate activations over time while the trained model reads one test
                      digit: LSTM i, f, o and the cell state c; GRU r and z; RNN h
    gradient_flow.png mnist: ‖∂L/∂h_t‖ over the steps t, before training and after (log scale)

Without matplotlib the plots are skipped with one line saying so; training never depends on them.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import torch

from .config import Config
from .models import our_layer_like

# Which traces of `layer.gate_trace(x)` to draw, in order, with what each one shows.
GATE_PANELS = {
    "lstm": [("i", "input gate i"), ("f", "forget gate f"), ("o", "output gate o"), ("c", "cell state c")],
    "gru": [("r", "reset gate r"), ("z", "update gate z"), ("h", "hidden state h")],
    "rnn": [("h", "hidden state h")],
}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display needed, and none is opened on a server
    import matplotlib.pyplot as plt

    return plt


def make_plots(metrics: dict[str, Any], model, data, config: Config, out: pathlib.Path,
               log: Callable[[str], None] = print) -> list[pathlib.Path]:
    """Draw every plot that applies to this run into `out`; the paths written."""
    plt = _pyplot()
    if plt is None:
        log("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return []
    written = [plot_curves(plt, metrics, config, out / "curves.png")]
    if config.task == "sine":
        written.append(plot_sine(plt, model, data, config, out / "predictions.png"))
    else:
        path = plot_gates(plt, model, data, config, out / "gates.png")
        if path is None:
            log("gates.png skipped: our layers (models) with gate_trace are not available")
        else:
            written.append(path)
        flow = metrics.get("gradient_flow") or {}
        if flow.get("measured"):
            written.append(plot_gradient_flow(plt, {config.cell: flow}, out / "gradient_flow.png",
                                              f"{config.task} {config.order}: {config.layers}×{config.hidden} "
                                              f"{config.cell.upper()}"))
    return written


def plot_gradient_flow(plt, flows: dict[str, dict[str, Any]], path: pathlib.Path, title: str) -> pathlib.Path:
    """‖∂L/∂h_t‖ over t for each run in `flows` ({label: metrics.json's "gradient_flow"}), side by side,
    before training (dashed) and after (solid), on a log scale."""
    fig, axes = plt.subplots(1, len(flows), figsize=(4.2 * len(flows) + 1, 3.6), squeeze=False, sharey=True)
    for ax, (label, flow) in zip(axes[0], flows.items()):
        for key, style, when in (("start", "--", "before training"), ("end", "-", "after training")):
            values = flow.get(key)
            if values:
                steps = range(1, len(values) + 1)
                ax.plot(steps, [max(v, 1e-30) for v in values], style, lw=1.2, label=when)
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_title(label)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("‖∂L/∂h_t‖ (batch mean)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(plt, metrics, config: Config, path: pathlib.Path) -> pathlib.Path:
    epochs = metrics["epochs"]
    batches_per_epoch = metrics["global_steps"] / max(len(epochs), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    if metrics["logged_steps"]:
        ax.plot([s / batches_per_epoch for s in metrics["logged_steps"]], metrics["logged_loss"],
                lw=0.8, alpha=0.7, label="train (logged steps)")
    ax.plot([e["epoch"] for e in epochs], [e["train_loss"] for e in epochs], "o-", label="train (epoch mean)")
    if config.task == "mnist":
        ax.plot([e["epoch"] for e in epochs], [e["test_loss"] for e in epochs], "s--", label="test")
        ax.set_ylabel("cross-entropy")
    else:
        ax.plot([e["epoch"] for e in epochs], [e["test_mse"] for e in epochs], "s--", label="test")
        ax.set_ylabel("MSE")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_title("loss")
    ax.legend()
    ax = axes[1]
    if config.task == "mnist":
        ax.plot([e["epoch"] for e in epochs], [100 * e["train_accuracy"] for e in epochs], "o-", label="train")
        ax.plot([e["epoch"] for e in epochs], [100 * e["test_accuracy"] for e in epochs], "s--", label="test")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy")
    else:
        ax.plot([e["epoch"] for e in epochs], [e["lr"] for e in epochs], "o-", label="learning rate")
        ax.set_ylabel("learning rate at epoch end")
        ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.legend()
    fig.suptitle(f"{config.task}: {config.layers}×{config.hidden} {config.cell.upper()} ({config.impl})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_sine(plt, model, data, config: Config, path: pathlib.Path, count: int = 3) -> pathlib.Path:
    model.eval()
    x, y = data.x_test[:count], data.y_test[:count]  # (n, T, 1)
    pred, _ = model(x)  # (n, T, 1)
    x, y, pred = (t.squeeze(-1).float().cpu() for t in (x, y, pred))  # (n, T)
    fig, axes = plt.subplots(len(x), 1, figsize=(9, 2.2 * len(x)), sharex=True, squeeze=False)
    for k, ax in enumerate(axes[:, 0]):
        ax.plot(x[k], color="0.7", lw=1, label="input sin")
        ax.plot(y[k], color="k", lw=1.5, label="true cos")
        ax.plot(pred[k], "--", color="C3", lw=1.5, label="predicted")
        if config.burn_in:
            ax.axvspan(0, config.burn_in, color="C0", alpha=0.08, label="burn-in (not scored)")
        ax.set_ylabel(f"held-out {k + 1}")
    axes[0, 0].legend(loc="upper right", ncol=4, fontsize=8)
    axes[-1, 0].set_xlabel("time step")
    fig.suptitle("sine → cosine on held-out sequences")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def plot_gates(plt, model, data, config: Config, path: pathlib.Path, index: int = 0):
    """Heatmaps (H units × T steps) of layer 0's gates, forward direction, reading test digit `index`."""
    layer = our_layer_like(config, model.rnn)
    if layer is None or not hasattr(layer, "gate_trace"):
        return None
    x = data.x_test[index].float().cpu()  # (T, I)
    label = int(data.y_test[index])
    trace = layer.gate_trace(x)  # key → (T, H)
    # A learner's cell may expose none of its gates (train/learner.py): then only h (and c) are drawn.
    panels = [(key, title) for key, title in GATE_PANELS[config.cell] if key in trace]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.6))
    image = x.reshape(28, 28) if x.numel() == 784 else x
    if config.order == "permuted":
        axes[0].set_title(f"input (permuted), label {label}")
    else:
        axes[0].set_title(f"input digit, label {label}")
    axes[0].imshow(image.numpy(), cmap="gray_r")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for ax, (key, title) in zip(axes[1:], panels):
        values = trace[key].float().T.numpy()  # (H, T)
        signed = key in ("c", "h", "n", "g")  # tanh-range or unbounded; the gates lie in (0, 1)
        limit = float(abs(values).max()) or 1.0
        im = ax.imshow(values, aspect="auto", interpolation="nearest",
                       cmap="RdBu_r" if signed else "viridis",
                       vmin=-limit if signed else 0.0, vmax=limit if signed else 1.0)
        ax.set_title(title)
        ax.set_xlabel("time step")
        ax.set_ylabel("unit")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{config.cell.upper()} layer 0 reading one test digit ({config.order}): what each gate does over time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
