"""S3Store against moto in-process: round trips, multipart, ranged reads, and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from core.errors import AWSError, ConfigError, RunError
from infra.aws import Clients
from infra.s3 import S3Store, content_type, s3_error
from infra.store import open_store
from tests.support.aws_helpers import fake_aws_env, moto_bucket

BUCKET = "artifacts"
URI = f"s3://{BUCKET}/team/mnist"


@pytest.fixture
def s3(monkeypatch, tmp_path):
    yield from moto_bucket(monkeypatch, tmp_path, BUCKET)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_put_list_read_and_download_round_trip(s3, tmp_path):
    store = open_store(URI)
    assert isinstance(store, S3Store) and store.uri == URI
    src = tmp_path / "src"
    files = {"config.yaml": "model: model3\n", "summary.json": '{"params": 1}',
             "checkpoints/step-1/model.bin": b"\x00\x01" * 50}
    for name, data in files.items():
        store.put_file("run-a", name, write(src / name, data))
    store.put_file("run-b", "config.yaml", src / "config.yaml")
    store.put_file("half", "events.jsonl", write(src / "events.jsonl", "{}\n"))  # no config.yaml: not a run yet

    assert store.list_runs() == ["run-a", "run-b"]
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="team/mnist/runs/run-a/")["KeyCount"] == 3
    assert store.read_text("run-a", "config.yaml") == "model: model3\n"
    assert store.read_text("run-a", "nope.json") is None
    assert store.read_text("ghost", "config.yaml") is None
    head = s3.head_object(Bucket=BUCKET, Key="team/mnist/runs/run-a/summary.json")
    assert head["ContentType"] == "application/json"

    out = store.download("run-a", tmp_path / "dest")
    assert out == tmp_path / "dest" / "run-a"
    for name, data in files.items():
        assert (out / name).read_bytes() == (data.encode() if isinstance(data, str) else data)
    assert not list(out.rglob("*.part"))


def test_store_at_bucket_root_and_content_types(s3, tmp_path):
    store = S3Store(f"s3://{BUCKET}")
    store.put_file("r", "config.yaml", write(tmp_path / "c.yaml", "x: 1\n"))
    assert s3.head_object(Bucket=BUCKET, Key="runs/r/config.yaml")["ContentType"] == "application/yaml"
    assert store.list_runs() == ["r"]
    assert content_type("curves.png") == "image/png"
    assert content_type("train.log").startswith("text/plain")
    assert content_type("model.safetensors") is None


def test_read_from_offsets(s3, tmp_path):
    store = S3Store(URI)
    lines = b'{"type":"step","step":1}\n{"type":"step","step":2}\n'
    store.put_file("r", "events.jsonl", write(tmp_path / "events.jsonl", lines))
    assert store.read_from("r", "events.jsonl", 0) == lines
    assert store.read_from("r", "events.jsonl", 25) == lines[25:]
    assert store.read_from("r", "events.jsonl", 25, limit=5) == lines[25:30]
    assert store.read_from("r", "events.jsonl", len(lines)) == b""  # at the end: nothing new yet
    assert store.read_from("r", "events.jsonl", len(lines) + 100) == b""
    assert store.read_from("r", "missing.jsonl", 0) == b""
    store.put_file("r", "empty.jsonl", write(tmp_path / "empty.jsonl", b""))
    assert store.read_from("r", "empty.jsonl", 0) == b""


def test_multipart_upload_arrives_intact(s3, tmp_path):
    data = os.urandom(9 * 1024 * 1024)
    path = write(tmp_path / "model.safetensors", data)
    mb5 = 5 * 1024 * 1024  # S3's smallest part
    store = S3Store(URI, transfer=TransferConfig(multipart_threshold=mb5, multipart_chunksize=mb5, max_concurrency=2))
    store.put_file("big", "model.safetensors", path)
    head = s3.head_object(Bucket=BUCKET, Key="team/mnist/runs/big/model.safetensors")
    assert head["ETag"].strip('"').endswith("-2")  # two parts: it really went multipart
    out = store.download("big", tmp_path / "dest")
    assert hashlib.sha256((out / "model.safetensors").read_bytes()).digest() == hashlib.sha256(data).digest()


def test_download_of_unknown_run_says_how_to_list(s3, tmp_path):
    with pytest.raises(RunError, match=r"run 'ghost' not found in s3://artifacts/team/mnist — "
                                        r"`mnist-launch runs --store s3://artifacts/team/mnist` lists"):
        S3Store(URI).download("ghost", tmp_path)


def test_missing_bucket_is_one_line_with_the_fix(s3, tmp_path):
    store = S3Store("s3://no-such-bucket/p")
    msg = r"bucket 'no-such-bucket' does not exist — create it \(aws s3 mb s3://no-such-bucket\) or fix --store"
    with pytest.raises(AWSError, match=msg):
        store.list_runs()
    with pytest.raises(AWSError, match=msg):
        store.read_text("r", "config.yaml")
    with pytest.raises(AWSError, match=msg):
        store.put_file("r", "a.json", write(tmp_path / "a.json", "{}"))
    with pytest.raises(AWSError, match=msg):
        store.download("r", tmp_path)


def test_access_denied_names_the_store_and_the_policy(s3, tmp_path):
    clients = Clients.create("us-east-1")
    store = S3Store(URI, clients=clients)
    with Stubber(clients.s3) as stub:
        stub.add_client_error("list_objects_v2", service_error_code="AccessDenied", service_message="Access Denied",
                              http_status_code=403)
        with pytest.raises(AWSError, match=r"access denied to s3://artifacts/team/mnist "
                                           r"\(AccessDenied on ListObjectsV2\) — check .*credentials.*policy"):
            store.list_runs()
    # a HEAD answers a bare 403 with no code
    err = ClientError({"Error": {"Code": "403", "Message": "Forbidden"}, "ResponseMetadata": {"HTTPStatusCode": 403}},
                      "HeadObject")
    mapped = s3_error(err, URI, BUCKET)
    assert mapped is not None and "access denied to s3://artifacts/team/mnist" in str(mapped)
    assert "\n" not in str(mapped)
    other = ClientError({"Error": {"Code": "SlowDown", "Message": "x"}}, "GetObject")
    assert s3_error(other, URI, BUCKET) is None


def test_no_credentials_says_how_to_configure_them(monkeypatch, tmp_path):
    fake_aws_env(monkeypatch, tmp_path)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing leaves this machine
    with pytest.raises(AWSError, match=r"no AWS credentials found — run `aws configure`"):
        S3Store(URI).list_runs()


@pytest.mark.parametrize("uri", ["s3://", "s3:///x"])
def test_malformed_uri_is_a_config_error(uri):
    with pytest.raises(ConfigError, match=r"expected s3://bucket/prefix — e.g. --store s3://my-bucket/mnist"):
        open_store(uri)


def test_agent_artifact_sync_uploads_the_run_dir(s3, tmp_path):
    from infra.agent import ArtifactSync

    run_dir = tmp_path / "runs" / "r1"
    write(run_dir / "config.yaml", "model: model3\n")
    write(run_dir / "events.jsonl", '{"type":"step"}\n')
    write(run_dir / "checkpoints" / "epoch-1" / "model.bin", b"w" * 10)  # no marker yet: still being written
    write(run_dir / "summary.json.tmp", "{}")  # being written: not uploaded
    sync = ArtifactSync(run_dir, URI, "r1")
    assert sync.sync() == 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="team/mnist/runs/r1/")["Contents"])
    assert keys == ["team/mnist/runs/r1/config.yaml", "team/mnist/runs/r1/events.jsonl"]
    assert sync.sync() == 0  # nothing changed
    with open(run_dir / "events.jsonl", "a") as f:
        f.write('{"type":"epoch"}\n')
    assert sync.sync() == 1
    assert S3Store(URI).read_from("r1", "events.jsonl", 16) == b'{"type":"epoch"}\n'


# ---------------------------------------------------------------------------------------------
# the orchestrator and the CLI on an S3 store (in-process: moto's mock lives in this process)


def test_local_store_refuses_s3_without_touching_aws(monkeypatch):
    from launcher.orchestrator import local_store

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(S3Store, "client", property(lambda self: pytest.fail("S3 was contacted")))
    with pytest.raises(ConfigError, match=r"--local keeps artifacts in a folder, not s3://b/p — drop --store"):
        local_store("s3://b/p")


def upload_run(store: S3Store, tmp_path: Path, run_id: str, summary: dict | None, epochs: list[float]) -> None:
    d = tmp_path / "up" / run_id
    write(d / "config.yaml", "model: model3\ntrain:\n  epochs: 3\n  seed: 7\n")
    write(d / "meta.json", json.dumps({"created_at": f"2026-11-22T12:00:0{len(epochs)}"}))
    write(d / "status.json", json.dumps({"state": "succeeded" if summary else "running"}))
    write(d / "events.jsonl", "".join(json.dumps({"type": "epoch", "test_accuracy": a}, separators=(",", ":")) + "\n"
                                      for a in epochs))
    if summary:
        write(d / "summary.json", json.dumps(summary))
    for f in d.iterdir():
        store.put_file(run_id, f.name, f)


def test_cli_runs_and_results_on_s3(s3, tmp_path, capsys):
    from launcher.cli import main

    store = S3Store(URI)
    upload_run(store, tmp_path, "done", {"params": 12345, "train_seconds": 4.5, "images_per_second": 9000,
                                         "history": [{"test_accuracy": 0.97}, {"test_accuracy": 0.99}]}, [0.97, 0.99])
    upload_run(store, tmp_path, "live", None, [0.5])

    assert main(["runs", "--store", URI, "--json"]) == 0
    rows = {r["run_id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"done", "live"}
    assert rows["done"]["params"] == 12345 and rows["done"]["final_test_accuracy"] == 0.99
    assert rows["done"]["state"] == "succeeded" and rows["done"]["path"] == f"{URI}/runs/done"
    assert rows["live"]["epochs_completed"] == 1 and rows["live"]["best_test_accuracy"] == 0.5  # from events

    assert main(["runs", "--store", URI]) == 0
    table = capsys.readouterr().out
    assert "done" in table and "12,345" in table and "live" in table

    assert main(["results", "done", "--store", URI, "--dest", str(tmp_path / "got")]) == 0
    got = tmp_path / "got" / "done"
    assert json.loads((got / "summary.json").read_text())["params"] == 12345
    assert (got / "config.yaml").read_text().startswith("model: model3")

    assert main(["results", "ghost", "--store", URI, "--dest", str(tmp_path / "got")]) != 0
    err = capsys.readouterr().err.strip()
    assert err == f"error: run 'ghost' not found in {URI} — `mnist-launch runs --store {URI}` lists the runs there"


def test_cli_on_a_missing_bucket_is_one_line(s3, capsys):
    from launcher.cli import main

    assert main(["runs", "--store", "s3://nope/p"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bucket 'nope' does not exist") and len(err.splitlines()) == 1


def test_real_cli_reaches_s3_through_aws_endpoint_url(monkeypatch, tmp_path):
    """Another process (the CLI, as the agent would be) finds moto through AWS_ENDPOINT_URL alone."""
    from tests.support.aws_helpers import plain_moto_server
    from tests.support.cli import cli

    fake_aws_env(monkeypatch, tmp_path / "home")
    server, url = plain_moto_server()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        upload_run(S3Store(URI), tmp_path, "remote", {"params": 77}, [0.9])
        p = cli("runs", "--store", URI, "--json")
        assert p.returncode == 0, p.stderr
        assert [r["run_id"] for r in json.loads(p.stdout)] == ["remote"]
    finally:
        server.stop()


def test_folder_and_s3_give_the_same_rows(s3, tmp_path):
    from infra.store import LocalStore
    from launcher.orchestrator import list_runs

    folder = LocalStore(tmp_path / "store")
    for store in (S3Store(URI), folder):
        upload_run(store, tmp_path, "done", {"params": 5, "history": [{"test_accuracy": 0.8}]}, [0.8])
        upload_run(store, tmp_path, "live", None, [0.4, 0.6])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "path"} for r in rows]  # noqa: E731
    local_rows, s3_rows = list_runs(folder.uri), list_runs(URI)
    assert strip(local_rows) == strip(s3_rows)
    assert [r["best_test_accuracy"] for r in local_rows] == [0.8, 0.6]
    assert folder.read_from("live", "events.jsonl", 0) == S3Store(URI).read_from("live", "events.jsonl", 0)


# ---------------------------------------------------------------------------------------------
# logs, logs --follow and runs --compare read a run's copy in the store


def epoch_event(n: int, acc: float) -> dict:
    return {"type": "epoch", "epoch": n, "train_loss": 0.5 / n, "train_accuracy": acc - 0.01, "test_loss": 0.4 / n,
            "test_accuracy": acc, "lr": 0.01, "images_per_second": 5000.0, "seconds": 1.5, "time": 1000.0 + n}


def jsonl(events: list[dict]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in events)


def put_text(store: S3Store, tmp_path: Path, run_id: str, name: str, text: str) -> None:
    store.put_file(run_id, name, write(tmp_path / "put" / run_id / name, text))


def epoch_rows(out: str, n: int) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{n:>5}  ")]


class Recorder:
    """A view that keeps what it is shown."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.end = None

    def handle(self, ev: dict) -> None:
        self.events.append(ev)
        if ev.get("type") == "run_end":
            self.end = ev

    def stop(self) -> None:
        pass


def test_a_partial_last_line_waits_for_its_newline(s3, tmp_path):
    from infra.store import StoreRun
    from launcher.live import follow_files

    store = S3Store(URI)
    first, second = jsonl([epoch_event(1, 0.9)]), jsonl([epoch_event(2, 0.95)])
    put_text(store, tmp_path, "r", "events.jsonl", first + second[:20])  # the upload caught a line half-written
    offsets: list[int] = []
    view = Recorder()
    assert follow_files(StoreRun(store, "r"), view, follow=False, on_offset=offsets.append) is None
    assert [e["epoch"] for e in view.events] == [1] and offsets[-1] == len(first)

    put_text(store, tmp_path, "r", "events.jsonl", first + second)
    view = Recorder()
    follow_files(StoreRun(store, "r"), view, follow=False, offset=offsets[-1])
    assert [e["epoch"] for e in view.events] == [2]


def test_logs_of_a_finished_s3_run_shows_every_epoch_once(s3, tmp_path, capsys):
    from launcher.cli import main

    store = S3Store(URI)
    upload_run(store, tmp_path, "done", {"params": 1}, [])
    events = [epoch_event(n, 0.9 + n / 100) for n in (1, 2, 3)]
    events.append({"type": "run_end", "state": "succeeded", "exit_code": 0, "reason": "done", "time": 2000.0})
    put_text(store, tmp_path, "done", "events.jsonl", jsonl(events))
    put_text(store, tmp_path, "done", "train.log", "Layer (type)  Output Shape\nepoch 3 done\n")

    assert main(["logs", "done", "--store", URI]) == 0
    out = capsys.readouterr().out
    assert [len(epoch_rows(out, n)) for n in (1, 2, 3)] == [1, 1, 1]
    assert "93.00%" in epoch_rows(out, 3)[0]

    assert main(["logs", "done", "--raw", "--store", URI]) == 0
    assert capsys.readouterr().out == "Layer (type)  Output Shape\nepoch 3 done\n"


def test_logs_follow_on_s3_shows_each_event_once_as_it_is_uploaded(s3, tmp_path, capsys, monkeypatch):
    import threading
    import time

    from infra.store import StoreRun
    from launcher.cli import main

    monkeypatch.setattr(StoreRun, "poll", (0.05, 0.2))  # the real 0.5 s .. 5 s backoff, shortened
    store = S3Store(URI)
    upload_run(store, tmp_path, "live", None, [])  # status.json: running
    events = [epoch_event(n, 0.9 + n / 100) for n in range(1, 5)]

    def agent() -> None:  # uploads a growing events.jsonl, as the agent's sync does
        text = ""
        for ev in events:
            line = jsonl([ev])
            put_text(store, tmp_path, "live", "events.jsonl", text + line[:15])  # caught mid-write
            time.sleep(0.15)
            text += line
            put_text(store, tmp_path, "live", "events.jsonl", text)
            time.sleep(0.15)
        put_text(store, tmp_path, "live", "status.json", json.dumps({"state": "succeeded", "exit_code": 0}))
        time.sleep(0.3)
        end = {"type": "run_end", "state": "succeeded", "exit_code": 0, "reason": "done", "time": 2000.0}
        put_text(store, tmp_path, "live", "events.jsonl", text + jsonl([end]))

    thread = threading.Thread(target=agent)
    thread.start()
    try:
        assert main(["logs", "live", "--follow", "--store", URI]) == 0
    finally:
        thread.join()
    out = capsys.readouterr().out
    assert [len(epoch_rows(out, n)) for n in range(1, 5)] == [1, 1, 1, 1]
    assert "succeeded" in out or "finished" in out or "done" in out


def test_follow_ends_on_a_terminal_status_when_run_end_never_arrives(s3, tmp_path, monkeypatch):
    from infra.store import StoreRun
    from launcher.live import follow_files

    store = S3Store(URI)
    put_text(store, tmp_path, "r", "events.jsonl", jsonl([epoch_event(1, 0.9)]))
    put_text(store, tmp_path, "r", "status.json", json.dumps({"state": "preempted", "reason": "spot reclaimed"}))
    view = Recorder()
    end = follow_files(StoreRun(store, "r"), view, poll=(0.01, 0.02))
    assert end is not None and end["state"] == "preempted" and end["reason"] == "spot reclaimed"
    assert [e["type"] for e in view.events] == ["epoch", "run_end"]


def test_compare_two_s3_runs_writes_the_overlay_locally(s3, tmp_path, capsys):
    from launcher.cli import main

    store = S3Store(URI)
    for run_id, seed, accs in (("a", 1, [0.9, 0.95]), ("b", 2, [0.8, 0.97])):
        history = [epoch_event(n, acc) for n, acc in enumerate(accs, 1)]
        upload_run(store, tmp_path, run_id, {"params": 7736, "history": history}, accs)
        put_text(store, tmp_path, run_id, "config.yaml", f"model: model3\ntrain:\n  epochs: 2\n  seed: {seed}\n")
    png = tmp_path / "out" / "cmp.png"
    assert main(["runs", "--compare", "a", "b", "--store", URI, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "train.seed" in out and "95.00%" in out and "97.00%" in out and str(png) in out

    assert main(["runs", "--compare", "a", "b", "--store", URI, "--plot", str(png), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in data["runs"]] == ["a", "b"] and data["differing_settings"] == ["train.seed"]
    assert data["runs"][0]["results"]["path"] == f"{URI}/runs/a"


def test_unknown_run_and_cancel_on_s3_are_one_line(s3, capsys):
    from launcher.cli import main

    for cmd in (["logs", "ghost"], ["logs", "ghost", "--raw"], ["runs", "--compare", "ghost", "x"]):
        assert main([*cmd, "--store", URI]) != 0
        err = capsys.readouterr().err.strip()
        assert err == f"error: run 'ghost' not found in {URI} — `mnist-launch runs --store {URI}` lists the runs there"

    assert main(["cancel", "r", "--store", URI]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: cannot cancel 'r' through {URI}")
    assert "needs the host it runs on" in err and "--store PATH" in err

    assert main(["train", "--local", "--resume", "r", "--store", URI]) != 0
    assert "--local keeps artifacts in a folder" in capsys.readouterr().err


def test_folder_and_s3_render_the_same_logs_and_compare(s3, tmp_path, capsys):
    from infra.store import LocalStore
    from launcher.cli import main

    folder = LocalStore(tmp_path / "store")
    end = {"type": "run_end", "state": "failed", "exit_code": 1, "reason": "loss is nan", "time": 2000.0}
    for store in (S3Store(URI), folder):
        for run_id, seed in (("a", 1), ("b", 2)):
            history = [epoch_event(1, 0.9), epoch_event(2, 0.9 + seed / 100)]
            upload_run(store, tmp_path, run_id, {"params": 7736, "history": history}, [])
            put_text(store, tmp_path, run_id, "config.yaml", f"model: model3\ntrain:\n  epochs: 2\n  seed: {seed}\n")
            put_text(store, tmp_path, run_id, "events.jsonl", jsonl([*history, end]))
    outputs = []
    for uri in (URI, folder.uri):
        assert main(["logs", "a", "--store", uri]) == 0
        assert main(["runs", "--compare", "a", "b", "--store", uri, "--plot", str(tmp_path / "cmp.png"), "--json"]) == 0
        out = capsys.readouterr().out
        outputs.append(out.replace(f"{URI}/runs/", "RUNS/").replace(f"{folder.uri}/runs/", "RUNS/"))
    assert outputs[0] == outputs[1]
    assert "loss is nan" in outputs[0] and len(epoch_rows(outputs[0], 2)) == 1
