"""The compiled CPU step kernels (`models.cpu_kernels`): against torch's math, and the fused path
with and without them against torch.nn.

The float64 equivalence tests of test_fused.py already run through the kernels (they are the CPU
default); here the eager fallback gets the same check, the float32 kernels are compared with
torch's sigmoid/tanh (their exp is our own polynomial), and building and not building are tested.
"""
import platform
import shutil
import warnings

import pytest
import torch

from models import backends, cpu_kernels, eager_steps
from reference import (LAYER_OPTIONS, LAYERS, TIGHT, assert_same, clone_inputs, forward_and_grads, fused_pair,
                       layer_inputs, leaves)

needs_kernels = pytest.mark.skipif(not cpu_kernels.available(),
                                   reason="the CPU step kernels did not build here (no C++ compiler?)")


def test_the_kernels_build_where_a_compiler_is():
    if shutil.which("g++") or shutil.which("c++") or shutil.which("clang++"):
        assert cpu_kernels.available()
        assert backends.step_kernels(torch.zeros(1)) is cpu_kernels
        assert backends.step_kernels(torch.zeros(1, dtype=torch.float16)) is eager_steps  # eager ops for half
    else:
        pytest.skip("no C++ compiler on this machine")


# -- the fused path, with and without the kernels, against torch.nn -------------------------------------


@pytest.mark.parametrize("cpu_kernels_mode", ["auto", "steps", "never"])
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("num_layers,bidirectional,proj_size,lengths,with_state", LAYER_OPTIONS)
def test_fused_with_and_without_kernels_equals_torch(kind, num_layers, bidirectional, proj_size, lengths,
                                                     with_state, cpu_kernels_mode, monkeypatch):
    monkeypatch.setattr(backends, "CPU_KERNELS", cpu_kernels_mode)
    ours, ref = fused_pair(kind, 3, 4, num_layers=num_layers, bidirectional=bidirectional)
    assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, lengths, with_state), **TIGHT)


@pytest.mark.parametrize("cpu_kernels_mode", ["auto", "steps", "never"])
def test_lstm_projection_with_and_without_kernels_equals_torch(cpu_kernels_mode, monkeypatch):
    monkeypatch.setattr(backends, "CPU_KERNELS", cpu_kernels_mode)
    ours, ref = fused_pair("lstm", 3, 5, num_layers=2, bidirectional=True, proj_size=2)
    assert_same(ours, ref, *layer_inputs("lstm", ours, 4, 3, [4, 1, 3], True), **TIGHT)


@needs_kernels
@pytest.mark.parametrize("kind", LAYERS)
def test_float32_kernels_equal_torch_at_the_mnist_shape(kind):
    """float32 at a realistic size (64 × 28 steps, hidden 128): the kernels' own exp stays within
    float32 rounding of torch.nn over the whole sequence, forward and backward. A parameter's gradient
    sums 1792 positions, so its tolerance is relative to its largest element (as in the benchmark's
    check), not to each element."""
    assert_float32_close(kind, *fused_pair(kind, 28, 128, dtype=torch.float32), 28, 64)


def assert_float32_close(kind, ours, ref, steps, batch, no_grad=False):
    """ours and ref within float32 rounding of each other: outputs, final states and, unless no_grad,
    every gradient (a parameter's relative to its largest element: it sums steps · batch positions)."""
    x, hx = layer_inputs(kind, ours, steps, batch)
    if no_grad:
        with torch.no_grad():
            results = [(leaves(module(*clone_inputs([x, hx]))), [], {}) for module in (ours, ref)]
    else:
        results = [forward_and_grads(module, clone_inputs([x, hx])) for module in (ours, ref)]
    (out_a, gin_a, gp_a), (out_b, gin_b, gp_b) = results
    for a, b in zip([*out_a, *gin_a, *gp_a.values()], [*out_b, *gin_b, *gp_b.values()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6 * max(1.0, b.abs().max().item()))


# -- whole sequences in one call, every way of sharing a step among threads -------------------------------

needs_sequences = pytest.mark.skipif(not cpu_kernels.sequence_usable(torch.zeros(1)),
                                     reason="the CPU kernels did not build here (no C++ compiler?)")
SPLITS = [(1, True), (2, True), (3, True), (2, False), (3, False)]  # (threads, by_rows)


@needs_sequences
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("threads,by_rows", [(1, True), (2, False)])
@pytest.mark.parametrize("no_grad", [False, True])
def test_float32_sequence_kernels_equal_torch_in_partial_panels(kind, threads, by_rows, no_grad, monkeypatch):
    """float32 takes the kernels' vector code (the float64 tests take their scalar code): a hidden size of
    two weight panels and a part of one that is not a whole 16-row stack (72 = 32 + 32 + 8), an input of
    several 16-value blocks of k and a remainder (70), a batch of two row blocks and a shorter one."""
    monkeypatch.setattr(cpu_kernels, "split", lambda batch, weight: (threads, by_rows))
    assert_float32_close(kind, *fused_pair(kind, 70, 72, dtype=torch.float32, bidirectional=True), 5, 30, no_grad)


@needs_sequences
@pytest.mark.parametrize("threads,by_rows", SPLITS)
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hidden", [40, 37])
@pytest.mark.parametrize("batch", [13, 1])
def test_sequence_kernels_equal_torch_however_a_step_is_shared(kind, threads, by_rows, bias, hidden, batch,
                                                                monkeypatch, input_in_steps=True):
    """Batch 13 and hidden 40 or 37 split into unequal shares: by rows 6 | 7 (or 4 | 4 | 5), by units
    into slices that start on a weight panel (whole and partial panels), the matmul kernel's full row
    blocks and its shorter last ones. Batch 1 takes the matrix–vector route (W_hh read as it lies),
    where by rows every thread but one has no row. Bidirectional so both directions' loops run, two
    layers so the second reads the first's output. The LSTM's kernel projects the input itself, step
    by step, or reads the whole sequence's x W_ihᵀ (`input_in_steps`)."""
    from models import lstm_function
    monkeypatch.setattr(lstm_function, "STEP_INPUT_MAX", 64 if input_in_steps else 0)
    monkeypatch.setattr(cpu_kernels, "split", lambda batch, weight: (threads, by_rows))
    ours, ref = fused_pair(kind, 3, hidden, num_layers=2, bidirectional=True, bias=bias)
    x, hx = layer_inputs(kind, ours, 6, batch)
    assert backends.whole_sequence(fused_layout([batch] * 6), x.detach())
    assert_same(ours, ref, x, hx, **TIGHT)


@needs_sequences
@pytest.mark.parametrize("threads,by_rows", SPLITS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("hidden", [40, 37])
def test_lstm_sequence_kernel_on_a_projected_input_equals_torch(threads, by_rows, bias, hidden, monkeypatch):
    """The LSTM's kernel with x W_ihᵀ computed for the whole sequence first (the route of wide inputs),
    shared among threads in every way as above."""
    test_sequence_kernels_equal_torch_however_a_step_is_shared("lstm", threads, by_rows, bias, hidden, 13,
                                                               monkeypatch, input_in_steps=False)


@needs_sequences
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("threads,by_rows", [(1, True), (2, False)])
def test_the_weight_panel_prefetch_leaves_every_result_as_it_is(kind, threads, by_rows, monkeypatch):
    """The sequence kernels' matmul with and without its prefetch of the next weight panel: outputs,
    final states and every gradient bit for bit the same, in float32, at a batch of several row blocks
    (the prefetching pass runs the first block) and a hidden size of several panels."""
    monkeypatch.setattr(cpu_kernels, "split", lambda batch, weight: (threads, by_rows))
    ours = fused_pair(kind, 70, 72, dtype=torch.float32)[0]
    x, hx = layer_inputs(kind, ours, 5, 30)
    results, before = [], cpu_kernels.set_panel_prefetch(True)
    try:
        for on in (False, True):
            cpu_kernels.set_panel_prefetch(on)
            with torch.no_grad():  # the LSTM's forward without a backward takes a route of its own
                inference = leaves(ours(x, hx))
            results.append((inference, *forward_and_grads(ours, clone_inputs([x, hx]))))
    finally:
        cpu_kernels.set_panel_prefetch(before)
    (inf_a, out_a, gin_a, gp_a), (inf_b, out_b, gin_b, gp_b) = results
    for a, b in zip([*inf_a, *out_a, *gin_a, *gp_a.values()], [*inf_b, *out_b, *gin_b, *gp_b.values()]):
        assert torch.equal(a, b)


@needs_sequences
@pytest.mark.parametrize("chunk_steps", [1, 3, 7])
@pytest.mark.parametrize("threads,by_rows", [(1, True), (2, True), (2, False)])
@pytest.mark.parametrize("input_in_steps", ["narrow", "batch", "chunks"])
@pytest.mark.parametrize("steps", [7, 6])
def test_lstm_forward_without_grad_in_chunks_equals_torch(chunk_steps, threads, by_rows, input_in_steps, steps,
                                                          monkeypatch):
    """Without a backward the LSTM runs its sequence a chunk of steps at a time: chunks of 1, of 3
    (7 steps: 3 + 3 + 1) and of all 7 steps, both directions, give torch.nn's outputs and states; or,
    projecting its input step by step (an input as narrow as STEP_INPUT_MAX, or a wide one in a batch
    of STEP_INPUT_MIN_BATCH rows), the whole sequence in one call, which keeps two states of c (an odd
    and an even number of steps: the last c in either of its halves, in either direction)."""
    from models import lstm_function
    monkeypatch.setattr(lstm_function, "STEP_INPUT_MAX", 64 if input_in_steps == "narrow" else 0)
    monkeypatch.setattr(lstm_function, "STEP_INPUT_MIN_BATCH", 5 if input_in_steps == "batch" else 6)
    monkeypatch.setattr(cpu_kernels, "split", lambda batch, weight: (threads, by_rows))
    monkeypatch.setattr(lstm_function, "CHUNK_BYTES", chunk_steps * 5 * 4 * 40 * 8)  # B · 4H · 8 bytes a step
    ours, ref = fused_pair("lstm", 3, 40, num_layers=2, bidirectional=True)
    x, hx = layer_inputs("lstm", ours, steps, 5)
    with torch.no_grad():
        got, want = ours(x, hx), ref(x, hx)
    torch.testing.assert_close(got, want, **TIGHT)


@needs_sequences
def test_the_lstm_sequence_kernel_refuses_a_cell_state_buffer_of_the_wrong_size():
    B, T, H = 3, 4, 5
    h, c = torch.zeros((T + 1) * B, H), torch.zeros(3 * B, H)  # neither a history (5B rows) nor two states
    with pytest.raises(ValueError, match=r"c must hold the history \(at least 15 rows\) or two states \(6 rows\), "
                                         r"got 9 rows"):
        cpu_kernels.lstm_forward_sequence(None, None, h, c, None, torch.zeros(4 * H, H), B, False,
                                          torch.zeros(T * B, 2), torch.zeros(4 * H, 2))


@pytest.mark.parametrize("input_size,batch,for_backward,expected", [
    (64, 1, True, True), (64, 1, False, True),  # narrow: always in the step
    (65, 64, True, False),  # wide, with a backward: the sequence's projection first
    (512, 7, False, False), (512, 8, False, True), (512, 64, False, True),  # wide, without: by the batch
])
def test_which_inputs_the_lstm_sequence_kernel_projects_in_the_step(input_size, batch, for_backward, expected):
    from models import lstm_function
    x = torch.empty(3 * batch, input_size)
    assert lstm_function.steps_project_input(x, batch, for_backward) is expected


@needs_sequences
def test_a_packed_weight_is_packed_by_its_first_call_and_only_serves_a_kernel_without_input():
    w_hh = torch.randn(4 * 40, 40, dtype=torch.float64)
    packed = cpu_kernels.PackedWeight(w_hh, 5, 40)
    first, second = packed.use(), packed.use()
    assert first[1] is False and second[1] is True and first[0] is second[0]
    assert cpu_kernels.PackedWeight(w_hh, 1, 40).use() == (None, False)  # batch 1 reads W_hh as it lies
    states = torch.zeros(2 * 5, 40, dtype=torch.float64)
    x, w_ih = torch.randn(5, 3, dtype=torch.float64), torch.randn(4 * 40, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="PackedWeight holds W_hh alone"):
        cpu_kernels.lstm_forward_sequence(None, None, states, states.clone(), None, w_hh, 5, False, x, w_ih,
                                          packed=cpu_kernels.PackedWeight(w_hh, 5, 40))


@needs_sequences
@pytest.mark.parametrize("batch,gates,hidden,threads,by_rows", [
    (64, 4, 128, 2, True),  # W_hh 256 KiB: every thread reads all of it
    (64, 1, 512, 2, True),  # 1 MiB
    (64, 4, 512, 2, False),  # 4 MiB: each thread its share of the units, and of W_hh
    (1, 4, 512, 2, False),  # batch 1: no rows to share
    (64, 4, 128, 1, True), (1, 4, 512, 1, True),  # one thread
])
def test_the_split_is_by_rows_unless_the_batch_is_small_or_the_weight_large(batch, gates, hidden, threads, by_rows,
                                                                            monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert cpu_kernels.split(batch, torch.empty(gates * hidden, hidden)) == (threads, by_rows)


def test_steps_mode_and_packed_batches_take_the_per_step_route(monkeypatch):
    uniform, packed = fused_layout([5] * 6), fused_layout([5, 3, 3, 1])
    like = torch.zeros(1, dtype=torch.float64)
    assert backends.whole_sequence(uniform, like) == cpu_kernels.available()
    assert not backends.whole_sequence(packed, like)
    monkeypatch.setattr(backends, "CPU_KERNELS", "steps")
    assert not backends.whole_sequence(uniform, like)
    assert backends.step_kernels(like) is (cpu_kernels if cpu_kernels.available() else eager_steps)


def fused_layout(batch_sizes):
    from models.layout import Layout
    return Layout(batch_sizes, reverse=False)


# -- the kernels alone, against torch's math ------------------------------------------------------------

EXTREMES = [0.0, -0.0, 1e-30, -1e-30, 1e-4, 0.5, -3.0, 20.0, -20.0, 87.0, -88.0, 89.0, -104.0, 1e30, -1e30,
            float("inf"), float("-inf")]


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_kernel_equals_torch_everywhere(dtype):
    x = torch.cat([torch.linspace(-30, 30, 100_001, dtype=dtype), torch.tensor(EXTREMES, dtype=dtype)])
    expected = torch.tanh(x.double())
    got = cpu_kernels.tanh_(x.clone())
    torch.testing.assert_close(got.double(), expected, atol=3e-7 if dtype == torch.float32 else 1e-15, rtol=0)
    nan = cpu_kernels.tanh_(torch.tensor([float("nan")] * 17, dtype=dtype))
    assert torch.isnan(nan).all(), "NaN must come out as NaN (a non-finite loss has to stay visible)"


def lstm_step_reference(z, c_prev):
    """The eager math of one LSTM step in float64: (f, c, m, k) as LSTMFunction defines them."""
    i, f, g, o = z.double().chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c_prev.double() + i * g
    tc = c.tanh()
    m = o * tc
    k = torch.cat([g * i * (1 - i), c_prev.double() * f * (1 - f), i * (1 - g * g), m * (1 - o), o * (1 - tc * tc)], 1)
    return f, c, m, k


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,H", [(1, 1), (3, 5), (64, 128), (2, 33)])
def test_lstm_forward_kernel_equals_the_eager_math(dtype, b, H):
    gen = torch.Generator().manual_seed(b * 100 + H)
    z = (torch.randn(b, 4 * H, generator=gen, dtype=dtype) * 4)
    z.view(-1)[: len(EXTREMES)] = torch.tensor(EXTREMES[: z.numel()], dtype=dtype)[: z.numel()]
    c_prev = torch.randn(b, H, generator=gen, dtype=dtype)
    f, c_ref, m_ref, k_ref = lstm_step_reference(z, c_prev)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-14, "rtol": 1e-13}
    for training in (True, False):
        z_run, c, m = z.clone(), torch.empty(b, H, dtype=dtype), torch.empty(b, H, dtype=dtype)
        k = torch.empty(b, 5 * H, dtype=dtype) if training else None
        cpu_kernels.lstm_forward_step(z_run, c_prev, c, m, k)
        torch.testing.assert_close(c.double(), c_ref, **tol)
        torch.testing.assert_close(m.double(), m_ref, **tol)
        if training:
            torch.testing.assert_close(z_run[:, H : 2 * H].double(), f, **tol)
            torch.testing.assert_close(k.double(), k_ref, **tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lstm_forward_kernel_lets_nan_through(dtype):
    """A NaN in any gate's pre-activation comes out as NaN in c and m, in the vectorised units (the
    first 16) and in the tail (the last 3): a diverging run must stay visible."""
    b, H = 2, 19
    for gate in range(4):
        z = torch.zeros(b, 4 * H, dtype=dtype)
        z[:, gate * H + 3] = z[:, gate * H + 17] = float("nan")
        c, m = torch.zeros(b, H, dtype=dtype), torch.zeros(b, H, dtype=dtype)
        cpu_kernels.lstm_forward_step(z, torch.zeros(b, H, dtype=dtype), c, m, torch.empty(b, 5 * H, dtype=dtype))
        for out in (c, m) if gate != 3 else (m,):  # o only reaches m
            assert out[:, [3, 17]].isnan().all(), (gate, out)
            assert not out[:, [0, 4, 16, 18]].isnan().any()


@needs_kernels
@pytest.mark.parametrize("with_d_out", [True, False])
def test_lstm_backward_kernel_equals_the_eager_math(with_d_out):
    gen = torch.Generator().manual_seed(7)
    b, H = 5, 7
    new = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    dm, d_out, dc, k, acts = new(b, H), new(b, H), new(b, H), new(b, 5 * H), new(b, 4 * H)
    d = dm + d_out if with_d_out else dm
    k_i, k_f, k_g, k_o, k_c = k.chunk(5, 1)
    dc_new = dc + d * k_c
    expected_dz = torch.cat([dc_new * k_i, dc_new * k_f, dc_new * k_g, d * k_o], 1)
    dz, dc_run = torch.empty(b, 4 * H, dtype=torch.float64), dc.clone()
    cpu_kernels.lstm_backward_step(dm, d_out if with_d_out else None, dc_run, k, acts, dz)
    torch.testing.assert_close(dz, expected_dz, **TIGHT)
    torch.testing.assert_close(dc_run, dc_new * acts[:, H : 2 * H], **TIGHT)


@needs_kernels
def test_kernels_refuse_rows_of_the_wrong_width():
    z = torch.zeros(4, 8)[:, :4]  # rows of width 4 inside a buffer of width 8: not what the kernel indexes
    with pytest.raises(ValueError, match="rows of width 4"):
        cpu_kernels.lstm_forward_step(z, torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 1), None)
    with pytest.raises(ValueError, match="contiguous"):
        cpu_kernels.tanh_(torch.zeros(4, 4).t())


# -- building, and not building --------------------------------------------------------------------------


@pytest.fixture
def fresh_library(monkeypatch):
    """Forget the loaded library for the test, and restore it after."""
    cpu_kernels._library.cache_clear()
    yield
    monkeypatch.undo()
    cpu_kernels._library.cache_clear()


def test_without_a_compiler_the_fused_path_warns_once_and_runs_eager(fresh_library, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_compiler", lambda: None)
    with pytest.warns(RuntimeWarning, match="could not be built.*no C\\+\\+ compiler"):
        assert not cpu_kernels.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning came once; later calls are silent
        assert backends.step_kernels(torch.zeros(1)) is eager_steps
        ours, ref = fused_pair("lstm", 3, 4)
        assert_same(ours, ref, *layer_inputs("lstm", ours, 3, 2), **TIGHT)


def test_a_failing_build_warns_with_the_compiler_output(fresh_library, monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", broken)
    monkeypatch.setenv("RNN_BY_HAND_CACHE", str(tmp_path / "cache"))
    with pytest.warns(RuntimeWarning, match="could not be built.*exited with"):
        assert not cpu_kernels.available()
    assert not list((tmp_path / "cache").glob("*.so")), "no half-built library is left behind"


def test_the_variable_turns_the_kernels_off_silently(fresh_library, monkeypatch):
    monkeypatch.setenv("RNN_BY_HAND_CPU_KERNELS", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpu_kernels.available()
        assert backends.step_kernels(torch.zeros(1)) is eager_steps


@needs_kernels
def test_a_build_goes_to_the_cache_folder_and_is_reused(fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("RNN_BY_HAND_CACHE", str(tmp_path))
    assert cpu_kernels.available()
    (built,) = tmp_path.glob("cpu_kernels-*.so")
    stamp = built.stat().st_mtime_ns
    cpu_kernels._library.cache_clear()
    assert cpu_kernels.available()
    assert built.stat().st_mtime_ns == stamp, "the cached build was used, not rebuilt"
    assert [p.name for p in tmp_path.iterdir()] == [built.name], "no temporary files left"


@needs_kernels
def test_gru_backward_direct_kernel_equals_the_eager_math():
    """The GRU backward step, which computes its factors itself, against GRUFunction's formulas."""
    gen = torch.Generator().manual_seed(8)
    b, H = 4, 6
    new = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    dh, d_out, hh, h_prev = new(b, H), new(b, H), new(b, 3 * H), new(b, H)
    rz, n = new(b, 2 * H).sigmoid(), new(b, H).tanh()
    r, z, hh_n = rz[:, :H], rz[:, H:], hh[:, 2 * H :]
    d = dh + d_out
    k_n = (1 - z) * (1 - n * n)
    expected_d_hh = torch.cat([d * k_n * hh_n * r * (1 - r), d * (h_prev - n) * z * (1 - z), d * k_n * r], 1)
    d_hh, d_xn = torch.empty(b, 3 * H, dtype=torch.float64), torch.empty(b, H, dtype=torch.float64)
    cpu_kernels.gru_backward_step(dh, d_out, rz, n, hh, h_prev, d_hh, d_xn)
    torch.testing.assert_close(d_hh, expected_d_hh, **TIGHT)
    torch.testing.assert_close(d_xn, d * k_n, **TIGHT)
    torch.testing.assert_close(dh, d * z, **TIGHT)


# The kernels pick their vector code by what the compiler targets (-march=native): AVX-512, AVX2 or
# plain. These builds narrow the target on an x86 machine, so that every variant is checked on
# whichever x86 CPU runs the tests, not only the widest it has.
NARROWER_TARGETS = {"avx2": ["-mno-avx512f"], "sse": ["-mno-avx512f", "-mno-avx2", "-mno-fma"]}


@needs_kernels
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 instruction sets")
@pytest.mark.parametrize("target", sorted(NARROWER_TARGETS))
def test_a_build_for_a_narrower_instruction_set_gives_the_same_numbers(target, fresh_library, monkeypatch, tmp_path):
    monkeypatch.setenv("RNN_BY_HAND_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "BUILDS", [[*cpu_kernels.FLAGS, *NARROWER_TARGETS[target]]])
    assert cpu_kernels.available(), "the narrower build failed"
    whole_model_split = cpu_kernels.split
    for kind in LAYERS:
        for threads, by_rows in [(1, True), (2, False)]:  # float64, a step shared by rows and by units
            monkeypatch.setattr(cpu_kernels, "split", lambda batch, weight: (threads, by_rows))
            ours, ref = fused_pair(kind, 3, 40, bidirectional=True)
            assert_same(ours, ref, *layer_inputs(kind, ours, 5, 13), **TIGHT)
        monkeypatch.setattr(cpu_kernels, "split", whole_model_split)  # float32, as a training run has it
        ours, ref = fused_pair(kind, 28, 48, dtype=torch.float32)
        x, hx = layer_inputs(kind, ours, 28, 16)
        (out_a, gin_a, gp_a), (out_b, gin_b, gp_b) = [forward_and_grads(m, clone_inputs([x, hx])) for m in (ours, ref)]
        for a, b in zip([*out_a, *gin_a, *gp_a.values()], [*out_b, *gin_b, *gp_b.values()]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-6 * max(1.0, b.abs().max().item()))
    assert len(list(tmp_path.glob("cpu_kernels-*.so"))) == 1, "the narrower build was the one loaded"


# -- the time-independent matmuls in the kernels' own matmul ----------------------------------------------


def operand(rows, cols, transposed, dtype):
    """A (rows, cols) matrix, row-major or as the `.t()` view of a row-major (cols, rows) one."""
    return torch.randn(cols, rows, dtype=dtype).t() if transposed else torch.randn(rows, cols, dtype=dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (13, 5, 33), (29, 600, 17), (300, 513, 70), (40, 20, 300)])
def test_the_matmul_kernel_equals_torch_mm_for_every_layout(dtype, threads, M, K, N):
    """cpu_kernels.matmul against torch.mm / addmm, each operand row-major or transposed, with and
    without a bias: sizes across its register rows (14 or 6), panels (16 or 32 columns), k-blocks
    (512), row blocks and the split of rows (tall) or columns (wide) among threads."""
    torch.manual_seed(M * 7 + N)
    tolerance = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.float64: TIGHT}[dtype]
    bias = torch.randn(N, dtype=dtype)
    for a_t in (False, True):
        for b_t in (False, True):
            a, b = operand(M, K, a_t, dtype), operand(K, N, b_t, dtype)
            torch.testing.assert_close(cpu_kernels.matmul(a, b, threads=threads), torch.mm(a, b), **tolerance)
            out = torch.full((M, N), float("nan"), dtype=dtype)  # every value is written, none read
            got = cpu_kernels.matmul(a, b, bias=bias, out=out, threads=threads)
            assert got is out
            torch.testing.assert_close(got, torch.addmm(bias, a, b), **tolerance)


@needs_kernels
def test_the_matmul_kernel_copies_a_layout_it_cannot_read_and_refuses_a_wrong_shape():
    a = torch.randn(6, 8, dtype=torch.float64)[:, ::2]  # neither rows nor columns contiguous
    b = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(cpu_kernels.matmul(a, b), a @ b, **TIGHT)
    with pytest.raises(ValueError, match="cannot multiply"):
        cpu_kernels.matmul(a, torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="out must be a contiguous"):
        cpu_kernels.matmul(a, b, out=torch.empty(3, 6, dtype=torch.float64).t())


@needs_kernels
@pytest.mark.parametrize("own", [True, False])
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("num_layers,bidirectional,proj_size,lengths,with_state", LAYER_OPTIONS)
def test_the_layers_equal_torch_with_either_matmul(kind, num_layers, bidirectional, proj_size, lengths,
                                                   with_state, own, monkeypatch):
    """Every layer option, float64, with the input projection, dx and the weight gradients in the
    kernels' own matmul and in torch.mm, whichever this machine picks by default (own_matmul); the
    size floor is lowered so that these small layers take the kernel too."""
    from models import projection
    monkeypatch.setattr(projection, "OWN_MATMUL_MIN", 1)
    before = cpu_kernels.set_own_matmul(own)
    try:
        ours, ref = fused_pair(kind, 3, 4, num_layers=num_layers, bidirectional=bidirectional)
        assert_same(ours, ref, *layer_inputs(kind, ours, 5, 4, lengths, with_state), **TIGHT)
        if kind == "lstm":
            ours, ref = fused_pair("lstm", 3, 5, num_layers=2, bidirectional=True, proj_size=2)
            assert_same(ours, ref, *layer_inputs("lstm", ours, 4, 3, [4, 1, 3], True), **TIGHT)
    finally:
        cpu_kernels.set_own_matmul(before)


@needs_kernels
@pytest.mark.parametrize("vendor,vector_bytes,mkl,expected", [
    ("AuthenticAMD", 64, True, True),  # MKL runs its 256-bit code on a 512-bit CPU: ours
    ("GenuineIntel", 64, True, False),  # MKL's own AVX-512 code
    ("AuthenticAMD", 32, True, False),  # a 256-bit build: MKL's 256-bit code is as wide
    ("AuthenticAMD", 64, False, False),  # no MKL: whatever BLAS torch has
    (None, 64, True, False),  # a vendor /proc/cpuinfo does not name
])
def test_which_machines_run_the_large_matmuls_in_the_kernels_own(vendor, vector_bytes, mkl, expected, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    monkeypatch.setattr(cpu_kernels, "_library", lambda: type("Lib", (), {"vector_bytes": lambda self: vector_bytes})())
    cpu_kernels._default_own_matmul.cache_clear()
    try:
        assert cpu_kernels._default_own_matmul() is expected
        assert not cpu_kernels.own_matmul(torch.zeros(1, dtype=torch.float16))  # the kernels take no half
    finally:
        cpu_kernels._default_own_matmul.cache_clear()
    before = cpu_kernels.set_own_matmul(not expected)
    try:
        assert cpu_kernels.own_matmul(torch.zeros(1)) is (not expected)  # the switch decides over the default
    finally:
        cpu_kernels.set_own_matmul(before)
