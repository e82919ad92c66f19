"""A learner's GRU cell with its backward by hand: the six gate blocks sliced out of the stacked
weights, x @ W.T, the BPTT loop writing into a preallocated tensor and accumulating in place.
Correct."""
import torch
import torch.nn.functional as F
from torch import nn


class BackpropGRU(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(3 * hidden_size, input_size) * 0.1)
        self.weight_hh = nn.Parameter(torch.randn(3 * hidden_size, hidden_size) * 0.1)
        self.bias_ih = nn.Parameter(torch.zeros(3 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.zeros(3 * hidden_size)) if bias else None

    def parts(self, x, h):
        H = self.hidden_size
        gi = x @ self.weight_ih.T
        gh = h @ self.weight_hh.T
        if self.bias_ih is not None:
            gi = gi + self.bias_ih
            gh = gh + self.bias_hh
        r = torch.sigmoid(gi[:, :H] + gh[:, :H])
        z = torch.sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:]
        n = torch.tanh(gi[:, 2 * H:] + r * hn)
        return r, z, n, hn

    def forward(self, x, h):
        r, z, n, _ = self.parts(x, h)
        return (1 - z) * n + z * h

    def step_backward(self, x, h, dh_out):
        r, z, n, hn = self.parts(x, h)
        dn = dh_out * (1 - z)
        dz = dh_out * (h - n)
        dh = dh_out * z
        dn_pre = dn * (1 - n ** 2)
        dr = dn_pre * hn
        dhn = dn_pre * r
        dr_pre = dr * r * (1 - r)
        dz_pre = dz * z * (1 - z)
        dgi = torch.cat([dr_pre, dz_pre, dn_pre], 1)
        dgh = torch.cat([dr_pre, dz_pre, dhn], 1)
        dx = dgi @ self.weight_ih
        dh = dh + dgh @ self.weight_hh
        grads = dict(weight_ih=dgi.T @ x, weight_hh=dgh.T @ h)
        if self.bias_ih is not None:
            grads.update(bias_ih=dgi.sum(0), bias_hh=dgh.sum(0))
        return dx, dh, grads


def backward_through_time(cell, inputs, hx, grad_outputs, grad_last):
    T = inputs.shape[0]
    hs = [hx]
    for t in range(T):
        hs.append(cell(inputs[t], hs[t]).detach())
    grad_inputs = torch.zeros_like(inputs)
    grads = {name: torch.zeros_like(p) for name, p in cell.named_parameters()}
    dh = grad_last.clone()
    for t in reversed(range(T)):
        dx, dh, step = cell.step_backward(inputs[t], hs[t], dh + grad_outputs[t])
        grad_inputs[t] = dx.detach()
        for name, g in step.items():
            grads[name] += g.detach()
    return grad_inputs, dh, grads
