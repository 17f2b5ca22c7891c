"""The spot watch's metadata client, and checkpoints taken mid-epoch: an instance-metadata server on
127.0.0.1 (tests/support/imds.py). A whole run preempted by a notice and resumed is in test_resume.py."""

import json
import socket

from infra.imds import IMDS
from tests.support.imds import NOTICE, REBALANCE, FakeIMDS


def test_client_reads_notices_with_a_token_and_none_when_absent(imds):
    client = IMDS()
    assert client.instance_action() is None and client.rebalance() is None
    imds.action, imds.rebalance = NOTICE, REBALANCE
    assert client.instance_action() == NOTICE and client.rebalance() == REBALANCE
    assert imds.requests.count(("PUT", "/latest/api/token")) == 1  # the token is reused
    assert not client.disabled


def test_client_falls_back_to_imdsv1_when_the_token_put_is_refused(monkeypatch):
    fake = FakeIMDS(v1_only=True)
    try:
        monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url)
        monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
        client = IMDS()
        assert client.instance_action() is None
        fake.action = NOTICE
        assert client.instance_action() == NOTICE
        assert fake.requests.count(("PUT", "/latest/api/token")) == 1  # asked once, then plain GETs
    finally:
        fake.close()


def test_client_gives_up_for_good_when_nothing_answers(monkeypatch):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    client = IMDS()
    assert client.instance_action() is None
    assert client.disabled
    assert client.rebalance() is None  # no second try
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert IMDS().disabled


def test_an_agent_without_the_flag_asks_instance_metadata_nothing(imds):
    """The spot watch of an agent started without --spot-watch (every local run's; the run-level check is
    in the test above) never builds a client nor sends a request, even where a server would answer."""
    from infra.agent import SpotWatch

    imds.action, imds.rebalance = NOTICE, REBALANCE
    off = SpotWatch(0.01, enabled=False)
    assert off.imds is None and [off.poll() for _ in range(3)] == [(None, None)] * 3
    assert imds.requests == []
    # the same watch with the flag does ask (so the zero above is not a server nobody could reach)
    assert SpotWatch(0.01).poll() == (NOTICE, None) and ("PUT", "/latest/api/token") in imds.requests


def test_latest_checkpoint_orders_mid_epoch_ones_and_skips_another_world_size(tmp_path):
    from trainer.train import latest_checkpoint

    def ckpt(name, **marker):
        d = tmp_path / "checkpoints" / name
        d.mkdir(parents=True)
        (d / "checkpoint.json").write_text(json.dumps({"files": [], **marker}))

    ckpt("epoch_001", epoch=1)
    ckpt("epoch_002_step_00003", epoch=1, step=3, processes=2)
    (tmp_path / "checkpoints" / "epoch_002_step_00009").mkdir()  # no marker: incomplete, never picked
    assert latest_checkpoint(tmp_path).name == "epoch_002_step_00003"
    assert latest_checkpoint(tmp_path, processes=2).name == "epoch_002_step_00003"
    assert latest_checkpoint(tmp_path, processes=1).name == "epoch_001"  # its shards would not line up
    ckpt("epoch_002", epoch=2)
    assert latest_checkpoint(tmp_path, processes=2).name == "epoch_002"


def test_a_mid_epoch_checkpoint_goes_up_with_its_step_and_is_the_one_resumed_from_the_store(tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    from infra.agent import ArtifactSync
    from infra.s3 import S3Store
    from infra.store import latest_stored_checkpoint
    from tests.support.aws_helpers import fake_aws_env

    fake_aws_env(monkeypatch, tmp_path / "home")
    run = tmp_path / "run"
    for name, marker in (("epoch_001", {"epoch": 1}),
                         ("epoch_002_step_00003", {"epoch": 1, "step": 3, "processes": 1})):
        d = run / "checkpoints" / name
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"w" * 100)
        (d / "checkpoint.json").write_text(json.dumps({**marker, "files": ["model.safetensors"], "best": False}))
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="spot-bucket")
        store = S3Store("s3://spot-bucket/p")
        sync = ArtifactSync(run, None, "r1")
        sync.store = store
        sync.sync()
        assert sync.error is None
        manifest = json.loads(store.read_text("r1", "checkpoints/epoch_002_step_00003/checkpoint.json"))
        assert manifest["epoch"] == 1 and manifest["step"] == 3 and manifest["processes"] == 1
        from trainer.train import latest_checkpoint

        # the store's manifest replaces the trainer's marker in a download: a resume must still take it
        (run / "checkpoints" / "epoch_002_step_00003" / "checkpoint.json").write_text(json.dumps(manifest))
        assert latest_checkpoint(run, processes=1).name == "epoch_002_step_00003"
        latest = latest_stored_checkpoint(store, "r1")
        assert latest["name"] == "epoch_002_step_00003" and (latest["epoch"], latest["step"]) == (1, 3)
