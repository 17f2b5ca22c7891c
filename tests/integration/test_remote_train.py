"""`train` on an instance, end to end: moto (ThreadedMotoServer) as EC2 and S3, a real sshd on
127.0.0.1 as the instance (MNIST_LAUNCH_SSH_ENDPOINT), real `accelerate launch` processes.

The sshd gives its sessions moto's endpoint and moto's fake keys through ``SetEnv``, the way an
instance's role gives its processes credentials: the launcher copies none. Each test keeps the
"instance's" files in its own ``launch.remote_dir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import threading
import time
from pathlib import Path

import boto3
import pytest

from tests.support import ROOT
from tests.support.aws_helpers import (
    instance_sshd,
    ubuntu_ami,
)
from tests.support.cloud import BUCKET, CIDR, ROLE, STORE, Cloud, strict_cloud
from tests.support.runs import EPOCH_ROW
from tests.support.sshd_fixture import stop_sshd
from tests.support.strict_instance import CuttableProxy


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cloud")
    # everything started here is undone in reverse order, whatever fails on the way (ExitStack goes on unwinding
    # past a failing step): moto's access control in particular is process-wide and must end with this module
    with contextlib.ExitStack() as stack:
        mp = pytest.MonkeyPatch()
        stack.callback(mp.undo)
        aws = strict_cloud(stack, mp, tmp)
        url, world, creds = aws.url, aws.iam, aws.creds
        srv = instance_sshd(tmp / "sshd", url, *aws.instance_env())
        stack.callback(stop_sshd, srv)
        mp.setenv("MNIST_LAUNCH_SSH_ENDPOINT", srv.endpoint)
        mp.setenv("MNIST_LAUNCH_SSH_CIDR", CIDR)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        c = Cloud(tmp / "home", url, srv, tmp, env=world.laptop.env() if world else {})
        stack.callback(c.cli, "down", "mnist", "--yes")
        up = c.cli("up", "--instance", "g4dn.xlarge", "--ami", ubuntu_ami(), "--identity", str(srv.client_key),
                   "--store", STORE, "--name", "mnist", "--yes")
        assert up.returncode == 0, up.stderr
        assert srv.front is None or srv.front.dropped >= 1  # `up` met the booting instance's refusals and got through
        if world:
            world.write_role_credentials(ROLE, creds, owner=srv.login)
        yield c


# the trainer sleeps this long after each step (1.2 s x 4 steps: about 5 s an epoch at least), so a test that
# interrupts a run mid-way finds it still running on any machine, however fast
SLOW = "--set=launch.env.MNIST_LAUNCH_STEP_DELAY=1.2"


def train_args(cloud: Cloud, small_mnist: Path, run_id: str, remote: str, *extra: str) -> list[str]:
    return ["train", "configs/model3.yaml", "--store", STORE, "--data-dir", str(small_mnist), "--run-id", run_id,
            "--set", "train.epochs=2", "--set", f"launch.remote_dir={remote}", "--set",
            f"launch.python={cloud.sshd.python}", *extra]


def events_on_instance(remote: Path, run_id: str) -> list[dict]:
    return [json.loads(line) for line in (remote / "runs" / run_id / "events.jsonl").read_text().splitlines()]


def test_train_detach_follow_artifacts_in_s3_then_an_unchanged_second_run_on_data_from_s3(cloud, small_mnist):
    remote = cloud.sshd.remote("instance-a")
    secret = f"s3cr3t-{secrets.token_hex(8)}"  # made here, so not even this synced file holds it
    p = cloud.cli(*train_args(cloud, small_mnist, "e2e-1", str(remote), "--detach",
                              "--set", f"launch.env.MY_TOKEN={secret} value=1"))
    assert p.returncode == 0, p.stderr
    assert "sync: " in p.stdout and "setup: environment built" in p.stdout and "detached" in p.stdout
    assert re.search(r"started in [\d.]+s \(connect [\d.]+s · sync [\d.]+s, data [\d.]+s, "
                     r"setup [\d.]+s in parallel [\d.]+s · start [\d.]+s\)", p.stdout)

    p = cloud.cli("logs", "e2e-1", "--follow")
    assert p.returncode == 0, p.stderr
    assert [int(e) for e in EPOCH_ROW.findall(p.stdout)] == [1, 2]
    # every artifact reached the bucket, uploaded by the agent with the "instance's" credentials
    objs = cloud.objects("e2e-1")
    for name in ("config.yaml", "meta.json", "events.jsonl", "train.log", "summary.json", "status.json",
                 "model.safetensors", "curves.png"):
        assert name in objs, sorted(objs)
    for name in ("config.yaml", "events.jsonl", "summary.json", "model.safetensors", "curves.png"):
        assert objs[name] == (remote / "runs" / "e2e-1" / name).read_bytes(), name  # the run's final files
    # the last epoch's checkpoint is complete in the bucket: every file its manifest names, bytes as hashed
    manifest = json.loads(objs["checkpoints/epoch_002/checkpoint.json"])
    assert manifest["epoch"] == 2 and manifest["files"]
    for rel, entry in manifest["files"].items():
        body = objs[f"checkpoints/epoch_002/{rel}"]
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"]), rel
    assert json.loads(objs["status.json"])["state"] == "succeeded"
    events = [json.loads(line) for line in objs["events.jsonl"].decode().splitlines()]
    assert [e["type"] for e in events].count("run_end") == 1
    meta = json.loads(objs["meta.json"])
    assert meta["cloud"]["cluster"] == "mnist" and meta["cloud"]["run_dir"].endswith("runs/e2e-1")
    assert not (remote / "jobs" / "e2e-1").exists()  # the marker goes with the run
    # launch.env reached the trainer through a 0600 file the agent deleted; the value is nowhere else
    assert json.loads(objs["status.json"])["launch_env"] == ["MY_TOKEN"]
    # an instance's agent watches for spot notices (this "instance" has AWS_EC2_METADATA_DISABLED: it asks nothing)
    assert json.loads(objs["status.json"])["spot_watch"] is True
    assert not (remote / "env" / "e2e-1.env").exists()
    assert not any(secret.encode() in body for body in objs.values())
    assert not any(secret.encode() in f.read_bytes() for f in remote.rglob("*") if f.is_file())

    rows = json.loads(cloud.cli("runs", "--store", STORE, "--json").stdout)
    assert [(r["run_id"], r["state"], r["epochs_completed"]) for r in rows if r["run_id"] == "e2e-1"] == [
        ("e2e-1", "succeeded", 2)]

    # the second run: nothing changed, so no file content travels and the venv is not rebuilt; its data is
    # in S3, and the instance fetches it itself with its role (the laptop's credentials never travel)
    s3 = boto3.client("s3", region_name="us-east-1")
    for f in small_mnist.iterdir():
        s3.upload_file(str(f), BUCKET, f"mnist/data/{f.name}")
    p = cloud.cli(*train_args(cloud, small_mnist, "e2e-2", str(remote), "--set", "train.epochs=1",
                              "--data-dir", f"{STORE}/data"))
    assert p.returncode == 0, p.stderr
    assert re.search(r"sync: 0 files sent \(0 B\), 0 deleted, \d+ unchanged", p.stdout), p.stdout
    assert "setup: environment unchanged" in p.stdout
    # what the first run shipped carries no ETag of the store's: fetched, then known by it
    assert "data: the host fetched 4 of 4 MNIST files" in p.stdout and f"from {STORE}/data" in p.stdout, p.stdout
    assert sorted(f.name for f in (remote / "data").iterdir() if not f.name.startswith(".")) == sorted(
        f.name for f in small_mnist.iterdir())
    assert [int(e) for e in EPOCH_ROW.findall(p.stdout)] == [1] and "finished" in p.stdout
    assert f"artifacts: {STORE}/runs/e2e-2" in p.stdout
    # the next run's data step finds them there and fetches nothing (the step itself, over the instance's SSH
    # with its role, in the run's environment: a third run would only add a trainer)
    from infra.datasync import fetch_mnist
    from infra.ssh import Endpoint, SSHHost

    with SSHHost(Endpoint(cloud.sshd.user, cloud.sshd.host, cloud.sshd.port), cloud.sshd.client_key,
                 known_hosts=cloud.tmp / "e2e_known_hosts") as host:
        again = fetch_mnist(host, f"{STORE}/data", str(remote / "data"), python=str(remote / "venv" / "bin" / "python"))
    assert (again.files_sent, again.files_total) == (0, 4)
    assert again.summary().startswith(f"data: 4 MNIST files already on the host (unchanged in {STORE}/data)")
    # a prefix without the files: one line naming what is missing, and no run made
    p = cloud.cli(*train_args(cloud, small_mnist, "e2e-3", str(remote), "--data-dir", f"{STORE}/nothing-here"))
    assert p.returncode != 0 and "no train-images-idx3-ubyte[.gz] under s3://" in p.stderr, p.stderr
    assert not (remote / "runs" / "e2e-3").exists()


def test_neither_a_killed_launcher_nor_a_cut_connection_loses_or_repeats_an_event(cloud, small_mnist):
    """The launcher is SIGKILLed mid-run: the run goes on without it. A follow re-attaches while it runs
    (as `logs --follow` does) through a proxy that cuts its SSH connection three times, the last for 3 s:
    it reconnects each time and shows every event once, in order; `logs --follow` then shows each epoch once."""
    from rich.console import Console

    from infra.ssh import Endpoint, SSHHost
    from launcher.live import RunView, follow_files
    from launcher.remote import ReconnectingRun

    remote = cloud.sshd.remote("instance-b")
    proc = cloud.popen(*train_args(cloud, small_mnist, "killed", str(remote), "--set", "train.epochs=4", SLOW))
    events = remote / "runs" / "killed" / "events.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and '"type":"epoch"' not in (events.read_text() if events.exists() else ""):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    class Recording(RunView):
        seen: list[dict] = []

        def handle(self, ev: dict) -> None:
            self.seen.append(ev)
            super().handle(ev)

    proxy = CuttableProxy((cloud.sshd.host, cloud.sshd.port))
    notes: list[str] = []
    host = SSHHost(Endpoint(cloud.sshd.user, "127.0.0.1", proxy.port), cloud.sshd.client_key,
                   known_hosts=cloud.tmp / "proxy_known_hosts")
    files = ReconnectingRun(host, str(remote / "runs" / "killed"), note=notes.append, cap=1.0)
    cuts = []

    def cutter() -> None:  # cut three times while the run goes on (3 epochs left: >= 14 s); the last outage lasts 3 s
        for outage in (0.0, 0.0, 3.0):
            time.sleep(2.0)
            proxy.paused = outage > 0
            cuts.append(proxy.cut())
            time.sleep(outage)
            proxy.paused = False

    threading.Thread(target=cutter, daemon=True).start()
    view = Recording(Console(file=open(os.devnull, "w")), live=False)
    end = follow_files(files, view, poll=(0.1, 0.2))
    proxy.close()
    host.close()
    assert end is not None and end["state"] == "succeeded"
    # each cut killed the live connection; the follow opened a new one (a read cut midway says so in a note)
    assert sum(cuts) >= 3 and host.connects >= 4, (cuts, host.connects, notes)
    # the outage made reads fail: the follow said so, retried with backoff and said when it was back
    assert files.reconnects >= 1 and any(n.startswith("reconnected after") for n in notes), notes
    # exactly the file's events, in order: none repeated, none lost
    evs = events_on_instance(remote, "killed")
    assert view.seen == evs
    assert [e["type"] for e in evs].count("epoch") == 4 and evs[-1]["type"] == "run_end"
    # and the CLI's own follow of the run the killed launcher started: every epoch once
    p = cloud.cli("logs", "killed", "--follow")
    assert p.returncode == 0, p.stderr
    assert [int(e) for e in EPOCH_ROW.findall(p.stdout)] == [1, 2, 3, 4]


def test_cancel_stops_a_cloud_run_through_its_instance(cloud, small_mnist):
    remote = cloud.sshd.remote("instance-d")
    p = cloud.cli(*train_args(cloud, small_mnist, "stopme", str(remote), "--detach", "--set", "train.epochs=20", SLOW))
    assert p.returncode == 0, p.stderr
    marker = remote / "jobs" / "stopme"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists()
    [row] = json.loads(cloud.cli("status", "--json").stdout)
    assert row["name"] == "mnist" and "stopme" in row["jobs"]
    p = cloud.cli("cancel", "stopme")
    assert p.returncode == 0, p.stderr
    assert "stopme: cancelled" in p.stdout
    status = json.loads((remote / "runs" / "stopme" / "status.json").read_text())
    assert status["state"] == "cancelled" and not marker.exists()


def test_a_failing_setup_is_one_line_and_leaves_no_run(cloud, small_mnist):
    remote = cloud.sshd.remote("instance-e")
    p = cloud.cli(*train_args(cloud, small_mnist, "nosetup", str(remote), "--set", "launch.python=/nowhere/python3"))
    assert p.returncode != 0
    assert p.stderr.startswith("error: ") and (
        "no interpreter found: tried /nowhere/python3 — set launch.python" in p.stderr)
    assert "Traceback" not in p.stderr
    assert not (remote / "runs" / "nosetup").exists()
    assert cloud.objects("nosetup") == {}


def test_credentials_in_launch_env_are_refused_before_anything_travels(cloud, small_mnist, tmp_path):
    remote = cloud.sshd.remote("instance-f")
    cfg = tmp_path / "leaky.yaml"
    cfg.write_text((ROOT / "configs" / "model3.yaml").read_text() + "launch:\n  env: {AWS_SECRET_ACCESS_KEY: x}\n")
    p = cloud.cli("train", str(cfg), "--data-dir", str(small_mnist), "--set", f"launch.remote_dir={remote}")
    assert p.returncode != 0 and "launch.env: AWS_SECRET_ACCESS_KEY would copy your AWS credentials" in p.stderr
    assert not remote.exists()


def test_an_agent_that_dies_at_once_fails_the_run_instead_of_hanging(cloud, small_mnist):
    remote = cloud.sshd.remote("instance-g")
    p = cloud.cli(*train_args(cloud, small_mnist, "deadagent", str(remote), "--set", "launch.setup=skip",
                              "--set", "launch.python=/bin/false"), timeout=120)
    assert p.returncode == 1
    assert "error: run deadagent failed: the agent stopped without finishing" in p.stderr
    assert json.loads((remote / "runs" / "deadagent" / "status.json").read_text())["state"] == "failed"


def test_resume_continues_a_cancelled_cloud_run_from_its_checkpoint_in_s3(cloud, small_mnist):
    """`train --resume RUN_ID` without --local: the config comes from the store, the agent on the cluster restores
    the newest complete checkpoint from S3 and trains the epochs after it; every epoch is in the run once."""
    remote = cloud.sshd.remote("instance-s")
    # 2 s a step (about 8 s an epoch) while it runs the first time: cancelled well before its last epoch on any
    # machine (epoch 1's checkpoint is in S3 a moment after it is saved); the value is not kept (launch.env), so
    # the resumed attempt runs at full speed
    p = cloud.cli(*train_args(cloud, small_mnist, "again", str(remote), "--detach", "--set", "train.epochs=3",
                              "--set=launch.env.MNIST_LAUNCH_STEP_DELAY=2.0"))
    assert p.returncode == 0, p.stderr
    deadline = time.monotonic() + 240
    while not cloud.has("again", "checkpoints/epoch_001/checkpoint.json"):  # the agent uploaded it whole
        assert time.monotonic() < deadline, cloud.cli("logs", "again", "--raw").stdout[-2000:]
        time.sleep(0.5)
    p = cloud.cli("cancel", "again")
    assert p.returncode == 0 and "again: cancelled" in p.stdout, p.stdout + p.stderr
    assert json.loads((remote / "runs" / "again" / "status.json").read_text())["state"] == "cancelled"
    epochs_before = [e["epoch"] for e in events_on_instance(remote, "again") if e["type"] == "epoch"]
    assert epochs_before in ([1], [1, 2])

    p = cloud.cli("train", "--resume", "again", "--store", STORE, "--data-dir", str(small_mnist))
    assert p.returncode == 0, p.stderr
    assert "restored from s3://" in p.stdout and "finished" in p.stdout, p.stdout
    restored = int(re.search(r"restored from s3://\S+ at \S+ \(epoch (\d+)\)", p.stdout).group(1))
    # only the epochs after the restored checkpoint are trained and shown: what came before was shown already
    assert [int(e) for e in EPOCH_ROW.findall(p.stdout)] == list(range(restored + 1, 4)) and restored >= 1
    evs = events_on_instance(remote, "again")
    assert [e["epoch"] for e in evs if e["type"] == "epoch"] == [1, 2, 3]  # each epoch once in the run's events
    objs = cloud.objects("again")
    assert json.loads(objs["status.json"])["state"] == "succeeded"
    assert json.loads(objs["summary.json"])["epochs_completed"] == 3
    # a run id that is not in the store is one line, and nothing starts
    p = cloud.cli("train", "--resume", "nosuchrun", "--store", STORE)
    assert p.returncode != 0 and f"run 'nosuchrun' not found in {STORE}" in p.stderr and "Traceback" not in p.stderr


def test_runs_write_nothing_outside_the_login_users_home(cloud, small_mnist):
    """Last in this file: what every run above wrote as the instance's user lies under its home."""
    if cloud.sshd.login is None or not cloud.sshd.login.created:
        why_not = cloud.sshd.login.why_not if cloud.sshd.login else '?'
        pytest.skip(f"the instance logs in as the current user ({why_not}): "
                    "its files cannot be told from this process's")
    # the runs this worker's tests finished on the instance before this one (the module's order keeps it last
    # in its worker; a run of its own when, taken by another worker, it comes first there)
    finished = sorted(cloud.sshd.home.glob("instance-*/runs/*/summary.json"))
    if not finished:
        remote = cloud.sshd.remote("instance-w")
        p = cloud.cli(*train_args(cloud, small_mnist, "tidy", str(remote), "--set", "train.epochs=1"))
        assert p.returncode == 0, p.stderr
        finished = [remote / "runs" / "tidy" / "summary.json"]
    assert finished[0].is_file() and finished[0].owner() == cloud.sshd.login.name
    # e.g. torch's /tmp/torchinductor_<user>: the runs' TMPDIR is remote_dir/tmp
    assert cloud.sshd.written_outside() == []
