"""Elman recurrent cell (the "vanilla" RNN), written out by hand.

For input x (B, I) and hidden state h (B, H), with nonlinearity φ = tanh or relu:

    h' = φ(W_ih x + b_ih + W_hh h + b_hh)

Parameters, named and shaped as in `torch.nn.RNNCell`:

    weight_ih  W_ih  (H, I)        bias_ih  b_ih  (H,)
    weight_hh  W_hh  (H, H)        bias_hh  b_hh  (H,)

The two biases are redundant (only their sum matters); torch keeps both because cuDNN does, and we
keep both so a state_dict moves between this cell and `torch.nn.RNNCell` unchanged.

Backward through one step (`rnn_step_backward`, `RNNCell.step_backward`). The loss sends back dh' =
∂L/∂h' (d before a name is always ∂L/∂ of it). With z = W_ih x + b_ih + W_hh h + b_hh the
pre-activation, h' = φ(z), and φ′ read off h': tanh′ = 1 − h'², relu′ = 1 where h' > 0, else 0:

    dz    = dh' ⊙ φ′(z)                      (B, H)
    dx    = dz W_ih        dh = dz W_hh      (B, I), (B, H): h is the state the step started from
    dW_ih = dzᵀ x          dW_hh = dzᵀ h     (H, I), (H, H)
    db_ih = db_hh = Σ over the batch of dz   (H,)

References: J. L. Elman, "Finding structure in time", Cognitive Science 14 (1990);
https://pytorch.org/docs/stable/generated/torch.nn.RNNCell.html
"""
import torch
import torch.nn.functional as F

from ._base import CellBase
from .bptt import backward_through_time  # noqa: F401 - the BPTT loop `python -m cells.check` looks for here

NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def check_nonlinearity(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'. "
                         f"(nonlinearity={nonlinearity!r})")


def rnn_step(x_proj, h, weight_hh, bias_hh, nonlinearity="tanh", gates=None):
    """One time step, given the input's projection `x_proj = W_ih x + b_ih` (B, H).

    The layers compute `x_proj` for the whole sequence in one matmul before the time loop, so the
    step does only the recurrent matmul and the nonlinearity. `gates`, if a dict, receives the
    step's activations (for plots).
    """
    h = NONLINEARITIES[nonlinearity](x_proj + F.linear(h, weight_hh, bias_hh))  # (B, H)
    if gates is not None:
        gates["h"] = h
    return h


def rnn_step_backward(x, h, dh_next, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh"):
    """The gradients of one step (module docstring, "Backward"), a line per equation.

    x (B, I) and h (B, H) are what the step started from, dh_next (B, H) what the loss sends back to
    its h'. h' is recomputed from (x, h). Returns dx (B, I), dh (B, H) and a dict of the parameters'
    gradients for this step, by torch's names.
    """
    h_next = NONLINEARITIES[nonlinearity](F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh))
    if nonlinearity == "tanh":
        dz = dh_next * (1 - h_next**2)  # dz = dh' ⊙ (1 − h'²)
    else:
        dz = dh_next * (h_next > 0)  # dz = dh' ⊙ [z > 0]
    dx = dz @ weight_ih  # dx = dz W_ih, (B, I)
    dh = dz @ weight_hh  # dh = dz W_hh, (B, H)
    grads = {"weight_ih": dz.T @ x, "weight_hh": dz.T @ h}  # (H, I), (H, H)
    if bias_ih is not None:
        db = dz.sum(0)  # db = Σ_batch dz, (H,): the same for both biases
        grads.update(bias_ih=db, bias_hh=db.clone())
    return dx, dh, grads


class RNNCell(CellBase):
    """Elman RNN cell, a drop-in for `torch.nn.RNNCell(input_size, hidden_size, bias, nonlinearity)`.

    forward(input, hx=None): input (B, I) or unbatched (I,); hx (B, H) or (H,), zeros when absent.
    Returns h' with the shape of hx.
    """

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh", device=None, dtype=None):
        check_nonlinearity(nonlinearity)
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.nonlinearity == "tanh" else s + f", nonlinearity={self.nonlinearity}"  # torch's repr

    def forward(self, input, hx=None):
        x, batched = self.check_input(input)
        h = self.initial_state("hx", hx, x, batched)
        self.check_dtypes(input=x, hx=h)
        h = rnn_step(F.linear(x, self.weight_ih, self.bias_ih), h, self.weight_hh, self.bias_hh, self.nonlinearity)
        return h if batched else h.squeeze(0)

    @torch.no_grad()  # all by hand: nothing for autograd to record
    def step_backward(self, input, hx, grad_out):
        """Backprop through one step by hand (`rnn_step_backward`), no autograd.

        input (B, I); hx the state h the step started from (B, H); grad_out the gradient dh' arriving
        at the step's h' (B, H). Returns (dx, dh, grads): the gradient of the input (B, I), of h, and a
        dict from parameter name (weight_ih, weight_hh, bias_ih, bias_hh) to that step's gradient.
        """
        h = self.check_step_backward(input, hx, grad_out, states=("h",))
        return rnn_step_backward(input, h, grad_out, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                                 self.nonlinearity)

