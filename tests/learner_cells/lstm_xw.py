"""A learner's LSTM cell using the weights as x @ W.T with torch.addmm, and no bias option."""
import torch
from torch import nn


class XWLSTM(nn.Module):
    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.weight_ih = nn.Parameter(torch.rand(4 * hidden_size, input_size) - 0.5)
        self.weight_hh = nn.Parameter(torch.rand(4 * hidden_size, hidden_size) - 0.5)
        self.bias_ih = nn.Parameter(torch.rand(4 * hidden_size) - 0.5)
        self.bias_hh = nn.Parameter(torch.rand(4 * hidden_size) - 0.5)

    def forward(self, x, hx):
        h, c = hx
        z = torch.addmm(self.bias_ih, x, self.weight_ih.t()) + torch.addmm(self.bias_hh, h, self.weight_hh.t())
        H = h.shape[1]
        i = torch.sigmoid(z[:, :H])
        f = torch.sigmoid(z[:, H:2 * H])
        g = torch.tanh(z[:, 2 * H:3 * H])
        o = torch.sigmoid(z[:, 3 * H:])
        c = torch.addcmul(f * c, i, g)
        return (o * c.tanh(), c)
