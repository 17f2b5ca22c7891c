"""Shipping MNIST to a host (LocalHost and a real sshd): once, verified by sha256, stale copies removed."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from core.errors import DataError, SyncError
from infra.datasync import ship_mnist
from infra.host import LocalHost
from trainer.data import load_mnist, write_idx

NAMES = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
         "train-labels-idx1-ubyte.gz"]


class CountingHost:
    """A real host that counts tar channels and can corrupt what it receives (a failing disk)."""

    def __init__(self, host) -> None:
        self.host, self.name, self.tars, self.corrupt = host, host.name, 0, False

    def run(self, argv, cwd=None, timeout=None):
        return self.host.run(argv, cwd=cwd, timeout=timeout)

    def put_tar(self, stream, dest) -> None:
        self.tars += 1
        self.host.put_tar(stream, dest)
        if self.corrupt:
            self.host.run(["sh", "-c", f"printf x >> {dest}/train-labels-idx1-ubyte.gz"])


@pytest.fixture
def host(any_host):
    return CountingHost(any_host)


@pytest.fixture
def data(tmp_path) -> Path:
    """Tiny but valid IDX files in torchvision's MNIST/raw layout (the loader and the shipper accept it)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (40, 28, 28), dtype=np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, 40, dtype=np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 20, dtype=np.uint8))
    return tmp_path / "data"


def test_first_run_sends_the_four_files_then_nothing(host, data, tmp_path):
    dest = tmp_path / "remote" / "data" / "mnist"
    first = ship_mnist(host, data, str(dest))
    assert (first.files_sent, first.files_total, host.tars) == (4, 4, 1)
    assert first.bytes_sent == sum(p.stat().st_size for p in (data / "MNIST" / "raw").iterdir())
    assert sorted(p.name for p in dest.iterdir()) == NAMES  # flat, canonical names
    for name in NAMES:
        assert (dest / name).read_bytes() == (data / "MNIST" / "raw" / name).read_bytes()
    assert load_mnist(dest).train_images.shape == (40, 1, 28, 28)  # the trainer reads what landed

    again = ship_mnist(host, data, str(dest))
    assert (again.files_sent, again.bytes_sent, host.tars) == (0, 0, 1)  # no tar channel opened
    assert "already on the host" in again.summary()


def test_a_changed_or_damaged_file_is_sent_again_alone(host, data, tmp_path):
    dest = tmp_path / "remote"
    ship_mnist(host, data, str(dest))
    (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")  # e.g. a disk that filled up mid-copy
    report = ship_mnist(host, data, str(dest))
    assert report.files_sent == 1
    assert (dest / "t10k-labels-idx1-ubyte.gz").read_bytes() == (
        data / "MNIST/raw/t10k-labels-idx1-ubyte.gz").read_bytes()


def test_stale_copies_the_loader_would_prefer_are_removed(host, data, tmp_path):
    dest = tmp_path / "remote"
    dest.mkdir()
    # an uncompressed older copy is found before the .gz by the loader: it must not survive
    (dest / "train-images-idx3-ubyte").write_bytes(b"old")
    (dest / "MNIST" / "raw").mkdir(parents=True)
    (dest / "MNIST" / "raw" / "leftover").write_bytes(b"x")
    ship_mnist(host, data, str(dest))
    assert sorted(p.name for p in dest.iterdir()) == NAMES


def test_uncompressed_local_files_keep_their_names(host, tmp_path):
    src = tmp_path / "flat"
    rng = np.random.default_rng(1)
    write_idx(src / "train-images-idx3-ubyte", rng.integers(0, 256, (8, 28, 28), dtype=np.uint8), compress=False)
    write_idx(src / "train-labels-idx1-ubyte", rng.integers(0, 10, 8, dtype=np.uint8), compress=False)
    write_idx(src / "t10k-images-idx3-ubyte", rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), compress=False)
    write_idx(src / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 4, dtype=np.uint8), compress=False)
    dest = tmp_path / "remote"
    ship_mnist(host, src, str(dest))
    assert sorted(p.name for p in dest.iterdir()) == [n[:-3] for n in NAMES]
    assert load_mnist(dest).test_labels.shape == (4,)


def test_corruption_in_transit_is_caught_by_the_hash_on_the_host(host, data, tmp_path):
    host.corrupt = True
    with pytest.raises(SyncError, match=r"train-labels-idx1-ubyte.gz arrived corrupted in .* — check .* disk space, "
                                         r"then run again \(only those files are re-sent\)"):
        ship_mnist(host, data, str(tmp_path / "remote"))
    host.corrupt = False
    assert ship_mnist(host, data, str(tmp_path / "remote")).files_sent == 1  # the bad one, nothing else


def test_missing_or_truncated_local_data_fails_before_anything_is_sent(tmp_path, data):
    host = CountingHost(LocalHost())
    with pytest.raises(DataError, match=r"MNIST files missing .*looked in"):
        ship_mnist(host, tmp_path / "nowhere", str(tmp_path / "remote"))
    labels = data / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    with gzip.open(labels, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x28" + b"\x01" * 10)  # header says 40 labels, 10 present
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: truncated"):
        ship_mnist(host, data, str(tmp_path / "remote"))
    assert host.tars == 0 and not (tmp_path / "remote").exists()


def test_a_destination_that_is_a_file_is_one_clear_error(host, data, tmp_path):
    (tmp_path / "remote").write_text("not a folder")
    with pytest.raises(SyncError, match=r"make it a directory the login user can write to"):
        ship_mnist(host, data, str(tmp_path / "remote"))
