"""`python -m train ... --cell-class FILE.py:CLASS`: a learner's own cell, trained like ours.

The learner's cell (checked by `cells.check` first) is unrolled over time by this project's readable
path, `models.unroll`, one cell per layer and direction, behind the interface the training models
use from `torch.nn.LSTM/GRU/RNN`: batch-first `forward(x, state) -> (output, state)`,
`hidden_size`, `bidirectional`. Each cell starts from torch.nn's initial weights for the run's seed
(copied in by name), so a correct cell follows `--impl torch` step for step.

A cell that keeps its gate activations in `self.gates` (a dict of (B, H) tensors, e.g. {"i": i,
"f": f, "g": g, "o": o}) during forward gets them drawn in gates.png.
"""

from __future__ import annotations

import torch
from torch import nn

from models.kinds import KINDS
from models.unroll import unroll


class LearnerLayer(nn.Module):
    """Layers of a learner's cell, batch first, with torch.nn's dropout between stacked layers.

    forward(x (B, T, I), state=None) -> (output (B, T, D·H), state), state as torch.nn's: (h_n, c_n)
    for an LSTM, h_n otherwise, each (L·D, B, H).
    """

    def __init__(self, cell_class, kind, input_size, hidden_size, num_layers=1, dropout=0.0,
                 bidirectional=False):
        super().__init__()
        self.kind, self.input_size, self.hidden_size = kind, input_size, hidden_size
        self.has_cell_state, self.states = KINDS[kind].has_cell_state, KINDS[kind].states  # LSTM: (h, c)
        self.num_layers, self.dropout, self.bidirectional = num_layers, dropout, bidirectional
        directions = 2 if bidirectional else 1
        # cells[layer · D + direction], as torch.nn orders h_n
        self.cells = nn.ModuleList(
            cell_class(input_size if layer == 0 else hidden_size * directions, hidden_size)
            for layer in range(num_layers) for _ in range(directions))

    def load_torch_weights(self, reference: nn.Module) -> None:
        """Take the weights of a torch.nn.LSTM/GRU/RNN of the same shape, by name, strictly."""
        state = reference.state_dict()
        directions = 2 if self.bidirectional else 1
        for index, cell in enumerate(self.cells):
            layer, direction = divmod(index, directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            cell.load_state_dict({name: state[name + suffix] for name in cell.state_dict()}, strict=True)

    def _step(self, cell):
        """The step `models.unroll` calls: x_t (b, I) and the states -> the new states."""
        if self.has_cell_state:
            return lambda x_t, h, c: tuple(cell(x_t, (h, c)))
        return lambda x_t, h: cell(x_t, h)

    def forward(self, x, state=None):
        batch, steps = x.shape[0], x.shape[1]
        directions = 2 if self.bidirectional else 1
        if state is None:
            zeros = x.new_zeros(self.num_layers * directions, batch, self.hidden_size)  # (L·D, B, H)
            state = (zeros,) * self.states
        elif not self.has_cell_state:
            state = (state,)
        seq = x.transpose(0, 1).reshape(steps * batch, x.shape[2])  # (T·B, I): unroll's time-major layout
        finals = [[] for _ in range(self.states)]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(directions):
                index = layer * directions + direction
                out, final = unroll(self._step(self.cells[index]), seq, [batch] * steps,
                                    tuple(s[index] for s in state), reverse=direction == 1)
                outputs.append(out)  # (T·B, H)
                for kept, s in zip(finals, final):
                    kept.append(s)
            seq = torch.cat(outputs, 1)  # (T·B, D·H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                seq = nn.functional.dropout(seq, self.dropout, training=True)
        output = seq.reshape(steps, batch, -1).transpose(0, 1)  # (B, T, D·H)
        final_states = tuple(torch.stack(f) for f in finals)  # each (L·D, B, H)
        return output, (final_states if self.has_cell_state else final_states[0])

    @torch.no_grad()
    def gate_trace(self, x):
        """What the first cell exposes in `self.gates` while it reads x (T, I) from a zero state,
        plus h (and c): {name: (T, H)}, as `models.layers.RNNBase.gate_trace` gives for ours."""
        cell = self.cells[0]
        weight = next(cell.parameters())
        x = x.to(weight.device, weight.dtype)
        h = c = x.new_zeros(1, self.hidden_size)
        trace = {}
        for x_t in x:
            out = cell(x_t.unsqueeze(0), (h, c) if self.has_cell_state else h)
            h, c = out if self.has_cell_state else (out, c)
            shown = {k: v for k, v in (getattr(cell, "gates", None) or {}).items() if isinstance(v, torch.Tensor)}
            shown.update(h=h, **({"c": c} if self.has_cell_state else {}))
            for name, value in shown.items():
                trace.setdefault(name, []).append(value.reshape(-1).float().cpu())
        return {name: torch.stack(values) for name, values in trace.items()}


def learner_layer(config, input_size: int, reference: nn.Module) -> LearnerLayer:
    """The learner's cell of `config.cell_class` in layers shaped like `reference` (torch.nn), holding
    its weights."""
    from cells.check import load_cell_class

    cls = load_cell_class(config.cell_class)
    layer = LearnerLayer(cls, config.cell, input_size, config.hidden, config.layers, config.dropout,
                         config.bidirectional)
    layer.load_torch_weights(reference)
    return layer
