"""Small MNIST folders for the tests (the real MNIST is conftest's ``mnist_dir``/``small_mnist``)."""

from __future__ import annotations

import numpy as np


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
