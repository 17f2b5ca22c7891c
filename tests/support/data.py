"""MNIST for the tests: the real one (../shared, or MNIST_LAUNCH_TEST_DATA) and small IDX folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support import ROOT

SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def real_mnist_dir() -> Path:
    path = Path(os.environ.get("MNIST_LAUNCH_TEST_DATA", SHARED_MNIST))
    if not (path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file() and not any(path.rglob("train-images*")):
        pytest.skip(f"real MNIST not found at {path} (set MNIST_LAUNCH_TEST_DATA)")
    return path


def make_dir(root, n_train=20, n_test=10, compress=True, layout="flat"):
    """Random digits as IDX files in ``root`` (flat) or ``root/MNIST/raw`` (torchvision's layout)."""
    from trainer.data import write_idx

    rng = np.random.default_rng(0)
    folder = root / "MNIST" / "raw" if layout == "raw" else root
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress)
    write_idx(folder / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train), compress)
    write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    write_idx(folder / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test), compress)
    return root
