"""The layers against torch.nn.RNN / LSTM / GRU with weights copied through state_dict.

Every option of the constructor and every input form (batched, batch_first, unbatched, packed with
unsorted lengths, with and without initial states), for every implementation (`impl`), in float64
at 1e-10: outputs, final states, and gradients of the input, initial states and every parameter.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

import models
from reference import DEVICES, LAYERS, TIGHT, assert_equivalent, clone_inputs, impls, layer_pair, leaves

IMPLS = impls()


def make_inputs(kind, *, input_size, hidden_size, num_layers=1, bidirectional=False, proj_size=0,
                batch_first=False, form="batched", batch=3, seq_len=4, lengths=None, with_state=True,
                dtype=torch.float64, device="cpu", seed=1):
    """form: "batched", "unbatched" or "packed" (lengths: one per sequence, any order)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).to(device).requires_grad_(True)  # noqa: E731
    if form == "packed":
        lengths = lengths or [seq_len] * batch
        x = pack_sequence([rand(n, input_size) for n in lengths], enforce_sorted=False)
        batch = len(lengths)
    elif form == "unbatched":
        x = rand(seq_len, input_size)
    else:
        x = rand(batch, seq_len, input_size) if batch_first else rand(seq_len, batch, input_size)
    if not with_state:
        return [x]
    layers = num_layers * (2 if bidirectional else 1)
    shape = (layers,) if form == "unbatched" else (layers, batch)
    h0 = rand(*shape, proj_size or hidden_size)
    return [x, (h0, rand(*shape, hidden_size)) if kind == "lstm" else h0]


def check(kind, impl="auto", dtype=torch.float64, device="cpu", tol=TIGHT, seed=0, input_size=3,
          hidden_size=5, layer_options=(), **input_options):
    options = dict(layer_options)
    ours, ref = layer_pair(kind, input_size, hidden_size, impl, dtype, device, seed, **options)
    shape_options = {k: options[k] for k in ("num_layers", "bidirectional", "proj_size", "batch_first") if k in options}
    inputs = make_inputs(kind, input_size=input_size, hidden_size=hidden_size, dtype=dtype, device=device,
                         **shape_options, **input_options)
    assert_equivalent(ours, ref, inputs, clone_inputs(inputs), **(tol or {}))


OPTIONS = [
    {},
    {"bias": False},
    {"num_layers": 3},
    {"bidirectional": True},
    {"num_layers": 2, "bidirectional": True},
    {"batch_first": True},
    {"num_layers": 2, "dropout": 0.5},  # eval mode below: dropout off, as in torch
]
LSTM_OPTIONS = [
    {"proj_size": 2},
    {"proj_size": 1, "num_layers": 2, "bidirectional": True},
    {"proj_size": 3, "num_layers": 2, "batch_first": True, "bias": False},
]
FORMS = [
    {"form": "batched"},
    {"form": "batched", "with_state": False},
    {"form": "unbatched"},
    {"form": "unbatched", "with_state": False},
    {"form": "packed", "lengths": [2, 4, 1, 3]},
    {"form": "packed", "lengths": [3, 3, 1], "with_state": False},
    {"form": "batched", "batch": 1, "seq_len": 1},
]


def cases():
    """(kind, layer options, input form); batch_first only changes batched tensors, so it pairs with those."""
    for kind in LAYERS:
        for options in OPTIONS + (LSTM_OPTIONS if kind == "lstm" else []):
            for form in FORMS:
                if not options.get("batch_first") or form["form"] == "batched":
                    yield pytest.param(kind, options, form, id="-".join(
                        [kind, ",".join(f"{k}={v}" for k, v in options.items()) or "default"]
                        + [f"{k}={v}" for k, v in form.items()]))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind,options,form", list(cases()))
def test_layer_equals_torch(kind, options, form, impl):
    check(kind, impl, layer_options=options, **form)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("device", DEVICES)
def test_layer_on_device(kind, impl, device):
    check(kind, impl, device=device, layer_options={"num_layers": 2, "bidirectional": True},
          form="packed", lengths=[1, 4, 2])
    check(kind, impl, device=device, layer_options={"num_layers": 2}, form="batched")


@st.composite
def layer_cases(draw):
    kind = draw(st.sampled_from(sorted(LAYERS)))
    hidden_size = draw(st.integers(1, 6))
    options = {
        "num_layers": draw(st.integers(1, 3)),
        "bias": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
    }
    if kind == "lstm" and hidden_size > 1 and draw(st.booleans()):
        options["proj_size"] = draw(st.integers(1, hidden_size - 1))
    form = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    inputs = {"form": form, "with_state": draw(st.booleans()), "seq_len": draw(st.integers(1, 5))}
    if form == "batched":
        options["batch_first"] = draw(st.booleans())
        inputs["batch"] = draw(st.integers(1, 4))
    if form == "packed":
        inputs["lengths"] = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    return kind, draw(st.integers(1, 5)), hidden_size, options, inputs


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None)
@given(case=layer_cases(), seed=st.integers(0, 2**16))
def test_layer_equals_torch_drawn(impl, case, seed):
    kind, input_size, hidden_size, options, inputs = case
    check(kind, impl, seed=seed, input_size=input_size, hidden_size=hidden_size, layer_options=options, **inputs)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", LAYERS)
def test_layer_float32_at_torch_defaults(kind, impl):
    options = {"num_layers": 2, "bidirectional": True, **({"proj_size": 8} if kind == "lstm" else {})}
    check(kind, impl, dtype=torch.float32, tol=None, input_size=10, hidden_size=16, layer_options=options,
          batch=6, seq_len=12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_784_steps_stay_finite_and_equal_in_float32(kind, impl):
    """Pixel-by-pixel MNIST length: long enough for drift or overflow to show."""
    ours, ref = layer_pair(kind, 1, 32, impl, dtype=torch.float32)
    x = torch.randn(784, 4, 1)
    out, state = ours(x)
    ref_out, ref_state = ref(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(state, ref_state)


@pytest.mark.parametrize("kind", LAYERS)
def test_packed_output_matches_padded_per_sequence(kind):
    """Packing is only bookkeeping: each sequence alone gives the same output and final state."""
    ours, _ = layer_pair(kind, 3, 4, num_layers=2, bidirectional=True)
    lengths = [2, 5, 3]
    seqs = [torch.randn(n, 3, dtype=torch.float64) for n in lengths]
    out, state = ours(pack_sequence(seqs, enforce_sorted=False))
    padded, out_lengths = pad_packed_sequence(out)
    assert out_lengths.tolist() == lengths
    h = state[0] if kind == "lstm" else state
    for b, seq in enumerate(seqs):
        alone, alone_state = ours(seq)
        alone_h = alone_state[0] if kind == "lstm" else alone_state
        torch.testing.assert_close(padded[: lengths[b], b], alone, **TIGHT)
        torch.testing.assert_close(h[:, b], alone_h, **TIGHT)


def test_pack_padded_sequence_sorted_input():
    ours, ref = layer_pair("lstm", 3, 4)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    packed = pack_padded_sequence(x, [5, 3, 2])
    inputs = [packed]
    assert_equivalent(ours, ref, inputs, clone_inputs(inputs), **TIGHT)


@pytest.mark.parametrize("kind", LAYERS)
def test_state_dict_round_trip_both_ways(kind):
    ours_cls, ref_cls, kwargs = LAYERS[kind]
    options = {"num_layers": 2, "bidirectional": True, **({"proj_size": 3} if kind == "lstm" else {})}
    ours, ref = ours_cls(4, 6, **kwargs, **options), ref_cls(4, 6, **kwargs, **options)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ref.load_state_dict(ours.state_dict(), strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])
    ours.load_state_dict(ref_cls(4, 6, **kwargs, **options).state_dict(), strict=True)


def test_dropout_between_layers_in_training_only():
    torch.manual_seed(0)
    layer = models.LSTM(3, 8, num_layers=2, dropout=0.9)
    x = torch.randn(6, 2, 3)
    layer.eval()
    assert torch.equal(layer(x)[0], layer(x)[0])
    layer.train()
    a, b = layer(x)[0], layer(x)[0]
    assert not torch.equal(a, b)  # a fresh mask each call
    # the last layer's output is not dropped: no exact zeros appear in it from dropout
    single = models.LSTM(3, 8, num_layers=1)
    assert (single(x)[0] != 0).all()


def test_modules_compose_like_torch():
    """Things people do with torch.nn layers: repr, flatten_parameters, all_weights, .to(), .double()."""
    layer = models.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2)
    layer.flatten_parameters()
    assert [[w.shape for w in ws] for ws in layer.all_weights] == [[w.shape for w in ws] for ws in ref.all_weights]
    assert "proj_size=2" in repr(layer)
    layer = layer.double()
    out, (h, c) = layer(torch.randn(5, 2, 3, dtype=torch.float64))
    assert out.shape == (5, 2, 4) and h.shape == (4, 2, 2) and c.shape == (4, 2, 4)


@pytest.mark.parametrize("kind", LAYERS)
def test_gate_trace_matches_the_layer(kind):
    ours, _ = layer_pair(kind, 3, 4)
    x = torch.randn(6, 3, dtype=torch.float64)
    trace = ours.gate_trace(x)
    expected = {"lstm": {"i", "f", "g", "o", "c", "h"}, "gru": {"r", "z", "n", "h"}}.get(kind, {"h"})
    assert set(trace) == expected
    for v in trace.values():
        assert v.shape == (6, 4)
    out, _ = ours(x)
    torch.testing.assert_close(trace["h"], out, **TIGHT)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", LAYERS)
def test_empty_batch_like_torch(kind, impl):
    options = {"bidirectional": True, **({"proj_size": 2} if kind == "lstm" else {})}
    ours, ref = layer_pair(kind, 3, 4, impl, **options)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    for a, b in zip(leaves(ours(x)), leaves(ref(x))):
        assert a.shape == b.shape
