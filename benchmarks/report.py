"""What `python -m benchmarks` writes: the JSON rows, the markdown report and the plot of the ratios.

The markdown report starts with what is needed to repeat the numbers (device, torch version, date,
the exact command line), then has one table per cell: a row per shape and implementation with the
median forward and train times and their ratio over torch.nn on the same shape. The plot shows the
same ratios, one panel per cell and pass, on a log scale around torch.nn = 1.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
from typing import Dict, List, Optional

import torch


def cpu_name() -> str:
    """The CPU's model name from lscpu or /proc/cpuinfo; platform.processor() is often empty on Linux."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def vector_width() -> str:
    """The widest x86 vector extension the CPU reports ("AVX-512", "AVX2", "SSE"), or the machine's name."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse2", "SSE")):
        if flag in flags:
            return name
    return platform.machine() or "unknown vectors"


def machine_info(device: torch.device, threads: int, dtype: str, min_run_time: float, rounds: int, runs: int,
                 command: str, checked: bool) -> Dict[str, object]:
    """Everything the report's header says about where and how the numbers were taken."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        detail = (f"{name}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
                  f"cuDNN RNNs in IEEE float32 (no TF32) for the check and the timing")
    else:
        name = cpu_name()
        detail = (f"{name}, {os.cpu_count()} logical CPUs, {vector_width()}, "
                  f"{threads} torch thread{'s' * (threads != 1)}")
    return {"device": device.type, "device_name": name, "detail": detail, "torch": torch.__version__,
            "python": platform.python_version(), "dtype": dtype, "threads": threads,
            "min_run_time": min_run_time, "rounds": rounds, "runs": runs, "command": command, "checked": checked,
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()}


def fmt_ms(ms: Optional[float]) -> str:
    """Three or four significant digits, never scientific notation; "–" for a time not taken."""
    if ms is None:
        return "–"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def fmt_ratio(ratio: Optional[float], low: Optional[float] = None, high: Optional[float] = None) -> str:
    """The ratio, and its spread over the runs as (min–max) when there was more than one run."""
    if ratio is None:
        return "–"
    if low is None or high is None or low == high:
        return f"{ratio:.2f}"
    return f"{ratio:.2f} ({low:.2f}–{high:.2f})"


def markdown(rows: List[dict], info: Dict[str, object]) -> str:
    """The report as markdown: a header, then a table per cell."""
    lines = [
        f"# RNN/LSTM/GRU benchmark: {info['device']} ({info['device_name']})",
        "",
        f"- device: {info['detail']}",
        f"- torch {info['torch']}, Python {info['python']}, {info['dtype']}",
        f"- date: {info['date']}",
        f"- command: `{info['command']}`",
        f"- times: median ms per call from `torch.utils.benchmark.Timer.blocked_autorange`, "
        f"{info['min_run_time']:g} s per implementation, shape and pass in {info['rounds']} interleaved rounds"
        + (f", {info['runs']} runs (the median over runs)" if info.get("runs", 1) > 1 else "") + "; "
        "forward under `torch.no_grad()`; train = forward + backward to the input and every parameter "
        "through the output and the final states",
        "- ratio: time over torch.nn's on the same shape, so below 1 is faster than torch.nn"
        + (f"; each run's ratio is from that run's times, the table gives the median of the {info['runs']} runs "
           f"and (min–max)" if info.get("runs", 1) > 1 else ""),
        "- impls: `torch` = torch.nn (cuDNN on a GPU), `readable` = our Python unroll of the cell, "
        "`fused` = our hand-derived fast path, `ours` (= `auto`) = our layers' default path (`impl=\"auto\"`)"
        + (", `onnxruntime` = torch.nn's layer exported to ONNX and run by ONNX Runtime (forward only); "
           "forward / ORT = our forward time over ONNX Runtime's in the same run"
           if any(r["impl"] == "onnxruntime" for r in rows) else ""),
        ("- every implementation was checked equal to torch.nn (output, final states, gradients) "
         "before it was timed" if info["checked"] else
         "- **not checked** against torch.nn (`--no-check`)"),
    ]
    with_mem = any("peak_mem_bytes" in r for r in rows)
    with_peer = any(r.get("forward_over_onnxruntime") is not None for r in rows)
    for cell in dict.fromkeys(r["cell"] for r in rows):
        header = "| B, T, I, H | impl | forward ms | train ms | forward ratio | train ratio |"
        rule = "| --- | --- | ---: | ---: | ---: | ---: |"
        if with_peer:
            header, rule = header + " forward / ORT |", rule + " ---: |"
        if with_mem:
            header, rule = header + " train peak MiB |", rule + " ---: |"
        lines += ["", f"## {cell.upper()}", "", header, rule]
        for r in rows:
            if r["cell"] != cell:
                continue
            shape = f"{r['batch']}, {r['seq_len']}, {r['input_size']}, {r['hidden_size']}"
            spread = {k: r.get(k) for k in ("forward_ratio_min", "forward_ratio_max", "train_ratio_min",
                                               "train_ratio_max")}
            line = (f"| {shape} | {r['impl']} | {fmt_ms(r['forward_ms'])} | {fmt_ms(r['train_ms'])} "
                    f"| {fmt_ratio(r['forward_ratio'], spread['forward_ratio_min'], spread['forward_ratio_max'])} "
                    f"| {fmt_ratio(r['train_ratio'], spread['train_ratio_min'], spread['train_ratio_max'])} |")
            if with_peer:
                peer = (r.get(f"forward_over_onnxruntime{end}") for end in ("", "_min", "_max"))
                line += f" {fmt_ratio(*peer)} |"
            if with_mem:
                line += f" {r['peak_mem_bytes'] / 2**20:.1f} |"
            lines.append(line)
    return "\n".join(lines) + "\n"


def write_text(text: str, path: str) -> None:
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def write_json(rows: List[dict], path: str) -> None:
    write_text(json.dumps(rows, indent=2) + "\n", path)


def plot(rows: List[dict], path: str, title: str = "") -> bool:
    """Bar charts of forward and train ratios over torch.nn; False (and one line said) if skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: works without a display
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        print(f"--plot {path}: skipped, matplotlib is not installed (pip install matplotlib)")
        return False
    ratios = [r for r in rows if r["impl"] != "torch" and r["forward_ratio"] is not None]
    if not ratios:
        print(f"--plot {path}: skipped, the ratios need torch among --impls and one more implementation")
        return False

    cells = list(dict.fromkeys(r["cell"] for r in ratios))
    impls = list(dict.fromkeys(r["impl"] for r in ratios))
    shapes = list(dict.fromkeys((r["batch"], r["seq_len"], r["input_size"], r["hidden_size"]) for r in rows))
    fig, axes = plt.subplots(2, len(cells), figsize=(1.2 + 1.3 * len(shapes) * len(cells), 6.5),
                             squeeze=False, sharey="row")
    width = 0.8 / len(impls)
    values = [r[k] for r in ratios for k in ("forward_ratio", "train_ratio") if r[k] is not None] + [1.0]
    limits = (min(values) / 1.6, max(values) * 1.8)  # room for the bar labels on a log scale
    for col, cell in enumerate(cells):
        for row, key in enumerate(("forward_ratio", "train_ratio")):
            ax = axes[row][col]
            for k, impl in enumerate(impls):
                found = {(r["batch"], r["seq_len"], r["input_size"], r["hidden_size"]): r[key]
                         for r in ratios if r["cell"] == cell and r["impl"] == impl and r[key] is not None}
                xs = [i + (k - (len(impls) - 1) / 2) * width for i, s in enumerate(shapes) if s in found]
                ys = [found[s] for s in shapes if s in found]
                bars = ax.bar(xs, ys, width, label=impl)
                ax.bar_label(bars, labels=[f"{y:.0f}" if y >= 10 else f"{y:.2g}" for y in ys], fontsize=7)
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")  # torch.nn
            ax.set_yscale("log")
            ax.set_ylim(*limits)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xticks(range(len(shapes)), [f"{b}×{t}\n{i}→{h}" for b, t, i, h in shapes], fontsize=7)
            ax.set_title(f"{cell.upper()} {key.split('_')[0]}", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"{key.split('_')[0]} time / torch.nn")
    fig.supxlabel("batch × steps, input size → hidden size", fontsize=8)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"time over torch.nn (dashed line = 1, lower is faster){': ' + title if title else ''}",
                 fontsize=10)
    fig.tight_layout()
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    return True
