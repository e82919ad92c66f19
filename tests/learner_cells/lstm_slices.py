"""A learner's LSTM cell written d2l-style: explicit slices, eight separate matmuls, x @ W.T,
σ written out. Correct, with hx=None and unbatched input handled like torch."""
import torch
from torch import nn


def sigmoid(t):
    return 1 / (1 + torch.exp(-t))


class SlicedLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, bias=True):
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size) * 0.1)
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size) * 0.1)
        self.bias_ih = nn.Parameter(torch.zeros(4 * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.zeros(4 * hidden_size)) if bias else None

    def forward(self, x, state=None):
        unbatched = x.dim() == 1
        if unbatched:
            x = x.unsqueeze(0)
            state = None if state is None else (state[0].unsqueeze(0), state[1].unsqueeze(0))
        if state is None:
            state = (x.new_zeros(x.shape[0], self.hidden_size), x.new_zeros(x.shape[0], self.hidden_size))
        h, c = state
        H = self.hidden_size
        W_ii, W_if, W_ig, W_io = (self.weight_ih[k * H:(k + 1) * H] for k in range(4))
        W_hi, W_hf, W_hg, W_ho = (self.weight_hh[k * H:(k + 1) * H] for k in range(4))
        if self.bias_ih is None:
            b = [0.0] * 4
        else:
            b = [self.bias_ih[k * H:(k + 1) * H] + self.bias_hh[k * H:(k + 1) * H] for k in range(4)]
        i = sigmoid(x @ W_ii.T + h @ W_hi.T + b[0])
        f = sigmoid(x @ W_if.T + h @ W_hf.T + b[1])
        g = torch.tanh(x @ W_ig.T + h @ W_hg.T + b[2])
        o = sigmoid(x @ W_io.T + h @ W_ho.T + b[3])
        c_next = f * c + i * g
        h_next = o * torch.tanh(c_next)
        if unbatched:
            return h_next[0], c_next[0]
        return h_next, c_next
