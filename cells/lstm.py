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

Backward through one step (`lstm_step_backward`, `LSTMCell.step_backward`). The loss sends back
dh' = ∂L/∂h' and dc' = ∂L/∂c' (d before a name is always ∂L/∂ of it). With z_i, z_f, z_g, z_o the
gates' pre-activations (i = σ(z_i), ...), σ′ = σ (1 − σ) and tanh′ = 1 − tanh², the chain rule through
the equations above, from the last to the first:

    do   = dh' ⊙ tanh(c')
    dc'  = dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))    c' reaches the loss directly and through h'
    df   = dc' ⊙ c        di = dc' ⊙ g        dg = dc' ⊙ i
    dc   = dc' ⊙ f                             the gradient sent back to the previous step's c
    dz_i = di ⊙ i (1 − i)      dz_f = df ⊙ f (1 − f)      dz_g = dg ⊙ (1 − g²)      dz_o = do ⊙ o (1 − o)
    dz   = [dz_i | dz_f | dz_g | dz_o]         (B, 4H), stacked in the weights' gate order
    dx   = dz W_ih                             (B, I)
    dh   = dz W_hh                             (B, H), sent back to the previous step's h
    dW_ih = dzᵀ x     dW_hh = dzᵀ h            (4H, I), (4H, H): h is the state the step started from
    db_ih = db_hh = Σ over the batch of dz     (4H,): every row of the batch used the same bias

Written for a batch x (B, I), W x is x @ W.T, so dx = dz @ W_ih and dW_ih = dz.T @ x.

References: S. Hochreiter and J. Schmidhuber, "Long short-term memory", Neural Computation 9 (1997);
F. Gers, J. Schmidhuber and F. Cummins, "Learning to forget" (2000), which added f;
https://pytorch.org/docs/stable/generated/torch.nn.LSTMCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase
from .bptt import backward_through_time  # noqa: F401 - the BPTT loop `python -m cells.check` looks for here


def lstm_step(x_proj, h, c, weight_hh, bias_hh, weight_hr=None, gates=None):
    """One time step, given the input's projection `x_proj = W_ih x + b_ih` (B, 4H); returns (h', c').

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop, so the
    step does only the recurrent matmul and the gate math. `weight_hr` (P, H) projects h' (the
    layers' proj_size). `gates`, if a dict, receives the step's activations (for plots).
    """
    z = x_proj + F.linear(h, weight_hh, bias_hh)  # (B, 4H): all four gates' pre-activations
    z_i, z_f, z_g, z_o = z.chunk(4, 1)  # each (B, H)
    i = torch.sigmoid(z_i)
    f = torch.sigmoid(z_f)
    g = torch.tanh(z_g)
    o = torch.sigmoid(z_o)
    c_next = f * c + i * g
    h_next = o * torch.tanh(c_next)
    if weight_hr is not None:
        h_next = F.linear(h_next, weight_hr)  # (B, P)
    if gates is not None:
        gates.update(i=i, f=f, g=g, o=o, c=c_next, h=h_next)
    return h_next, c_next


def lstm_step_backward(x, h, c, dh_next, dc_next, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """The gradients of one step (module docstring, "Backward"), each line one equation there.

    x (B, I) and (h, c), each (B, H), are what the step started from; dh_next and dc_next (B, H) what
    the loss sends back to its h' and c'. The gates are recomputed from (x, h) rather than kept from
    the forward: slower, but the step needs nothing but its inputs. Returns dx (B, I), dh and dc
    (B, H), and a dict of the parameters' gradients for this step, by torch's names.
    """
    # The forward again (lstm_step), keeping the gates the derivatives need.
    z = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    z_i, z_f, z_g, z_o = z.chunk(4, 1)  # each (B, H)
    i, f, g, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g), torch.sigmoid(z_o)
    c_next = f * c + i * g
    tanh_c_next = torch.tanh(c_next)

    do = dh_next * tanh_c_next  # do = dh' ⊙ tanh(c')
    dc_next = dc_next + dh_next * o * (1 - tanh_c_next**2)  # dc' = dc' + dh' ⊙ o ⊙ (1 − tanh²(c'))
    df = dc_next * c  # df = dc' ⊙ c
    di = dc_next * g  # di = dc' ⊙ g
    dg = dc_next * i  # dg = dc' ⊙ i
    dc = dc_next * f  # dc = dc' ⊙ f
    dz_i = di * i * (1 - i)  # dz_i = di ⊙ σ′(z_i)
    dz_f = df * f * (1 - f)  # dz_f = df ⊙ σ′(z_f)
    dz_g = dg * (1 - g**2)  # dz_g = dg ⊙ tanh′(z_g)
    dz_o = do * o * (1 - o)  # dz_o = do ⊙ σ′(z_o)
    dz = torch.cat([dz_i, dz_f, dz_g, dz_o], 1)  # (B, 4H), in torch's gate order i, f, g, o

    dx = dz @ weight_ih  # dx = dz W_ih, (B, I)
    dh = dz @ weight_hh  # dh = dz W_hh, (B, H)
    grads = {"weight_ih": dz.T @ x, "weight_hh": dz.T @ h}  # dW = dzᵀ x, dzᵀ h: (4H, I), (4H, H)
    if bias_ih is not None:
        db = dz.sum(0)  # db = Σ_batch dz, (4H,): the same for both biases
        grads.update(bias_ih=db, bias_hh=db.clone())
    return dx, dh, dc, grads


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

    @torch.no_grad()  # all by hand: nothing for autograd to record
    def step_backward(self, input, hx, grad_out):
        """Backprop through one step by hand (`lstm_step_backward`), no autograd.

        input (B, I); hx = (h, c), the states the step started from, each (B, H); grad_out =
        (dh', dc'), the gradients arriving at the step's h' and c', each (B, H). Returns (dx, (dh, dc),
        grads): the gradient of the input (B, I), of the states the step started from, and a dict
        from parameter name (weight_ih, weight_hh, bias_ih, bias_hh) to that step's gradient.
        """
        h, c = self.check_step_backward(input, hx, grad_out, states=("h", "c"))
        dh_next, dc_next = grad_out
        dx, dh, dc, grads = lstm_step_backward(input, h, c, dh_next, dc_next, self.weight_ih, self.weight_hh,
                                               self.bias_ih, self.bias_hh)
        return dx, (dh, dc), grads
