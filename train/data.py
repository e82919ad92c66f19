"""Data for training: MNIST read straight from its IDX files, the sequence views of it, and sine → cosine.

MNIST (LeCun et al. 1998) comes as four IDX files, gzip-compressed or plain, laid out as torchvision
lays them out, ``<root>/MNIST/raw/<name>[.gz]``. The four official .gz files also ship with this code
in ``train/mnist/``, the last stop of ``default_data_dir()``, so training needs no network. An IDX file is a big-endian header, then the raw
bytes:

    magic   (4 bytes)  0x00000803 = 2051 for images (uint8, 3 dims), 0x00000801 = 2049 for labels (1 dim)
    dims    (4 bytes each) N, 28, 28 for images; N for labels
    data    N·28·28 pixels or N labels, one unsigned byte each

We parse it with ``numpy.frombuffer`` (no per-sample Python work: 60000 images take about a second,
most of it gunzip) and check the structure and, for the official files, the md5 of the decompressed
content, so a truncated download or a swapped file fails here, with its path and the fix, instead of
as a strange loss curve later. Small synthetic files of any count pass the structural checks, which is
what the tests use.

The RNN views of an image (Le, Jaitly & Hinton 2015, "A Simple Way to Initialize Recurrent Networks
of Rectified Linear Units"):

    "rows"      (N, 28, 28)   28 steps of one 28-pixel row
    "pixels"    (N, 784, 1)   sequential MNIST, one pixel a step
    "permuted"  (N, 784, 1)   permuted MNIST: the pixels in one fixed random order, which breaks
                              locality so the net has to carry information over long spans

``sine_cosine`` is the smallest sanity task: read sin(w t + phi), emit cos(w t + phi), which needs the
hidden state to track the phase.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import operator
import os
import pathlib
import socket
import zlib
from typing import Iterator, Optional, Union

import numpy as np
import torch

PathLike = Union[str, "os.PathLike[str]"]


class DataError(RuntimeError):
    """A data file is missing, truncated or wrong; the message names the file and says what to do."""


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IMAGE_SIZE = 28

# The official files: item count and md5 of the DECOMPRESSED content. torchvision checks the md5 of
# the .gz instead, which a re-compressed but perfect copy would fail; the content is what matters.
# The md5 is checked only when a file holds the official count, so small synthetic files still load.
MNIST_FILES = {
    "train-images-idx3-ubyte": (60000, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60000, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (10000, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10000, "27ae3e4e09519cfbb04c329615203637"),
}

_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# Without a timeout urllib can wait minutes on a dead network; a healthy mirror answers in seconds.
_DOWNLOAD_TIMEOUT_S = 30.0

SEQUENCE_ORDERS = ("rows", "pixels", "permuted")

# The four official .gz files, shipped with the code (package data) so the main job runs offline.
BUNDLED_DIR = pathlib.Path(__file__).resolve().parent / "mnist"


# ----------------------------------------------------------------------------------------------
# Finding the files


def _has_all_files(root: pathlib.Path) -> bool:
    return all(any(p.is_file() for p in _candidates(root, name)) for name in MNIST_FILES)


def default_data_dir() -> pathlib.Path:
    """The folder MNIST is read from when ``--data-dir`` is not given.

    ``$MNIST_DIR`` if set; else ``./data`` if it holds all four files; else the copy that ships with
    the code (``BUNDLED_DIR``), so a machine without internet access trains out of the box; and only
    if that copy is gone too (an install without its package data), ``./data``, where the missing
    files are downloaded.
    """
    env = os.environ.get("MNIST_DIR")
    if env:
        return pathlib.Path(env)
    local = pathlib.Path("data")
    if not _has_all_files(local) and _has_all_files(BUNDLED_DIR):
        return BUNDLED_DIR
    return local


def _candidates(root: pathlib.Path, name: str) -> list[pathlib.Path]:
    # torchvision's layout first; the raw folder itself and its parent too, so that pointing
    # --data-dir one level too deep still works. Plain before .gz: it reads faster.
    folders = (root / "MNIST" / "raw", root / "raw", root)
    return [folder / n for folder in folders for n in (name, name + ".gz")]


def _strip_gz(name: str) -> str:
    return name[: -len(".gz")] if name.endswith(".gz") else name


def find_mnist_file(root: PathLike, name: str) -> pathlib.Path:
    """Path of the MNIST file ``name`` (e.g. ``"train-images-idx3-ubyte"``), plain or ``.gz``.

    Looks in ``<root>/MNIST/raw/``, then ``<root>/raw/``, then ``<root>/``. Raises DataError listing
    the places it looked when the file is in none of them.
    """
    root = pathlib.Path(root)
    name = _strip_gz(name)
    candidates = _candidates(root, name)
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p.absolute()) for p in candidates)
    raise DataError(
        f"MNIST file {name} not found; looked for {looked}. "
        f"Put {name}.gz in {(root / 'MNIST' / 'raw').absolute()}/ or point --data-dir or $MNIST_DIR "
        f"at the folder that holds MNIST/raw/."
    )


# ----------------------------------------------------------------------------------------------
# Reading and checking one IDX file


def _fix(path: pathlib.Path) -> str:
    """What to do about a bad file: the bundled copy is restored from the repository, others replaced."""
    if path.absolute().parent == BUNDLED_DIR:
        return (f"restore the copy that ships with the code (`git checkout -- {path.name}` in "
                f"{BUNDLED_DIR}, or reinstall the package), or point --data-dir at a good copy")
    return "delete it and download again, or copy a good copy in its place"


def _corrupt(path: pathlib.Path, why: str) -> DataError:
    return DataError(f"{path.absolute()} is truncated or corrupt ({why}): {_fix(path)}.")


def _read_content(path: pathlib.Path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream is EOFError
        raise _corrupt(path, f"gzip could not decompress it: {e}") from e


def _parse_idx(path: pathlib.Path, content: bytes, magic: int) -> np.ndarray:
    """The uint8 array in an IDX file's content, after checking magic, dims and length."""
    what = "images" if magic == IMAGES_MAGIC else "labels"
    if len(content) < 4:
        raise _corrupt(path, f"only {len(content)} bytes, not even an IDX header")
    got = int.from_bytes(content[:4], "big")
    if got != magic:
        hint = ""
        if content[:2] == b"\x1f\x8b":
            hint = " It is gzip-compressed: give it a .gz suffix."
        raise DataError(
            f"{path.absolute()} is not an MNIST {what} file: its IDX magic number is {got}, expected "
            f"{magic}.{hint} Check that the images and labels files are not swapped or misnamed; "
            f"otherwise {_fix(path)}."
        )
    ndim = magic & 0xFF  # the magic's last byte is the number of dimensions: 3 or 1
    header = 4 + 4 * ndim
    if len(content) < header:
        raise _corrupt(path, f"{len(content)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if what == "images" and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path.absolute()} holds images of {dims[1]}x{dims[2]} pixels, expected "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}: it is not MNIST. Replace it with the MNIST file."
        )
    expected = header + math.prod(dims)
    if len(content) != expected:
        raise _corrupt(
            path, f"{len(content)} bytes, expected {expected} for {dims[0]} {what}"
        )
    return np.frombuffer(content, dtype=np.uint8, count=math.prod(dims), offset=header).reshape(dims)


def _check_md5(path: pathlib.Path, name: str, content: bytes) -> None:
    digest = hashlib.md5(content).hexdigest()
    expected = MNIST_FILES[name][1]
    if digest != expected:
        raise DataError(
            f"{path.absolute()} has the size of the official {name} but not its content (md5 of the "
            f"decompressed data is {digest}, expected {expected}): {_fix(path)} "
            f"(verify_md5=False skips this check)."
        )


def _load_file(path: pathlib.Path, name: str, magic: int, verify_md5: bool) -> np.ndarray:
    content = _read_content(path)
    array = _parse_idx(path, content, magic)
    canonical_count = MNIST_FILES[name][0]
    if verify_md5 and array.shape[0] == canonical_count:
        _check_md5(path, name, content)
    return array


# ----------------------------------------------------------------------------------------------
# Downloading


def _download(raw_dir: pathlib.Path, name: str, verify_md5: bool) -> tuple[Optional[pathlib.Path], list[str]]:
    """Try each mirror for ``name``.gz; the saved path, or None and what went wrong at each mirror."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    dst = raw_dir / (name + ".gz")
    errors = []
    for mirror in MNIST_MIRRORS:
        url = mirror + name + ".gz"
        old_timeout = socket.getdefaulttimeout()
        if old_timeout is None:
            socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            torch.hub.download_url_to_file(url, str(dst), progress=True)
        except Exception as e:  # any failure (DNS, refused, HTTP error, timeout) moves on to the next mirror
            errors.append(f"{url}: {type(e).__name__}: {e}")
            dst.unlink(missing_ok=True)
            continue
        finally:
            socket.setdefaulttimeout(old_timeout)
        if not verify_md5:
            return dst, errors
        # A mirror that serves the wrong bytes (an HTML error page, a cut file) must not leave them behind.
        try:
            content = _read_content(dst)
            _parse_idx(dst, content, IMAGES_MAGIC if "images" in name else LABELS_MAGIC)
            _check_md5(dst, name, content)
        except DataError as e:
            errors.append(f"{url}: downloaded but wrong: {e}")
            dst.unlink(missing_ok=True)
            continue
        return dst, errors
    return None, errors


def _missing_error(root: pathlib.Path, missing: list[str], errors: list[str]) -> DataError:
    raw_dir = (root / "MNIST" / "raw").absolute()
    files = ", ".join(str(raw_dir / (n + ".gz")) for n in missing)
    tried = ("\nDownload failed:\n  " + "\n  ".join(errors)) if errors else ""
    return DataError(
        f"MNIST file(s) missing: {files}.{tried}\n"
        f"Fix: put the .gz files in {raw_dir}/ (plain, uncompressed files work too), or point "
        f"--data-dir or $MNIST_DIR at the folder that holds MNIST/raw/. They can be downloaded from "
        f"{' or '.join(m + '<name>.gz' for m in MNIST_MIRRORS)}, e.g. {MNIST_MIRRORS[0]}{missing[0]}.gz."
    )


# ----------------------------------------------------------------------------------------------
# Public loaders


def load_mnist(
    root: Optional[PathLike] = None,
    split: str = "train",
    download: bool = True,
    *,
    verify_md5: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels of one split, read straight from the IDX files.

    Args:
        root: folder that holds ``MNIST/raw/`` (also accepted: the raw folder itself); None means
            ``default_data_dir()``.
        split: ``"train"`` (60000) or ``"test"`` (10000).
        download: fetch missing files from the mirrors into ``<root>/MNIST/raw/``.
        verify_md5: check the official files' content against the known md5.

    Returns:
        images uint8 (N, 28, 28) and labels int64 (N,).

    Raises:
        DataError naming the file and the fix when a file is missing, truncated, corrupt or not MNIST.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
    root = pathlib.Path(root) if root is not None else default_data_dir()
    names = _SPLITS[split]

    paths: dict[str, pathlib.Path] = {}
    for name in names:
        found = next((p for p in _candidates(root, name) if p.is_file()), None)
        if found is not None:
            paths[name] = found
    missing = [n for n in names if n not in paths]
    if missing and download:
        errors: list[str] = []
        for name in missing:
            path, errs = _download(root / "MNIST" / "raw", name, verify_md5)
            errors += errs
            if path is None:
                break  # the network or the mirrors are down: the next file would fail the same way
            paths[name] = path
        missing = [n for n in names if n not in paths]
        if missing:
            raise _missing_error(root, missing, errors)
    elif missing:
        raise _missing_error(root, missing, [])

    images_name, labels_name = names
    images = _load_file(paths[images_name], images_name, IMAGES_MAGIC, verify_md5)  # (N, 28, 28)
    labels = _load_file(paths[labels_name], labels_name, LABELS_MAGIC, verify_md5)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{paths[images_name].absolute()} holds {len(images)} images but "
            f"{paths[labels_name].absolute()} holds {len(labels)} labels: they are from different "
            f"sets. Replace both with the files of one MNIST split."
        )
    if len(labels) and int(labels.max()) > 9:
        raise _corrupt(paths[labels_name], f"a label is {int(labels.max())}, MNIST labels are 0..9")
    # frombuffer views the read-only bytes; torch wants memory it may write, hence the one copy.
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def mnist_permutation(seed: int = 0) -> torch.Tensor:
    """The fixed pixel order (784,) of permuted MNIST, the same on every machine for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(IMAGE_SIZE * IMAGE_SIZE, generator=generator)  # (784,)


def mnist_sequences(images: torch.Tensor, order: str = "rows", permutation_seed: int = 0) -> torch.Tensor:
    """MNIST images as normalised float32 sequences for an RNN.

    Args:
        images: uint8 (N, 28, 28), as ``load_mnist`` returns them.
        order: ``"rows"`` → (N, 28, 28); ``"pixels"`` → (N, 784, 1);
            ``"permuted"`` → (N, 784, 1) in the order ``mnist_permutation(permutation_seed)``.
        permutation_seed: seed of the permutation, used only by ``"permuted"``.

    Returns:
        float32 ``(x / 255 - MNIST_MEAN) / MNIST_STD``, batch first.
    """
    if order not in SEQUENCE_ORDERS:
        raise ValueError(f"order must be one of {SEQUENCE_ORDERS}, got {order!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 3 or tuple(images.shape[1:]) != (
        IMAGE_SIZE,
        IMAGE_SIZE,
    ):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape (N, 28, 28), got {shape}")
    if images.dtype != torch.uint8:
        # Dividing already-scaled floats by 255 again would silently squash the input to ~0.
        raise TypeError(f"images must be uint8 pixels 0..255 as load_mnist returns them, got {images.dtype}")
    n = images.shape[0]
    x = (images.to(torch.float32) / 255.0 - MNIST_MEAN) / MNIST_STD  # (N, 28, 28)
    if order == "rows":
        return x  # (N, 28, 28)
    x = x.reshape(n, IMAGE_SIZE * IMAGE_SIZE)  # (N, 784)
    if order == "permuted":
        x = x[:, mnist_permutation(permutation_seed)]  # (N, 784)
    return x.unsqueeze(-1)  # (N, 784, 1)


def shift_table(max_shift: int, order: str = "rows", permutation_seed: int = 0) -> torch.Tensor:
    """For every translation (dy, dx) in [-max_shift, max_shift]², where each step of a sequence reads
    from once the image is moved: an int64 table (S, 784), S = (2·max_shift + 1)², of indices into
    the sequence flattened to 784 values with one background value appended at index 784.

    Working on the sequence as it is laid out, permutation included, lets the training loop move
    images with one gather per batch, whatever ``order`` the run reads them in.
    """
    max_shift = _count(max_shift, "max_shift", minimum=0)
    if order not in SEQUENCE_ORDERS:
        raise ValueError(f"order must be one of {SEQUENCE_ORDERS}, got {order!r}")
    pixels = IMAGE_SIZE * IMAGE_SIZE
    row, col = torch.arange(pixels) // IMAGE_SIZE, torch.arange(pixels) % IMAGE_SIZE  # (784,) each
    # Step k of the sequence shows pixel perm[k]; pixel j sits at step place[j].
    perm = mnist_permutation(permutation_seed) if order == "permuted" else torch.arange(pixels)  # (784,)
    place = torch.empty(pixels + 1, dtype=torch.int64)  # (785,)
    place[perm] = torch.arange(pixels)
    place[pixels] = pixels  # the background stays the background
    table = []
    span = range(-max_shift, max_shift + 1)
    for dy in span:
        for dx in span:
            src_row, src_col = row[perm] - dy, col[perm] - dx  # (784,): where each moved pixel came from
            inside = (src_row >= 0) & (src_row < IMAGE_SIZE) & (src_col >= 0) & (src_col < IMAGE_SIZE)
            source = torch.where(inside, src_row * IMAGE_SIZE + src_col, torch.tensor(pixels))  # (784,)
            table.append(place[source])
    return torch.stack(table)  # (S, 784)


def shift_images(x: torch.Tensor, table: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """The sequences ``x`` (B, T, I), T·I = 784, as ``mnist_sequences`` made them, each moved by the
    translation ``which[b]`` (an index into ``shift_table``'s rows); uncovered pixels are background."""
    batch = x.shape[0]
    background = -MNIST_MEAN / MNIST_STD  # a 0 pixel, normalised
    flat = torch.cat([x.reshape(batch, -1), x.new_full((batch, 1), background)], dim=1)  # (B, 785)
    return flat.gather(1, table[which]).reshape(x.shape)  # (B, T, I)


def _count(value, name: str, minimum: int) -> int:
    """``value`` as an int >= minimum (numpy and 0-dim tensor ints too), or a ValueError naming it."""
    try:
        count = operator.index(value)
    except TypeError:
        count = None
    if count is None or isinstance(value, bool) or count < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return count


def sine_cosine(
    n: int,
    seq_len: int = 100,
    seed: int = 0,
    dt: float = 0.1,
    freq_range: tuple[float, float] = (0.5, 1.5),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Toy regression: read x = sin(w t + phi), predict y = cos(w t + phi) at every step.

    phi ~ U[0, 2π) and w ~ U[freq_range] are drawn once per sequence from ``torch.Generator(seed)``;
    t = arange(seq_len) · dt. Same seed, same data.

    Returns:
        x, y float32 (n, seq_len, 1).
    """
    n = _count(n, "n (number of sequences)", minimum=1)
    seq_len = _count(seq_len, "seq_len", minimum=1)
    low, high = freq_range
    if not low <= high:
        raise ValueError(f"freq_range must be (low, high) with low <= high, got {freq_range!r}")
    generator = torch.Generator().manual_seed(seed)
    # float64 for the angle: w·t grows with seq_len and float32 would lose the phase at long lengths.
    phi = torch.rand(n, 1, generator=generator, dtype=torch.float64) * (2 * math.pi)  # (n, 1)
    w = low + (high - low) * torch.rand(n, 1, generator=generator, dtype=torch.float64)  # (n, 1)
    t = torch.arange(seq_len, dtype=torch.float64) * dt  # (seq_len,)
    angle = w * t + phi  # (n, seq_len)
    x = torch.sin(angle).to(torch.float32).unsqueeze(-1)  # (n, seq_len, 1)
    y = torch.cos(angle).to(torch.float32).unsqueeze(-1)  # (n, seq_len, 1)
    return x, y


def shuffled_batches(
    n: int,
    batch_size: int,
    generator: Optional[torch.Generator] = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    """Index batches over range(n): shuffled by ``generator``, or in order when it is None (eval).

    Yields int64 index tensors of ``batch_size`` (the last one shorter unless ``drop_last``).
    """
    # Checked here, not inside the generator, so a bad argument fails at the call, not at first next().
    n = _count(n, "n", minimum=0)
    batch_size = _count(batch_size, "batch_size", minimum=1)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)  # (n,)
    stop = n - n % batch_size if drop_last else n
    return (order[i : i + batch_size] for i in range(0, stop, batch_size))
