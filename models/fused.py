"""The fast path: one direction of one layer, with the backward through time derived by hand.

`fused_direction` has the signature of `models.unroll.readable_direction` and computes the same thing
(the tests prove it equal to the readable path and to torch.nn, to 1e-10 in float64). What it saves:

- **autograd's bookkeeping.** The readable path records every pointwise op of every step in the
  autograd graph and replays it backwards. Here each cell is one `torch.autograd.Function`
  (`LSTMFunction`, `GRUFunction`, `RNNFunction`) whose forward runs with autograd off and saves only
  what its backward needs: the gate activations, the states and the recurrent matmul's inputs.
- **per-step weight gradients.** The backward walks the sequence in reverse with one recurrent matmul
  per step (dh_prev = dz W_hh); the weight and bias gradients are one matmul / one sum over all steps
  after the loop: dW_hh = dZᵀ H_prev, db_hh = Σ_rows dZ. The input projection
  x_proj = x W_ihᵀ + b_ih of all steps is one matmul before the loop, inside the Function, and the
  gradient of x_proj is dZ itself, so dW_ih = dZᵀ X, dx = dZ W_ih and db_ih = Σ_rows dZ (the same sum
  as db_hh, where the cell adds both biases alike) are one op each.
- **allocations and Python in the hot loop.** Every buffer is allocated once per call (large CPU
  ones come from a pool reused across calls, `_Workspace`); the loop reads per-step views made by
  one `split(batch_sizes)` per buffer, and writes with in-place ops and `out=`. The factors of the
  backward that depend only on activations (σ'(z) = σ(1 − σ), tanh'(z) = 1 − tanh², …) are not
  recomputed step by step in the backward: the LSTM's forward writes them while its gates are in
  cache, the GRU's and RNN's backward computes them for all steps at once before its loop.

The sequence layout is PackedSequence's (see `models/unroll.py`): step t holds `batch_sizes[t]` rows,
non-increasing, and only those rows are updated at step t: running forwards the rows of sequences
that ended keep their final state, running backwards the rows of sequences not yet begun keep h0
(`_Layout` says where each step reads its previous state). The backward keeps the state gradients
dh, dc in (B, ·) buffers and updates their first b rows at step t, mirroring the forward, so a row
whose sequence is inactive carries its gradient through unchanged to where it came from: the final
state's gradient to the sequence's last step, and the first step's dh_prev to h0.

What the caller receives never aliases memory this path writes again: outputs and final states
are fresh tensors (the output is copied out of the pooled history buffer once per call), and
gradients are fresh too. So an output can be modified in place, kept across calls, or handed to
another process (whose shared memory the pool would otherwise overwrite). Under
`torch.inference_mode()` the pool is bypassed: a tensor created there cannot be written outside it,
so nothing made there is kept for later calls.

Higher derivatives and batched gradients. The hand-written backward writes into buffers in place
and reads raw memory, so it is itself not differentiable and cannot run under vmap. When autograd
asks for a backward that must be differentiable (`create_graph=True`: a gradient penalty,
`gradgradcheck`, grad-mode on inside backward) or passes batched gradients (`is_grads_batched=True`,
`jacobian(vectorize=True)`, `gradcheck(check_batched_grad=True)`), the Functions instead recompute
the forward through the readable step (`models.unroll.readable_direction`) and differentiate that
with autograd: the same first derivatives, and correct second ones (`_backward_by_autograd`).

Each step's gate math can run as one kernel instead of a dozen torch ops: on the CPU
`models.cpu_kernels` (C++, compiled on first use; the eager ops are dispatch-bound at these sizes), on
CUDA `models.triton_kernels` when triton imports (the eager ops are launch-bound). The kernels do the
same arithmetic as the eager lines under them, which stay as the reference and the fallback.
"""
import threading

import torch

from . import cpu_kernels, triton_kernels
from .unroll import readable_direction

# When the steps' gate math runs as one Triton kernel: "auto" (on CUDA when triton imports),
# "always" (also on the CPU under TRITON_INTERPRET=1, which is how the tests check the kernels) or
# "never". See models/triton_kernels.py.
TRITON = "auto"
# When it runs as one compiled C++ kernel on the CPU: "auto" (when the kernels build; see
# models/cpu_kernels.py) or "never" (the eager ops below, which the tests also check).
CPU_KERNELS = "auto"


def step_kernels(like):
    """The module whose functions run each step's gate math for tensors like `like`, or None for the
    eager ops: Triton's where usable, else the CPU kernels where usable."""
    if triton_kernels.usable(like, TRITON):
        return triton_kernels
    if cpu_kernels.usable(like, CPU_KERNELS):
        return cpu_kernels
    return None


def fused_supported(device):
    """Whether impl="auto" should take this path on `device`.

    CPU: training measured faster than the readable path at every shape of
    benchmarks/results/cpu.md. CUDA: fewer launches than the readable path by construction (one
    matmul and one Triton kernel per step with triton installed), not yet timed against cuDNN.
    Elsewhere (mps, …) it is untested, so "auto" keeps the readable path there.
    """
    return torch.device(device).type in ("cpu", "cuda")


def fused_direction(mode, x, weight_ih, bias_ih, batch_sizes, state, weight_hh, bias_hh, weight_hr, reverse,
                    nonlinearity):
    """One direction of one layer through the hand-derived Functions; returns (out (N, P), final states).

    Same arguments and results as `models.unroll.readable_direction`.
    """
    batch_sizes = tuple(int(b) for b in batch_sizes)
    if mode == "LSTM":
        # Inside forward, grad mode is always off and needs_input_grad ignores it, so the Function
        # learns here whether a backward can follow (and it must save what that backward needs).
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad
            for t in (x, weight_ih, bias_ih, *state, weight_hh, bias_hh, weight_hr))
        out, h, c = LSTMFunction.apply(x, weight_ih, bias_ih, state[0], state[1], weight_hh, bias_hh, weight_hr,
                                       batch_sizes, bool(reverse), training)
        return out, (h, c)
    if mode == "GRU":
        out, h = GRUFunction.apply(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, batch_sizes, bool(reverse))
        return out, (h,)
    if mode == "RNN":
        out, h = RNNFunction.apply(x, weight_ih, bias_ih, state[0], weight_hh, bias_hh, batch_sizes, bool(reverse),
                                   nonlinearity)
        return out, (h,)
    raise ValueError(f"mode must be 'RNN', 'LSTM' or 'GRU', got {mode!r}")


def _input_projection(x, weight_ih, *biases):
    """x W_ihᵀ + the biases that are not None: (N, G·H), the whole sequence's input in one matmul.

    The biases are summed first (b_ih + b_hh: both shift every step's pre-activation alike) and the
    result comes from the buffer pool: allocating it anew for every call measured slower on the CPU.
    """
    out = _workspace.empty(x, x.shape[0], weight_ih.shape[0])  # (N, G·H)
    present = [b for b in biases if b is not None]
    if not present:
        return torch.mm(x, weight_ih.t(), out=out)
    bias = present[0] if len(present) == 1 else present[0] + present[1]
    return torch.addmm(bias, x, weight_ih.t(), out=out)


def _input_grads(need, d_proj, x, weight_ih, bias_grads):
    """The gradients of x, W_ih and each bias from d x_proj (N, G·H), as needs_input_grad asks.

    x_proj = x W_ihᵀ + b:  dx = d x_proj W_ih,  dW_ih = d x_projᵀ x,  db = Σ_rows d x_proj, the same
    sum for every bias that was added (each gets its own copy: they are different parameters' grads).
    """
    d_x = torch.mm(d_proj, weight_ih) if need[0] else None  # (N, I)
    d_w_ih = torch.mm(d_proj.t(), x) if need[1] else None  # (G·H, I)
    d_b = d_proj.sum(0) if any(bias_grads) else None  # (G·H,)
    d_biases, shared = [], False
    for wanted in bias_grads:
        d_biases.append((d_b.clone() if shared else d_b) if wanted else None)
        shared |= bool(wanted)
    return (d_x, d_w_ih, *d_biases)


def _is_batched_or_wrapped(t):
    """Whether `t` is a wrapper tensor without plain memory: batched under vmap (torch.func's, or the
    legacy one behind `is_grads_batched=True`) or tracked under torch.func.grad."""
    checks = ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor")
    return any(getattr(torch._C._functorch, name, lambda _: False)(t) for name in checks)


def _needs_autograd(*grads):
    """Whether this backward must itself be differentiable (grad mode is on inside backward exactly
    when autograd was asked for create_graph=True) or receives batched gradients (under vmap)."""
    return torch.is_grad_enabled() or any(g is not None and _is_batched_or_wrapped(g) for g in grads)


def _backward_by_autograd(ctx, mode, inputs, grads, nonlinearity="tanh"):
    """The gradients of the saved `inputs` by autograd through the readable step: differentiable again.

    inputs: the Function's tensor arguments in apply order (x, weight_ih, bias_ih, h0, [c0,] weight_hh,
    bias_hh[, weight_hr]); grads: the gradients of its outputs. The forward is recomputed through
    `readable_direction`, which equals the hand-derived Functions (the tests prove both equal to
    torch.nn), and differentiated with create_graph when grad mode is on.
    """
    if mode == "LSTM":
        x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr = inputs
        state = (h0, c0)
    else:
        x, weight_ih, bias_ih, h0, weight_hh, bias_hh = inputs
        state, weight_hr = (h0,), None
    need = ctx.needs_input_grad[: len(inputs)]
    wanted = [t for t, n in zip(inputs, need) if n]
    with torch.enable_grad():
        out, finals = readable_direction(mode, x, weight_ih, bias_ih, ctx.lay.sizes, state, weight_hh, bias_hh,
                                         weight_hr, ctx.lay.reverse, nonlinearity)
    pairs = [(o, g) for o, g in zip((out, *finals), grads) if g is not None]
    got = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                                   create_graph=torch.is_grad_enabled(), allow_unused=True))
    return tuple(next(got) if n else None for n in need)


# -- buffers -----------------------------------------------------------------------------------------


class _Workspace:
    """Large CPU buffers reused across calls, so that their pages are not faulted in anew each time.

    A new multi-megabyte tensor can come from the OS as untouched pages, and the first write to each
    page faults (~0.4 ms per MB on the 2-core test machine): ~300 faults, ~8% of the CPU time of an
    LSTM training step at the MNIST shape, before this pool (~70 after). So the buffers of the
    sequence (activations, states, gradients) are taken from a small pool and go back to it by
    themselves: a pooled buffer is free again when nothing but the pool refers to its storage — not
    the autograd graph that saved it, not an output view a caller kept, not a gradient in flight.
    Only CPU buffers of 256 KiB to 64 MiB are pooled (CUDA has its caching allocator), at most four
    of a size, sixteen sizes, 256 MiB in all (least recently used sizes go first). The storage use
    count is a private torch API; if it is missing or behaves unexpectedly the pool turns itself off.
    """

    def __init__(self, per_size=4, sizes=16, min_bytes=256 << 10, max_bytes=64 << 20, total_bytes=256 << 20):
        self.per_size, self.sizes, self.min_bytes, self.max_bytes = per_size, sizes, min_bytes, max_bytes
        self.total_bytes = total_bytes  # what the pool may hold in all
        self.pool = {}  # (dtype, numel) -> [flat tensors], most recently used size last
        self.lock = threading.Lock()
        try:
            use_count = torch._C._storage_Use_Count
            probe = torch.empty(1)
            self.enabled = use_count(probe.untyped_storage()._cdata) == 2  # the tensor + this query
            view = probe[:]
            self.enabled &= use_count(probe.untyped_storage()._cdata) == 3
            del view
        except (AttributeError, RuntimeError, TypeError):
            self.enabled = False

    def _free(self, flat):
        return torch._C._storage_Use_Count(flat.untyped_storage()._cdata) == 2

    def empty(self, like, *shape):
        """An uninitialised tensor like `like.new_empty(*shape)`, from the pool where it pays."""
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * like.element_size()
        if (not self.enabled or like.device.type != "cpu" or not self.min_bytes <= nbytes <= self.max_bytes
                or torch.is_inference_mode_enabled()):  # an inference tensor cannot be written outside it
            return like.new_empty(shape)
        key = (like.dtype, numel)
        with self.lock:
            buffers = self.pool.pop(key, [])
            self.pool[key] = buffers  # most recently used last
            for flat in buffers:
                if self._free(flat):
                    return flat.view(shape)
            flat = like.new_empty(numel)
            if len(buffers) < self.per_size:
                buffers.append(flat)
            held = sum(b.numel() * b.element_size() for bs in self.pool.values() for b in bs)
            while len(self.pool) > 1 and (len(self.pool) > self.sizes or held > self.total_bytes):
                oldest = self.pool.pop(next(iter(self.pool)))  # the least recently used size
                held -= sum(b.numel() * b.element_size() for b in oldest)
            return flat.view(shape)


_workspace = _Workspace()


# -- the packed layout ------------------------------------------------------------------------------


class _Layout:
    """Where every step's rows lie, and in which order the steps run.

    A history buffer holds the initial state and each step's new state back to back, so each step's
    output is a view of it and the previous state is (almost always) a view too:
        forwards   [h0 | step 0 | step 1 | ... | step T-1]    (B + N, ·)
        backwards  [step 0 | step 1 | ... | step T-1 | h0]    (N + B, ·)
    Running forwards, step t's previous state is the first b_t rows of step t-1 (b_t ≤ b_{t-1}).
    Running backwards it is step t+1's rows followed, when b_t > b_{t+1}, by the h0 rows of the
    sequences that start at step t; only then is a copy (torch.cat) needed.
    """

    def __init__(self, batch_sizes, reverse):
        self.sizes = list(batch_sizes)  # b_t, non-increasing
        self.T, self.B, self.N = len(self.sizes), self.sizes[0], sum(self.sizes)
        self.reverse = reverse
        self.uniform = all(b == self.B for b in self.sizes)
        self.order = range(self.T - 1, -1, -1) if reverse else range(self.T)
        self.back_order = range(self.T) if reverse else range(self.T - 1, -1, -1)

    def split(self, t):
        """Per-step views of a (N, ·) tensor in the packed layout."""
        return t.split(self.sizes)

    def history(self, init, like):
        """(buffer (N + B, ·), its outputs (N, ·), per-step output views, its initial rows (B, ·)),
        with `init` copied into the initial rows."""
        N, B = self.N, self.B
        buf = _workspace.empty(like, N + B, init.shape[1])  # (N + B, ·)
        if self.reverse:
            buf[N:].copy_(init)
            pieces = buf.split(self.sizes + [B])
            return buf, buf[:N], pieces[:-1], pieces[-1]
        buf[:B].copy_(init)
        pieces = buf.split([B] + self.sizes)
        return buf, buf[B:], pieces[1:], pieces[0]

    def previous(self, t, outs, init):
        """Step t's previous state (b_t, ·): a view when it can be, else a cat with h0's rows."""
        b = self.sizes[t]
        if self.reverse:
            if t == self.T - 1:
                return init if b == self.B else init[:b]
            before = outs[t + 1]
            b_before = before.shape[0]
            return before if b_before == b else torch.cat((before, init[b_before:b]))
        before = init if t == 0 else outs[t - 1]
        return before if before.shape[0] == b else before[:b]

    def stacked_previous(self, buf, prevs):
        """All steps' previous states in the packed layout (N, ·), for dW = dZᵀ H_prev."""
        if self.uniform:
            return buf[self.B:] if self.reverse else buf[: self.N]
        return torch.cat(prevs)

    def final(self, outs, init):
        """The final state (B, ·): each sequence's state after its last step (a copy)."""
        if self.reverse or self.uniform:
            return (outs[0] if self.reverse else outs[-1]).clone()
        # Forwards, the sequences that end at step t are rows b_{t+1}..b_t of step t's output.
        sizes = self.sizes + [0]
        pieces = [outs[t][sizes[t + 1]:] for t in range(self.T - 1, -1, -1) if sizes[t + 1] < sizes[t]]
        return torch.cat(pieces)

    def heads(self, state):
        """Views state[:b] of a (B, ·) state(-gradient) buffer for each step (in step order)."""
        views = {b: state if b == self.B else state[:b] for b in set(self.sizes)}
        return [views[b] for b in self.sizes]


def _grad_buffer(grad, shape, like):
    """A writable, contiguous copy of an incoming gradient (zeros where autograd gave none)."""
    if grad is None:
        return like.new_zeros(shape)
    return grad.clone(memory_format=torch.contiguous_format)


# -- LSTM -------------------------------------------------------------------------------------------


class LSTMFunction(torch.autograd.Function):
    """One LSTM direction, forward and hand-derived backward through time (optionally projected).

    apply(x (N, I), weight_ih (4H, I), bias_ih (4H,) or None, h0 (B, P), c0 (B, H), weight_hh (4H, P),
          bias_hh (4H,) or None, weight_hr (P, H) or None, batch_sizes, reverse, training=True)
        -> (out (N, P), h_n (B, P), c_n (B, H))

    `training=False` (the caller knows no backward will follow: no_grad, or nothing requires grad)
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

    the backward step is five small ops and a matmul: dh += d_out[t]; dc += dm ⊙ k_c;
    [dz_i | dz_f | dz_g] = dc ⊗ [k_i | k_f | k_g]; dz_o = dm ⊙ k_o; dc ⊙= f; dh = dz W_hh. So the
    forward, while i, f, g, o, c are hot in cache, writes the k's (one (N, 5H) buffer), each with one
    fused op: with m = o ⊙ tanh(c) already there, k_c = o − m ⊙ tanh(c) and k_o = m − m ⊙ o
    (`torch.addcmul(…, value=-1)`); likewise k_i = gi − gi ⊙ i with gi = g ⊙ i,
    k_f = cf − cf ⊙ f with cf = f ⊙ c_prev, k_g = i − gi ⊙ g. The activations (N, 4H), computed in
    place over z = x_proj + h_prev W_hhᵀ, are saved too, for f. Under no_grad no k is written.
    (With the compiled step kernels, `models.cpu_kernels` / `models.triton_kernels`, a step writes c,
    m, f and the k's in one pass, from the same formulas.)
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr, batch_sizes, reverse,
                training=True):
        lay = _Layout(batch_sizes, reverse)
        H = c0.shape[1]
        h_buf, out, outs, h_init = lay.history(h0, x)  # (N + B, P)
        c_buf, _, c_outs, c_init = lay.history(c0, x)  # (N + B, H)
        # x_proj for all steps in one matmul, with b_ih + b_hh (both shift every step's z alike); each
        # step then adds its recurrent matmul in place (no copy of x_t) and turns z into the
        # activations i | f | g | o in place.
        acts = _input_projection(x, weight_ih, bias_ih, bias_hh)  # (N, 4H)
        projected = weight_hr is not None
        m_buf = _workspace.empty(acts, lay.N if training else lay.B, H) if projected else None  # o ⊙ tanh(c)
        k = _workspace.empty(acts, lay.N, 5 * H) if training else None  # (N, 5H): k_i|k_f|k_g|k_o|k_c
        # Wᵀ as a view: a row-major copy of it made a Xeon's matmuls ~15% faster, but on the 2-core EPYC
        # the whole LSTM training step measured 4% slower with the copy (interleaved A/B), so no copy.
        w_hh_t, w_hr_t = weight_hh.t(), (weight_hr.t() if projected else None)

        zs = lay.split(acts)
        ms = (lay.split(m_buf) if training else lay.heads(m_buf)) if projected else outs  # m = o ⊙ tanh(c)
        ks = lay.split(k) if training else [None] * lay.T
        kernels = step_kernels(acts)
        if not kernels:  # the eager step's views, built once
            tc_buf = acts.new_empty(lay.B, H)  # (B, H): tanh(c)
            gi_buf = acts.new_empty(lay.B, H)  # (B, H): g ⊙ i
            per_step = [lay.split(acts[:, : 2 * H])]
            per_step += [lay.split(acts[:, j * H : (j + 1) * H]) for j in range(4)]  # i, f, g, o
            per_step += [lay.heads(tc_buf), lay.heads(gi_buf)]
            if training:
                per_step += [lay.split(k[:, j * H : (j + 1) * H]) for j in range(5)]
            eager = list(zip(*per_step))
        h_prevs = [None] * lay.T
        for t in lay.order:
            z, m = zs[t], ms[t]
            h_prev = h_prevs[t] = lay.previous(t, outs, h_init)
            c_prev = lay.previous(t, c_outs, c_init)
            z.addmm_(h_prev, w_hh_t)  # (b, 4H)
            if kernels:  # the same step as below, its gate math in one kernel
                kernels.lstm_forward_step(z, c_prev, c_outs[t], m, ks[t])
                if projected:
                    torch.mm(m, w_hr_t, out=outs[t])  # (b, P)
                continue
            if_, i, f, g, o, tc, gi = eager[t][:7]
            if_.sigmoid_()
            g.tanh_()
            o.sigmoid_()
            if training:
                k_i, k_f, k_g, k_o, k_c = eager[t][7:]
                torch.mul(g, i, out=gi)
                c = torch.mul(f, c_prev, out=k_f)  # f ⊙ c_prev, for now
                c = torch.add(c, gi, out=c_outs[t])
                torch.addcmul(i, gi, g, value=-1, out=k_g)
                torch.addcmul(gi, gi, i, value=-1, out=k_i)
                k_f.addcmul_(k_f, f, value=-1)
            else:
                c = torch.mul(f, c_prev, out=c_outs[t])
                c.addcmul_(i, g)
            torch.tanh(c, out=tc)
            torch.mul(o, tc, out=m)
            if training:
                torch.addcmul(o, m, tc, value=-1, out=k_c)
                torch.addcmul(m, m, o, value=-1, out=k_o)
            if projected:
                torch.mm(m, w_hr_t, out=outs[t])  # (b, P)

        ctx.lay, ctx.training = lay, training
        if training:
            ctx.save_for_backward(x, weight_ih, bias_ih, h0, c0, weight_hh, bias_hh, weight_hr,
                                  k, acts, lay.stacked_previous(h_buf, h_prevs), m_buf)
        return out.clone(), lay.final(outs, h_init), lay.final(c_outs, c_init)  # (N, P), (B, P), (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        if not ctx.training:
            raise RuntimeError("LSTMFunction ran with training=False, so it saved nothing to backpropagate "
                               "through; call it with training=True when a gradient is wanted")
        saved = ctx.saved_tensors
        if _needs_autograd(d_out, d_hn, d_cn):
            return _backward_by_autograd(ctx, "LSTM", saved[:8], (d_out, d_hn, d_cn)) + (None,) * 3
        x, weight_ih, _, _, _, weight_hh, _, weight_hr, k, acts, h_prev, m_buf = saved
        lay = ctx.lay
        N, H, P = lay.N, k.shape[1] // 5, h_prev.shape[1]
        d_z = _workspace.empty(k, N, 4 * H)  # (N, 4H): d z = d x_proj
        dh = _grad_buffer(d_hn, (lay.B, P), k)  # (B, P): running ∂L/∂h
        dc = _grad_buffer(d_cn, (lay.B, H), k)  # (B, H): running ∂L/∂c
        d_out = d_out.contiguous() if d_out is not None else k.new_zeros(N, P)
        projected = weight_hr is not None
        dh_total = _workspace.empty(k, N, P) if projected else None  # (N, P): dh of every step, for dW_hr
        dm_scratch = k.new_empty(lay.B, H) if projected else None  # (B, H)

        d_outs, dzs, ks, actss, dhs, dcs = (lay.split(d_out), lay.split(d_z), lay.split(k), lay.split(acts),
                                            lay.heads(dh), lay.heads(dc))
        dh_totals = lay.split(dh_total) if projected else [None] * lay.T
        dms = lay.heads(dm_scratch) if projected else [None] * lay.T
        kernels = step_kernels(k)
        if not kernels:  # the eager step's views, built once
            eager = list(zip(lay.split(d_z[:, : 3 * H].view(N, 3, H)), lay.split(d_z[:, 3 * H :]),
                             lay.split(k[:, : 3 * H].view(N, 3, H)), lay.split(k[:, 3 * H : 4 * H]),
                             lay.split(k[:, 4 * H :]), lay.split(acts[:, H : 2 * H])))
        for t in lay.back_order:
            d_out_t, dz, dh_t, dc_t, dm = d_outs[t], dzs[t], dhs[t], dcs[t], dms[t]
            if projected:
                torch.add(dh_t, d_out_t, out=dh_totals[t])
                torch.mm(dh_totals[t], weight_hr, out=dm)  # (b, H)
            if kernels:  # the same step as below, its pointwise part in one kernel
                kernels.lstm_backward_step(dm if projected else dh_t, None if projected else d_out_t,
                                           dc_t, ks[t], actss[t], dz)
                torch.mm(dz, weight_hh, out=dh_t)  # (b, P)
                continue
            dz_ifg, dz_o, k_ifg, k_o, k_c, f = eager[t]
            if not projected:
                dm = dh_t.add_(d_out_t)  # (b, H)
            dc_t.addcmul_(dm, k_c)
            torch.mul(dc_t.unsqueeze(1), k_ifg, out=dz_ifg)  # (b, 3, H)
            torch.mul(dm, k_o, out=dz_o)
            dc_t.mul_(f)
            torch.mm(dz, weight_hh, out=dh_t)  # (b, P)

        need = ctx.needs_input_grad
        d_x, d_w_ih, d_b_ih, d_b_hh = _input_grads(need, d_z, x, weight_ih, (need[2], need[6]))
        d_w_hh = torch.mm(d_z.t(), h_prev) if need[5] else None  # (4H, P)
        d_w_hr = torch.mm(dh_total.t(), m_buf) if projected and need[7] else None  # (P, H)
        return d_x, d_w_ih, d_b_ih, dh, dc, d_w_hh, d_b_hh, d_w_hr, None, None, None


# -- GRU --------------------------------------------------------------------------------------------


class GRUFunction(torch.autograd.Function):
    """One GRU direction (torch's GRU), forward and hand-derived backward through time.

    apply(x (N, I), weight_ih (3H, I), bias_ih (3H,) or None, h0 (B, H), weight_hh (3H, H),
          bias_hh (3H,) or None, batch_sizes, reverse) -> (out (N, H), h_n (B, H))

    Forward, one step in the code's names (`cells/gru.py`); x_proj = x W_ihᵀ + b_ih = [x_r | x_z | x_n]
    for all steps in one matmul before the loop, and the
    recurrent matmul hh = [hh_r | hh_z | hh_n] keeps the whole b_hh, because b_hn sits inside
    r ⊙ (W_hn h + b_hn) and cannot be folded into x_proj:

        hh = h_prev W_hhᵀ + b_hh                      (b, 3H)
        r  = σ(x_r + hh_r)     z = σ(x_z + hh_z)
        n  = tanh(x_n + r ⊙ hh_n)
        h  = (1 − z) ⊙ n + z ⊙ h_prev  = n + z ⊙ (h_prev − n)   (torch.lerp)

    Saved: r, z, n, hh (for hh_n) and every h (which gives h_prev).

    Backward, with dh the sum of the output's gradient and what step t+1 sends back:

        dn      = dh ⊙ (1 − z)            dz = dh ⊙ (h_prev − n)          d h_prev (direct) = dh ⊙ z
        dn_pre  = dn ⊙ (1 − n²)                                          n = tanh(n_pre)
        dr      = dn_pre ⊙ hh_n           d hh_n = dn_pre ⊙ r
        dr_pre  = dr ⊙ r(1 − r)           dz_pre = dz ⊙ z(1 − z)          σ' = σ(1 − σ)

        d x_proj = [dr_pre | dz_pre | dn_pre]       d hh = [dr_pre | dz_pre | dn_pre ⊙ r]
        dh_prev  = dh ⊙ z + d hh W_hh               (b, H): the one matmul per step

    and after the loop dW_hh = d HHᵀ H_prev (3H, H), db_hh = Σ d HH, and from d x_proj:
    dW_ih = d X_projᵀ X, db_ih = Σ d X_proj, dx = d X_proj W_ih. Every factor multiplying dh is
    computed for all steps before the loop — k_n = (1 − z)(1 − n²), then
    k = [k_n hh_n r(1 − r) | (h_prev − n) z(1 − z) | k_n r] — so a step is: dh += d_out[t];
    d hh = dh ⊗ k; dn_pre = dh ⊙ k_n; dh ⊙= z; dh += d hh W_hh. With the CPU kernels the step
    computes k and k_n itself from the saved activations (`cpu_kernels.gru_backward_step_direct`):
    at 784 steps the (N, 3H) buffers of k and their temporaries cost more than the whole loop.
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, batch_sizes, reverse):
        lay = _Layout(batch_sizes, reverse)
        H = h0.shape[1]
        x_proj = _input_projection(x, weight_ih, bias_ih)  # (N, 3H)
        h_buf, out, outs, h_init = lay.history(h0, x_proj)  # (N + B, H)
        hh = _workspace.empty(x_proj, lay.N, 3 * H)  # (N, 3H): h_prev W_hhᵀ + b_hh
        rz = _workspace.empty(x_proj, lay.N, 2 * H)  # (N, 2H): r | z
        n_buf = _workspace.empty(x_proj, lay.N, H)  # (N, H)
        w_hh_t = weight_hh.t()
        kernels = step_kernels(x_proj)
        xs = lay.split(x_proj)
        hhs, rzs, ns = lay.split(hh), lay.split(rz), lay.split(n_buf)
        if not kernels:  # the eager step's views, built once
            eager = list(zip(lay.split(x_proj[:, : 2 * H]), lay.split(x_proj[:, 2 * H :]),
                             lay.split(hh[:, : 2 * H]), lay.split(hh[:, 2 * H :]), lay.split(rz[:, :H]),
                             lay.split(rz[:, H:])))
        h_prevs = [None] * lay.T
        for t in lay.order:
            hh_t, rz_t, n = hhs[t], rzs[t], ns[t]
            h_prev = h_prevs[t] = lay.previous(t, outs, h_init)
            if kernels:  # the same step as below, its gate math in one kernel (xs[t]: whole rows)
                torch.mm(h_prev, w_hh_t, out=hh_t)  # (b, 3H)
                kernels.gru_forward_step(hh_t, xs[t], bias_hh, h_prev, rz_t, n, outs[t])
                continue
            x_rz, x_n, hh_rz, hh_n, r, z = eager[t]
            if bias_hh is not None:
                torch.addmm(bias_hh, h_prev, w_hh_t, out=hh_t)  # (b, 3H)
            else:
                torch.mm(h_prev, w_hh_t, out=hh_t)
            torch.add(x_rz, hh_rz, out=rz_t).sigmoid_()
            torch.mul(r, hh_n, out=n).add_(x_n).tanh_()
            torch.lerp(n, h_prev, z, out=outs[t])  # n + z ⊙ (h_prev − n)

        ctx.lay = lay
        ctx.save_for_backward(x, weight_ih, bias_ih, h0, weight_hh, bias_hh,
                              rz, n_buf, hh, lay.stacked_previous(h_buf, h_prevs))
        return out.clone(), lay.final(outs, h_init)  # (N, H), (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn):
        saved = ctx.saved_tensors
        if _needs_autograd(d_out, d_hn):
            return _backward_by_autograd(ctx, "GRU", saved[:6], (d_out, d_hn)) + (None,) * 2
        x, weight_ih, _, _, weight_hh, _, rz, n, hh, h_prev = saved
        lay = ctx.lay
        N, H = lay.N, n.shape[1]
        d_hh = _workspace.empty(rz, N, 3 * H)  # (N, 3H)
        d_xn = _workspace.empty(rz, N, H)  # (N, H): dn_pre
        dh = _grad_buffer(d_hn, (lay.B, H), rz)  # (B, H)
        d_out = d_out.contiguous() if d_out is not None else rz.new_zeros(N, H)
        d_outs, dhhs, dxns, rzs, dhs = lay.split(d_out), lay.split(d_hh), lay.split(d_xn), lay.split(rz), lay.heads(dh)
        kernels = step_kernels(rz)
        if kernels is cpu_kernels:  # k and k_n computed inside each step from r|z, n, hh_n, h_prev
            ns, hhs, h_prevs = lay.split(n), lay.split(hh), lay.split(h_prev)
            for t in lay.back_order:
                dh_t, dhh = dhs[t], dhhs[t]
                cpu_kernels.gru_backward_step_direct(dh_t, d_outs[t], rzs[t], ns[t], hhs[t], h_prevs[t], dhh,
                                                     dxns[t])
                dh_t.addmm_(dhh, weight_hh)  # (b, H)
        else:
            r, z = rz.chunk(2, 1)  # each (N, H)
            hh_n = hh[:, 2 * H :]
            k_n = (1 - z) * (1 - n * n)  # (N, H): ∂h/∂n_pre
            k = _workspace.empty(rz, N, 3, H)  # (N, 3, H): ∂h/∂hh_r, ∂h/∂hh_z, ∂h/∂hh_n
            torch.mul(k_n * hh_n, r * (1 - r), out=k[:, 0])
            torch.mul(h_prev - n, z * (1 - z), out=k[:, 1])
            torch.mul(k_n, r, out=k[:, 2])
            k_rows, kns = lay.split(k.view(N, 3 * H)), lay.split(k_n)
            if not kernels:  # the eager step's views, built once
                eager = list(zip(lay.split(d_hh.view(N, 3, H)), lay.split(k), lay.split(z)))
            for t in lay.back_order:
                d_out_t, dhh, dxn, kn, dh_t = d_outs[t], dhhs[t], dxns[t], kns[t], dhs[t]
                if kernels:  # the same step as below, its pointwise part in one Triton kernel
                    kernels.gru_backward_step(dh_t, d_out_t, k_rows[t], kn, rzs[t], dhh, dxn)
                    dh_t.addmm_(dhh, weight_hh)  # (b, H)
                    continue
                dhh3, k_t, z_t = eager[t]
                dh_t.add_(d_out_t)
                torch.mul(dh_t.unsqueeze(1), k_t, out=dhh3)  # (b, 3, H)
                torch.mul(dh_t, kn, out=dxn)
                dh_t.mul_(z_t).addmm_(dhh, weight_hh)  # (b, H)

        need = ctx.needs_input_grad
        d_x, d_w_ih, d_b_ih = (None, None, None)
        if any(need[:3]):
            d_proj = torch.cat((d_hh[:, : 2 * H], d_xn), 1)  # (N, 3H): d x_proj
            d_x, d_w_ih, d_b_ih = _input_grads(need, d_proj, x, weight_ih, (need[2],))
        d_w_hh = torch.mm(d_hh.t(), h_prev) if need[4] else None  # (3H, H)
        d_b_hh = d_hh.sum(0) if need[5] else None  # (3H,)
        return d_x, d_w_ih, d_b_ih, dh, d_w_hh, d_b_hh, None, None


# -- RNN --------------------------------------------------------------------------------------------


class RNNFunction(torch.autograd.Function):
    """One Elman RNN direction, forward and hand-derived backward through time.

    apply(x (N, I), weight_ih (H, I), bias_ih (H,) or None, h0 (B, H), weight_hh (H, H),
          bias_hh (H,) or None, batch_sizes, reverse, nonlinearity) -> (out (N, H), h_n (B, H))

    Forward (`cells/rnn.py`), with x_proj = x W_ihᵀ + b_ih + b_hh for all steps in one matmul:
        h = φ(x_proj + h_prev W_hhᵀ).
    Saved: every h, which is also φ's derivative: tanh' = 1 − h², relu' = [h > 0] (torch's choice at
    0, where relu is not differentiable).

    Backward, with dh the output's gradient plus what step t+1 sends back:
        dz = dh ⊙ φ'          dh_prev = dz W_hh  (b, H)          d x_proj = dz
    and after the loop dW_hh = dZᵀ H_prev, db_hh = db_ih = Σ dZ, dW_ih = dZᵀ X, dx = dZ W_ih.
    """

    @staticmethod
    def forward(ctx, x, weight_ih, bias_ih, h0, weight_hh, bias_hh, batch_sizes, reverse, nonlinearity):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        lay = _Layout(batch_sizes, reverse)
        x_proj = _input_projection(x, weight_ih, bias_ih, bias_hh)  # (N, H), read only
        h_buf, out, outs, h_init = lay.history(h0, x_proj)  # (N + B, H)
        w_hh_t = weight_hh.t()
        xs = lay.split(x_proj)
        tanh = nonlinearity == "tanh"
        # torch's CPU tanh measured 3–5× slower than its sigmoid at these sizes; the kernel's is not
        act = torch.Tensor.relu_ if not tanh else (
            cpu_kernels.tanh_ if step_kernels(x_proj) is cpu_kernels else torch.Tensor.tanh_)
        h_prevs = [None] * lay.T
        for t in lay.order:
            h_prev = h_prevs[t] = lay.previous(t, outs, h_init)
            act(torch.addmm(xs[t], h_prev, w_hh_t, out=outs[t]))  # (b, H)

        ctx.lay, ctx.tanh = lay, tanh
        ctx.save_for_backward(x, weight_ih, bias_ih, h0, weight_hh, bias_hh, out, lay.stacked_previous(h_buf, h_prevs))
        return out.clone(), lay.final(outs, h_init)  # (N, H), (B, H)

    @staticmethod
    def backward(ctx, d_out, d_hn):
        saved = ctx.saved_tensors
        if _needs_autograd(d_out, d_hn):
            nonlinearity = "tanh" if ctx.tanh else "relu"
            return _backward_by_autograd(ctx, "RNN", saved[:6], (d_out, d_hn), nonlinearity) + (None,) * 3
        x, weight_ih, _, _, weight_hh, _, out, h_prev = saved
        lay = ctx.lay
        N, H = lay.N, out.shape[1]
        slope = 1 - out * out if ctx.tanh else (out > 0).to(out.dtype)  # (N, H): φ'
        d_z = _workspace.empty(out, N, H)  # (N, H)
        dh = _grad_buffer(d_hn, (lay.B, H), out)  # (B, H)
        d_out = d_out.contiguous() if d_out is not None else out.new_zeros(N, H)
        steps = list(zip(lay.split(d_out), lay.split(d_z), lay.split(slope), lay.heads(dh)))
        for t in lay.back_order:
            d_out_t, dz, s, dh_t = steps[t]
            torch.mul(dh_t.add_(d_out_t), s, out=dz)
            torch.mm(dz, weight_hh, out=dh_t)  # (b, H)

        need = ctx.needs_input_grad
        d_x, d_w_ih, d_b_ih, d_b_hh = _input_grads(need, d_z, x, weight_ih, (need[2], need[5]))
        d_w_hh = torch.mm(d_z.t(), h_prev) if need[4] else None  # (H, H)
        return d_x, d_w_ih, d_b_ih, dh, d_w_hh, d_b_hh, None, None, None
