"""ONNX Runtime as a peer in `python -m benchmarks`: torch.nn's layer exported to ONNX, run by
onnxruntime's CPU provider — the engine recurrent models are commonly deployed on for inference.

Forward only (ONNX Runtime serves inference). The layer is exported once per case with
`torch.onnx.export` (its TorchScript exporter, which writes ONNX's own LSTM / GRU / RNN operators),
for the case's exact shapes, and checked equal to torch.nn before it is timed like any other
implementation. Its threads are the benchmark's (`intra_op_num_threads`), one op at a time. Needs the
optional extra: `pip install -e ".[onnx]"` (onnx, onnxruntime).
"""
from __future__ import annotations

import io
import warnings
from typing import Optional

import torch
from torch import nn

NAME = "onnxruntime"


def unavailable() -> Optional[str]:
    """Why ONNX Runtime cannot run here, or None when it can."""
    try:
        import onnx  # noqa: F401 - torch.onnx.export needs it
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install -e \".[onnx]\")"
    return None


class OnnxRuntimeLayer:
    """torch.nn's `reference` layer exported to ONNX and run by onnxruntime, called like it:
    `layer(x, hx) -> (output, h_n)` or `(output, (h_n, c_n))`, CPU float32 tensors, no gradients."""

    def __init__(self, reference: nn.Module, x: torch.Tensor, hx, threads: int):
        import onnxruntime

        states = hx if isinstance(hx, tuple) else (hx,)
        names = ["x", "h0", "c0"][: 1 + len(states)]
        buffer = io.BytesIO()
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
            warnings.simplefilter("ignore")
            torch.onnx.export(reference, (x.detach(), hx if isinstance(hx, tuple) else hx.detach()), buffer,
                              input_names=names, dynamo=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        self.names = names
        self.lstm = len(states) == 2

    def __call__(self, x: torch.Tensor, hx):
        states = hx if isinstance(hx, tuple) else (hx,)
        feeds = {name: t.detach().contiguous().numpy() for name, t in zip(self.names, (x, *states))}
        out, *finals = (torch.from_numpy(a) for a in self.session.run(None, feeds))
        return out, (tuple(finals) if self.lstm else finals[0])
