"""Checkpoints in the store: whole, verified, manifest last, pruned like the run's own (moto S3)."""

from __future__ import annotations

import hashlib
import json

import boto3
import pytest
from moto import mock_aws

from infra.agent import ArtifactSync
from infra.s3 import S3Store
from infra.store import latest_stored_checkpoint
from tests.support.aws_helpers import fake_aws_env


@pytest.fixture
def store(tmp_path, monkeypatch):
    fake_aws_env(monkeypatch, tmp_path / "home")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ckpt-bucket")
        yield S3Store("s3://ckpt-bucket/p")


def checkpoint(run_dir, epoch: int, marker: bool = True, size: int = 5000):
    d = run_dir / "checkpoints" / f"epoch_{epoch:03d}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes([epoch]) * size)
    (d / "optimizer.bin").write_bytes(b"o" * 300)
    if marker:  # what the trainer writes last
        (d / "checkpoint.json").write_text(json.dumps({"epoch": epoch, "files": ["model.safetensors", "optimizer.bin"],
                                                       "best": False}))
    return d


def test_only_finished_checkpoints_go_up_whole_with_their_manifest_last(store, tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "events.jsonl").write_text("{}\n")
    checkpoint(run, 1)
    checkpoint(run, 2, marker=False)  # still being written
    order: list[str] = []
    for method in ("put_file", "put_verified"):
        original = getattr(store, method)

        def recording(run_id, name, *a, _orig=original):
            order.append(name)
            return _orig(run_id, name, *a)

        setattr(store, method, recording)
    sync = ArtifactSync(run, None, "r1")
    sync.store = store
    sync.sync()
    ckpt = [n for n in order if n.startswith("checkpoints/")]
    assert ckpt == ["checkpoints/epoch_001/model.safetensors", "checkpoints/epoch_001/optimizer.bin",
                    "checkpoints/epoch_001/checkpoint.json"]
    manifest = json.loads(store.read_text("r1", "checkpoints/epoch_001/checkpoint.json"))
    assert manifest["epoch"] == 1
    # each file's size and SHA-256 as the trainer wrote it (what a restore checks the fetched bytes against)
    assert manifest["files"] == {
        "model.safetensors": {"size": 5000, "sha256": hashlib.sha256(bytes([1]) * 5000).hexdigest()},
        "optimizer.bin": {"size": 300, "sha256": hashlib.sha256(b"o" * 300).hexdigest()}}
    assert latest_stored_checkpoint(store, "r1")["name"] == "epoch_001"


def test_a_half_uploaded_checkpoint_is_never_the_latest(store, tmp_path):
    run = tmp_path / "run"
    checkpoint(run, 1)
    checkpoint(run, 2)
    sync = ArtifactSync(run, None, "r2")
    sync.store = store
    sync.sync()
    assert latest_stored_checkpoint(store, "r2")["epoch"] == 2
    # epoch 2 loses a file (an upload cut short): epoch 1 is the one to resume from
    store.delete_names("r2", ["checkpoints/epoch_002/optimizer.bin"])
    assert latest_stored_checkpoint(store, "r2")["epoch"] == 1
    # a manifest that is not ours (the trainer's list) does not count either
    store.put_file("r2", "checkpoints/epoch_001/checkpoint.json", run / "checkpoints" / "epoch_001" / "checkpoint.json")
    assert latest_stored_checkpoint(store, "r2") is None


def test_pruned_checkpoints_leave_the_store_too(store, tmp_path):
    import shutil

    run = tmp_path / "run"
    for e in (1, 2, 3):
        checkpoint(run, e)
    sync = ArtifactSync(run, None, "r3")
    sync.store = store
    sync.sync()
    shutil.rmtree(run / "checkpoints" / "epoch_001")  # the trainer keeps the last K
    checkpoint(run, 4)
    sync.sync()
    folders = {n.split("/")[1] for n in store.list_names("r3", "checkpoints/")}
    assert folders == {"epoch_002", "epoch_003", "epoch_004"}


def test_bytes_that_do_not_read_back_as_sent_are_an_error_and_no_manifest_follows(store, tmp_path):
    from core.errors import RunError

    run = tmp_path / "run"
    checkpoint(run, 1)
    put = store.client.put_object

    def damaging(**kw):  # the bytes that land are not the bytes sent
        return put(**{**kw, "Body": b"damaged"})

    store.client.put_object = damaging
    f = run / "checkpoints" / "epoch_001" / "optimizer.bin"
    from infra.manifest import file_sha256

    with pytest.raises(RunError, match="does not read back as uploaded"):
        store.put_verified("r4", "x.bin", f, file_sha256(str(f)))
    sync = ArtifactSync(run, None, "r4")
    sync.store = store
    sync.sync()  # logged, retried next pass, never fatal to the run
    assert sync.error and "does not read back" in sync.error
    assert latest_stored_checkpoint(store, "r4") is None
    assert "checkpoints/epoch_001/checkpoint.json" not in store.list_names("r4")
    store.client.put_object = put
    sync.sync()  # the next pass, with a healthy store, completes it
    assert latest_stored_checkpoint(store, "r4")["epoch"] == 1


def test_a_finished_checkpoint_not_yet_in_the_store_is_waiting_until_it_is(store, tmp_path):
    """What makes the agent upload a checkpoint at once instead of at its next periodic pass."""
    run = tmp_path / "run"
    run.mkdir()
    sync = ArtifactSync(run, None, "r1")
    assert not sync.checkpoint_waiting()  # no store: nothing ever waits
    sync.store = store
    assert not sync.checkpoint_waiting()  # no checkpoints folder yet
    checkpoint(run, 1, marker=False)
    assert not sync.checkpoint_waiting()  # still being written
    (run / "checkpoints" / "epoch_001" / "checkpoint.json").write_text(
        json.dumps({"epoch": 1, "files": ["model.safetensors", "optimizer.bin"], "best": False}))
    assert sync.checkpoint_waiting()
    sync.sync()
    assert not sync.checkpoint_waiting() and latest_stored_checkpoint(store, "r1")["name"] == "epoch_001"
    checkpoint(run, 2)
    assert sync.checkpoint_waiting()
