"""Tests of `python -m benchmarks`: a smoke run on a tiny shape, the parser's refusals, the check.

Everything runs in-process through `benchmarks.run.main(argv)` with a tiny `--min-run-time`, so the
file takes seconds. No test asserts a timing: the CI machine's speed says nothing about the code.
The reference every implementation is checked against before it is timed is `torch.nn.RNN`,
`torch.nn.LSTM` and `torch.nn.GRU`.
"""

import json
import subprocess
import sys
import pathlib

import pytest
import torch

from benchmarks import report, run
from benchmarks.run import BenchmarkError, Shape, main, parse_shape

TINY = ["--shapes", "2,3,4,5", "--min-run-time", "0.002", "--rounds", "1", "--threads", "1", "--quiet"]
ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of all three cells and implementations on a tiny shape, with every output file."""
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"b.{k}" for k in ("json", "markdown", "plot")}
    paths["plot"] = out / "b.png"
    argv = ["--device", "cpu", "--cells", "rnn,lstm,gru", *TINY,
            "--json", str(paths["json"]), "--markdown", str(paths["markdown"]), "--plot", str(paths["plot"])]
    assert main(argv) == 0
    return paths


def test_json_rows_have_the_specified_keys_and_types(smoke):
    rows = json.loads(smoke["json"].read_text())
    assert isinstance(rows, list)
    assert [(r["cell"], r["impl"]) for r in rows] == [
        (c, i) for c in ("rnn", "lstm", "gru") for i in ("torch", "readable", "ours")]
    for r in rows:
        assert set(r) == set(run.ROW_KEYS)  # no peak_mem_bytes on a CPU
        assert r["device"] == "cpu"
        assert (r["batch"], r["seq_len"], r["input_size"], r["hidden_size"]) == (2, 3, 4, 5)
        assert all(type(r[k]) is int for k in ("batch", "seq_len", "input_size", "hidden_size"))
        for k in ("forward_ms", "train_ms", "forward_ratio", "train_ratio"):
            assert isinstance(r[k], float) and r[k] > 0, (k, r)
        if r["impl"] == "torch":
            assert r["forward_ratio"] == r["train_ratio"] == 1.0
        else:
            torch_row = next(t for t in rows if t["cell"] == r["cell"] and t["impl"] == "torch")
            assert r["train_ratio"] == pytest.approx(r["train_ms"] / torch_row["train_ms"])


def test_markdown_names_the_command_and_every_cell(smoke):
    text = smoke["markdown"].read_text()
    assert "python -m benchmarks --device cpu --cells rnn,lstm,gru" in text
    assert torch.__version__ in text
    for cell in ("RNN", "LSTM", "GRU"):
        assert f"## {cell}" in text
    assert text.count("| 2, 3, 4, 5 |") == 9


def test_plot_is_written(smoke):
    pytest.importorskip("matplotlib")
    assert smoke["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_it_is_skipped(smoke, tmp_path, monkeypatch, capsys):
    rows = json.loads(smoke["json"].read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    assert report.plot(rows, str(tmp_path / "p.png")) is False
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "p.png").exists()


def test_subset_of_impls_without_torch_has_no_ratios(tmp_path):
    path = tmp_path / "b.json"
    assert main(["--cells", "gru", "--impls", "ours", *TINY, "--json", str(path)]) == 0
    (row,) = json.loads(path.read_text())
    assert row["impl"] == "ours" and row["forward_ratio"] is None and row["train_ratio"] is None


def test_module_entry_point_runs(tmp_path):
    """`python -m benchmarks` itself, as CI and the README call it."""
    path = tmp_path / "b.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--cells", "rnn", *TINY, "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(path.read_text())) == 3


@pytest.mark.parametrize("text, expected", [
    ("64,28,28,128", Shape(64, 28, 28, 128)),
    ("1,1,1,1", Shape(1, 1, 1, 1)),
])
def test_parse_shape(text, expected):
    assert parse_shape(text) == expected


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "64,28"], "four comma-separated"),
    (["--shapes", "a,b,c,d"], "not an integer"),
    (["--shapes", "64,0,28,128"], "seq_len=0"),
    (["--shapes", "64,28,-1,128"], "input_size=-1"),
    (["--cells", "lstm,tcn"], "'tcn'"),
    (["--cells", ","], "comma-separated list"),
    (["--impls", "cudnn"], "'cudnn'"),
    (["--device", "tpu"], "invalid choice"),
    (["--dtype", "float16"], "invalid choice"),
    (["--min-run-time", "0"], "positive float"),
    (["--threads", "two"], "positive int"),
])
def test_parser_refuses_bad_options_naming_them(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--device", "cuda", *TINY])
    assert e.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_wrong_implementation_is_caught_before_timing(monkeypatch, capsys):
    """A layer that disagrees with torch.nn aborts the run naming the cell, impl and shape."""
    make_layers = run.make_layers

    def broken(cell, shape, impls, device, dtype):
        layers = make_layers(cell, shape, impls, device, dtype)
        with torch.no_grad():
            layers["ours"].bias_hh_l0[0] += 1e-2  # one gate of one unit slightly off
        return layers

    monkeypatch.setattr(run, "make_layers", broken)
    monkeypatch.setattr(run, "time_ms", lambda *a, **k: pytest.fail("timed a layer that failed its check"))
    assert main(["--cells", "lstm", *TINY]) == 1
    err = capsys.readouterr().err
    assert "ours lstm differs from torch.nn.LSTM at B=2 T=3 I=4 H=5" in err


def test_tolerances_grow_with_the_sequence():
    short, long = run.tolerances(torch.float32, 10), run.tolerances(torch.float32, 784)
    assert short == (1e-4, 1e-5)
    assert long[0] > short[0] and long[1] > short[1]
    with pytest.raises(KeyError):
        run.tolerances(torch.float16, 10)


@pytest.mark.parametrize("ms, text", [(0.01234, "0.012"), (1.234, "1.23"), (12.34, "12.3"), (1234.5, "1234")])
def test_milliseconds_never_in_scientific_notation(ms, text):
    assert report.fmt_ms(ms) == text


def test_check_passes_on_float64():
    """The check itself, on a torch.nn layer's copy: equal layers pass, at the tight float64 tolerance."""
    shape, cpu = Shape(3, 4, 5, 6), torch.device("cpu")
    layers = run.make_layers("gru", shape, ["torch", "readable"], cpu, torch.float64)
    inputs = run.make_inputs("gru", shape, cpu, torch.float64)
    run.check("gru", "readable", shape, layers["readable"], layers["torch"], inputs, cpu, torch.float64)
    with torch.no_grad():
        layers["readable"].weight_hh_l0[1, 2] += 1e-6
    with pytest.raises(BenchmarkError, match="gradient of|output|final state"):
        run.check("gru", "readable", shape, layers["readable"], layers["torch"], inputs, cpu, torch.float64)


def test_time_ms_gives_slow_calls_fewer_rounds():
    """A call longer than a round is timed in three rounds, not all five; fast ones get all five."""
    import time

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    ms = run.time_ms({"fast": fast, "slow": slow}, threads=1, min_run_time=0.01, rounds=5, label="t")
    assert set(ms) == {"fast", "slow"}
    assert calls["slow"] == 3 * 2  # per round: blocked_autorange's warm-up call and one block of one
    assert calls["fast"] > calls["slow"]


def test_several_runs_report_the_median_ratio_and_its_spread(tmp_path):
    path = tmp_path / "runs.json"
    assert main(["--device", "cpu", "--cells", "gru", "--impls", "torch,ours", *TINY, "--runs", "3",
                 "--json", str(path), "--markdown", str(tmp_path / "runs.md")]) == 0
    torch_row, ours = json.loads(path.read_text())
    assert torch_row["runs"] == ours["runs"] == 3
    assert torch_row["forward_ratio_min"] == torch_row["forward_ratio_max"] == 1.0
    for p in ("forward", "train"):
        assert ours[f"{p}_ratio_min"] <= ours[f"{p}_ratio"] <= ours[f"{p}_ratio_max"]
    text = (tmp_path / "runs.md").read_text()
    assert "median of the 3 runs" in text
    assert f"{ours['train_ratio']:.2f} (" in text or ours["train_ratio_min"] == ours["train_ratio_max"]


def test_profile_splits_a_training_step_into_its_parts(tmp_path):
    from benchmarks import profile
    path = tmp_path / "profile.md"
    assert profile.main(["--cells", "lstm,gru", "--shapes", "2,3,4,16", "--steps", "1",
                         "--markdown", str(path)]) == 0
    text = path.read_text()
    for heading in ("## LSTM B=2 T=3 I=4 H=16", "## GRU B=2 T=3 I=4 H=16"):
        assert heading in text
    for part in profile.PARTS:
        assert f"| {part} |" in text or f"&nbsp;&nbsp;{part} |" in text


def test_profile_sorts_matmuls_by_shape_and_pass():
    from benchmarks import profile

    class Event:
        def __init__(self, name, shapes, parent=None):
            self.name, self.input_shapes, self.cpu_parent = name, shapes, parent

    engine = Event("autograd::engine::evaluate_function: AddmmBackward0", [])
    B, rows = 4, 12  # batch 4, 3 steps
    assert profile.part_of(Event("aten::addmm", [[48], [rows, 5], [5, 48]]), "torch", "gru", B, rows) == \
        "input projection"
    assert profile.part_of(Event("aten::addmm", [[48], [B, 16], [16, 48]]), "torch", "gru", B, rows) == \
        "recurrent matmuls"
    assert profile.part_of(Event("aten::mm", [[B, 48], [48, 16]], engine), "torch", "gru", B, rows) == \
        "recurrent matmuls"
    assert profile.part_of(Event("aten::mm", [[48, B], [B, 16]], engine), "torch", "gru", B, rows) == \
        "weight-gradient matmuls"
    assert profile.part_of(Event("aten::sigmoid", [[B, 16]]), "torch", "gru", B, rows) == "gate math"
    assert profile.part_of(Event("aten::mkldnn_rnn_layer", []), "torch", "lstm", B, rows) == "time loop"
    assert profile.part_of(Event("LSTMFunctionBackward", [], engine), "ours", "lstm", B, rows) == "time loop"


# -- ONNX Runtime as a forward-only peer ---------------------------------------------------------------

needs_onnxruntime = pytest.mark.skipif(run.onnx_peer.unavailable() is not None,
                                       reason=f"ONNX Runtime: {run.onnx_peer.unavailable()}")


@needs_onnxruntime
def test_onnxruntime_peer_is_checked_then_timed_forward_only(tmp_path):
    path = tmp_path / "ort.json"
    assert main(["--cells", "rnn,lstm,gru", "--impls", "torch,ours,onnxruntime", *TINY, "--json", str(path),
                 "--markdown", str(tmp_path / "ort.md"), "--plot", str(tmp_path / "ort.png")]) == 0
    rows = {(r["cell"], r["impl"]): r for r in json.loads(path.read_text())}
    for cell in ("rnn", "lstm", "gru"):
        peer, ours = rows[(cell, "onnxruntime")], rows[(cell, "ours")]
        assert peer["forward_ms"] > 0 and peer["train_ms"] is None and peer["train_ratio"] is None
        assert ours["forward_over_onnxruntime"] == pytest.approx(ours["forward_ms"] / peer["forward_ms"], rel=0.5)
    text = (tmp_path / "ort.md").read_text()
    assert "forward / ORT" in text and "| onnxruntime | " in text and "ONNX Runtime" in text


@needs_onnxruntime
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_onnxruntime_layer_equals_torch_nn(cell):
    """The exported graph computes torch.nn's layer: output and final states."""
    shape = Shape(3, 6, 4, 5)
    torch.manual_seed(0)
    reference = run.make_layers(cell, shape, ["torch"], torch.device("cpu"), torch.float32)["torch"]
    inputs = run.make_inputs(cell, shape, torch.device("cpu"), torch.float32)
    layer = run.onnx_peer.OnnxRuntimeLayer(reference, inputs.x, inputs.hx, threads=1)
    with torch.no_grad():
        (out, states), (r_out, r_states) = run.forward(layer, inputs), run.forward(reference, inputs)
    torch.testing.assert_close([out, *states], [r_out, *r_states])


@needs_onnxruntime
def test_onnxruntime_that_differs_is_not_timed(monkeypatch, capsys):
    real = run.onnx_peer.OnnxRuntimeLayer.__call__
    monkeypatch.setattr(run.onnx_peer.OnnxRuntimeLayer, "__call__",
                        lambda self, x, hx: (lambda out, s: (out * 1.01, s))(*real(self, x, hx)))
    assert main(["--cells", "gru", "--impls", "torch,onnxruntime", *TINY]) == 1
    assert "onnxruntime gru differs from torch.nn" in capsys.readouterr().err


def test_onnxruntime_refused_where_it_cannot_run(monkeypatch, capsys):
    monkeypatch.setattr(run.onnx_peer, "unavailable", lambda: "onnxruntime is not installed")
    with pytest.raises(SystemExit) as exit_:
        main(["--impls", "torch,onnxruntime", *TINY])
    assert exit_.value.code == 2 and "--impls onnxruntime: onnxruntime is not installed" in capsys.readouterr().err


# -- python -m benchmarks.compiled ---------------------------------------------------------------------


def test_compiled_benchmark_measures_checks_and_reports(tmp_path):
    """One cold measurement in this process (tiny shape), then the report and the docs table from it."""
    from benchmarks import compiled, tables
    torch._dynamo.reset()
    shape = compiled.Shape(4, 3, 2, 8)
    got = compiled.measure("gru", shape, threads=1, min_run_time=0.05)
    assert set(compiled.KEYS) <= set(got)
    assert got["recompiled_at_third_length"] is False
    assert got["first_call_s"] > 0 and got["ours_compiled_ms"] > 0
    row = compiled.summarize("gru", shape, [got, got])
    assert row["first_call_s_min"] == row["first_call_s"] == row["first_call_s_max"]
    info = {"detail": "a CPU", "date": "today", "command": "python -m benchmarks.compiled", "torch": "2",
            "python": "3", "runs": 2}
    text = compiled.markdown([row], info, shape)
    assert "| gru |" in text and "A third length compiled nothing more." in text
    (tmp_path / "cpu_compile.md").write_text(text)
    (tmp_path / "cpu_compile.json").write_text(json.dumps([row]))
    old = tables.RESULTS
    try:
        tables.RESULTS = tmp_path
        table = tables.speed_compiled()
    finally:
        tables.RESULTS = old
    assert "| GRU |" in table and "a CPU; today" in table


def test_compiled_benchmark_refuses_a_differing_layer(monkeypatch):
    from benchmarks import compiled

    def differ(*args, **kwargs):
        raise BenchmarkError("ours compiled gru differs from torch.nn.GRU")

    monkeypatch.setattr(compiled, "check", differ)
    torch._dynamo.reset()
    with pytest.raises(BenchmarkError, match="differs"):
        compiled.measure("rnn", compiled.Shape(2, 3, 2, 4), threads=1, min_run_time=0.05)
