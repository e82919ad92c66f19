"""Which code runs the fast path's steps: one choice, read by every Function of `models.fused`.

A step's gate math has three interchangeable backends with one signature per function
(`lstm_forward_step(z, c_prev, c, m, k)`, …): `models.eager_steps` (torch ops, anywhere),
`models.cpu_kernels` (compiled C++, CPU) and `models.triton_kernels` (CUDA). On the CPU the whole
time loop of a uniform batch can also run as one compiled call (`cpu_kernels.*_sequence`), matmuls
included. The tests run every route against torch.nn in float64 by switching the settings below.
"""
import torch

from . import cpu_kernels, eager_steps, triton_kernels

# When the steps' gate math runs as one Triton kernel: "auto" (on CUDA when triton imports),
# "always" (also on the CPU under TRITON_INTERPRET=1, which is how the tests check the kernels) or
# "never". See models/triton_kernels.py.
TRITON = "auto"
# On the CPU: "auto" (whole sequences in one compiled call where `whole_sequence` allows, else one
# compiled kernel per step), "steps" (one compiled kernel per step, the matmuls torch's) or "never"
# (the eager ops). See models/cpu_kernels.py.
CPU_KERNELS = "auto"


def step_kernels(like):
    """The module whose functions run each step's gate math for tensors like `like`."""
    if triton_kernels.usable(like, TRITON):
        return triton_kernels
    if cpu_kernels.usable(like, CPU_KERNELS):
        return cpu_kernels
    return eager_steps


def whole_sequence(layout, like):
    """Whether a Function's whole time loop runs as one compiled call (`cpu_kernels.*_sequence`): on
    the CPU kernels' route, not limited to steps, and every step the same (non-empty) batch."""
    return (layout.uniform and layout.B > 0 and step_kernels(like) is cpu_kernels
            and cpu_kernels.sequence_usable(like, CPU_KERNELS))


def fused_supported(device):
    """Whether impl="auto" should take the fast path on `device`.

    CPU: the fast path is the one benchmarks/results/cpu.md times against torch.nn. CUDA: fewer
    launches than the readable path by construction (one matmul and one Triton kernel per step with
    triton installed). Elsewhere (mps, …) it is untested, so "auto" keeps the readable path there.
    """
    return torch.device(device).type in ("cpu", "cuda")
