"""The fast path's time loop on the CPU in compiled C++: one call per sequence, or one per step.

Why. At the MNIST shape (batch 64, hidden 128) an LSTM step's gate math is 64×128 elements per
gate: too small for torch to spread over threads, so each of the ~15 eager ops of a step
(`models.eager_steps`) costs mostly its dispatch, and a step's matmul is too small for the BLAS to
use a second thread. torch.nn.LSTM on the CPU runs oneDNN's fused LSTM primitive instead. Here the
gate math of a step is one loop in C++ (`cpu_kernels.cpp`) that the compiler vectorises, and the
whole time loop — recurrent matmul and gate math of every step — is one call through ctypes, which
packs W_hh once for the sequence, runs its own small matmul kernel over it every step (in AVX-512
or AVX2 vectors, whichever the compiler targets), and shares each step among torch's threads: by
batch rows, or by hidden units at small batches (`split`). For a narrow input (and, without a
backward, from a batch of a few rows on) the LSTM's call computes each step's input projection in
the same matmul (`lstm_function.steps_project_input`).

Each step function has the name, arguments and effect of the function of the same name in
`models.eager_steps` and of the Triton kernel's in `models.triton_kernels`. Each `*_sequence` function runs a
Function's whole time loop, recurrent matmuls included, in one call: the steps of
`models.lstm_function` / `gru_function` / `rnn_function`, shared over torch's threads (see
cpu_kernels.cpp). The tests run the fast path through every route (`models.backends.CPU_KERNELS` =
"auto", "steps", "never") against torch.nn in float64 at 1e-10, and compare the kernels with torch's
sigmoid and tanh in float32.

Building. On first use the source is compiled with the system C++ compiler (`$CXX`, else g++, c++
or clang++; `-O3 -march=native`) into a cache folder, `$RNN_BY_HAND_CACHE` or
`~/.cache/rnn-by-hand`, under a name that hashes the source, the flags and this CPU's model and
feature flags, so a shared home folder never hands one machine another's build. It takes a few
seconds, once. Without a compiler, or if the build fails, `available()` is False, one warning says
why, and the fused path runs its eager ops (same numbers, slower). `RNN_BY_HAND_CPU_KERNELS=0` turns
the kernels off without a warning. With OpenMP (`-fopenmp`; the library then shares the libgomp torch
loaded, so its threads are torch's) the sequence kernels use torch's threads; a compiler without it
builds them single-threaded.
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

from .workspace import workspace

SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp"]
# Where a compiler does not know -march=native (some for ARM), the build is tried again without it, and
# where it has no OpenMP, without that too (the sequence kernels then run on one thread).
BUILDS = [FLAGS, [f for f in FLAGS if f != "-march=native"], [f for f in FLAGS if f not in ("-march=native", "-fopenmp")]]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_P = ctypes.c_void_p
_N = ctypes.c_int64
_SIGNATURES = {  # name: argument types (pointers, then sizes)
    "lstm_forward": [_P] * 5 + [_N] * 2,
    "lstm_backward": [_P] * 6 + [_N] * 2,
    "gru_forward": [_P] * 7 + [_N] * 2,
    "gru_backward_direct": [_P] * 8 + [_N] * 2,
    "tanh": [_P, _N],
    "matmul": [_P, _N, _N, _P, _N, _N, _P, _P] + [_N] * 6,
    "lstm_packed_size": [_N] * 2,
    "lstm_forward_sequence": [_P] * 3 + [_N] + [_P] * 5 + [_N] * 6 + [_P, _N, _N] + [_P] * 5,
    "lstm_backward_sequence": [_P] * 7 + [_N] * 6 + [_P, _N, _P, _P],
    "gru_forward_sequence": [_P] * 7 + [_N] * 6,
    "gru_backward_sequence": [_P] * 9 + [_N] * 6,
    "rnn_forward_sequence": [_P] * 4 + [_N] * 7,
    "rnn_backward_sequence": [_P] * 5 + [_N] * 7,
}
_RETURNS = {"lstm_packed_size": _N}  # the others return nothing


def _compiler():
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpuinfo(*keys):
    """The distinct lines of /proc/cpuinfo that start with one of `keys`, sorted; None without it."""
    try:
        with open("/proc/cpuinfo") as f:
            return sorted({line for line in f if line.startswith(keys)})
    except OSError:
        return None


def _cpu_identity():
    """This CPU's model and feature flags: what -march=native compiles for."""
    lines = _cpuinfo("model name", "flags", "Features", "CPU part")
    return "".join(lines) if lines is not None else platform.processor() or platform.machine()


def cache_dir():
    root = os.environ.get("RNN_BY_HAND_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rnn-by-hand"


def _build(compiler):
    """Compile the source (unless this exact build is cached) and return the library's path."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, repr(BUILDS).encode(), compiler.encode(),
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
        for flags in BUILDS:
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
                fn.argtypes, fn.restype = argtypes, _RETURNS.get(name)
        lib.set_panel_prefetch.argtypes, lib.set_panel_prefetch.restype = [_N], _N  # one for both dtypes
        lib.vector_bytes.argtypes, lib.vector_bytes.restype = [], _N
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


def sequence_usable(tensor, mode="auto"):
    """Whether the fused path may run a whole uniform sequence in one call (`*_sequence` below) for
    `tensor`: `usable`, and mode not "steps"."""
    return usable(tensor, mode) and mode != "steps"


def split(batch, weight):
    """(threads, by_rows): how the sequence kernels share a step among torch's threads, for a batch
    and the recurrent weight W_hh (G·H, H).

    By rows when each thread gets at least MIN_ROWS of the batch (no waiting between threads) and W_hh
    is at most ROWS_WEIGHT_MAX bytes: every thread reads all of W_hh each step, and a larger one comes
    from the shared cache, for each thread again. Else by hidden units when each thread gets at least
    MIN_UNITS of them (its share of W_hh only; one barrier per step, which pays only when a step's
    matmul is large); else one thread.
    """
    threads, hidden = torch.get_num_threads(), weight.shape[1]
    units = threads > 1 and hidden >= MIN_UNITS * threads
    large = weight.numel() * weight.element_size() > ROWS_WEIGHT_MAX
    if threads > 1 and batch >= MIN_ROWS * threads and not (units and large):
        return threads, True
    if units:
        return threads, False
    return 1, True


MIN_ROWS, MIN_UNITS = 8, 128
ROWS_WEIGHT_MAX = 2 << 20  # about one core's L2


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
    `models.eager_steps.lstm_forward_step`."""
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


def gru_backward_step(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn):
    """dh + d_out → d_hh (b, 3H), d_xn = dn_pre (b, H); dh in place to dh ⊙ z. The factors come from
    r|z, n, hh_n and h_prev inside the step (GRUFunction's formulas), so the backward needs no (N, 3H)
    buffer of them."""
    b, H = dh.shape
    _fn("gru_backward_direct", dh)(_rows(dh, H), _rows(d_out, H), _rows(rz, 2 * H), _rows(n, H), _rows(hh, 3 * H),
                                   _rows(h_prev, H), _rows(d_hh, 3 * H), _rows(d_xn, H), b, H)


def tanh_(x):
    """tanh in place over a contiguous tensor (the Elman RNN's step); returns x."""
    if not x.is_contiguous():
        raise ValueError(f"cpu step kernel: tanh_ needs a contiguous tensor, got strides {x.stride()}")
    _fn("tanh", x)(x.data_ptr(), x.numel())
    return x


# -- the time-independent matmuls ------------------------------------------------------------------


def _operand(t):
    """(t, pointer, row stride, transposed) for a matrix the matmul kernel reads as it lies: row-major
    rows (transposed False) or the transpose of row-major rows (a `.t()` view: transposed True); any
    other layout is copied first."""
    rows, cols = t.shape
    if t.stride(1) == 1 or cols == 1:
        return t, t.data_ptr(), max(t.stride(0), cols, 1) if rows > 1 else max(cols, 1), False
    if t.stride(0) == 1 or rows == 1:
        return t, t.data_ptr(), max(t.stride(1), rows, 1) if cols > 1 else max(rows, 1), True
    t = t.contiguous()
    return t, t.data_ptr(), max(cols, 1), False


def matmul(a, b, bias=None, out=None, threads=None):
    """a (M, K) @ b (K, N) (+ bias (N,) on every row) in the compiled panel kernel, into `out` (M, N;
    contiguous) or a new tensor. a and b may be row-major or `.t()` views of row-major tensors, as the
    fast path's matmuls take them (x W_ihᵀ, dz W_ih, dzᵀ h_prev). Equals torch.addmm(bias, a, b) /
    torch.mm(a, b) up to the order of the additions; float32 and float64 CPU tensors of one dtype.
    threads: how many share it (by rows of the result, or by columns where it is wider than tall);
    default torch's, or one for a small product."""
    M, K = a.shape
    N = b.shape[1]
    if b.shape[0] != K or a.dtype != b.dtype:
        raise ValueError(f"cpu_kernels.matmul: cannot multiply {tuple(a.shape)} {a.dtype} by {tuple(b.shape)} {b.dtype}")
    if out is None:
        out = torch.empty(M, N, dtype=a.dtype)
    if tuple(out.shape) != (M, N) or not out.is_contiguous():
        raise ValueError(f"cpu_kernels.matmul: out must be a contiguous ({M}, {N}) tensor, got {tuple(out.shape)} "
                         f"with strides {out.stride()}")
    a, a_ptr, lda, a_t = _operand(a)
    b, b_ptr, ldb, b_t = _operand(b)
    bias = bias.contiguous() if bias is not None else None  # held until the call returns
    if threads is None:
        threads = torch.get_num_threads() if M * N * K >= SMALL_MATMUL else 1
    with torch.profiler.record_function(MATMUL_EVENT):  # what torch.profiler shows it as
        _fn("matmul", out)(a_ptr, lda, a_t, b_ptr, ldb, b_t, bias.data_ptr() if bias is not None else None,
                           out.data_ptr(), max(N, 1), M, N, K, False, threads)
    return out


MATMUL_EVENT = "rnn_by_hand::matmul"


SMALL_MATMUL = 1 << 18  # multiply-adds below which a second thread costs more than it saves


def own_matmul(tensor):
    """Whether the fast path's large matmuls (input projection, dx, weight gradients) run in `matmul`
    above rather than torch.mm for `tensor`: where the kernels are usable, `set_own_matmul` says so, or,
    by default, where this build computes in 512-bit vectors on a CPU that is not Intel's: the x86
    torch's BLAS is MKL, which runs its 256-bit code there. On Intel CPUs MKL runs its AVX-512 code and
    keeps them, as it does where the kernels are built for 256-bit vectors (both machines' timings:
    benchmarks/results/own_matmul.md)."""
    if not usable(tensor):
        return False
    if _own_matmul is not None:
        return _own_matmul
    return _default_own_matmul()


@functools.lru_cache(maxsize=None)
def _default_own_matmul():
    return (_library().vector_bytes() >= 64 and torch.backends.mkl.is_available()
            and _cpu_vendor() not in ("GenuineIntel", None))


def _cpu_vendor():
    """The CPU's vendor string (GenuineIntel, AuthenticAMD, …), or None where /proc/cpuinfo does not say."""
    lines = _cpuinfo("vendor_id")
    return lines[0].split(":", 1)[1].strip() if lines else None


_own_matmul = None


def set_own_matmul(on):
    """Run the fast path's large matmuls in `matmul` (True), in torch.mm (False), or as `own_matmul`
    decides for this machine (None, the default). For measuring and testing both; returns the setting
    it replaces."""
    global _own_matmul
    before, _own_matmul = _own_matmul, None if on is None else bool(on)
    return before


# -- whole sequences (uniform batch, history buffers in models.layout.Layout's layout) ---------------


def _contiguous(*tensors):
    for t in tensors:
        if t is not None and not t.is_contiguous():
            raise ValueError(f"cpu sequence kernel: expected contiguous buffers, got strides {t.stride()}")
    return [t.data_ptr() if t is not None else None for t in tensors]


def set_panel_prefetch(on):
    """Whether the sequence kernels' matmul prefetches its next weight panel into L2 while it reads the
    current one (on by default; cpu_kernels.cpp's matmul_columns says why). A switch for measuring what
    it gains: the results are the same either way. Returns the setting it replaces."""
    lib = _library()
    return bool(lib.set_panel_prefetch(bool(on))) if lib is not None else False


def lstm_forward_sequence(acts, bias, h, c, k, weight_hh, batch, reverse, x=None, weight_ih=None, packed=None,
                          states=None, out=None):
    """Every step of LSTMFunction.forward (no projection): acts (N, 4H) = x W_ihᵀ, read (when k is
    given, f goes to its f column); bias (4H,) = b_ih + b_hh, added in each step, or None (then acts
    holds it already); h, c histories (N + B, H) with the initial states in place; k (N, 5H) or None.
    c may instead hold two states (2B, H): each step's c goes to the rows the history would give it,
    modulo 2B, and only the last one is kept.

    states: None (the initial states are in place already), or (h0, c0, h_n, c_n), each (B, H)
    contiguous, any of them None: the kernel copies h0 and c0 to where its first step reads them, and
    its last step's h and c to h_n and c_n.

    out: None, or (N, H) contiguous, where every step's h is written too (at the rows of the step's
    x), apart from the history h.

    With x (N, I) and weight_ih (4H, I), each step computes its own x_t W_ihᵀ together with its
    recurrent matmul, and acts is then only where f goes for the backward (its other columns are left
    as they are), or None when no backward follows.

    packed: a `PackedWeight` of weight_hh, for a sequence run in several calls: it is packed for the
    matmul kernel on the first call and reused by the others (without x only)."""
    H = c.shape[1]
    threads, by_rows = split(batch, weight_hh)
    steps = (acts if x is None else x).shape[0] // batch
    I = 0 if x is None else x.shape[1]
    if packed is not None and x is not None:
        raise ValueError("lstm_forward_sequence: a PackedWeight holds W_hh alone, so it cannot serve a kernel "
                         "that projects its input in the step (x given); pass packed=None there")
    w_packed, ready = (None, False) if packed is None else packed.use()
    two_states = c.shape[0] < (steps + 1) * batch  # (for one step the two are the same)
    if two_states and c.shape[0] != 2 * batch:
        raise ValueError(f"lstm_forward_sequence: c must hold the history (at least {(steps + 1) * batch} rows) or "
                         f"two states ({2 * batch} rows), got {c.shape[0]} rows")
    if out is not None and tuple(out.shape) != (steps * batch, H):
        raise ValueError(f"lstm_forward_sequence: out must be ({steps * batch}, {H}), got {tuple(out.shape)}")
    _fn("lstm_forward_sequence", h)(*_contiguous(acts, x, weight_ih), I, *_contiguous(bias, h, c, k, weight_hh),
                                    steps, batch, H, reverse, threads, by_rows, *_contiguous(w_packed), ready,
                                    two_states, *_contiguous(*(states or (None,) * 4), out))


class PackedWeight:
    """Room for an LSTM's W_hh packed as the sequence kernel's matmul reads it, for one sequence run in
    several calls of lstm_forward_sequence (`LSTMFunction`'s forward without a backward, a chunk of
    steps at a time): the first call packs it, the others find it packed."""

    def __init__(self, like, batch, hidden):
        size = _fn("lstm_packed_size", like)(batch, hidden)
        self.buffer = workspace.empty(like, size) if size else None  # torch's CPU buffers are 64-byte aligned
        self.packed = False

    def use(self):
        """(the buffer or None, whether it holds the packed weight already)"""
        ready, self.packed = self.packed, self.buffer is not None
        return self.buffer, ready


def lstm_backward_sequence(d_out, dh, dc, k, acts, dz, weight_hh, batch, reverse, weight_ih=None, bias_grad=False):
    """Every step of LSTMFunction.backward's loop: dh, dc (B, H) in place; dz (N, 4H) written.

    Returns (d_x, d_b): with weight_ih (4H, I), d_x = dZ W_ih (N, I) computed step by step from each
    step's dz as the loop's matmul packed it, where the step is shared by batch rows (else None: the
    caller multiplies after the loop); with bias_grad, d_b = Σ_rows dz (4H,) (else None)."""
    H = dc.shape[1]
    threads, by_rows = split(batch, weight_hh)
    N = dz.shape[0]
    d_x = None
    if weight_ih is not None and batch > 1 and (by_rows or threads == 1):
        weight_ih = weight_ih.contiguous()
        d_x = torch.empty(N, weight_ih.shape[1], dtype=dz.dtype)
    d_b = torch.empty(4 * H, dtype=dz.dtype) if bias_grad else None
    _fn("lstm_backward_sequence", dz)(*_contiguous(d_out, dh, dc, k, acts, dz, weight_hh), N // batch, batch, H,
                                      reverse, threads, by_rows, *_contiguous(weight_ih if d_x is not None else None),
                                      d_x.shape[1] if d_x is not None else 0, *_contiguous(d_x, d_b))
    return d_x, d_b


def gru_forward_sequence(x_proj, bias_hh, hh, rz, n, h, weight_hh, batch, reverse):
    """Every step of GRUFunction.forward: hh (N, 3H), rz (N, 2H), n (N, H) and the h history written;
    hh, rz, n all None when no backward follows (the kernel keeps a step's to itself)."""
    H = h.shape[1]
    if (hh is None) != (rz is None) or (rz is None) != (n is None):
        raise ValueError("gru_forward_sequence: hh, rz and n go together: all three buffers or none")
    threads, by_rows = split(batch, weight_hh)
    _fn("gru_forward_sequence", h)(*_contiguous(x_proj, bias_hh, hh, rz, n, h, weight_hh), x_proj.shape[0] // batch,
                                   batch, H, reverse, threads, by_rows)


def gru_backward_sequence(d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, weight_hh, batch, reverse):
    """Every step of GRUFunction.backward's loop (the direct step): dh in place, d_hh and d_xn written."""
    H = n.shape[1]
    threads, by_rows = split(batch, weight_hh)
    _fn("gru_backward_sequence", dh)(*_contiguous(d_out, dh, rz, n, hh, h_prev, d_hh, d_xn, weight_hh),
                                     n.shape[0] // batch, batch, H, reverse, threads, by_rows)


def rnn_forward_sequence(x_proj, bias, h, weight_hh, batch, reverse, relu):
    """Every step of RNNFunction.forward: the h history (N + B, H) written. x_proj = x W_ihᵀ, and bias
    (H,) = b_ih + b_hh is added in each step, or None (x_proj holds it already)."""
    H = h.shape[1]
    threads, by_rows = split(batch, weight_hh)
    _fn("rnn_forward_sequence", h)(*_contiguous(x_proj, bias, h, weight_hh), x_proj.shape[0] // batch, batch, H,
                                   reverse, relu, threads, by_rows)


def rnn_backward_sequence(d_out, dh, out, dz, weight_hh, batch, reverse, relu):
    """Every step of RNNFunction.backward's loop: dh (B, H) in place, dz (N, H) written."""
    H = dh.shape[1]
    threads, by_rows = split(batch, weight_hh)
    _fn("rnn_backward_sequence", dz)(*_contiguous(d_out, dh, out, dz, weight_hh), dz.shape[0] // batch, batch, H,
                                     reverse, relu, threads, by_rows)
