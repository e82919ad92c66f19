"""Fixtures shared by test modules (pytest loads this file). Test modules never import each other:
the helpers they share are plain modules beside them, `reference.py` (ours and torch.nn's layers and
cells with the same weights, their inputs, the comparison) and `mnist_files.py` (synthetic MNIST and
the outputs of a training run)."""
import pathlib

import pytest
import torch

LEARNER_CELLS = pathlib.Path(__file__).parent / "learner_cells"


@pytest.fixture
def plant(tmp_path):
    """plant(base, old, new): a copy of tests/learner_cells/<base> in tmp_path with `old` replaced by
    `new` (a mistake planted in a correct learner's cell); returns its path. `old` must occur."""
    def write(base, old=None, new=None):
        source = (LEARNER_CELLS / base).read_text()
        if old is not None:
            assert old in source, f"{old!r} not in {base}"
            source = source.replace(old, new)
        path = tmp_path / base
        path.write_text(source)
        return path
    return write


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny tensors; the CI box is shared), as it was after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
