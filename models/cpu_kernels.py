"""Compiled gate math of one time step for the fused path on the CPU: one call per step, not fifteen.

Why. At the MNIST shape (batch 64, hidden 128) an LSTM step's gate math is 64×128 elements per
gate: too small for torch to spread over threads, so each of the ~15 eager ops of a step
(`models.fused.LSTMFunction`) costs mostly its dispatch, and torch's CPU tanh measured 3–5× slower
than its sigmoid on the 2-core test machine. torch.nn.LSTM on the CPU runs oneDNN's fused LSTM
primitive instead. Here the same arithmetic is one loop in C++ (`cpu_kernels.cpp`) that the compiler
vectorises, called once per step through ctypes; the recurrent matmul stays torch's.

Each function has the name, arguments and effect of the Triton kernel function of the same name in
`models.triton_kernels` (the GRU's backward step instead computes its factors itself:
`gru_backward_step_direct`) and equals the eager step of `models.fused` that it replaces; the tests run
the fused path with these kernels and without them (`models.fused.CPU_KERNELS = "never"`) against
torch.nn in float64 at 1e-10, and compare the kernels with torch's sigmoid and tanh in float32.

Building. On first use the source is compiled with the system C++ compiler (`$CXX`, else g++, c++
or clang++; `-O3 -march=native`) into a cache folder, `$RNN_BY_HAND_CACHE` or
`~/.cache/rnn-by-hand`, under a name that hashes the source, the flags and this CPU's model and
feature flags, so a shared home folder never hands one machine another's build. It takes about a
second, once. Without a compiler, or if the build fails, `available()` is False, one warning says
why, and the fused path runs its eager ops (same numbers, slower). `RNN_BY_HAND_CPU_KERNELS=0` turns
the kernels off without a warning.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math"]
# Where a compiler does not know -march=native (some for ARM), the build is tried again without it.
PORTABLE_FLAGS = [f for f in FLAGS if f != "-march=native"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P = ctypes.c_void_p
_N = ctypes.c_int64
_SIGNATURES = {  # name: argument types (pointers, then sizes)
    "lstm_forward": [_P] * 5 + [_N] * 2,
    "lstm_backward": [_P] * 6 + [_N] * 2,
    "gru_forward": [_P] * 7 + [_N] * 2,
    "gru_backward_direct": [_P] * 8 + [_N] * 2,
    "tanh": [_P, _N],
}


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_identity():
    """This CPU's model and feature flags: what -march=native compiles for."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def cache_dir():
    root = os.environ.get("RNN_BY_HAND_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnn-by-hand"


def _build(compiler):
    """Compile the source (unless this exact build is cached) and return the library's path."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), compiler.encode(),
                                     _cpu_identity().encode(), platform.machine().encode()])).hexdigest()[:16]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    # Compile beside the target and rename: processes building at once (torchrun ranks, say) each
    # write their own file, and the rename is atomic, so no process loads a half-written library.
    fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(fd)
    try:
        for flags in (FLAGS, PORTABLE_FLAGS):
            done = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                os.replace(partial, target)
                return target
        raise RuntimeError(f"{compiler} exited with {done.returncode}:\n{done.stderr.strip()[-2000:]}")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@functools.lru_cache(maxsize=None)
def _library():
    """The loaded library, or None (with one warning saying why) when it cannot be built."""
    if os.environ.get("RNN_BY_HAND_CPU_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    try:
        if compiler is None:
            raise RuntimeError("no C++ compiler found (set $CXX, or install g++)")
        lib = ctypes.CDLL(str(_build(compiler)))
        for name, argtypes in _SIGNATURES.items():
            for suffix in _SUFFIX.values():
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = argtypes, None
        return lib
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as error:
        warnings.warn(f"models.cpu_kernels: the CPU step kernels could not be built, so the fused path "
                      f"runs its eager torch ops on the CPU (same results, slower): {error}. "
                      f"Set RNN_BY_HAND_CPU_KERNELS=0 to skip the build and this warning.", RuntimeWarning,
                      stacklevel=3)
        return None


def available():
    """Whether the kernels are built and loaded (builds them on the first call)."""
    return _library() is not None


def usable(tensor, mode="auto"):
    """Whether the fused path should run its steps through these kernels for `tensor`: a float32 or
    float64 CPU tensor, mode not "never", and the library built."""
    return (mode != "never" and tensor.device.type == "cpu" and tensor.dtype in _SUFFIX
            and _library() is not None)


def _fn(name, t):
    return getattr(_library(), f"{name}_{_SUFFIX[t.dtype]}")


def _rows(t, width):
    """The kernels index row · width + col: `t` must be row-major with that row stride."""
    if t.stride(-1) != 1 or (t.shape[0] > 1 and t.stride(0) != width):
        raise ValueError(f"cpu step kernel: expected rows of width {width}, got strides {t.stride()}")
    return t.data_ptr()


def lstm_forward_step(z, c_prev, c, m, k):
    """z = x_proj + b_hh + h_prev W_hhᵀ (b, 4H) → writes c and m = o ⊙ tanh(c) and, if k is given,
    f into z and the backward's factors k_i|k_f|k_g|k_o|k_c into k's (b, 5H) rows. Equals
    LSTMFunction's eager step."""
    b, H = c.shape
    _fn("lstm_forward", z)(_rows(z, 4 * H), _rows(c_prev, H), _rows(c, H), _rows(m, H),
                           _rows(k, 5 * H) if k is not None else None, b, H)


def lstm_backward_step(dm, d_out, dc, k, acts, dz):
    """dm (+ d_out) → dz (b, 4H), and dc updated in place to dc ⊙ f, what the previous step receives."""
    b, H = dc.shape
    _fn("lstm_backward", dc)(_rows(dm, H), _rows(d_out, H) if d_out is not None else None, _rows(dc, H),
                             _rows(k, 5 * H), _rows(acts, 4 * H), _rows(dz, 4 * H), b, H)


def gru_forward_step(hh, x_t, bias_hh, h_prev, rz, n, h):
    """hh = h_prev W_hhᵀ (b, 3H) gets b_hh added (stored back in its n column); writes r|z, n and h."""
    b, H = h.shape
    bias = bias_hh.contiguous() if bias_hh is not None else None  # held until the call returns
    _fn("gru_forward", hh)(_rows(hh, 3 * H), _rows(x_t, 3 * H), bias.data_ptr() if bias is not None else None,
                           _rows(h_prev, H), _rows(rz, 2 * H),
                           _rows(n, H), _rows(h, H), b, H)


def gru_backward_step_direct(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn):
    """Triton's gru_backward_step with the factors k, k_n computed in the step from r|z, n, hh_n and
    h_prev (GRUFunction's formulas), so the backward needs no (N, 3H) buffer of them: at 784 steps
    that buffer and its temporaries were most of the GRU's backward time on the CPU."""
    b, H = dh.shape
    _fn("gru_backward_direct", dh)(_rows(dh, H), _rows(d_out, H), _rows(rz, 2 * H), _rows(n, H), _rows(hh, 3 * H),
                                   _rows(h_prev, H), _rows(d_hh, 3 * H), _rows(d_xn, H), b, H)


def tanh_(x):
    """tanh in place over a contiguous tensor (the Elman RNN's step); returns x."""
    if not x.is_contiguous():
        raise ValueError(f"cpu step kernel: tanh_ needs a contiguous tensor, got strides {x.stride()}")
    _fn("tanh", x)(x.data_ptr(), x.numel())
    return x
