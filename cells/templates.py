"""Skeleton cells for learners: `python -m cells.check --template lstm|gru|rnn > my_cell.py`.

Each skeleton has torch's constructor, parameter names and shapes, the equations in its docstring
and a TODO where each equation goes; `python -m cells.check my_cell.py` then checks it against
torch.nn, and `python -m train sine --cell-class my_cell.py:MyLSTMCell` trains it.
"""

_HEADER = '''"""My {title} cell, written by hand; check it with `python -m cells.check my_{kind}.py:{cls}`.

{equations}
Parameters, named and shaped as in torch.nn.{ref} so its weights can be copied in by state_dict{stacking}

{layout}
"""
import math

import torch
from torch import nn


class {cls}(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty({rows}hidden_size, input_size))  # ({G}H, I)
        self.weight_hh = nn.Parameter(torch.empty({rows}hidden_size, hidden_size))  # ({G}H, H)
        if bias:
            self.bias_ih = nn.Parameter(torch.empty({rows}hidden_size))  # ({G}H,)
            self.bias_hh = nn.Parameter(torch.empty({rows}hidden_size))  # ({G}H,)
        else:  # torch's cells have no bias parameters at all then
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        bound = 1 / math.sqrt(hidden_size)  # torch's initialisation: uniform in ±1/√H
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

'''

_LSTM = dict(
    title="LSTM", cls="MyLSTMCell", ref="LSTMCell", kind="lstm",
    stacking=":\nthe four gates' weights are stacked in torch's order i, f, g, o, hidden_size rows each.", rows="4 * ", G="4",
    equations='''For input x (B, I), hidden state h (B, H) and cell state c (B, H); σ is the logistic sigmoid,
⊙ the elementwise product:

    i  = σ(W_ii x + b_ii + W_hi h + b_hi)       input gate
    f  = σ(W_if x + b_if + W_hf h + b_hf)       forget gate
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)    candidate cell content
    o  = σ(W_io x + b_io + W_ho h + b_ho)       output gate
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')
''',
    layout='''    weight_ih = [W_ii | W_if | W_ig | W_io]   (4H, I)      bias_ih = [b_ii | b_if | b_ig | b_io]   (4H,)
    weight_hh = [W_hi | W_hf | W_hg | W_ho]   (4H, H)      bias_hh = [b_hi | b_hf | b_hg | b_ho]   (4H,)

W x is x @ W.T for a batch x (B, I); torch.nn.functional.linear(x, W, b) computes x @ W.T + b.''',
    forward='''    def forward(self, input, hx=None):
        """input (B, I); hx = (h, c), each (B, H), zeros when None. Returns (h', c'), each (B, H)."""
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h, c = hx
        # TODO: all four gates' pre-activations at once, (B, 4H): W_ih x + b_ih + W_hh h + b_hh
        # TODO: split them in torch's order i, f, g, o (each (B, H)), then
        # TODO:   i = σ(·)    f = σ(·)    g = tanh(·)    o = σ(·)
        # TODO: c' = f ⊙ c + i ⊙ g
        # TODO: h' = o ⊙ tanh(c')
        # Optional, for the gate plots of `python -m train mnist --cell-class`:
        # self.gates = {"i": i, "f": f, "g": g, "o": o}
        raise NotImplementedError("write MyLSTMCell.forward: one line per TODO")
''',
)

_GRU = dict(
    title="GRU", cls="MyGRUCell", ref="GRUCell", kind="gru",
    stacking=":\nthe three gates' weights are stacked in torch's order r, z, n, hidden_size rows each.", rows="3 * ", G="3",
    equations='''For input x (B, I) and hidden state h (B, H); σ is the logistic sigmoid, ⊙ the elementwise
product:

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)             reset gate
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)             update gate
    n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))    candidate
    h' = (1 - z) ⊙ n + z ⊙ h

This is torch's GRU: r multiplies W_hn h + b_hn *after* the matmul (the 2014 paper puts it before).
''',
    layout='''    weight_ih = [W_ir | W_iz | W_in]   (3H, I)      bias_ih = [b_ir | b_iz | b_in]   (3H,)
    weight_hh = [W_hr | W_hz | W_hn]   (3H, H)      bias_hh = [b_hr | b_hz | b_hn]   (3H,)

W x is x @ W.T for a batch x (B, I); torch.nn.functional.linear(x, W, b) computes x @ W.T + b.''',
    forward='''    def forward(self, input, hx=None):
        """input (B, I); hx (B, H), zeros when None. Returns h' (B, H)."""
        h = input.new_zeros(input.shape[0], self.hidden_size) if hx is None else hx
        # TODO: the input's part W_ih x + b_ih (B, 3H) and the state's part W_hh h + b_hh (B, 3H),
        # TODO:   each split in torch's order r, z, n
        # TODO: r = σ(W_ir x + b_ir + W_hr h + b_hr)
        # TODO: z = σ(W_iz x + b_iz + W_hz h + b_hz)
        # TODO: n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        # TODO: h' = (1 - z) ⊙ n + z ⊙ h
        # Optional, for the gate plots of `python -m train mnist --cell-class`:
        # self.gates = {"r": r, "z": z, "n": n}
        raise NotImplementedError("write MyGRUCell.forward: one line per TODO")
''',
)

_RNN = dict(
    title="Elman RNN", cls="MyRNNCell", ref="RNNCell", kind="rnn", stacking=".", rows="", G="",
    equations='''For input x (B, I) and hidden state h (B, H):

    h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
''',
    layout='''    weight_ih  W_ih  (H, I)        bias_ih  b_ih  (H,)
    weight_hh  W_hh  (H, H)        bias_hh  b_hh  (H,)

W x is x @ W.T for a batch x (B, I); torch.nn.functional.linear(x, W, b) computes x @ W.T + b.''',
    forward='''    def forward(self, input, hx=None):
        """input (B, I); hx (B, H), zeros when None. Returns h' (B, H)."""
        h = input.new_zeros(input.shape[0], self.hidden_size) if hx is None else hx
        # TODO: h' = tanh(W_ih x + b_ih + W_hh h + b_hh)   (mind bias=False: the biases are None then)
        raise NotImplementedError("write MyRNNCell.forward: one line per TODO")
''',
)

TEMPLATES = {"lstm": _LSTM, "gru": _GRU, "rnn": _RNN}


def template(kind):
    """The skeleton cell of `kind` ("lstm", "gru" or "rnn") as the text of a Python file."""
    values = TEMPLATES[kind]
    return _HEADER.format(**values) + values["forward"]
