"""Long short-term memory (LSTM) cell, written out by hand.

For input x (B, I), hidden state h (B, H) and cell state c (B, H), torch's equations with the gates
in torch's order i, f, g, o (σ is the logistic sigmoid, ⊙ the elementwise product):

    i  = σ(W_ii x + b_ii + W_hi h + b_hi)       input gate: how much of the candidate to write
    f  = σ(W_if x + b_if + W_hf h + b_hf)       forget gate: how much of the old cell to keep
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)    candidate cell content
    o  = σ(W_io x + b_io + W_ho h + b_ho)       output gate: how much of the cell to show
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

With a projection (the layers' `proj_size` P, Sak et al. 2014) the hidden state is h' = W_hr (o ⊙
tanh(c')), of size P, and W_h* take (4H, P).

Parameters, named and shaped as in `torch.nn.LSTMCell`; the four gates' weights are stacked so one
matmul per weight computes all gates at once:

    weight_ih = [W_ii | W_if | W_ig | W_io]   (4H, I)      bias_ih = [b_ii | b_if | b_ig | b_io]   (4H,)
    weight_hh = [W_hi | W_hf | W_hg | W_ho]   (4H, H)      bias_hh = [b_hi | b_hf | b_hg | b_ho]   (4H,)

The two biases are redundant (only b_i* + b_h* matters); torch keeps both because cuDNN does, and we
keep both so a state_dict moves between this cell and `torch.nn.LSTMCell` unchanged.

References: S. Hochreiter and J. Schmidhuber, "Long short-term memory", Neural Computation 9 (1997);
F. Gers, J. Schmidhuber and F. Cummins, "Learning to forget" (2000), which added f;
https://pytorch.org/docs/stable/generated/torch.nn.LSTMCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase


def lstm_step(x_proj, h, c, weight_hh, bias_hh, weight_hr=None, gates=None):
    """One time step, given the input's projection `x_proj = W_ih x + b_ih` (B, 4H); returns (h', c').

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop, so the
    step does only the recurrent matmul and the gate math. `weight_hr` (P, H) projects h' (the
    layers' proj_size). `gates`, if a dict, receives the step's activations (for plots).
    """
    z = x_proj + F.linear(h, weight_hh, bias_hh)  # (B, 4H): all four gates' pre-activations
    i, f, g, o = z.chunk(4, 1)  # each (B, H)
    i = torch.sigmoid(i)
    f = torch.sigmoid(f)
    g = torch.tanh(g)
    o = torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if weight_hr is not None:
        h = F.linear(h, weight_hr)  # (B, P)
    if gates is not None:
        gates.update(i=i, f=f, g=g, o=o, c=c, h=h)
    return h, c


class LSTMCell(CellBase):
    """LSTM cell, a drop-in for `torch.nn.LSTMCell(input_size, hidden_size, bias)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx = (h, c), each (B, H) or (H,),
    zeros when absent. Returns (h', c') with the shapes of hx.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        x, batched = self.check_input(input)
        if hx is None:
            hx = (None, None)
        elif not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise TypeError(f"LSTMCell: hx must be a tuple (h, c) of two tensors, got {type(hx).__name__}")
        h = self.initial_state("hx[0] (h)", hx[0], x, batched, index=0, torch_name="hx[0]")
        c = self.initial_state("hx[1] (c)", hx[1], x, batched, index=1, torch_name="hx[1]")
        self.check_dtypes(input=x, **{"hx[0] (h)": h, "hx[1] (c)": c})
        h, c = lstm_step(F.linear(x, self.weight_ih, self.bias_ih), h, c, self.weight_hh, self.bias_hh)
        return (h, c) if batched else (h.squeeze(0), c.squeeze(0))
