"""The networks trained by `python -m train`: a recurrent layer (ours or torch.nn's) plus a small head.

    SequenceClassifier   MNIST: (B, T, I) → logits (B, 10), from the last step or from all steps
    SequenceRegressor    sine:  (B, T, 1) → prediction (B, T, 1) at every step, and the final state

Both keep the recurrent layer as `.rnn` and the head as `.head`, so their state_dict names are the
same whichever implementation is inside (`rnn.weight_ih_l0`, `head.weight`, ...): a checkpoint from
`--impl ours` loads into `--impl torch` and back, in strict mode.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from models.kinds import KINDS, layer_impl

from .config import Config



class SequenceClassifier(nn.Module):
    """A recurrent layer read by a linear classifier.

    head="last": the features are the top layer's output at the last step; when bidirectional, the
    forward half at the last step and the backward half at the first step (each direction's final
    output, i.e. h_n of the top layer). head="all": every step's output concatenated, (T·D·H), as
    some classic tutorials do; the head then has T times more weights.
    """

    def __init__(self, rnn: nn.Module, head: str, steps: int, classes: int = 10):
        super().__init__()
        self.rnn = rnn
        self.head_kind = head
        directions = 2 if rnn.bidirectional else 1
        features = directions * rnn.hidden_size * (steps if head == "all" else 1)
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, D·H)
        if self.head_kind == "all":
            features = out.reshape(out.shape[0], -1)  # (B, T·D·H)
        elif self.rnn.bidirectional:
            hidden = self.rnn.hidden_size
            # The backward direction ends at t = 0: its final output sits at the first step.
            features = torch.cat([out[:, -1, :hidden], out[:, 0, hidden:]], dim=1)  # (B, 2H)
        else:
            features = out[:, -1]  # (B, H)
        return self.head(features)  # (B, classes)


class SequenceRegressor(nn.Module):
    """A recurrent layer with a linear read-out at every step; returns the state so truncated BPTT
    can carry it into the next chunk."""

    def __init__(self, rnn: nn.Module, outputs: int = 1):
        super().__init__()
        self.rnn = rnn
        directions = 2 if rnn.bidirectional else 1
        self.head = nn.Linear(directions * rnn.hidden_size, outputs)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.rnn(x, state)  # (B, T, D·H)
        return self.head(out), state  # (B, T, outputs)


def recurrent_layer(config: Config, input_size: int) -> nn.Module:
    """The recurrent layer of `config` (torch.nn or ours), batch first, initialised from the seed's
    current RNG state the way torch.nn initialises."""
    kwargs = dict(
        input_size=input_size,
        hidden_size=config.hidden,
        num_layers=config.layers,
        batch_first=True,
        dropout=config.dropout,
        bidirectional=config.bidirectional,
    )
    if config.cell == "rnn":
        kwargs["nonlinearity"] = config.nonlinearity
    reference = KINDS[config.cell].torch_layer(**kwargs)
    if config.impl == "torch":
        return reference
    if config.cell_class:  # a learner's own cell, on the readable unroll, from torch.nn's weights
        from .learner import learner_layer

        with torch.random.fork_rng(devices=[]):
            return learner_layer(config, input_size, reference)
    # Ours is built with the RNG forked and then given torch.nn's initial weights by name, so that
    # one --seed starts `--impl ours` and `--impl torch` from the same weights and their curves can
    # be laid side by side. Our layers' own initialisation draws from the same U(-1/√H, 1/√H).
    with torch.random.fork_rng(devices=[]):
        ours = KINDS[config.cell].layer(**kwargs, impl=layer_impl(config.impl))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours


def set_forget_bias(rnn: nn.Module, value: float) -> None:
    """Start every LSTM forget gate at σ(value): b_if = value, b_hf = 0 in every layer and direction.

    With the forget gate open from the start the cell state carries information across many steps
    before the network has learnt to keep it (Gers et al. 2000; Jozefowicz et al. 2015). The two
    biases only ever appear as a sum, so one of them carries the whole value.
    """
    hidden = rnn.hidden_size
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            name = name.rsplit(".", 1)[-1]  # a learner's layer holds its cells as cells.0.bias_ih, ...
            if name.startswith("bias_ih"):
                param[hidden : 2 * hidden] = value  # gate order i, f, g, o: f is the second slice
            elif name.startswith("bias_hh"):
                param[hidden : 2 * hidden] = 0.0


def init_weight_hh(rnn: nn.Module, how: str) -> None:
    """Start every recurrent matrix W_h· as `how` says, one (H, H) gate block at a time; the
    equations are untouched, only the initial weights change.

    orthogonal: each block a random orthogonal matrix (Saxe et al. 2014), so at the start the
    recurrence neither shrinks nor blows up the state it carries, however many steps it runs.
    identity: each block the identity, the IRNN of Le, Jaitly & Hinton (2015): with relu the state is
    copied forward unchanged until the network learns otherwise. "torch" keeps torch.nn's uniform init.
    """
    if how == "torch":
        return
    hidden = rnn.hidden_size
    # Drawn on a forked RNG, so every other weight (the head's too) starts as it would with "torch".
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        for name, param in rnn.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("weight_hh"):  # a learner's layer: cells.<k>.weight_hh
                continue
            for block in param.split(hidden, dim=0):  # one (H, H) block per gate
                if how == "orthogonal":
                    nn.init.orthogonal_(block)
                else:
                    block.copy_(torch.eye(hidden, dtype=block.dtype))


def build_model(config: Config, input_size: int, steps: int) -> nn.Module:
    """The one place a run's network is built (before it is moved to a device or wrapped for DDP)."""
    torch.manual_seed(config.seed)
    rnn = recurrent_layer(config, input_size)
    if config.cell == "lstm" and config.forget_bias is not None:
        set_forget_bias(rnn, config.forget_bias)
    init_weight_hh(rnn, config.init_hh)
    if config.task == "mnist":
        model = SequenceClassifier(rnn, config.head, steps)
    else:
        model = SequenceRegressor(rnn)
    return model.to(getattr(torch, config.dtype))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def our_layer_like(config: Config, rnn: nn.Module) -> Optional[nn.Module]:
    """Our layer holding the weights of `rnn` (ours or torch.nn), on the CPU in float32, for
    `gate_trace`; None when our layers cannot be imported. A learner's layer traces itself."""
    if config.cell_class:
        return rnn
    try:
        cls = KINDS[config.cell].layer
    except Exception:
        return None
    # A fresh copy on the CPU: the trained model stays where it is, and the RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        layer = cls(
            input_size=rnn.input_size, hidden_size=rnn.hidden_size, num_layers=rnn.num_layers,
            batch_first=True, bidirectional=rnn.bidirectional,
        )
    state = {k: v.detach().to("cpu", torch.float32) for k, v in rnn.state_dict().items()}
    layer.load_state_dict(state, strict=True)
    return layer.eval()
