"""Gated recurrent unit (GRU) cell, written out by hand.

For input x (B, I) and hidden state h (B, H), torch's equations with the gates in torch's order
r, z, n (σ is the logistic sigmoid, ⊙ the elementwise product):

    r  = σ(W_ir x + b_ir + W_hr h + b_hr)             reset gate: how much of h the candidate sees
    z  = σ(W_iz x + b_iz + W_hz h + b_hz)             update gate: how much of h to keep
    n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))    candidate
    h' = (1 - z) ⊙ n + z ⊙ h

This is torch's (cuDNN's) GRU: the reset gate multiplies W_hn h + b_hn *after* the matmul, so W_hn h
can be computed with the other gates in one matmul. The 2014 paper puts r before the matmul,

    n  = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)

which `GRUCell(..., reset_after=False)` offers; it cannot be compared with `torch.nn.GRUCell` and is
tested against its own equations instead.

Parameters, named and shaped as in `torch.nn.GRUCell`; the three gates' weights are stacked so one
matmul per weight computes all gates at once:

    weight_ih = [W_ir | W_iz | W_in]   (3H, I)      bias_ih = [b_ir | b_iz | b_in]   (3H,)
    weight_hh = [W_hr | W_hz | W_hn]   (3H, H)      bias_hh = [b_hr | b_hz | b_hn]   (3H,)

The biases of r and z are redundant (only b_i* + b_h* matters), but b_hn is not: it sits inside
r ⊙ (W_hn h + b_hn), so the reset gate scales it and it cannot be folded into b_in.

Backward through one step (`gru_step_backward`, `GRUCell.step_backward`). The loss sends back dh' =
∂L/∂h' (d before a name is always ∂L/∂ of it). Name the two matmuls' gate blocks x_r, x_z, x_n =
W_i* x + b_i* and h_r, h_z, h_n = W_h* h + b_h*, so that r = σ(x_r + h_r) and n = tanh(x_n + r ⊙ h_n);
with σ′ = σ (1 − σ) and tanh′ = 1 − tanh², the chain rule from the last equation to the first:

    dn   = dh' ⊙ (1 − z)       dz = dh' ⊙ (h − n)       dh = dh' ⊙ z   (h's direct path; more below)
    dx_n = dn ⊙ (1 − n²)                                   through tanh
    dr   = dx_n ⊙ h_n          dh_n = dx_n ⊙ r             r multiplies W_hn h + b_hn
    dx_r = dh_r = dr ⊙ r (1 − r)     dx_z = dh_z = dz ⊙ z (1 − z)     a sum passes its gradient to both
    dx_proj = [dx_r | dx_z | dx_n]     dh_proj = [dh_r | dh_z | dh_n]   (B, 3H), in torch's gate order
    dx   = dx_proj W_ih        dh = dh + dh_proj W_hh      (B, I), (B, H)
    dW_ih = dx_projᵀ x         dW_hh = dh_projᵀ h          (3H, I), (3H, H)
    db_ih = Σ over the batch of dx_proj      db_hh = Σ over the batch of dh_proj      (3H,)

dx_n and dh_n differ (r stands between them), which is why b_in and b_hn get different gradients. The
2014 paper's candidate n = tanh(x_n + W_hn (r ⊙ h) + b_hn) changes the middle lines: d(r ⊙ h) =
dx_n W_hn, dr = d(r ⊙ h) ⊙ h, and h gets d(r ⊙ h) ⊙ r more (`gru_step_backward_paper`).

References: K. Cho et al., "Learning phrase representations using RNN encoder-decoder for statistical
machine translation", EMNLP 2014; https://pytorch.org/docs/stable/generated/torch.nn.GRUCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase
from .bptt import backward_through_time  # noqa: F401 - the BPTT loop `python -m cells.check` looks for here


def gru_step(x_proj, h, weight_hh, bias_hh, gates=None):
    """One time step of torch's GRU, given `x_proj = W_ih x + b_ih` (B, 3H); returns h'.

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop. `gates`,
    if a dict, receives the step's activations (for plots).
    """
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    h_proj = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    h_r, h_z, h_n = h_proj.chunk(3, 1)  # each (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    h_next = (1 - z) * n + z * h
    if gates is not None:
        gates.update(r=r, z=z, n=n, h=h_next)
    return h_next


def gru_step_paper(x_proj, h, weight_hh, bias_hh, gates=None):
    """One time step of the 2014 paper's GRU: the reset gate is applied to h before W_hn."""
    H = h.shape[1]
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    b_rz, b_n = (None, None) if bias_hh is None else (bias_hh[: 2 * H], bias_hh[2 * H :])
    h_r, h_z = F.linear(h, weight_hh[: 2 * H], b_rz).chunk(2, 1)  # each (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + F.linear(r * h, weight_hh[2 * H :], b_n))
    h_next = (1 - z) * n + z * h
    if gates is not None:
        gates.update(r=r, z=z, n=n, h=h_next)
    return h_next


def gru_step_backward(x, h, dh_next, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """The gradients of one step of torch's GRU (module docstring, "Backward"), a line per equation.

    x (B, I) and h (B, H) are what the step started from, dh_next (B, H) what the loss sends back to
    its h'. The gates are recomputed from (x, h) rather than kept from the forward. Returns dx (B, I),
    dh (B, H) and a dict of the parameters' gradients for this step, by torch's names.
    """
    # The forward again (gru_step), keeping what the derivatives need.
    x_proj = F.linear(x, weight_ih, bias_ih)  # (B, 3H)
    h_proj = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    h_r, h_z, h_n = h_proj.chunk(3, 1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)

    dn = dh_next * (1 - z)  # dn = dh' ⊙ (1 − z)
    dz = dh_next * (h - n)  # dz = dh' ⊙ (h − n)
    dh_direct = dh_next * z  # dh = dh' ⊙ z: h's own path into h'
    dx_n = dn * (1 - n**2)  # dx_n = dn ⊙ tanh′
    dr = dx_n * h_n  # dr = dx_n ⊙ (W_hn h + b_hn)
    dh_n = dx_n * r  # dh_n = dx_n ⊙ r
    dx_r = dh_r = dr * r * (1 - r)  # dx_r = dh_r = dr ⊙ σ′
    dx_z = dh_z = dz * z * (1 - z)  # dx_z = dh_z = dz ⊙ σ′
    dx_proj = torch.cat([dx_r, dx_z, dx_n], 1)  # (B, 3H), in torch's gate order r, z, n
    dh_proj = torch.cat([dh_r, dh_z, dh_n], 1)  # (B, 3H)

    dx = dx_proj @ weight_ih  # dx = dx_proj W_ih, (B, I)
    dh = dh_direct + dh_proj @ weight_hh  # dh = dh' ⊙ z + dh_proj W_hh, (B, H)
    grads = {"weight_ih": dx_proj.T @ x, "weight_hh": dh_proj.T @ h}  # (3H, I), (3H, H)
    if bias_ih is not None:
        grads.update(bias_ih=dx_proj.sum(0), bias_hh=dh_proj.sum(0))  # Σ over the batch, (3H,)
    return dx, dh, grads


def gru_step_backward_paper(x, h, dh_next, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """`gru_step_backward` for the 2014 paper's candidate n = tanh(x_n + W_hn (r ⊙ h) + b_hn)."""
    H = h.shape[1]
    w_rz, w_n = weight_hh[: 2 * H], weight_hh[2 * H :]  # (2H, H), (H, H)
    b_rz, b_n = (None, None) if bias_hh is None else (bias_hh[: 2 * H], bias_hh[2 * H :])
    # The forward again (gru_step_paper).
    x_proj = F.linear(x, weight_ih, bias_ih)  # (B, 3H)
    x_r, x_z, x_n = x_proj.chunk(3, 1)  # each (B, H)
    h_r, h_z = F.linear(h, w_rz, b_rz).chunk(2, 1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    rh = r * h  # (B, H): what W_hn multiplies
    n = torch.tanh(x_n + F.linear(rh, w_n, b_n))

    dn = dh_next * (1 - z)  # dn = dh' ⊙ (1 − z)
    dz = dh_next * (h - n)  # dz = dh' ⊙ (h − n)
    dx_n = dn * (1 - n**2)  # dx_n = dn ⊙ tanh′
    drh = dx_n @ w_n  # d(r ⊙ h) = dx_n W_hn
    dr = drh * h  # dr = d(r ⊙ h) ⊙ h
    dx_r = dh_r = dr * r * (1 - r)  # dx_r = dh_r = dr ⊙ σ′
    dx_z = dh_z = dz * z * (1 - z)  # dx_z = dh_z = dz ⊙ σ′
    dx_proj = torch.cat([dx_r, dx_z, dx_n], 1)  # (B, 3H)
    dh_rz = torch.cat([dh_r, dh_z], 1)  # (B, 2H)

    dx = dx_proj @ weight_ih  # (B, I)
    dh = dh_next * z + drh * r + dh_rz @ w_rz  # h's direct path, through r ⊙ h, and through r and z
    grads = {"weight_ih": dx_proj.T @ x, "weight_hh": torch.cat([dh_rz.T @ h, dx_n.T @ rh])}  # dW_hn = dx_nᵀ (r ⊙ h)
    if bias_ih is not None:
        grads.update(bias_ih=dx_proj.sum(0), bias_hh=torch.cat([dh_rz, dx_n], 1).sum(0))
    return dx, dh, grads


class GRUCell(CellBase):
    """GRU cell, a drop-in for `torch.nn.GRUCell(input_size, hidden_size, bias)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx (B, H) or (H,), zeros when absent.
    Returns h' with the shape of hx. `reset_after=False` selects the 2014 paper's candidate (see the
    module docstring); the default is torch's.
    """

    def __init__(self, input_size, hidden_size, bias=True, device=None, dtype=None, reset_after=True):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)
        self.reset_after = reset_after

    def extra_repr(self):
        return super().extra_repr() + ("" if self.reset_after else ", reset_after=False")

    def forward(self, input, hx=None):
        x, batched = self.check_input(input)
        h = self.initial_state("hx", hx, x, batched)
        self.check_dtypes(input=x, hx=h)
        step = gru_step if self.reset_after else gru_step_paper
        h = step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh)
        return h if batched else h.squeeze(0)

    @torch.no_grad()  # all by hand: nothing for autograd to record
    def step_backward(self, input, hx, grad_out):
        """Backprop through one step by hand (`gru_step_backward`, or `gru_step_backward_paper` with
        reset_after=False), no autograd.

        input (B, I); hx the state h the step started from (B, H); grad_out the gradient dh' arriving
        at the step's h' (B, H). Returns (dx, dh, grads): the gradient of the input (B, I), of h, and a
        dict from parameter name (weight_ih, weight_hh, bias_ih, bias_hh) to that step's gradient.
        """
        h = self.check_step_backward(input, hx, grad_out, states=("h",))
        backward = gru_step_backward if self.reset_after else gru_step_backward_paper
        return backward(input, h, grad_out, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
