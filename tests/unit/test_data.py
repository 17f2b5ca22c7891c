import gzip

import numpy as np
import pytest
import torch

from core.errors import DataError
from tests.support.data import make_dir
from trainer.data import check_dir, epoch_batches, load_mnist, locate, read_idx, steps_per_epoch, write_idx


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("layout", ["flat", "raw"])
def test_reads_gz_or_plain_in_flat_or_torchvision_layout(tmp_path, compress, layout):
    make_dir(tmp_path, compress=compress, layout=layout)
    assert check_dir(tmp_path) == {"train_images": 20, "train_labels": 20, "test_images": 10, "test_labels": 10}
    ds = load_mnist(tmp_path)
    assert ds.train_images.shape == (20, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_labels.dtype == torch.int64


def test_real_mnist_is_read_exactly(mnist_dir):
    ds = load_mnist(mnist_dir)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert abs(ds.train_images.float().mean().item() / 255 - 0.1307) < 1e-3
    assert abs(ds.train_images.float().std().item() / 255 - 0.3081) < 1e-3
    assert ds.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the canonical first labels
    assert torch.bincount(ds.test_labels).tolist()[:2] == [980, 1135]


def test_missing_files_say_where_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError, match=r"MNIST files missing .*looked in .*mnist-launch data download"):
        locate(tmp_path)


def test_wrong_magic_names_the_file(tmp_path):
    make_dir(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + b"\x00" * 100)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: not an MNIST IDX file"):
        check_dir(tmp_path)


def test_truncated_files_name_the_file(tmp_path):
    make_dir(tmp_path, compress=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated or padded"):
        check_dir(tmp_path)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path)


def test_cut_gzip_is_reported_not_crashed(tmp_path):
    make_dir(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz"):
        check_dir(tmp_path)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated or padded"):
        load_mnist(tmp_path)  # checks the whole files first: a run on a prefix still refuses a cut file
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt or truncated"):
        read_idx(p, 2051)


def test_a_limited_read_inflates_only_its_prefix_and_equals_the_whole_files_start(tmp_path):
    make_dir(tmp_path)
    whole = load_mnist(tmp_path)
    part = load_mnist(tmp_path, train_limit=5, test_limit=3)
    assert part.train_images.shape == (5, 1, 28, 28) and part.test_labels.shape == (3,)
    assert torch.equal(part.train_images, whole.train_images[:5])
    assert torch.equal(part.test_labels, whole.test_labels[:3])
    p = tmp_path / "train-images-idx3-ubyte.gz"
    cut = tmp_path / "cut" / p.name
    cut.parent.mkdir()
    cut.write_bytes(p.read_bytes()[:-8])  # no gzip trailer: the stream ends early
    assert read_idx(cut, 2051, limit=2).shape == (2, 1, 28, 28)  # the first two images are all there
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(cut, 2051)


def test_labels_that_do_not_match_images(tmp_path):
    make_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(7))
    with pytest.raises(DataError, match="do not belong together"):
        check_dir(tmp_path)


def test_each_rank_takes_its_own_shard_of_one_permutation():
    n, bs, world = 103, 8, 2
    shards = [torch.cat(list(epoch_batches(n, bs, epoch=3, seed=1, rank=r, world=world, device="cpu")))
              for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == n // world
    assert not set(shards[0].tolist()) & set(shards[1].tolist())  # disjoint
    assert len(list(epoch_batches(n, bs, 3, 1, 0, world, "cpu"))) == steps_per_epoch(n, bs, world)
    again = torch.cat(list(epoch_batches(n, bs, epoch=3, seed=1, rank=0, world=world, device="cpu")))
    assert torch.equal(again, shards[0])  # same seed and epoch, same order
    other = torch.cat(list(epoch_batches(n, bs, epoch=4, seed=1, rank=0, world=world, device="cpu")))
    assert not torch.equal(other, shards[0])  # a new permutation every epoch
