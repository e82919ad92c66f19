"""The LSTM's fast path: one direction of one layer, forward and hand-derived backward through time.

Equals `models.unroll.readable_direction("LSTM", …)`, the readable unroll of `cells.LSTMCell`; the
tests prove both equal to torch.nn.LSTM. `models/fused.py` says what the fast path saves over the
readable one.
"""
import torch

from . import cpu_kernels
from .backends import step_kernels, whole_sequence
from .double_backward import INPUTS, backward_by_autograd, needs_autograd
from .layout import Layout, grad_buffer
from .projection import input_grads, input_projection, mm, summed_bias
from .workspace import workspace


# What forward saves for backward, in order: its tensor arguments, then its own buffers.
SAVED = (*INPUTS["LSTM"], "k", "acts", "h_prev", "m_buf")


class LSTMFunction(torch.autograd.Function):
    """One LSTM direction, forward and hand-derived backward through time (optionally projected).

    apply(x (N, I), weight_ih (4H, I), bias_ih (4H,) or None, h0 (B, P), c0 (B, H), weight_hh (4H, P),
          bias_hh (4H,) or None, weight_hr (P, H) or None, batch_sizes, reverse, for_backward=True)
        -> (out (N, P), h_n (B, P), c_n (B, H))

    `for_backward=False` (the caller knows no backward will follow: no_grad, or nothing requires grad)
    skips saving what the backward needs.

    Forward, one step in the code's names (`cells/lstm.py` has the same equations):

        z  = x_proj + h_prev W_hhᵀ     x_proj = x W_ihᵀ + b_ih + b_hh    (b, 4H) = [z_i | z_f | z_g | z_o]
        i  = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
        c  = f ⊙ c_prev + i ⊙ g
        m  = o ⊙ tanh(c)
        h  = m        or, with a projection,   h = m W_hrᵀ   (b, P)

    Backward. Write dX for ∂L/∂X. At step t, h receives two gradients: the output's, d_out[t], and the
    one step t+1 sends back through its recurrent matmul; their sum is dh. c receives dc from step
    t+1 (through c_{t+1} = f_{t+1} ⊙ c + …, so it arrives already multiplied by f_{t+1}). Then:

        dm      = dh                  (with projection: dm = dh W_hr, and dW_hr += dhᵀ m)
        dc     += dm ⊙ o ⊙ (1 − tanh(c)²)     m = o ⊙ tanh(c) and tanh' = 1 − tanh²
        do      = dm ⊙ tanh(c)
        di      = dc ⊙ g        dg = dc ⊙ i        df = dc ⊙ c_prev
        dc_prev = dc ⊙ f                              what step t−1 receives as its dc

    Through the activations, σ'(z) = σ(z)(1 − σ(z)) and tanh'(z) = 1 − tanh(z)², both written in the
    activations themselves, so no pre-activation is needed:

        dz_i = di ⊙ i(1 − i)     dz_f = df ⊙ f(1 − f)     dz_g = dg ⊙ (1 − g²)     dz_o = do ⊙ o(1 − o)
        dh_prev = dz W_hh                              (b, P): the one matmul per step

    and dz is also d x_proj. After the loop, over all steps at once: dW_hh = dZᵀ H_prev (4H, P),
    db_hh = db_ih = Σ dZ, dW_hr = DHᵀ M (P, H), dW_ih = dZᵀ X (4H, I), dx = dZ W_ih (N, I). Rows of
    a step that are inactive (packed sequences) keep their dh and dc, mirroring the forward, so the
    initial states' gradients come out of the same buffers.

    What is saved. Collecting the factors that multiply dm and dc above,

        k_c = o(1 − tanh²c)    k_o = tanh(c) o(1 − o)                      ∂m/∂c, ∂m/∂z_o
        k_i = g i(1 − i)       k_f = c_prev f(1 − f)     k_g = i(1 − g²)    ∂c/∂z_i, ∂c/∂z_f, ∂c/∂z_g

    the backward step is five small ops and a matmul: dm = dh + d_out[t]; dc += dm ⊙ k_c;
    [dz_i | dz_f | dz_g] = dc ⊗ [k_i | k_f | k_g]; dz_o = dm ⊙ k_o; dc ⊙= f; dh = dz W_hh. So the
    forward, while i, f, g, o, c are hot in cache, writes the k's (one (N, 5H) buffer), each with one
    fused op: with m = o ⊙ tanh(c) already there, k_c = o − m ⊙ tanh(c) and k_o = m − m ⊙ o
    (`torch.addcmul(…, value=-1)`); likewise k_i = gi − gi ⊙ i with gi = g ⊙ i,
    k_f = cf − cf ⊙ f with cf = f ⊙ c_prev, k_g = i − gi ⊙ g. The activations (N, 4H), computed in
    place over z = x_proj + h_prev W_hhᵀ by the per-step route, are saved too, for f; the sequence
    kernel keeps each step's z in cache and writes only f there, over x_proj's f column (or into a
    buffer of f alone when it projects the input itself). Under no_grad no k is written.

    Each step's gate math is `lstm_forward_step` / `lstm_backward_step` of the backend
    `models.backends.step_kernels` picks (torch ops, compiled C++ or Triton: the same formulas); on
    the CPU, a uniform batch without projection runs the whole loop, matmuls included, in one call of
    `cpu_kernels.lstm_forward_sequence` / `lstm_backward_sequence`, which do exactly these steps.
    Proven equal to torch.nn.LSTM and to the readable path by tests/test_fused.py and
    tests/test_cpu_kernels.py (every route, float64, 1e-10).
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr, batch_sizes, reverse,
                for_backward=True):
        layout = Layout(batch_sizes, reverse)
        ctx.layout, ctx.for_backward = layout, for_backward
        outputs, saved = lstm_forward(layout, x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr,
                                      for_backward)
        if for_backward:
            ctx.save_for_backward(x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr,
                                  *(saved[name] for name in SAVED[len(INPUTS["LSTM"]):]))
        return outputs  # out (N, P), h_n (B, P), c_n (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        if not ctx.for_backward:
            raise RuntimeError("LSTMFunction ran with for_backward=False, so it saved nothing to backpropagate "
                               "through; call it with for_backward=True when a gradient is wanted")
        saved = dict(zip(SAVED, ctx.saved_tensors))
        if needs_autograd(d_out, d_hn, d_cn):
            return backward_by_autograd(ctx, "LSTM", saved, (d_out, d_hn, d_cn)) + (None,) * 3
        need = dict(zip(INPUTS["LSTM"], ctx.needs_input_grad))
        return lstm_backward(ctx.layout, saved, (d_out, d_hn, d_cn), need) + (None,) * 3


def lstm_forward(layout, x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr, for_backward):
    """LSTMFunction's forward without autograd: ((out (N, P), h_n (B, P), c_n (B, H)), saved).

    saved: what the backward reads by name (`lstm_backward`): "k", "acts", "h_prev", "m_buf", and
    "history", the buffer h_prev is a view of (h0 and every step's h), and "f_only": whether acts holds
    only f (the backward reads nothing else), the rest unwritten; None when not for_backward.
    """
    H = c0.shape[1]
    if weight_hr is None and not for_backward and whole_sequence(layout, x):
        return _forward_without_backward(layout, x, weight_ih, bias_ih, bias_hh, h0, c0, weight_hh), None
    # z without its recurrent part for all steps, in one matmul; each step of the per-step route
    # adds h_prev W_hhᵀ in place and turns z into the activations i | f | g | o in place. The
    # sequence kernel only reads x_proj (it adds h_prev W_hhᵀ and b_ih + b_hh in a z of its own)
    # and writes f into its f column; for a narrow input it computes x W_ihᵀ too, a step at a
    # time (`steps_project_input`; without a backward, for a wide one too): then acts holds only f.
    sequence = weight_hr is None and whole_sequence(layout, x)
    project = sequence and steps_project_input(x, layout.B, for_backward)
    if not sequence:
        acts = input_projection(x, weight_ih, bias_ih, bias_hh)  # (N, 4H)
    elif project:
        acts = workspace.empty(x, layout.N, 4 * H)  # (N, 4H): only f is written, for the backward
    else:
        acts = input_projection(x, weight_ih)  # (N, 4H)
    k = workspace.empty(acts, layout.N, 5 * H) if for_backward else None  # (N, 5H): k_i|k_f|k_g|k_o|k_c
    h_prevs = m_buf = None
    if sequence:
        inputs = (x, weight_ih) if project else (None, None)
        h_buf, out, h_n, c_n = _forward_sequence(layout, acts, k, bias_ih, bias_hh, h0, c0, weight_hh, *inputs)
    else:
        h_buf, out, outs, h_init = layout.history(h0, x)  # (N + B, P)
        c_buf, _, c_outs, c_init = layout.history(c0, x)  # (N + B, H)
        h_prevs, m_buf = _forward_steps(layout, acts, k, weight_hh, weight_hr, (outs, h_init), (c_outs, c_init))
        out, h_n, c_n = out.clone(), layout.final(outs, h_init), layout.final(c_outs, c_init)
    saved = None
    if for_backward:
        saved = dict(k=k, acts=acts, h_prev=layout.stacked_previous(h_buf, h_prevs), m_buf=m_buf, history=h_buf,
                     f_only=project)
    return (out, h_n, c_n), saved


def lstm_backward(layout, saved, grads, need):
    """LSTMFunction's hand-derived backward: the gradients of INPUTS["LSTM"], in order (None where
    `need`, a dict by those names, says no). saved: the inputs and what `lstm_forward` saved, by name;
    grads: (d_out, d_hn, d_cn), any of them None."""
    d_out, d_hn, d_cn = grads
    x, weight_ih, weight_hh, weight_hr = saved["x"], saved["weight_ih"], saved["weight_hh"], saved["weight_hr"]
    k, acts, h_prev, m_buf = saved["k"], saved["acts"], saved["h_prev"], saved["m_buf"]
    N, H, P = layout.N, k.shape[1] // 5, h_prev.shape[1]
    dz = workspace.empty(k, N, 4 * H)  # (N, 4H): dz = d x_proj
    dh = grad_buffer(d_hn, (layout.B, P), k)  # (B, P): running ∂L/∂h
    dc = grad_buffer(d_cn, (layout.B, H), k)  # (B, H): running ∂L/∂c
    d_out = d_out.contiguous() if d_out is not None else k.new_zeros(N, P)
    dh_total = d_x = d_b = None
    if weight_hr is None and whole_sequence(layout, k):  # the loop can give dx and db as it goes
        d_x, d_b = cpu_kernels.lstm_backward_sequence(
            d_out, dh, dc, k, acts, dz, weight_hh.contiguous(), layout.B, layout.reverse,
            weight_ih if need["x"] else None, need["bias_ih"] or need["bias_hh"])
    else:
        dh_total = _backward_steps(layout, d_out, dh, dc, k, acts, dz, weight_hh, weight_hr)

    needs = tuple(need[name] for name in INPUTS["LSTM"])
    d_x, d_w_ih, d_b_ih, d_b_hh = input_grads(needs, dz, x, weight_ih, (need["bias_ih"], need["bias_hh"]), d_x, d_b)
    d_w_hh = mm(dz.t(), h_prev) if need["weight_hh"] else None  # dW_hh = dZᵀ H_prev  (4H, P)
    d_w_hr = (mm(dh_total.t(), m_buf)  # dW_hr = DHᵀ M  (P, H)
              if weight_hr is not None and need["weight_hr"] else None)
    return (d_x if need["x"] else None, d_w_ih, d_b_ih, dh if need["h0"] else None, dc if need["c0"] else None,
            d_w_hh, d_b_hh, d_w_hr)


# The forward without a backward runs chunks of about this many bytes of z (`_forward_without_backward`).
CHUNK_BYTES = 16 << 20
# Inputs up to this size are projected inside the sequence kernel, step by step, together with the
# recurrent matmul ([x_t | h_prev] [W_ih | W_hh]ᵀ): for a narrow input the whole sequence's x_proj is
# much more memory than arithmetic, and each step's z then never leaves the cache. A wide input's
# projection is one large matmul that the BLAS runs near the core's peak.
STEP_INPUT_MAX = 64
# Without a backward, a wide input is projected in the step too once the batch has this many rows: the
# step's matmul is then as efficient as one over the whole sequence (each value of W_ih it reads serves
# every row), and x_proj is neither written to memory nor read back. With fewer rows the step reads
# all of W_ih for little arithmetic, every step. With a backward both routes timed the same, and the
# sequence's projection is kept (benchmarks/results/lstm_input_in_step.md: how each was measured).
STEP_INPUT_MIN_BATCH = 8


def steps_project_input(x, batch, for_backward):
    """Whether the sequence kernel computes x W_ihᵀ itself, step by step, for input rows x (N, I) in
    batches of `batch` rows."""
    return x.shape[1] <= STEP_INPUT_MAX or (not for_backward and batch >= STEP_INPUT_MIN_BATCH)


def _forward_sequence(layout, acts, k, bias_ih, bias_hh, h0, c0, weight_hh, x=None, weight_ih=None):
    """The whole forward in one call of the sequence kernel: (h's history (N + B, H), out (N, H), h_n,
    c_n). Of c the kernel keeps two states (a backward reads k, not c), and it copies the initial and
    final states itself. x, weight_ih: given when the kernel projects the input itself; acts: the
    projected input otherwise, and where f goes for a backward.

    With k (a backward to come) the history, h0 and every step's h, is what the backward reads
    (dW_hh = dZᵀ H_prev), so the caller's output is another buffer, which the kernel writes h into as
    well: an in-place op on the output then leaves the history as it was. Without, nothing is saved:
    the history is a buffer of the caller's own and the output a view of it."""
    B, N, H = layout.B, layout.N, c0.shape[1]
    like = x if acts is None else acts
    if k is not None:
        h_buf = workspace.empty(like, N + B, H)  # (N + B, H): h0 goes in by the kernel
        out = like.new_empty(N, H)
    else:
        h_buf = like.new_empty(N + B, H)
        out = layout.outputs(h_buf)
    c_buf, h_n, c_n = like.new_empty(2 * B, H), like.new_empty(B, H), like.new_empty(B, H)
    inputs = (x.contiguous(), weight_ih.contiguous()) if x is not None else (None, None)
    cpu_kernels.lstm_forward_sequence(acts, summed_bias(bias_ih, bias_hh), h_buf, c_buf, k, weight_hh.contiguous(), B,
                                      layout.reverse, *inputs, states=(h0.contiguous(), c0.contiguous(), h_n, c_n),
                                      out=out if k is not None else None)
    return h_buf, out, h_n, c_n


def _forward_without_backward(layout, x, weight_ih, bias_ih, bias_hh, h0, c0, weight_hh):
    """The forward without a backward to follow, on the sequence kernel: (out (N, H), h_n, c_n).

    Nothing is saved, so h's history is a buffer of the caller's own and the output a view of it.
    With the input projected in the step (`steps_project_input`), in one call, which keeps only two
    states of c and copies the initial and final states itself. Else a few steps at a time: nothing
    of a step but its states outlives the step, so the input projection is computed for a chunk of
    steps (about CHUNK_BYTES of z) just before they run, into a buffer that each chunk reuses while it
    is still in cache, instead of for the whole sequence at once.
    """
    B, T, H = layout.B, layout.T, c0.shape[1]
    if steps_project_input(x, B, for_backward=False):  # no x_proj at all: every step projects its own input
        _, out, h_n, c_n = _forward_sequence(layout, None, None, bias_ih, bias_hh, h0, c0, weight_hh, x, weight_ih)
        return out, h_n, c_n
    w_hh, bias = weight_hh.contiguous(), summed_bias(bias_ih, bias_hh)
    h_buf, out, outs, h_init = layout.history(h0, x, pooled=False)  # (N + B, H)
    c_buf, _, c_outs, c_init = layout.history(c0, x)  # (N + B, H)
    steps = max(1, CHUNK_BYTES // (B * 4 * H * x.element_size()))
    starts = range(0, T, steps)
    packed = cpu_kernels.PackedWeight(w_hh, B, H)  # W_hh packed by the first chunk, for all of them
    for t0 in reversed(starts) if layout.reverse else starts:
        t1 = min(t0 + steps, T)
        acts = input_projection(x[t0 * B : t1 * B], weight_ih)  # ((t1 − t0)·B, 4H): x W_ihᵀ; the kernel adds b
        # From row t0·B on, the history buffers hold the chunk's steps and, where the kernel expects
        # it, the state before them: step t0 − 1's (forwards) or step t1's (backwards), else h0.
        cpu_kernels.lstm_forward_sequence(acts, bias, h_buf[t0 * B :], c_buf[t0 * B :], None, w_hh, B, layout.reverse,
                                          packed=packed)
    return out, layout.final(outs, h_init), layout.final(c_outs, c_init)


def _forward_steps(layout, acts, k, weight_hh, weight_hr, h, c):
    """LSTMFunction.forward's time loop, one step at a time: the route of packed batches, projections
    and devices without the sequence kernel. h, c: (per-step views of the history, initial rows).
    Returns (every step's h_prev, m of every step or None)."""
    (outs, h_init), (c_outs, c_init) = h, c
    H = c_init.shape[1]
    projected = weight_hr is not None
    m_buf = None  # with a projection: m = o ⊙ tanh(c), (N, H) for the backward, else one step's (B, H)
    if projected:
        m_buf = workspace.empty(acts, layout.N if k is not None else layout.B, H)
    ms = (layout.split(m_buf) if k is not None else layout.heads(m_buf)) if projected else outs
    zs, ks = layout.split(acts), (layout.split(k) if k is not None else [None] * layout.T)
    w_hh_t = weight_hh.t()
    kernels = step_kernels(acts)
    h_prevs = [None] * layout.T
    for t in layout.order:
        h_prev = h_prevs[t] = layout.previous(t, outs, h_init)
        zs[t].addmm_(h_prev, w_hh_t)  # z = x_proj + h_prev W_hhᵀ  (b, 4H)
        kernels.lstm_forward_step(zs[t], layout.previous(t, c_outs, c_init), c_outs[t], ms[t], ks[t])
        if projected:
            torch.mm(ms[t], weight_hr.t(), out=outs[t])  # h = m W_hrᵀ  (b, P)
    return h_prevs, m_buf


def _backward_steps(layout, d_out, dh, dc, k, acts, dz, weight_hh, weight_hr):
    """LSTMFunction.backward's time loop, one step at a time (the route of `_forward_steps`): dz
    written, dh and dc updated in place. Returns dh + d_out of every step (N, P) when projected."""
    B, H, P = layout.B, dc.shape[1], dh.shape[1]
    projected = weight_hr is not None
    dh_total = workspace.empty(k, layout.N, P) if projected else None  # (N, P), for dW_hr
    dms = layout.heads(k.new_empty(B, H)) if projected else None  # dm of one step
    d_outs, dzs, ks, actss = layout.split(d_out), layout.split(dz), layout.split(k), layout.split(acts)
    dh_totals, dhs, dcs = layout.split(dh_total) if projected else None, layout.heads(dh), layout.heads(dc)
    kernels = step_kernels(k)
    for t in layout.back_order:
        if projected:
            torch.add(dhs[t], d_outs[t], out=dh_totals[t])  # dh + d_out
            dm = torch.mm(dh_totals[t], weight_hr, out=dms[t])  # dm = (dh + d_out) W_hr  (b, H)
            kernels.lstm_backward_step(dm, None, dcs[t], ks[t], actss[t], dzs[t])
        else:  # dm = dh + d_out
            kernels.lstm_backward_step(dhs[t], d_outs[t], dcs[t], ks[t], actss[t], dzs[t])
        torch.mm(dzs[t], weight_hh, out=dhs[t])  # dh_prev = dz W_hh  (b, P)
    return dh_total
