"""Skeleton cells for learners: `python -m cells.check --template lstm|gru|rnn > my_cell.py`, and
`--template lstm-backward|gru-backward|rnn-backward` for the backward.

Each skeleton has torch's constructor, parameter names and shapes, the equations in its docstring
and a TODO where each equation goes; `python -m cells.check my_cell.py` then checks it against
torch.nn, and `python -m train sine --cell-class my_cell.py:MyLSTMCell` trains it. The backward
skeletons come with the forward written and leave `step_backward` (one step, by hand) and
`backward_through_time` (the loop over the steps) to write, each TODO under its equation.
"""

_HEADER = '''"""My {title} cell, written by hand; check it with `python -m cells.check my_{kind}.py:{cls}`.

{equations}
Parameters, named and shaped as in torch.nn.{ref} so its weights can be copied in by state_dict{stacking}

{layout}
"""
import math

import torch
{imports}from torch import nn


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
    imports="",
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
    imports="",
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
    imports="",
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

_BACKWARD_NOTE = """Backward: d before a name is the loss's gradient with respect to it (dh' = ∂L/∂h'). step_backward
gets the step's input, the states it started from and the gradients arriving at its outputs, and
returns the gradients of the input, of those states and of every parameter; σ′ = σ (1 − σ) and
tanh′ = 1 − tanh², each from the function's own output.
"""

_BPTT = '''

def backward_through_time(cell, inputs, hx, grad_outputs, grad_last):
    """Backprop through time with cell.step_backward: the loss's gradients through T steps.

    inputs (T, B, I); hx the initial states{states}; grad_outputs (T, B, H) the gradient at each step's
    output h_t; grad_last the gradient at the final states, shaped like hx. Returns (grad_inputs
    (T, B, I), the gradient of hx, {{parameter name: gradient summed over the steps}}).
    """
    # TODO: run the forward (cell(inputs[t], state)), keeping the state each step started from
    # TODO: walk back from t = T - 1 to 0; step t's backward gets the gradient at its outputs:
    # TODO:   what step t + 1 sent back (grad_last for the last step), with grad_outputs[t] added to h's
    # TODO: grad_inputs[t], (what step t sends back), step_grads = cell.step_backward(inputs[t], start_t, that)
    # TODO: the parameters' gradients: sum step_grads over the steps, by name
    raise NotImplementedError("write backward_through_time: one line per TODO")
'''

_LSTM_BACKWARD = dict(_LSTM, imports="import torch.nn.functional as F\n", equations=_LSTM["equations"] + '''
''' + _BACKWARD_NOTE + '''
    do   = dh' ⊙ tanh(c')
    dc'  = dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))    c' reaches the loss directly and through h'
    df   = dc' ⊙ c        di = dc' ⊙ g        dg = dc' ⊙ i
    dc   = dc' ⊙ f                             sent back to the previous step's c
    dz_i = di ⊙ i (1 − i)    dz_f = df ⊙ f (1 − f)    dz_g = dg ⊙ (1 − g²)    dz_o = do ⊙ o (1 − o)
    dz   = [dz_i | dz_f | dz_g | dz_o]         (B, 4H), in the weights' order i, f, g, o
    dx   = dz W_ih       dh = dz W_hh          (B, I), (B, H)
    dW_ih = dzᵀ x        dW_hh = dzᵀ h         h: the state the step started from
    db_ih = db_hh = Σ over the batch of dz     (4H,)
''', forward='''    def forward(self, input, hx=None):
        """input (B, I); hx = (h, c), each (B, H), zeros when None. Returns (h', c'), each (B, H)."""
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            hx = (zeros, zeros)
        h, c = hx
        z = F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        z_i, z_f, z_g, z_o = z.chunk(4, 1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c_next = f * c + i * g
        return o * torch.tanh(c_next), c_next

    def step_backward(self, input, hx, grad_out):
        """input (B, I); hx = (h, c) the states the step started from; grad_out = (dh', dc'), each (B, H).
        Returns (dx, (dh, dc), grads), grads = {"weight_ih": dW_ih, "weight_hh": dW_hh} and, with
        biases, "bias_ih" and "bias_hh"."""
        h, c = hx
        dh_next, dc_next = grad_out
        # The forward again, keeping the gates (recomputed, not cached).
        z = F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)  # (B, 4H)
        z_i, z_f, z_g, z_o = z.chunk(4, 1)
        i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
        c_next = f * c + i * g
        # TODO: do = dh' ⊙ tanh(c')
        # TODO: dc' = dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))
        # TODO: df = dc' ⊙ c, di = dc' ⊙ g, dg = dc' ⊙ i, and dc = dc' ⊙ f
        # TODO: dz_i, dz_f, dz_g, dz_o: each gate's gradient times its nonlinearity's derivative
        # TODO: dz = [dz_i | dz_f | dz_g | dz_o] (torch.cat along dim 1)
        # TODO: dx = dz W_ih and dh = dz W_hh (dz @ self.weight_ih, ...)
        # TODO: grads: dW_ih = dzᵀ x, dW_hh = dzᵀ h, and (if self.bias_ih is not None) db_ih = db_hh = Σ_batch dz
        raise NotImplementedError("write MyLSTMCell.step_backward: one line per TODO")
''' + _BPTT.format(states=" (h, c), each (B, H)"))

_GRU_BACKWARD = dict(_GRU, imports="import torch.nn.functional as F\n", equations=_GRU["equations"] + '''
''' + _BACKWARD_NOTE + '''With x_r, x_z, x_n = W_i* x + b_i* and h_r, h_z, h_n = W_h* h + b_h* (so r = σ(x_r + h_r),
n = tanh(x_n + r ⊙ h_n)):

    dn   = dh' ⊙ (1 − z)      dz = dh' ⊙ (h − n)      h's direct path: dh' ⊙ z
    dx_n = dn ⊙ (1 − n²)
    dr   = dx_n ⊙ h_n         dh_n = dx_n ⊙ r
    dx_r = dh_r = dr ⊙ r (1 − r)      dx_z = dh_z = dz ⊙ z (1 − z)
    dx_proj = [dx_r | dx_z | dx_n]    dh_proj = [dh_r | dh_z | dh_n]    (B, 3H), order r, z, n
    dx   = dx_proj W_ih       dh = dh' ⊙ z + dh_proj W_hh
    dW_ih = dx_projᵀ x        dW_hh = dh_projᵀ h
    db_ih = Σ over the batch of dx_proj      db_hh = Σ over the batch of dh_proj
''', forward='''    def forward(self, input, hx=None):
        """input (B, I); hx (B, H), zeros when None. Returns h' (B, H)."""
        h = input.new_zeros(input.shape[0], self.hidden_size) if hx is None else hx
        x_r, x_z, x_n = F.linear(input, self.weight_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        return (1 - z) * n + z * h

    def step_backward(self, input, hx, grad_out):
        """input (B, I); hx the state h the step started from; grad_out dh', each (B, H).
        Returns (dx, dh, grads), grads = {"weight_ih": dW_ih, "weight_hh": dW_hh} and, with biases,
        "bias_ih" and "bias_hh"."""
        h, dh_next = hx, grad_out
        # The forward again, keeping the gates (recomputed, not cached).
        x_r, x_z, x_n = F.linear(input, self.weight_ih, self.bias_ih).chunk(3, 1)
        h_r, h_z, h_n = F.linear(h, self.weight_hh, self.bias_hh).chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        # TODO: dn = dh' ⊙ (1 − z), dz = dh' ⊙ (h − n)
        # TODO: dx_n = dn ⊙ (1 − n²)
        # TODO: dr = dx_n ⊙ h_n, dh_n = dx_n ⊙ r
        # TODO: dx_r = dh_r = dr ⊙ r (1 − r), dx_z = dh_z = dz ⊙ z (1 − z)
        # TODO: dx_proj = [dx_r | dx_z | dx_n], dh_proj = [dh_r | dh_z | dh_n] (torch.cat along dim 1)
        # TODO: dx = dx_proj W_ih, dh = dh' ⊙ z + dh_proj W_hh
        # TODO: grads: dW_ih = dx_projᵀ x, dW_hh = dh_projᵀ h, and (with biases) their sums over the batch
        raise NotImplementedError("write MyGRUCell.step_backward: one line per TODO")
''' + _BPTT.format(states=" h (B, H)"))

_RNN_BACKWARD = dict(_RNN, imports="import torch.nn.functional as F\n", equations=_RNN["equations"] + '''
''' + _BACKWARD_NOTE + '''With z = W_ih x + b_ih + W_hh h + b_hh, so that h' = tanh(z):

    dz    = dh' ⊙ (1 − h'²)
    dx    = dz W_ih        dh = dz W_hh        h: the state the step started from
    dW_ih = dzᵀ x          dW_hh = dzᵀ h
    db_ih = db_hh = Σ over the batch of dz
''', forward='''    def forward(self, input, hx=None):
        """input (B, I); hx (B, H), zeros when None. Returns h' (B, H)."""
        h = input.new_zeros(input.shape[0], self.hidden_size) if hx is None else hx
        return torch.tanh(F.linear(input, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh))

    def step_backward(self, input, hx, grad_out):
        """input (B, I); hx the state h the step started from; grad_out dh', each (B, H).
        Returns (dx, dh, grads), grads = {"weight_ih": dW_ih, "weight_hh": dW_hh} and, with biases,
        "bias_ih" and "bias_hh"."""
        h, dh_next = hx, grad_out
        h_next = self.forward(input, h)  # the forward again (recomputed, not cached)
        # TODO: dz = dh' ⊙ (1 − h'²)
        # TODO: dx = dz W_ih, dh = dz W_hh (dz @ self.weight_ih, ...)
        # TODO: grads: dW_ih = dzᵀ x, dW_hh = dzᵀ h, and (if self.bias_ih is not None) db_ih = db_hh = Σ_batch dz
        raise NotImplementedError("write MyRNNCell.step_backward: one line per TODO")
''' + _BPTT.format(states=" h (B, H)"))

TEMPLATES = {"lstm": _LSTM, "gru": _GRU, "rnn": _RNN,
             "lstm-backward": _LSTM_BACKWARD, "gru-backward": _GRU_BACKWARD, "rnn-backward": _RNN_BACKWARD}


def template(name):
    """The skeleton of `name` ("lstm", "gru", "rnn", or one of them + "-backward") as the text of a
    Python file."""
    values = TEMPLATES[name]
    return _HEADER.format(**values) + values["forward"]
