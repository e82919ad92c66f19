"""Tests of train/data.py: the MNIST IDX reader and its checks, the sequence views, sine/cosine, batches.

Everything except the last two tests runs on small IDX files written into tmp_path, and no test
touches the network: downloads go through a monkeypatched ``torch.hub.download_url_to_file``.
The real-MNIST tests read ``$MNIST_DIR`` (CI points it at shared/data), else the copy shipped in
train/mnist/; the reference for the reader is ``torchvision.datasets.MNIST``, where torchvision imports.
"""

import gzip
import hashlib
import math
import os
import pathlib

import numpy as np
import pytest
import torch

from mnist_files import idx_bytes
from train import data
from train.data import (
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    default_data_dir,
    find_mnist_file,
    load_mnist,
    mnist_permutation,
    mnist_sequences,
    shuffled_batches,
    sine_cosine,
)

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


# ----------------------------------------------------------------------------------------------
# Helpers: synthetic IDX files


def synthetic(n: int = 7, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)  # (n, 28, 28)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)  # (n,)
    return images, labels


def write(path: pathlib.Path, content: bytes, gz: bool) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def write_split(root: pathlib.Path, images, labels, gz=True, folder=("MNIST", "raw")):
    """Train image and label files under root/<folder>; returns their paths."""
    raw = root.joinpath(*folder)
    return (
        write(raw / TRAIN_IMAGES, idx_bytes(images, data.IMAGES_MAGIC), gz),
        write(raw / TRAIN_LABELS, idx_bytes(labels, data.LABELS_MAGIC), gz),
    )


def no_network(url, dst, *args, **kwargs):
    raise AssertionError(f"test tried to download {url}")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # A test that reaches the download path by mistake fails instead of waiting on the network.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


# ----------------------------------------------------------------------------------------------
# Finding and reading good files


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
def test_round_trip(tmp_path, gz):
    images, labels = synthetic()
    write_split(tmp_path, images, labels, gz=gz)
    x, y = load_mnist(tmp_path, "train", download=False)
    assert x.dtype == torch.uint8 and x.shape == (7, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (7,)
    torch.testing.assert_close(x, torch.from_numpy(images), rtol=0, atol=0)
    torch.testing.assert_close(y, torch.from_numpy(labels).long(), rtol=0, atol=0)


@pytest.mark.parametrize("folder", [("MNIST", "raw"), ("raw",), ()], ids=["MNIST-raw", "raw", "root"])
def test_find_in_each_layout(tmp_path, folder):
    images, labels = synthetic()
    image_path, _ = write_split(tmp_path, images, labels, folder=folder)
    assert find_mnist_file(tmp_path, TRAIN_IMAGES) == image_path
    assert find_mnist_file(tmp_path, TRAIN_IMAGES + ".gz") == image_path
    x, _ = load_mnist(tmp_path, "train", download=False)
    assert x.shape == (7, 28, 28)


def test_find_missing_names_places(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        find_mnist_file(tmp_path, TRAIN_IMAGES)
    assert str(tmp_path / "MNIST" / "raw" / TRAIN_IMAGES) in str(e.value)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"  # even when empty: it is downloaded into
    monkeypatch.delenv("MNIST_DIR")
    assert default_data_dir() == data.BUNDLED_DIR  # no ./data: the copy shipped with the code
    local = tmp_path / "data" / "MNIST" / "raw"
    local.mkdir(parents=True)
    for name in data.MNIST_FILES:
        (local / (name + ".gz")).write_bytes(b"")
        # ./data is chosen only once it holds all four files: a half-finished download is not
        assert default_data_dir() == (pathlib.Path("data") if name == "t10k-labels-idx1-ubyte" else data.BUNDLED_DIR)
    (local / "train-images-idx3-ubyte.gz").unlink()
    monkeypatch.setattr(data, "BUNDLED_DIR", tmp_path / "gone")
    assert default_data_dir() == pathlib.Path("data")  # no shipped copy either: download into ./data


def test_bundled_copy_is_complete_and_official():
    for name, (count, _) in data.MNIST_FILES.items():
        path = find_mnist_file(data.BUNDLED_DIR, name)
        assert path.parent == data.BUNDLED_DIR and path.suffix == ".gz"
    x, y = load_mnist(data.BUNDLED_DIR, "test", download=False)  # md5-checked
    assert x.shape == (10000, 28, 28) and y[:3].tolist() == [7, 2, 1]


def test_offline_default_reads_the_bundled_copy(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("MNIST_DIR", raising=False)
    # The autouse fixture fails the test if anything is downloaded.
    x, y = load_mnist(None, "test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    assert not (tmp_path / "data").exists()


def bundled_copy(tmp_path, monkeypatch) -> pathlib.Path:
    """A stand-in for the shipped folder (links to the real files), which a test may then spoil."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    for name in data.MNIST_FILES:
        (folder / (name + ".gz")).symlink_to(data.BUNDLED_DIR / (name + ".gz"))
    monkeypatch.setattr(data, "BUNDLED_DIR", folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MNIST_DIR", raising=False)
    return folder


@pytest.mark.parametrize("damage, words", [("truncate", "truncated or corrupt"), ("flip", "md5")])
def test_corrupt_bundled_file_is_named(tmp_path, monkeypatch, damage, words):
    folder = bundled_copy(tmp_path, monkeypatch)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(path.read_bytes()))
    path.unlink()
    if damage == "truncate":
        path.write_bytes(gzip.compress(bytes(content[:-10])))
    else:
        content[-1] = (content[-1] + 1) % 10  # still a digit: only the md5 can tell
        path.write_bytes(gzip.compress(bytes(content)))
    with pytest.raises(DataError, match=words) as e:
        load_mnist(None, "test")
    message = str(e.value)
    assert str(path) in message and "restore the copy that ships with the code" in message


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"split .*'valid'"):
        load_mnist(tmp_path, "valid")


# ----------------------------------------------------------------------------------------------
# Bad files: each names its full path and the fix


@pytest.mark.parametrize("gz,cut,message", [(False, 100, "truncated or corrupt.*download again"),
                                             (True, 200, "truncated or corrupt")])
def test_truncated_file(tmp_path, gz, cut, message):
    images, labels = synthetic()
    image_path, _ = write_split(tmp_path, images, labels, gz=gz)
    image_path.write_bytes(image_path.read_bytes()[:-cut])
    with pytest.raises(DataError, match=message) as e:
        load_mnist(tmp_path, download=False)
    assert str(image_path) in str(e.value)


def test_corrupt_gzip(tmp_path):
    images, labels = synthetic()
    _, label_path = write_split(tmp_path, images, labels)
    broken = bytearray(label_path.read_bytes())
    broken[12:20] = b"\xff" * 8  # inside the deflate stream, after the 10-byte gzip header
    label_path.write_bytes(bytes(broken))
    with pytest.raises(DataError, match="truncated or corrupt.*gzip") as e:
        load_mnist(tmp_path, download=False)
    assert str(label_path) in str(e.value)


def test_wrong_magic(tmp_path):
    images, labels = synthetic()
    image_path, label_path = write_split(tmp_path, images, labels)
    image_path.write_bytes(label_path.read_bytes())  # a labels file under the images name
    with pytest.raises(DataError, match="magic number is 2049, expected 2051") as e:
        load_mnist(tmp_path, download=False)
    assert str(image_path) in str(e.value)


def test_plain_name_but_gzip_content(tmp_path):
    images, labels = synthetic()
    image_path, _ = write_split(tmp_path, images, labels, gz=False)
    image_path.write_bytes(gzip.compress(image_path.read_bytes()))
    with pytest.raises(DataError, match=r"gzip-compressed: give it a \.gz suffix"):
        load_mnist(tmp_path, download=False)


def test_wrong_image_size(tmp_path):
    images, labels = synthetic(size=32)
    image_path, _ = write_split(tmp_path, images, labels)
    with pytest.raises(DataError, match="32x32 pixels, expected 28x28") as e:
        load_mnist(tmp_path, download=False)
    assert str(image_path) in str(e.value)


def test_count_mismatch(tmp_path):
    images, _ = synthetic(n=7)
    _, labels = synthetic(n=5)
    image_path, label_path = write_split(tmp_path, images, labels)
    with pytest.raises(DataError, match="7 images but .* 5 labels") as e:
        load_mnist(tmp_path, download=False)
    assert str(image_path) in str(e.value) and str(label_path) in str(e.value)


def test_label_out_of_range(tmp_path):
    images, labels = synthetic()
    labels[3] = 10
    _, label_path = write_split(tmp_path, images, labels)
    with pytest.raises(DataError, match="label is 10") as e:
        load_mnist(tmp_path, download=False)
    assert str(label_path) in str(e.value)


@pytest.fixture
def canonical_synthetic(monkeypatch):
    """Make 7 the official train count, with the md5 of synthetic(7), so no 47 MB file is needed."""
    images, labels = synthetic()
    table = dict(data.MNIST_FILES)
    table[TRAIN_IMAGES] = (7, hashlib.md5(idx_bytes(images, data.IMAGES_MAGIC)).hexdigest())
    table[TRAIN_LABELS] = (7, hashlib.md5(idx_bytes(labels, data.LABELS_MAGIC)).hexdigest())
    monkeypatch.setattr(data, "MNIST_FILES", table)
    return images, labels


def test_md5_match_on_canonical_count(tmp_path, canonical_synthetic):
    write_split(tmp_path, *canonical_synthetic)
    x, _ = load_mnist(tmp_path, download=False)
    torch.testing.assert_close(x, torch.from_numpy(canonical_synthetic[0]), rtol=0, atol=0)


def test_md5_mismatch_on_canonical_count(tmp_path, canonical_synthetic):
    images, labels = canonical_synthetic
    images = images.copy()
    images[0, 0, 0] ^= 1  # one bit off, structure intact
    image_path, _ = write_split(tmp_path, images, labels)
    with pytest.raises(DataError, match="md5 .* download again") as e:
        load_mnist(tmp_path, download=False)
    assert str(image_path) in str(e.value)
    x, _ = load_mnist(tmp_path, download=False, verify_md5=False)
    assert x[0, 0, 0] == images[0, 0, 0]


def test_md5_skipped_for_other_counts(tmp_path, monkeypatch):
    table = {name: (count, "0" * 32) for name, (count, _) in data.MNIST_FILES.items()}
    monkeypatch.setattr(data, "MNIST_FILES", table)
    write_split(tmp_path, *synthetic(n=7))
    assert load_mnist(tmp_path, download=False)[0].shape == (7, 28, 28)


# ----------------------------------------------------------------------------------------------
# Missing files and downloading (faked: no test touches the network)


def test_missing_without_download(tmp_path):
    with pytest.raises(DataError, match="missing") as e:
        load_mnist(tmp_path, download=False)  # the autouse fake would fail the test if it were called
    message = str(e.value)
    assert str(tmp_path / "MNIST" / "raw" / (TRAIN_IMAGES + ".gz")) in message
    assert str(tmp_path / "MNIST" / "raw" / (TRAIN_LABELS + ".gz")) in message


def test_missing_with_download_failing(tmp_path, monkeypatch):
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as e:
        load_mnist(tmp_path, "train")
    message = str(e.value)
    raw = tmp_path / "MNIST" / "raw"
    assert str(raw / (TRAIN_IMAGES + ".gz")) in message and str(raw / (TRAIN_LABELS + ".gz")) in message
    assert f"put the .gz files in {raw}/" in message
    assert "--data-dir" in message and "$MNIST_DIR" in message
    assert data.MNIST_MIRRORS[0] in message and "Name or service not known" in message
    # Each mirror once for the first file, then it gives up: no endless retries on a dead network.
    assert calls == [m + TRAIN_IMAGES + ".gz" for m in data.MNIST_MIRRORS]
    assert not any(raw.iterdir())


def fake_mirror(files: dict[str, bytes], calls: list, bad_mirrors=()):
    """A download_url_to_file that serves ``files`` (name -> content) as .gz, failing on bad_mirrors."""

    def download(url, dst, *args, **kwargs):
        calls.append(url)
        if url.startswith(tuple(bad_mirrors)):
            raise OSError("mirror down")
        name = url.rsplit("/", 1)[1][: -len(".gz")]
        pathlib.Path(dst).write_bytes(gzip.compress(files[name]))

    return download


def test_download_succeeds(tmp_path, monkeypatch, canonical_synthetic):
    images, labels = canonical_synthetic
    files = {TRAIN_IMAGES: idx_bytes(images, 2051), TRAIN_LABELS: idx_bytes(labels, 2049)}
    calls = []
    # The first mirror is down: the second one serves both files.
    monkeypatch.setattr(
        torch.hub, "download_url_to_file", fake_mirror(files, calls, bad_mirrors=data.MNIST_MIRRORS[:1])
    )
    x, y = load_mnist(tmp_path, "train")
    torch.testing.assert_close(x, torch.from_numpy(images), rtol=0, atol=0)
    torch.testing.assert_close(y, torch.from_numpy(labels).long(), rtol=0, atol=0)
    assert (tmp_path / "MNIST" / "raw" / (TRAIN_IMAGES + ".gz")).is_file()
    assert calls[1] == data.MNIST_MIRRORS[1] + TRAIN_IMAGES + ".gz"
    # Now on disk: a second load reads the files and downloads nothing.
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert load_mnist(tmp_path, "train")[0].shape == (7, 28, 28)


def test_download_of_wrong_content_is_removed(tmp_path, monkeypatch, canonical_synthetic):
    images, labels = canonical_synthetic
    wrong = images.copy()
    wrong[0, 0, 0] ^= 1
    files = {TRAIN_IMAGES: idx_bytes(wrong, 2051), TRAIN_LABELS: idx_bytes(labels, 2049)}
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_mirror(files, []))
    with pytest.raises(DataError, match="downloaded but wrong.*md5"):
        load_mnist(tmp_path, "train")
    assert not (tmp_path / "MNIST" / "raw" / (TRAIN_IMAGES + ".gz")).exists()


# ----------------------------------------------------------------------------------------------
# Sequence views


@pytest.mark.parametrize(
    "order, shape", [("rows", (3, 28, 28)), ("pixels", (3, 784, 1)), ("permuted", (3, 784, 1))]
)
def test_sequence_shapes(order, shape):
    images = torch.from_numpy(synthetic(n=3)[0])
    x = mnist_sequences(images, order)
    assert x.shape == shape and x.dtype == torch.float32


def test_normalisation():
    images = torch.from_numpy(synthetic(n=3)[0])
    expected = (images.double() / 255 - MNIST_MEAN) / MNIST_STD  # (3, 28, 28)
    torch.testing.assert_close(mnist_sequences(images, "rows"), expected.float())
    torch.testing.assert_close(mnist_sequences(images, "pixels"), expected.float().reshape(3, 784, 1))
    black = mnist_sequences(torch.zeros(1, 28, 28, dtype=torch.uint8))
    white = mnist_sequences(torch.full((1, 28, 28), 255, dtype=torch.uint8))
    assert torch.allclose(black, torch.tensor(-MNIST_MEAN / MNIST_STD))
    assert torch.allclose(white, torch.tensor((1 - MNIST_MEAN) / MNIST_STD))


def test_permutation_fixed_and_true():
    perm = mnist_permutation(0)
    assert perm.shape == (784,) and perm.dtype == torch.int64
    assert torch.equal(perm.sort().values, torch.arange(784))  # every pixel exactly once
    assert torch.equal(perm, mnist_permutation(0))  # fixed for a seed
    assert not torch.equal(perm, mnist_permutation(1))
    assert not torch.equal(perm, torch.arange(784))
    images = torch.from_numpy(synthetic(n=3)[0])
    pixels = mnist_sequences(images, "pixels")
    for seed in (0, 5):
        permuted = mnist_sequences(images, "permuted", permutation_seed=seed)
        assert torch.equal(permuted, pixels[:, mnist_permutation(seed)])


@pytest.mark.parametrize("order", ["rows", "pixels", "permuted"])
def test_shift_moves_the_image(order):
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[:, 5, 7] = 255
    images[:, 0, 27] = 100  # moved out of the picture by dx = +1
    x = mnist_sequences(images, order)
    table = data.shift_table(2, order)
    assert table.shape == (25, 784)
    # rows of the table: (dy, dx) from (-2, -2) to (2, 2), dx fastest; 12 is (0, 0)
    moved = data.shift_images(x, table, torch.tensor([12, 0, 13]))
    assert torch.equal(moved[0], x[0])
    background = -MNIST_MEAN / MNIST_STD
    for b, (dy, dx) in ((1, (-2, -2)), (2, (0, 1))):
        expected = torch.roll(images[b], (dy, dx), (0, 1))
        if dx > 0:
            expected[:, :dx] = 0
        if dx < 0:
            expected[:, dx:] = 0
        if dy < 0:
            expected[dy:, :] = 0
        torch.testing.assert_close(moved[b], mnist_sequences(expected[None], order)[0], rtol=0, atol=1e-6)
    assert moved[2].min().item() == pytest.approx(background)


def test_unknown_order():
    with pytest.raises(ValueError, match=r"order must be one of \('rows', 'pixels', 'permuted'\), got 'cols'"):
        mnist_sequences(torch.zeros(1, 28, 28, dtype=torch.uint8), "cols")


def test_sequences_reject_wrong_input():
    with pytest.raises(ValueError, match=r"images .*\(N, 28, 28\).*\(2, 784\)"):
        mnist_sequences(torch.zeros(2, 784, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8"):
        mnist_sequences(torch.zeros(2, 28, 28))


# ----------------------------------------------------------------------------------------------
# Sine → cosine


def test_sine_cosine_shapes_and_determinism():
    x, y = sine_cosine(4, seq_len=50, seed=3)
    assert x.shape == y.shape == (4, 50, 1) and x.dtype == y.dtype == torch.float32
    x2, y2 = sine_cosine(4, seq_len=50, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = sine_cosine(4, seq_len=50, seed=4)
    assert not torch.equal(x, x3)


def test_sine_cosine_values():
    dt, low, high = 0.1, 0.5, 1.5
    x, y = sine_cosine(64, seq_len=30, seed=1, dt=dt, freq_range=(low, high))
    x, y = x.squeeze(-1).double(), y.squeeze(-1).double()  # (64, 30)
    # y = cos of the angle whose sin is x: together they lie on the unit circle...
    torch.testing.assert_close(x**2 + y**2, torch.ones_like(x), atol=1e-6, rtol=0)
    # ...and that angle advances by a constant w·dt per step, with w inside freq_range.
    angle = torch.atan2(x, y)  # (64, 30)
    step = torch.remainder(angle[:, 1:] - angle[:, :-1], 2 * math.pi)  # (64, 29)
    torch.testing.assert_close(step, step[:, :1].expand_as(step), atol=1e-5, rtol=0)
    w = step[:, 0] / dt
    assert (w >= low - 1e-4).all() and (w <= high + 1e-4).all()
    assert w.std() > 0.1  # frequencies really differ between sequences
    phase = torch.remainder(angle[:, 0], 2 * math.pi)
    assert phase.std() > 0.5  # and so do phases


@pytest.mark.parametrize("n, seq_len", [(0, 10), (3, 0), (-1, 10)])
def test_sine_cosine_rejects_empty(n, seq_len):
    with pytest.raises(ValueError, match="n \\(number of sequences\\)|seq_len"):
        sine_cosine(n, seq_len=seq_len)


# ----------------------------------------------------------------------------------------------
# Batches


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (1, 4), (0, 2)])
def test_shuffled_batches_cover_each_index_once(n, batch_size):
    batches = list(shuffled_batches(n, batch_size, torch.Generator().manual_seed(0)))
    assert all(len(b) == batch_size for b in batches[:-1])
    covered = torch.cat(batches) if batches else torch.empty(0, dtype=torch.int64)
    assert torch.equal(covered.sort().values, torch.arange(n))


def test_shuffled_batches_order_and_drop_last():
    in_order = torch.cat(list(shuffled_batches(10, 3)))
    assert torch.equal(in_order, torch.arange(10))  # no generator: evaluation order
    shuffled = torch.cat(list(shuffled_batches(100, 7, torch.Generator().manual_seed(0))))
    assert not torch.equal(shuffled, torch.arange(100))
    again = torch.cat(list(shuffled_batches(100, 7, torch.Generator().manual_seed(0))))
    assert torch.equal(shuffled, again)
    dropped = list(shuffled_batches(10, 3, torch.Generator().manual_seed(0), drop_last=True))
    assert [len(b) for b in dropped] == [3, 3, 3]
    with pytest.raises(ValueError, match="batch_size"):
        shuffled_batches(10, 0)


# ----------------------------------------------------------------------------------------------
# Real MNIST ($MNIST_DIR, else the shipped copy) and torchvision as the reference reader


def mnist_dir() -> pathlib.Path:
    """$MNIST_DIR when set (CI: shared/data), else the copy that ships in train/mnist/."""
    root = os.environ.get("MNIST_DIR")
    return pathlib.Path(root) if root else data.BUNDLED_DIR


@pytest.mark.parametrize("split, n, first_label", [("train", 60000, 5), ("test", 10000, 7)])
def test_real_mnist(split, n, first_label):
    x, y = load_mnist(mnist_dir(), split, download=False)
    assert x.shape == (n, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (n,) and y.dtype == torch.int64
    assert y.min() == 0 and y.max() == 9 and y[0] == first_label
    assert torch.equal(torch.bincount(y, minlength=10) > n // 20, torch.ones(10, dtype=torch.bool))


@pytest.mark.parametrize("split", ["train", "test"])
def test_same_as_torchvision(tmp_path, split):
    root = mnist_dir()
    try:
        import torchvision
    except Exception as e:  # broken installs raise all kinds of errors on import, not just ImportError
        pytest.skip(f"torchvision does not import here: {type(e).__name__}: {e}")
    x, y = load_mnist(root, split, download=False)
    # torchvision with download=False wants the uncompressed files in <root>/MNIST/raw/.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in data._SPLITS[split]:
        source = find_mnist_file(root, name)
        content = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
        (raw / name).write_bytes(content)
    reference = torchvision.datasets.MNIST(str(tmp_path), train=split == "train", download=False)
    assert torch.equal(x, reference.data)
    assert torch.equal(y, reference.targets.long())
