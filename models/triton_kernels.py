"""Triton kernels for the gate math of one time step, so a CUDA step is one matmul and one kernel.

On a GPU the fused path's cost at moderate sizes is kernel launches, not arithmetic: the eager gate
math of an LSTM step is about sixteen small kernels (sigmoid, tanh, mul, addcmul, …). Each function
here does the same arithmetic as the function of the same name in `models.eager_steps` and
`models.cpu_kernels` — same signature, equations and saved factors — in one kernel over the step's
b·H elements. Each program handles BLOCK elements; element e is row e // H, column e % H, and reads
the row's gates at columns col, H + col, 2H + col, …

triton is optional (`pip install rnn-by-hand[triton]`): without it `AVAILABLE` is False and the fused
path runs its eager ops. With TRITON_INTERPRET=1 triton runs these kernels on CPU tensors (slowly),
which is how the tests check them against torch.nn on machines without a GPU (the variable must be
set before triton is imported: `TRITON_INTERPRET=1 pytest tests/test_fused.py`).

tanh is written as (1 − e^{−2|x|}) / (1 + e^{−2|x|}) with x's sign (`_tanh`), which is accurate in
float32 and float64 and needs nothing outside `triton.language`.
"""
import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the eager path needs no triton
    triton = tl = None

AVAILABLE = triton is not None
BLOCK = 1024

if AVAILABLE:  # a module-level name, which is where triton's compiler looks up the functions a kernel calls
    @triton.jit
    def _tanh(x):  # (1 − e^{−2|x|}) / (1 + e^{−2|x|}) with x's sign: no overflow for large |x|
        e = tl.exp(-2.0 * tl.abs(x))
        return tl.where(x >= 0, (1.0 - e) / (1.0 + e), (e - 1.0) / (1.0 + e))


def usable(tensor, mode="auto"):
    """Whether the fused path should run its steps through these kernels for `tensor`.

    mode "auto": on CUDA when triton imports; "always": also on the CPU under triton's interpreter
    (TRITON_INTERPRET=1; for the tests); "never": the eager ops everywhere.
    """
    if not AVAILABLE or mode == "never" or tensor.dtype not in (torch.float32, torch.float64):
        return False  # half precision would need the math in float32 (tl.exp takes fp32/fp64): eager ops
    return tensor.is_cuda or (mode == "always" and interpreting())


def interpreting():
    import os
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def _kernels():
    """Build the kernels on first use (import stays cheap). Triton reads TRITON_INTERPRET when it is
    imported, so the interpreter needs the variable set before the process imports triton."""

    @triton.jit
    def lstm_forward(z_ptr, cp_ptr, c_ptr, m_ptr, k_ptr, n, H, FOR_BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = e < n
        row, col = e // H, e % H
        g4 = row * 4 * H + col  # column col of gate i in the (b, 4H) rows of z
        i = tl.sigmoid(tl.load(z_ptr + g4, mask=mask))
        f = tl.sigmoid(tl.load(z_ptr + g4 + H, mask=mask))
        g = _tanh(tl.load(z_ptr + g4 + 2 * H, mask=mask))
        o = tl.sigmoid(tl.load(z_ptr + g4 + 3 * H, mask=mask))
        c_prev = tl.load(cp_ptr + e, mask=mask)
        c = f * c_prev + i * g  # c = f ⊙ c_prev + i ⊙ g
        tc = _tanh(c)
        m = o * tc  # m = o ⊙ tanh(c)
        tl.store(c_ptr + e, c, mask=mask)
        tl.store(m_ptr + e, m, mask=mask)
        if FOR_BACKWARD:  # f stays in z for the backward, with the factors k_i|k_f|k_g|k_o|k_c
            tl.store(z_ptr + g4 + H, f, mask=mask)
            k5 = row * 5 * H + col
            tl.store(k_ptr + k5, g * i * (1.0 - i), mask=mask)
            tl.store(k_ptr + k5 + H, c_prev * f * (1.0 - f), mask=mask)
            tl.store(k_ptr + k5 + 2 * H, i * (1.0 - g * g), mask=mask)
            tl.store(k_ptr + k5 + 3 * H, m - m * o, mask=mask)
            tl.store(k_ptr + k5 + 4 * H, o - m * tc, mask=mask)

    @triton.jit
    def lstm_backward(dm_ptr, dout_ptr, dc_ptr, k_ptr, acts_ptr, dz_ptr, n, H,
                      ADD_DOUT: tl.constexpr, BLOCK: tl.constexpr):
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = e < n
        row, col = e // H, e % H
        dm = tl.load(dm_ptr + e, mask=mask)
        if ADD_DOUT:
            dm += tl.load(dout_ptr + e, mask=mask)
        k5 = row * 5 * H + col
        dc = tl.load(dc_ptr + e, mask=mask) + dm * tl.load(k_ptr + k5 + 4 * H, mask=mask)
        g4 = row * 4 * H + col
        tl.store(dz_ptr + g4, dc * tl.load(k_ptr + k5, mask=mask), mask=mask)
        tl.store(dz_ptr + g4 + H, dc * tl.load(k_ptr + k5 + H, mask=mask), mask=mask)
        tl.store(dz_ptr + g4 + 2 * H, dc * tl.load(k_ptr + k5 + 2 * H, mask=mask), mask=mask)
        tl.store(dz_ptr + g4 + 3 * H, dm * tl.load(k_ptr + k5 + 3 * H, mask=mask), mask=mask)
        tl.store(dc_ptr + e, dc * tl.load(acts_ptr + g4 + H, mask=mask), mask=mask)  # dc ⊙ f

    @triton.jit
    def gru_forward(hh_ptr, x_ptr, b_ptr, hp_ptr, rz_ptr, n_ptr, h_ptr, n, H,
                    HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = e < n
        row, col = e // H, e % H
        g3 = row * 3 * H + col
        hh_r = tl.load(hh_ptr + g3, mask=mask)
        hh_z = tl.load(hh_ptr + g3 + H, mask=mask)
        hh_n = tl.load(hh_ptr + g3 + 2 * H, mask=mask)
        if HAS_BIAS:
            hh_r += tl.load(b_ptr + col, mask=mask)
            hh_z += tl.load(b_ptr + col + H, mask=mask)
            hh_n += tl.load(b_ptr + col + 2 * H, mask=mask)
            tl.store(hh_ptr + g3 + 2 * H, hh_n, mask=mask)  # the backward reads hh_n with b_hn
        r = tl.sigmoid(tl.load(x_ptr + g3, mask=mask) + hh_r)
        z = tl.sigmoid(tl.load(x_ptr + g3 + H, mask=mask) + hh_z)
        cand = _tanh(tl.load(x_ptr + g3 + 2 * H, mask=mask) + r * hh_n)  # n = tanh(x_n + r ⊙ (hh_n + b_hn))
        h_prev = tl.load(hp_ptr + e, mask=mask)
        g2 = row * 2 * H + col
        tl.store(rz_ptr + g2, r, mask=mask)
        tl.store(rz_ptr + g2 + H, z, mask=mask)
        tl.store(n_ptr + e, cand, mask=mask)
        tl.store(h_ptr + e, cand + z * (h_prev - cand), mask=mask)

    @triton.jit
    def gru_backward(dh_ptr, dout_ptr, rz_ptr, n_ptr, hh_ptr, hp_ptr, dhh_ptr, dxn_ptr, count, H,
                     BLOCK: tl.constexpr):
        e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = e < count
        row, col = e // H, e % H
        d = tl.load(dh_ptr + e, mask=mask) + tl.load(dout_ptr + e, mask=mask)  # d = dh + d_out
        g2, g3 = row * 2 * H + col, row * 3 * H + col
        r, z = tl.load(rz_ptr + g2, mask=mask), tl.load(rz_ptr + g2 + H, mask=mask)
        n = tl.load(n_ptr + e, mask=mask)
        dn_pre = d * (1.0 - z) * (1.0 - n * n)  # dn_pre = d (1 − z)(1 − n²)
        hh_n = tl.load(hh_ptr + g3 + 2 * H, mask=mask)
        h_prev = tl.load(hp_ptr + e, mask=mask)
        tl.store(dhh_ptr + g3, dn_pre * hh_n * r * (1.0 - r), mask=mask)  # dr_pre = dn_pre hh_n r(1 − r)
        tl.store(dhh_ptr + g3 + H, d * (h_prev - n) * z * (1.0 - z), mask=mask)  # dz_pre = d (h_prev − n) z(1 − z)
        tl.store(dhh_ptr + g3 + 2 * H, dn_pre * r, mask=mask)  # d hh_n = dn_pre r
        tl.store(dxn_ptr + e, dn_pre, mask=mask)
        tl.store(dh_ptr + e, d * z, mask=mask)  # the direct part of dh_prev; W_hh's part follows

    return {"lstm_forward": lstm_forward, "lstm_backward": lstm_backward, "gru_forward": gru_forward,
            "gru_backward": gru_backward}


def _launch(name, n, *args, **constexprs):
    kernel = _kernels()[name]
    kernel[(triton.cdiv(n, BLOCK),)](*args, BLOCK=BLOCK, **constexprs)


def _rows(t, width):
    """Kernels index rows as row · width + col: the tensor must be row-major with that row stride."""
    if t.stride(-1) != 1 or (t.shape[0] > 1 and t.stride(0) != width):
        raise ValueError(f"triton step kernel: expected rows of width {width}, got strides {t.stride()}")
    return t


def lstm_forward_step(z, c_prev, c, m, k):
    """z = x_proj + b_hh + h_prev W_hhᵀ (b, 4H) → i, f, g, o; writes c and m = o ⊙ tanh(c) and, if k
    is given, f into z and the backward's factors k_i|k_f|k_g|k_o|k_c into k's (b, 5H) rows. Equals
    `models.eager_steps.lstm_forward_step`."""
    b, H = c.shape
    _launch("lstm_forward", b * H, _rows(z, 4 * H), _rows(c_prev, H), _rows(c, H), _rows(m, H),
            _rows(k, 5 * H) if k is not None else z, b * H, H, FOR_BACKWARD=k is not None)


def lstm_backward_step(dm, d_out, dc, k, acts, dz):
    """dm (+ d_out) → dz (b, 4H), and dc updated in place to dc ⊙ f, what the previous step receives."""
    b, H = dc.shape
    _launch("lstm_backward", b * H, _rows(dm, H), _rows(d_out, H) if d_out is not None else dm, _rows(dc, H),
            _rows(k, 5 * H), _rows(acts, 4 * H), _rows(dz, 4 * H), b * H, H, ADD_DOUT=d_out is not None)


def gru_forward_step(hh, x_t, bias_hh, h_prev, rz, n, h):
    """hh = h_prev W_hhᵀ (b, 3H) gets b_hh added to its n column; writes r|z, n and h."""
    b, H = h.shape
    _launch("gru_forward", b * H, _rows(hh, 3 * H), _rows(x_t, 3 * H), bias_hh if bias_hh is not None else hh,
            _rows(h_prev, H), _rows(rz, 2 * H), _rows(n, H), _rows(h, H), b * H, H,
            HAS_BIAS=bias_hh is not None)


def gru_backward_step(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn):
    """dh + d_out → d_hh (b, 3H), d_xn = dn_pre (b, H); dh in place to dh ⊙ z: GRUFunction's step
    before its matmul dh += d_hh W_hh, the factors computed in the step from r|z, n, hh_n and h_prev.
    Equals `models.eager_steps.gru_backward_step`."""
    b, H = dh.shape
    _launch("gru_backward", b * H, _rows(dh, H), _rows(d_out, H), _rows(rz, 2 * H), _rows(n, H), _rows(hh, 3 * H),
            _rows(h_prev, H), _rows(d_hh, 3 * H), _rows(d_xn, H), b * H, H)
