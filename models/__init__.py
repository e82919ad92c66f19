"""Layers that unroll the hand-written cells over time: drop-in for torch.nn.RNN, LSTM and GRU."""
from .layers import GRU, LSTM, RNN, RNNBase

__all__ = ["RNN", "LSTM", "GRU", "RNNBase"]
