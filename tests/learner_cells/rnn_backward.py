"""A learner's Elman RNN cell with its backward by hand, min-char-rnn style: F.linear forward,
(1 - h**2) for tanh', the BPTT loop keeping its states in a dict. Correct."""
import torch
import torch.nn.functional as F
from torch import nn


class BackpropRNN(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(hidden_size, input_size) * 0.1)
        self.weight_hh = nn.Parameter(torch.randn(hidden_size, hidden_size) * 0.1)
        self.bias_ih = nn.Parameter(torch.zeros(hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.zeros(hidden_size)) if bias else None

    def forward(self, x, h):
        return torch.tanh(F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh))

    def step_backward(self, x, h, dh_next):
        h_next = self.forward(x, h)
        dz = (1 - h_next ** 2) * dh_next
        grads = {"weight_ih": dz.T @ x, "weight_hh": dz.T @ h}
        if self.bias_ih is not None:
            grads["bias_ih"] = dz.sum(0)
            grads["bias_hh"] = dz.sum(0)
        return dz @ self.weight_ih, dz @ self.weight_hh, grads


def backward_through_time(cell, inputs, hx, grad_outputs, grad_last):
    hs = {-1: hx}
    for t in range(len(inputs)):
        hs[t] = cell(inputs[t], hs[t - 1])
    dW = {name: 0 for name, _ in cell.named_parameters()}
    dxs = [None] * len(inputs)
    dh_next = grad_last
    for t in reversed(range(len(inputs))):
        dxs[t], dh_next, g = cell.step_backward(inputs[t], hs[t - 1], grad_outputs[t] + dh_next)
        for name in dW:
            dW[name] = dW[name] + g[name]
    return torch.stack(dxs), dh_next, dW
