"""A learner's GRU cell with six separate matmuls on explicit slices. Correct."""
import torch
from torch import nn


class SlicedGRU(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.H = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.randn(3 * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.randn(3 * hidden_size))
            self.bias_hh = nn.Parameter(torch.randn(3 * hidden_size))
        else:
            self.bias_ih = self.bias_hh = None

    def part(self, t, k):
        return t[k * self.H:(k + 1) * self.H]

    def forward(self, x, h=None):
        if h is None:
            h = torch.zeros(x.shape[0], self.H, dtype=x.dtype)
        b_ih = self.bias_ih if self.bias_ih is not None else torch.zeros(3 * self.H, dtype=x.dtype)
        b_hh = self.bias_hh if self.bias_hh is not None else torch.zeros(3 * self.H, dtype=x.dtype)
        r = torch.sigmoid(x @ self.part(self.weight_ih, 0).T + self.part(b_ih, 0)
                          + h @ self.part(self.weight_hh, 0).T + self.part(b_hh, 0))
        z = torch.sigmoid(x @ self.part(self.weight_ih, 1).T + self.part(b_ih, 1)
                          + h @ self.part(self.weight_hh, 1).T + self.part(b_hh, 1))
        n = torch.tanh(x @ self.part(self.weight_ih, 2).T + self.part(b_ih, 2)
                       + r * (h @ self.part(self.weight_hh, 2).T + self.part(b_hh, 2)))
        return (1 - z) * n + z * h
