"""A learner's LSTM cell with its backward by hand, written course-assignment style: explicit gate
slices, torch.mm and .t(), sigmoid written out, the BPTT loop collecting a list and reversing it.
Correct."""
import math

import torch
from torch import nn


def sigmoid(t):
    return 1 / (1 + torch.exp(-t))


class BackpropLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.hidden_size = hidden_size
        k = 1 / math.sqrt(hidden_size)
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size).uniform_(-k, k))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size).uniform_(-k, k))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size).uniform_(-k, k))
        else:
            self.bias_ih = self.bias_hh = None

    def gates(self, x, h):
        a = torch.mm(x, self.weight_ih.t()) + torch.mm(h, self.weight_hh.t())
        if self.bias_ih is not None:
            a = a + self.bias_ih + self.bias_hh
        H = self.hidden_size
        i = sigmoid(a[:, :H])
        f = sigmoid(a[:, H:2 * H])
        g = torch.tanh(a[:, 2 * H:3 * H])
        o = sigmoid(a[:, 3 * H:])
        return i, f, g, o

    def forward(self, x, state):
        h, c = state
        i, f, g, o = self.gates(x, h)
        next_c = f * c + i * g
        next_h = o * torch.tanh(next_c)
        return next_h, next_c

    def step_backward(self, x, state, grads_in):
        h, c = state
        dnext_h, dnext_c = grads_in
        i, f, g, o = self.gates(x, h)
        next_c = f * c + i * g
        tc = torch.tanh(next_c)
        do = dnext_h * tc
        dcell = dnext_c + dnext_h * o * (1 - tc * tc)
        di = dcell * g
        df = dcell * c
        dg = dcell * i
        dprev_c = dcell * f
        da_i = di * i * (1 - i)
        da_f = df * f * (1 - f)
        da_g = dg * (1 - g * g)
        da_o = do * o * (1 - o)
        da = torch.cat((da_i, da_f, da_g, da_o), dim=1)
        dx = torch.mm(da, self.weight_ih)
        dprev_h = torch.mm(da, self.weight_hh)
        grads = {"weight_ih": torch.mm(da.t(), x), "weight_hh": torch.mm(da.t(), h)}
        if self.bias_ih is not None:
            grads["bias_ih"] = torch.sum(da, dim=0)
            grads["bias_hh"] = torch.sum(da, dim=0)
        return dx, (dprev_h, dprev_c), grads


def backward_through_time(cell, inputs, hx, grad_outputs, grad_last):
    states = [hx]
    with torch.no_grad():
        for x in inputs:
            states.append(cell(x, states[-1]))
    dh, dc = grad_last
    dxs = []
    total = None
    for t in range(len(inputs) - 1, -1, -1):
        dh = dh + grad_outputs[t]
        dx, (dh, dc), grads = cell.step_backward(inputs[t], states[t], (dh, dc))
        dxs.append(dx)
        if total is None:
            total = dict(grads)
        else:
            for name in total:
                total[name] = total[name] + grads[name]
    dxs.reverse()
    return torch.stack(dxs), (dh, dc), total
