"""Synthetic MNIST files and the run outputs of `python -m train`, for the tests that train.

Shared by test modules (which never import each other): IDX files in torchvision's layout whose
images are "bar digits" (the class is where a bright vertical bar sits), the argument list of a
tiny training run on them, and the metrics.json such a run writes.
"""
from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np

NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """IDX content of a uint8 array: big-endian magic, one 4-byte size per dim, then the bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def bar_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images whose label is where a bright vertical bar sits (column 2 + 2·label), over noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for k, label in enumerate(labels):
        images[k, :, 2 + 2 * label] = 255
    return images, labels


def write_mnist(root: pathlib.Path, train: int = 64, test: int = 32) -> pathlib.Path:
    """Synthetic MNIST in torchvision's layout under root; returns root (the --data-dir)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", train, 0), ("test", test, 1)):
        images, labels = bar_digits(n, seed)
        image_name, label_name = NAMES[split]
        (raw / (image_name + ".gz")).write_bytes(gzip.compress(idx_bytes(images, 2051)))
        (raw / (label_name + ".gz")).write_bytes(gzip.compress(idx_bytes(labels, 2049)))
    return root


def small_mnist(data_dir, out, *extra) -> list[str]:
    # --shift 0: a bar digit's class is its column, so a sideways shift would turn it into another
    # class. The tests that check shifts ask for them.
    return ["mnist", "--data-dir", str(data_dir), "--out", str(out), "--hidden", "8", "--epochs", "1",
            "--batch-size", "16", "--device", "cpu", "--quiet", "--no-plots", "--no-download",
            "--threads", "1", "--log-every", "2", "--shift", "0", *extra]


def metrics_of(out) -> dict:
    return json.loads((pathlib.Path(out) / "metrics.json").read_text())
