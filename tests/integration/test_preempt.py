"""Spot interruptions: an instance-metadata server on 127.0.0.1 issues notices to a real agent and
real `accelerate launch` trainer; the preempted run resumes to the same result as an uninterrupted one."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from infra.host import LocalHost
from infra.imds import IMDS
from launcher.orchestrator import LocalRequest, read_status, start_run
from tests.support.runs import events_of, run_to_end

NOTICE = {"action": "terminate", "time": "2026-11-23T13:00:00Z"}
REBALANCE = {"noticeTime": "2026-11-23T12:58:00Z"}


class FakeIMDS:
    """IMDSv2 (or v1 only): token PUTs, then notices the test switches on."""

    def __init__(self, v1_only: bool = False) -> None:
        self.action = None
        self.rebalance = None
        self.v1_only = v1_only
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body=b""):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path))
                if fake.v1_only or self.path != "/latest/api/token":
                    return self._send(403)
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400)
                self._send(200, b"tok-123")

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                if not fake.v1_only and self.headers.get("X-aws-ec2-metadata-token") != "tok-123":
                    return self._send(401)
                doc = {"/latest/meta-data/spot/instance-action": fake.action,
                       "/latest/meta-data/events/recommendations/rebalance": fake.rebalance}.get(self.path)
                if doc is None:
                    return self._send(404)
                self._send(200, json.dumps(doc).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds(monkeypatch):
    fake = FakeIMDS()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    yield fake
    fake.close()


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


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def has_event(run_dir, pred):
    path = run_dir / "events.jsonl"
    if not path.is_file():
        return False
    return any(pred(e) for e in events_of(run_dir))


COMMON = ["train.epochs=2", "train.batch_size=32", "data.train_limit=400", "train.keep_checkpoints=9"]


def test_spot_notice_checkpoints_marks_preempted_and_resume_matches_an_uninterrupted_run(imds, small_mnist, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_IMDS_POLL", "0.3")  # the agent's poll (2 s by default), for a short test
    # 13 steps an epoch at >= 0.3 s each: the notices land mid-run on any machine, however fast
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.3")
    store = str(tmp_path)
    # what the launcher asks of an instance's agent (a local run never watches: see the test below)
    run = start_run(LocalRequest(config="configs/model3.yaml", store=store, data_dir=str(small_mnist),
                                 run_id="spot", overrides=COMMON, spot_watch=True))
    host = LocalHost()
    try:
        # a rebalance recommendation first: one checkpoint mid-epoch, training goes on
        wait_for(lambda: has_event(run.run_dir, lambda e: e["type"] == "epoch"), what="epoch 1")
        imds.rebalance = REBALANCE
        wait_for(lambda: has_event(run.run_dir, lambda e: e["type"] == "checkpoint" and e.get("reason") == "rebalance"),
                 timeout=30, what="the rebalance checkpoint")
        assert read_status(run.run_dir)["state"] == "running"
        imds.action = NOTICE  # then the interruption notice
        end, _ = run_to_end(run)
    finally:
        status = read_status(run.run_dir)
        for pid in (status.get("agent_pid"), status.get("trainer_pid")):
            if pid and host.is_alive(int(pid)):
                import os
                import signal

                os.kill(int(pid), signal.SIGTERM)
    log = (run.run_dir / "train.log").read_text()[-3000:]
    assert end["state"] == "preempted", log
    status = read_status(run.run_dir)
    assert status["state"] == "preempted" and status["spot_notice"] == NOTICE
    assert "terminate at 2026-11-23T13:00:00Z" in status["reason"] and "resumes from" in status["reason"], (
        status["reason"])
    assert status["rebalance"] == REBALANCE
    evs = events_of(run.run_dir)
    assert evs[-1]["type"] == "run_end" and evs[-1]["state"] == "preempted" and "terminate" in evs[-1]["reason"]
    assert any(e["type"] == "rebalance_recommendation" for e in evs)
    assert any(e["type"] == "spot_interruption" and e["notice"] == NOTICE for e in evs)
    assert all(isinstance(e["time"], float) for e in evs)
    assert not any(e["type"] == "finished" for e in evs)
    assert not host.is_alive(status["trainer_pid"])
    from trainer.train import latest_checkpoint

    ckpt = latest_checkpoint(run.run_dir)
    assert ckpt is not None and (ckpt / "checkpoint.json").is_file()
    assert ckpt.name in status["reason"]
    assert any(e["type"] == "checkpoint" and e.get("reason") == "preempt" and e["path"].endswith(ckpt.name)
               for e in evs) \
        or "_step_" not in ckpt.name  # saved on the notice, mid-epoch (or the epoch's own, when it came at its end)

    # resume to the end: same epochs, and (checkpoints are exact) the same numbers as a straight run.
    # Both are local runs as `train --local` starts them (no --spot-watch): the notice still stands, and
    # they must neither see it nor ask the metadata service anything at all
    asked = len(imds.requests)
    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY")
    resumed = start_run(LocalRequest(store=store, data_dir=str(small_mnist), resume="spot"))
    assert run_to_end(resumed)[0]["state"] == "succeeded", (run.run_dir / "train.log").read_text()[-3000:]
    straight = start_run(LocalRequest(config="configs/model3.yaml", store=store, data_dir=str(small_mnist),
                                      run_id="straight", overrides=COMMON))
    assert run_to_end(straight)[0]["state"] == "succeeded"
    assert len(imds.requests) == asked, imds.requests[asked:]
    assert read_status(straight.run_dir)["spot_watch"] is False and read_status(resumed.run_dir)["spot_watch"] is False
    a = json.loads((straight.run_dir / "summary.json").read_text())
    b = json.loads((resumed.run_dir / "summary.json").read_text())
    assert b["epochs_completed"] == a["epochs_completed"] == 2
    assert [h["epoch"] for h in b["history"]] == [1, 2]
    # the checkpoints are exact (mid-epoch ones included: RNG, running sums, augmentation generator)
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["test_accuracy"] == ha["test_accuracy"]
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-6)
    assert b["final_test_accuracy"] == a["final_test_accuracy"]
    starts = [e for e in events_of(resumed.run_dir) if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"]


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
