"""Whatever a PyTorch user does with torch.nn's recurrent layers works with ours, with the same result.

Each test runs one everyday workflow — evaluate under inference_mode, train under autocast, modify an
output in place, take a gradient of a gradient, use torch.func, trace, compile, checkpoint, copy,
hand outputs to another process — with ours and with torch.nn (weights copied by name), and compares
the numbers: float64 at 1e-10 where the computation is deterministic, the autocast dtype's tolerance
under autocast. Every `impl` is covered: "auto" is what a user gets, "fused" forces the fast path
wherever the workflow allows it, "readable" is the plain unroll.
"""
import copy
import io
import warnings

import pytest
import torch
import torch.multiprocessing
from torch import nn
from torch.func import functional_call, grad, jvp, vmap
from torch.nn.utils.rnn import pack_sequence
from torch.utils.checkpoint import checkpoint

import cells
import models
from reference import CELLS, LAYERS, TIGHT, cell_pair, forward_and_grads, impls, layer_pair, leaves

KINDS = list(LAYERS)  # rnn_tanh, rnn_relu, lstm, gru
IMPLS = impls()
BF16 = {"atol": 2e-2, "rtol": 2e-2}  # two bf16 roundings of numbers of order one


def assert_all_close(a, b, **tol):
    a, b = leaves(a), leaves(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype, f"dtype {x.dtype} != torch.nn's {y.dtype}"
        torch.testing.assert_close(x, y, **(tol or TIGHT))


def param_grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


def sequences(steps=6, batch=3, size=3, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(steps, batch, size, generator=gen, dtype=dtype)


# -- evaluation under inference_mode between training steps ------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_under_inference_mode_then_train(kind, impl):
    """Several epochs of evaluate under inference_mode → train, starting with an evaluation, at sizes
    no other test uses and large enough for the buffers kept across calls: training after an
    evaluation neither fails nor drifts from torch.nn, for this module and for another of its size."""
    hidden = {"auto": 37, "readable": 38, "fused": 39}[impl]
    ours, ref = layer_pair(kind, 5, hidden, impl=impl, num_layers=2)
    heads = [nn.Linear(hidden, 1, dtype=torch.float64) for _ in range(2)]
    heads[0].load_state_dict(heads[1].state_dict())
    optims = [torch.optim.SGD([*m.parameters(), *h.parameters()], lr=0.1) for m, h in zip((ours, ref), heads)]
    x, y = sequences(29, 61, 5), torch.randn(61, 1, dtype=torch.float64)
    for epoch in range(3):
        with torch.inference_mode():
            evaluated = [module(x + epoch) for module in (ours, ref)]
        assert_all_close(*evaluated)
        for module, head, optim in zip((ours, ref), heads, optims):
            optim.zero_grad()
            loss = (head(module(x)[0][-1]) - y).pow(2).mean()
            loss.backward()
            optim.step()
        torch.testing.assert_close(ours.weight_hh_l1, ref.weight_hh_l1, **TIGHT)
    other, other_ref = layer_pair(kind, 5, hidden, impl=impl, num_layers=2, seed=3)
    results = []
    for module in (other, other_ref):
        outs, input_grads, grads = forward_and_grads(module, [x.clone().requires_grad_()])
        results.append([*outs, *input_grads, *grads.values()])
    assert_all_close(*results)


# -- outputs belong to the caller ------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_outputs_kept_across_calls_stay_intact(kind, impl):
    ours, _ = layer_pair(kind, 5, 64, impl=impl)
    kept = []
    with torch.no_grad():
        for seed in range(4):
            out, _ = ours(sequences(28, 64, 5, seed=seed))
            kept.append((out, out.clone()))
    for out, at_return in kept:
        assert torch.equal(out, at_return)


def _receive(queue, done, results):
    """Child process: hold what the parent sends until it has run further calls, then compare."""
    torch.set_num_threads(1)
    received = [queue.get() for _ in range(4)]
    done.wait(60)
    results.put(max((sent - copy_at_send).abs().max().item() for sent, copy_at_send in received))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_outputs_sent_to_another_process_are_not_overwritten(kind):
    """A torch.multiprocessing queue moves a tensor's memory to shared memory; later calls of the layer
    must not write into it while the receiver reads it."""
    context = torch.multiprocessing.get_context("spawn")
    queue, done, results = context.Queue(), context.Event(), context.Queue()
    child = context.Process(target=_receive, args=(queue, done, results))
    child.start()
    try:
        ours, _ = layer_pair(kind, 5, 64, dtype=torch.float32)  # outputs large enough to be pooled
        with torch.no_grad():
            for seed in range(4):
                out, _ = ours(sequences(28, 64, 5, seed=seed, dtype=torch.float32))
                queue.put((out, out.clone()))
            for seed in range(4, 8):  # what would reuse the memory of the outputs sent
                ours(sequences(28, 64, 5, seed=seed, dtype=torch.float32))
        done.set()
        assert results.get(timeout=60) == 0.0
    finally:
        child.join(60)
        if child.is_alive():
            child.kill()


# -- autocast ------------------------------------------------------------------------------------------


def _reference_under_autocast(module, *args):
    # torch.nn.LSTM on the CPU runs oneDNN's LSTM, which under bf16 autocast can fail (it does on the
    # development machine's CPU) or take another path than the portable one; the portable path, the
    # one ours follows, is taken with oneDNN off, on every CPU.
    with torch.backends.mkldnn.flags(enabled=False), torch.autocast("cpu", dtype=torch.bfloat16):
        return module(*args)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_layers_under_cpu_autocast(kind, input_dtype):
    """Inputs in the autocast dtype are accepted; output dtypes and values follow torch.nn; every impl
    gives the same numbers; the weights' gradients are float32 and close to torch.nn's."""
    results = []
    for impl in IMPLS:
        ours, ref = layer_pair(kind, 5, 8, impl=impl, dtype=torch.float32, num_layers=2)
        x = sequences(7, 3, 5, dtype=torch.float32).to(input_dtype)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ours(x)
        expected = _reference_under_autocast(ref, x)
        assert_all_close(got, expected, **BF16)
        sum(o.float().sum() for o in leaves(got)).backward()
        sum(o.float().sum() for o in leaves(expected)).backward()
        for name, g in param_grads(ours).items():
            expected_grad = param_grads(ref)[name]
            assert g.dtype == torch.float32
            # sums over steps of bf16 products: compare against the gradient's own scale
            torch.testing.assert_close(g, expected_grad, atol=0.05 * expected_grad.abs().max().item(), rtol=0.05)
        results.append(got)
    for other in results[1:]:
        assert_all_close(other, results[0], atol=0, rtol=0)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_under_cpu_autocast(kind, input_dtype):
    ours, ref = cell_pair(kind, 5, 8, dtype=torch.float32)
    x = torch.randn(3, 5).to(input_dtype)
    state = torch.randn(3, 8)
    hx = (state, state) if kind == "lstm" else state
    for args in ((x,), (x, hx)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, expected = ours(*args), ref(*args)
        assert_all_close(got, expected, **BF16)


# -- in-place ops on outputs ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"batch_first": True}, {"bidirectional": True}, {"num_layers": 2}],
                         ids=["plain", "batch_first", "bidirectional", "two_layers"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_inplace_ops_on_outputs(kind, impl, options):
    ours, ref = layer_pair(kind, impl=impl, **options)
    results = []
    for module in (ours, ref):
        x = sequences().requires_grad_()
        out, state = module(x)
        h_n = state[0] if kind == "lstm" else state
        out.mul_(2)
        out.relu_()
        h_n.add_(1)
        (out.pow(2).sum() + h_n.pow(2).sum()).backward()
        results.append((out, h_n, x.grad, *param_grads(module).values()))
    assert_all_close(*results)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_inplace_on_unbatched_and_packed_outputs(kind, impl):
    ours, ref = layer_pair(kind, impl=impl)
    results = []
    for module in (ours, ref):
        x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
        out, _ = module(x)
        out.tanh_()
        packed, _ = module(pack_sequence([x, x[:3]], enforce_sorted=False))
        packed.data.mul_(3)
        (out.sum() + packed.data.pow(2).sum()).backward()
        results.append((out, packed.data, x.grad, *param_grads(module).values()))
    assert_all_close(*results)


# -- higher derivatives ----------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_penalty_equals_torch(kind, impl):
    """A loss with ‖∂out/∂x‖² (create_graph=True) back-propagates its second-order part, as torch.nn does."""
    ours, ref = layer_pair(kind, impl=impl, bidirectional=True)
    results = []
    for module in (ours, ref):
        x = sequences().requires_grad_()
        out, _ = module(x)
        (dx,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
        (out.pow(2).mean() + dx.pow(2).sum()).backward()
        results.append((dx, *param_grads(module).values()))
    assert_all_close(*results)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradgradcheck(kind, impl):
    ours, _ = layer_pair(kind, 2, 3, impl=impl)
    x = sequences(3, 2, 2).requires_grad_()
    h0 = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = (h0, torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)) if kind == "lstm" else h0
    weights = (ours.weight_hh_l0, ours.bias_ih_l0)

    def fn(x, *state_and_weights):
        return leaves(functional_call(ours, {"weight_hh_l0": state_and_weights[-2], "bias_ih_l0": state_and_weights[-1]},
                                      (x, tuple(state_and_weights[:-2]) if kind == "lstm" else state_and_weights[0])))

    inputs = (x, *leaves([hx]), *weights)
    assert torch.autograd.gradgradcheck(fn, inputs)


# -- torch.func and batched gradients ---------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_func_grad_over_functional_call(kind, impl):
    ours, ref = layer_pair(kind, impl=impl)
    x = sequences()
    got = [grad(lambda p, m=m: functional_call(m, p, (x,))[0].pow(2).sum())(dict(m.named_parameters()))
           for m in (ours, ref)]
    assert got[0].keys() == got[1].keys()
    assert_all_close(list(got[0].values()), list(got[1].values()))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_func_jvp_and_forward_ad(kind, impl):
    ours, ref = layer_pair(kind, impl=impl)
    x, tangent = sequences(seed=1), sequences(seed=2)
    got = jvp(lambda x: ours(x)[0], (x,), (tangent,))
    try:
        expected = jvp(lambda x: ref(x)[0], (x,), (tangent,))
    except RuntimeError as error:  # torch.nn's CPU LSTM has no forward-mode rule on some builds
        pytest.skip(f"torch.nn has no jvp here: {error}")
    assert_all_close(got, expected)
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        out = ours(fwAD.make_dual(x, tangent))[0]
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, expected[1], **TIGHT)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_sequences(kind, impl):
    """torch.nn's layers have no batching rule (vmap fails there); ours run under vmap, and equal
    torch.nn applied to each sequence in turn."""
    ours, ref = layer_pair(kind, impl=impl)
    xs = sequences(6, 4, 3).unsqueeze(2)  # (T, 4, 1, I): vmap over dim 1, each a batch of one
    expected = torch.stack([ref(xs[:, i])[0] for i in range(xs.shape[1])])
    assert_all_close(vmap(lambda x: ours(x)[0], in_dims=1)(xs), expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_batched_gradients(kind, impl):
    """is_grads_batched, jacobian(vectorize=True) and gradcheck(check_batched_grad=True) run the
    backward under vmap."""
    ours, ref = layer_pair(kind, 2, 3, impl=impl)
    x = sequences(4, 2, 2)
    results = []
    for module in (ours, ref):
        xg = x.clone().requires_grad_()
        out, _ = module(xg)
        seeds = torch.randn(5, *out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        (batched,) = torch.autograd.grad(out, xg, seeds, is_grads_batched=True)
        jac = torch.autograd.functional.jacobian(lambda x, m=module: m(x)[0], x, vectorize=True)
        results.append((batched, jac))
    assert_all_close(*results)
    assert torch.autograd.gradcheck(lambda x: ours(x)[0], (x[:, :1].clone().requires_grad_(),),
                                    check_batched_grad=True)


# -- tracing and compiling ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_jit_trace_works_for_the_traced_length_and_says_so(kind):
    ours, ref = layer_pair(kind)
    x = sequences()
    with pytest.warns(torch.jit.TracerWarning, match="sequence length"):
        traced = torch.jit.trace(ours, x, check_trace=False)
    xg = x.clone().requires_grad_()
    assert_all_close(traced(xg), ref(x))
    traced(xg)[0].sum().backward()
    expected = x.clone().requires_grad_()
    ref(expected)[0].sum().backward()
    torch.testing.assert_close(xg.grad, expected.grad, **TIGHT)


def _compiled_equals_eager(kind, backend):
    ours, ref = layer_pair(kind, dtype=torch.float32)
    compiled = torch.compile(ours, backend=backend)
    results = []
    for module in (compiled, ref):
        x = sequences(dtype=torch.float32).requires_grad_()
        out, _ = module(x)
        out.pow(2).sum().backward()
        results.append((out, x.grad, *param_grads(ours if module is compiled else ref).values()))
    assert_all_close(*results, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_compile(kind):
    torch._dynamo.reset()
    _compiled_equals_eager(kind, "aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor():
    """The default backend, which generates C++ on the CPU (about 20 s here)."""
    torch._dynamo.reset()
    _compiled_equals_eager("gru", "inductor")


# -- checkpointing, copies, pickles ---------------------------------------------------------------------


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_activation_checkpointing(kind, impl, use_reentrant):
    ours, ref = layer_pair(kind, 5, 32, impl=impl)
    head = nn.Linear(32, 1, dtype=torch.float64)
    results = []
    for module, wrap in ((ours, True), (ref, False)):
        module.zero_grad()
        x = sequences(28, 64, 5).requires_grad_()
        run = lambda x, m=module: head(m(x)[0]).sum()  # noqa: E731
        loss = checkpoint(run, x, use_reentrant=use_reentrant) if wrap else run(x)
        loss.backward()
        results.append((loss, x.grad, *param_grads(module).values()))
    assert_all_close(*results)


@pytest.mark.parametrize("kind", KINDS)
def test_deepcopy_pickle_and_state_dict(kind):
    ours, ref = layer_pair(kind, num_layers=2, bidirectional=True)
    x = sequences()
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(ours), torch.load(buffer, weights_only=False)]
    for other in copies:
        assert_all_close(other(x), ref(x))
        other.weight_hh_l0.data.add_(1)  # a copy owns its weights
    assert_all_close(ours(x), ref(x))


# -- what torch.nn code reads from the modules ----------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"nonlinearity": "relu"}, {"num_layers": 2, "dropout": 0.5},
                                     {"bias": False, "batch_first": True, "bidirectional": True}])
@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_repr_is_torch_nn_s(name, options):
    if "nonlinearity" in options and name != "RNN":
        pytest.skip("nonlinearity is the RNN's option")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert repr(getattr(models, name)(3, 4, **options)) == repr(getattr(nn, name)(3, 4, **options))
    assert repr(models.LSTM(3, 4, proj_size=2)) == repr(nn.LSTM(3, 4, proj_size=2))


@pytest.mark.parametrize("options", [{}, {"bias": False}, {"nonlinearity": "relu"}])
@pytest.mark.parametrize("name", ["RNNCell", "LSTMCell", "GRUCell"])
def test_cell_repr_is_torch_nn_s(name, options):
    if "nonlinearity" in options and name != "RNNCell":
        pytest.skip("nonlinearity is the RNNCell's option")
    assert repr(getattr(cells, name)(3, 4, **options)) == repr(getattr(nn, name)(3, 4, **options))


@pytest.mark.parametrize("kind", KINDS)
def test_flat_weights_and_weight_norm(kind):
    """`_flat_weights` lists the weights in torch's order, as they are now (torch.nn code reads it)."""
    ours, ref = layer_pair(kind, num_layers=2, bidirectional=True)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert all(a is getattr(ours, n) for a, n in zip(ours._flat_weights, ours._flat_weights_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for module in (ours, ref):
            torch.nn.utils.weight_norm(module, name="weight_hh_l0")
    x = sequences()
    assert_all_close(ours(x), ref(x))
    count = lambda m: sum(isinstance(w, nn.Parameter) for w in m._flat_weights)  # noqa: E731
    assert count(ours) == count(ref) == len(ours._flat_weights) - 1


@pytest.mark.parametrize("kind", list(CELLS))
def test_cells_under_func_and_higher_derivatives(kind):
    """The cells are the readable step itself: torch.func, jvp, vmap and a gradient penalty as torch.nn's."""
    ours, ref = cell_pair(kind)
    x, tangent = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    results = []
    for module in (ours, ref):
        module.zero_grad()
        grads = grad(lambda p, m=module: first(functional_call(m, p, (x,))).pow(2).sum())(dict(module.named_parameters()))
        tangent_out = jvp(lambda x, m=module: first(m(x)), (x,), (tangent,))[1]
        batched = torch.stack([first(module(row)) for row in x])  # what vmap over rows must give
        if module is ours:  # torch.nn.LSTMCell has no batching rule; ours is plain torch ops
            torch.testing.assert_close(vmap(lambda row: first(ours(row)))(x), batched, **TIGHT)
        xg = x.clone().requires_grad_()
        out = first(module(xg))
        (dx,) = torch.autograd.grad(out.pow(2).sum(), xg, create_graph=True)
        (out.pow(2).mean() + dx.pow(2).sum()).backward()
        results.append((*grads.values(), tangent_out, batched, dx, *param_grads(module).values()))
    assert_all_close(*results)
