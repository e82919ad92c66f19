"""The results tables of README.md and docs/, generated from the results files they report.

    python -m benchmarks.tables            # rewrite every generated table in place
    python -m benchmarks.tables --check    # exit 1, naming the table, if one differs from its file

A generated table sits between `<!-- table: NAME -->` and `<!-- /table -->` in a page; NAME is one of
TABLES. Each block says which file and which command produced its numbers and on which CPU, so a
table cannot go stale without tests/test_docs.py noticing.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import statistics
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRETRAINED = ROOT / "train" / "pretrained"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
SHAPES = {(64, 28, 28, 128): "MNIST rows (64, 28, 28, 128)", (64, 784, 1, 128): "pixel MNIST (64, 784, 1, 128)",
          (64, 100, 512, 512): "fastrnns default (64, 100, 512, 512)", (1, 100, 512, 512): "batch 1 (1, 100, 512, 512)"}
CELLS = ("rnn", "lstm", "gru")


def documents() -> list[pathlib.Path]:
    """The pages whose tables are generated: README.md and every page in docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# -- speed: benchmarks/results/cpu*.json and the header of the report written beside it ----------


def _benchmark(name: str) -> tuple[dict, dict]:
    """The ratios of benchmarks/results/NAME.json by (cell, shape), and its report's header lines."""
    rows = json.loads((RESULTS / f"{name}.json").read_text())
    ratios = {(r["cell"], (r["batch"], r["seq_len"], r["input_size"], r["hidden_size"])): r
              for r in rows if r["impl"] == "ours"}
    return ratios, _header(name)


def _header(name: str) -> dict:
    """The device, command and date lines of the report benchmarks/results/NAME.md."""
    header = {}
    for line in (RESULTS / f"{name}.md").read_text().splitlines():
        match = re.match(r"- (device|command|date): (.*)", line)
        if match:
            header[match[1]] = match[2]
    return header


def _source(name: str, header: dict, runs: int) -> str:
    return (f"Ratio = our time / torch.nn's in the same run (below 1 is faster), median of {runs} runs; "
            f"{header['device']}; {header['date']}; "
            f"[benchmarks/results/{name}.md]({{root}}benchmarks/results/{name}.md), from {header['command']}.")


def speed(name: str, spread: bool) -> str:
    """Forward / train ratios, a row per default shape and a column per cell."""
    ratios, header = _benchmark(name)
    lines = ["| forward / train | RNN | LSTM | GRU |", "| --- | --- | --- | --- |"]
    for shape, label in SHAPES.items():
        entries = []
        for cell in CELLS:
            r = ratios[(cell, shape)]
            entries.append(" / ".join(_ratio(r, p, spread) for p in ("forward", "train")))
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    runs = next(iter(ratios.values()))["runs"]
    return "\n".join(lines) + "\n\n" + _source(name, header, runs) + "\n"


def _ratio(row: dict, part: str, spread: bool) -> str:
    text = f"{row[f'{part}_ratio']:.2f}"
    low, high = row.get(f"{part}_ratio_min"), row.get(f"{part}_ratio_max")
    return f"{text} ({low:.2f}–{high:.2f})" if spread and low is not None and low != high else text


def speed_onnxruntime() -> str:
    """Our forward time over ONNX Runtime's, on two threads and on one, a row per default shape."""
    names = [name for name in ("cpu_onnxruntime", "cpu_onnxruntime_1thread") if (RESULTS / f"{name}.json").is_file()]
    if not names:
        return "Not measured yet: `python -m benchmarks --impls torch,ours,onnxruntime` writes it.\n"
    found = {name: _benchmark(name) for name in names}
    threads = {name: "1 thread" if name.endswith("1thread") else "2 threads" for name in names}
    lines = ["| forward, ours / ONNX Runtime | " + " | ".join(f"{cell.upper()} ({threads[n]})" for n in names
                                                         for cell in CELLS) + " |",
             "| --- |" + " --- |" * (len(names) * len(CELLS))]
    for shape, label in SHAPES.items():
        entries = []
        for name in names:
            for cell in CELLS:
                r = found[name][0][(cell, shape)]
                low, high = r["forward_over_onnxruntime_min"], r["forward_over_onnxruntime_max"]
                entries.append(f"{r['forward_over_onnxruntime']:.2f} ({low:.2f}–{high:.2f})")
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    sources = "; ".join(f"{threads[n]}: {found[n][1]['device']}, {found[n][1]['date']}, "
                        f"[benchmarks/results/{n}.md]({{root}}benchmarks/results/{n}.md), from {found[n][1]['command']}"
                        for n in names)
    runs = next(iter(found[names[0]][0].values()))["runs"]
    return ("\n".join(lines) + f"\n\nOur forward time over ONNX Runtime's in the same run (below 1: ours is faster), "
            f"median (min–max) of {runs} runs. {sources}.\n")


def speed_compiled() -> str:
    """Our layers under torch.compile: compile times and the steady training step against eager."""
    name = "cpu_compile"
    if not (RESULTS / f"{name}.json").is_file():
        return "Not measured yet: `python -m benchmarks.compiled` writes it.\n"
    rows = json.loads((RESULTS / f"{name}.json").read_text())
    header = _header(name)

    def spread(r, key, fmt):
        return f"{fmt.format(r[key])} ({fmt.format(r[key + '_min'])}–{fmt.format(r[key + '_max'])})"

    lines = ["| cell | first call | new length | compiled / eager step | torch.nn: first call | torch.nn compiled / ours compiled |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['cell'].upper()} | {spread(r, 'first_call_s', '{:.1f}')} s | "
                     f"{spread(r, 'new_length_s', '{:.1f}')} s | {spread(r, 'compiled_over_eager', '{:.2f}')} | "
                     f"{r['torch_first_call_s']:.1f} s | {r['torch_compiled_ms'] / r['ours_compiled_ms']:.2f} |")
    shape = tuple(rows[0][key] for key in ("batch", "seq_len", "input_size", "hidden_size"))
    return ("\n".join(lines) + f"\n\nA training step of one layer at {SHAPES.get(shape, shape)}, float32, "
            f"`layer.compile()` with the default backend from an empty cache; median (min–max) of {rows[0]['runs']} "
            f"runs, each a new process. torch.compile leaves torch.nn's recurrent layers to run eagerly (dynamo's "
            f"`allow_rnn` is off by default): their first call compiles nothing and their compiled step is the eager one. "
            f"{header['device']}; {header['date']}; "
            f"[benchmarks/results/{name}.md]({{root}}benchmarks/results/{name}.md), from {header['command']}.\n")


# -- training: benchmarks/results/train_defaults.json and train/pretrained/ ------------------------


def training_defaults() -> str:
    """The bare commands' results: mean (min–max) over seeds, ours and torch.nn, and wall times."""
    data = json.loads((RESULTS / "train_defaults.json").read_text())
    groups: dict = {}
    for run in data["runs"]:
        groups.setdefault((run["task"], run["cell"]), {}).setdefault(run["impl"], []).append(run)
    lines = ["| task | cell | ours | wall time | torch.nn | wall time | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (task, cell), by_impl in groups.items():
        seed_1 = next(r["command"] for r in by_impl["ours"] if r["seed"] == 1)
        command = re.sub(r" --seed \d+", "", seed_1)  # the bare command
        entries = [entry for impl in ("ours", "torch") for entry in _training_entry(by_impl[impl])]
        lines.append(f"| {task} | {cell.upper() if task == 'mnist' else 'LSTM'} | " + " | ".join(entries)
                     + f" | `{command}` |")
    return ("\n".join(lines) + "\n\nMean (min–max) over seeds 0, 1, 2; wall time: the whole command, mean over "
            "the runs with nothing else of ours beside them. " + data["machine"] + "; " + data["how"] + ". Every "
            "run: [benchmarks/results/train_defaults.md]({root}benchmarks/results/train_defaults.md).\n")


def _training_entry(runs: list) -> list[str]:
    """"99.27 % (99.26–99.29)" or "MSE 4.4e-05 (2.9e-05–6.3e-05)", and the mean wall time."""
    if "test_accuracy" in runs[0]:
        values, fmt, unit = [100 * r["test_accuracy"] for r in runs], "{:.2f}", ("", " %")
    else:
        values, fmt, unit = [r["test_mse"] for r in runs], "{:.1e}", ("MSE ", "")
    walls = [r["wall_seconds"] for r in runs if r["wall_time_counts"]]
    mean, low, high = (fmt.format(v) for v in (statistics.mean(values), min(values), max(values)))
    return [f"{unit[0]}{mean}{unit[1]} ({low}–{high})", f"{statistics.mean(walls):.0f} s"]


def training_presets() -> str:
    """The classic tutorial presets, ours and torch.nn, from benchmarks/results/train_presets.json."""
    data = json.loads((RESULTS / "train_presets.json").read_text())
    lines = ["| preset | setup | ours | torch.nn | command |", "| --- | --- | --- | --- | --- |"]
    for r in data["runs"]:
        lines.append(f"| `{r['preset']}` | {r['setup']} | {r['ours']} ({r['ours_wall_seconds']} s) | "
                     f"{r['torch']} ({r['torch_wall_seconds']} s) | `{r['command']}` |")
    return ("\n".join(lines) + f"\n\nTest result (wall time): {data['how']}; {data['machine']}; {data['date']} "
            "([benchmarks/results/train_presets.json]({root}benchmarks/results/train_presets.json)).\n")


def _cell_name(cell: str, config: dict) -> str:
    """LSTM, GRU, RNN (tanh) or IRNN (relu units, identity W_hh: Le, Jaitly & Hinton 2015)."""
    if cell != "rnn":
        return cell.upper()
    if config.get("nonlinearity") == "relu" and config.get("init_hh") == "identity":
        return "IRNN"
    return f"RNN ({config.get('nonlinearity', 'tanh')})"


def _recipe_extras(config: dict) -> str:
    """What else of the recipe sets the cells apart: W_hh's initialisation, the LSTM's forget bias."""
    extras = []
    if config.get("init_hh", "torch") != "torch":
        extras.append(f"{config['init_hh']} W_hh")
    if config.get("forget_bias") is not None:
        extras.append(f"forget bias {config['forget_bias']:g}")
    return "".join(f", {e}" for e in extras)


def training_sequential() -> str:
    """The shipped sequential-MNIST weights (train/pretrained/*.pt): what each records of its run."""
    lines = ["| task | cell | recipe | test accuracy | epochs | training time | command |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    shipped = sorted(PRETRAINED.glob("*.pt"))
    for path in shipped:
        state = torch.load(path, map_location="cpu", weights_only=True)
        metrics = json.loads(state["metrics"])
        config = state["config"]
        lines.append(f"| {state['task']} | {_cell_name(state['cell'], config)} | {config['layers']}×{config['hidden']}, "
                     f"{config['optimizer']} {config['lr']:g} {config['schedule']}, batch {config['batch_size']}"
                     f"{_recipe_extras(config)} | "
                     f"{100 * state['test_accuracy']:.2f} % | {len(metrics['epochs'])} | "
                     f"{metrics['wall_seconds_total'] / 3600:.1f} h | `{state['recipe']}` |")
    if not shipped:
        return "No sequential-MNIST weights are shipped yet.\n"
    machines = []  # (what, where it trained) for each shipped file that says
    for path in shipped:
        state = torch.load(path, map_location="cpu", weights_only=True)
        machine = json.loads(state["metrics"]).get("machine")
        if machine:
            machines.append(f"{state['task']} {_cell_name(state['cell'], state['config'])}: {machine}")
    return ("\n".join(lines) + "\n\nTraining time: the whole command, data loading and an evaluation after every "
            "epoch included" + (f"; {'; '.join(machines)}" if machines else "") + ". Each file in "
            "[train/pretrained/]({root}train/pretrained) holds the weights, the configuration and the run's "
            "metrics (also beside it as FILE.metrics.json); `python -m train evaluate FILE` scores it again.\n")


TABLES = {
    "speed": lambda: speed("cpu", spread=False),
    "speed-2-threads": lambda: speed("cpu", spread=True),
    "speed-1-thread": lambda: speed("cpu_1thread", spread=True),
    "speed-onnxruntime": speed_onnxruntime,
    "speed-compiled": speed_compiled,
    "training": training_defaults,
    "training-sequential": training_sequential,
    "training-presets": training_presets,
}


def render(text: str, root: str) -> str:
    """`text` with every generated table made anew; `root` is the way from the page to the repository's
    top ("" for README.md, "../" for docs/)."""
    def fill(match):
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return match[1] + TABLES[name]().replace("{root}", root) + match[4]
    return BLOCK.sub(fill, text)


def root_of(page: pathlib.Path) -> str:
    return "../" * (len(page.resolve().relative_to(ROOT).parts) - 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say which tables differ from their files")
    args = parser.parse_args(argv)
    stale = []
    for page in documents():
        text = page.read_text()
        fresh = render(text, root_of(page))
        if fresh != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(fresh)
    verb = "differ from their results files" if args.check else "rewritten"
    print(f"{', '.join(map(str, stale))}: {verb}" if stale else "every generated table is up to date")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
