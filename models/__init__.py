"""Layers that unroll the hand-written cells over time: drop-in for torch.nn.RNN, LSTM and GRU.

The layers are imported on first use (`models.LSTM`), so that `models.kinds`, the table of cell
kinds, imports without them.
"""
__all__ = ["RNN", "LSTM", "GRU", "RNNBase"]


def __getattr__(name):
    if name in __all__:
        from . import layers
        return getattr(layers, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
