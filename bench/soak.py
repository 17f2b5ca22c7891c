"""Soak: back-to-back cloud runs on the local sshd with random connection cuts and launcher kills.

Each run is a real `mnist-launch train` (a subprocess) against moto (EC2, S3) and a real sshd on
127.0.0.1 reached through a TCP proxy that the soak cuts at random moments; some launchers are
SIGKILLed mid-run and the run is re-attached with `mnist-launch logs RUN --follow`. Checked per run:
the follow that saw the end showed each epoch exactly once and the finish (no lost, no repeated
events); the events file on the "instance" has each epoch once; every artifact is in the bucket
(summary, weights, events, a checkpoint with its manifest, status succeeded). At the end: no agent
or trainer process is left.

    python bench/soak.py [--runs 20] [--epochs 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from tests.support.aws_helpers import FAKE_ENV, instance_sshd, start_moto_server, ubuntu_ami  # noqa: E402
from tests.support.runs import EPOCH_ROW  # noqa: E402
from tests.support.sshd_fixture import stop_sshd  # noqa: E402
from tests.support.strict_instance import CuttableProxy  # noqa: E402


def small_mnist(out: Path) -> Path:
    import numpy as np

    from trainer.data import load_mnist, write_idx

    full = load_mnist(ROOT.parent / "shared" / "data" / "mnist")
    out.mkdir(parents=True, exist_ok=True)
    write_idx(out / "train-images-idx3-ubyte", full.train_images[:2000, 0].numpy())
    write_idx(out / "train-labels-idx1-ubyte", full.train_labels[:2000].numpy().astype(np.uint8))
    write_idx(out / "t10k-images-idx3-ubyte", full.test_images[:500, 0].numpy())
    write_idx(out / "t10k-labels-idx1-ubyte", full.test_labels[:500].numpy().astype(np.uint8))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    os.environ.update(FAKE_ENV)
    os.environ.update(MNIST_LAUNCH_HOME=str(tmp / "home"), AWS_CONFIG_FILE=str(tmp / "none"),
                      AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"), MNIST_LAUNCH_SSH_CIDR="203.0.113.7/32",
                      MNIST_LAUNCH_AUTOSTOP_INSTALL="0", COLUMNS="160")
    server, url = start_moto_server()
    os.environ["AWS_ENDPOINT_URL"] = url
    srv = instance_sshd(tmp / "sshd", url)
    proxy = CuttableProxy((srv.host, srv.port))
    os.environ["MNIST_LAUNCH_SSH_ENDPOINT"] = f"{srv.user}@127.0.0.1:{proxy.port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MNIST_LAUNCH_DEBUG", None)
    data = small_mnist(tmp / "data")
    remote = srv.remote(f"soak-{os.getpid()}")  # under the instance user's home (tests/support/strict_instance.py)
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="soak")

    def cli(*a: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "launcher", *a], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    totals = {"runs": 0, "cuts": 0, "launcher_kills": 0, "lost_or_repeated": 0, "incomplete_artifacts": 0,
              "failed": 0}
    started = time.monotonic()
    try:
        up = cli("up", "--instance", "g4dn.xlarge", "--ami", ubuntu_ami(), "--identity", str(srv.client_key),
                 "--store", "s3://soak/mnist", "--yes")
        assert up.returncode == 0, up.stderr
        for i in range(1, args.runs + 1):
            run_id = f"soak-{i:02d}"
            kill = rng.random() < 0.3
            cut_times = sorted(rng.uniform(1, 20) for _ in range(rng.randint(0, 3)))
            cmd = [sys.executable, "-m", "launcher", "train", "configs/model3.yaml", "--store", "s3://soak/mnist",
                   "--data-dir", str(data), "--run-id", run_id, "--set", f"train.epochs={args.epochs}",
                   "--set", f"launch.remote_dir={remote}", "--set", f"launch.python={srv.python}"]
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t0 = time.monotonic()
            cuts = 0
            kill_at = rng.uniform(2, 15) if kill else None  # seconds after start, once the run has begun
            while proc.poll() is None:
                now = time.monotonic() - t0
                if cut_times and now >= cut_times[0]:
                    cut_times.pop(0)
                    proxy.cut()
                    cuts += 1
                started_run = (remote / "runs" / run_id / "events.jsonl").exists()  # kill mid-run, not mid-setup
                if kill_at is not None and now >= kill_at and started_run:
                    proc.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.1)
            out, err = proc.communicate()
            killed = proc.returncode == -signal.SIGKILL
            if killed:
                follow = cli("logs", run_id, "--follow")
                out, err, rc = follow.stdout, follow.stderr, follow.returncode
            else:
                rc = proc.returncode
            epochs = [int(e) for e in EPOCH_ROW.findall(out)]
            ok_follow = rc == 0 and epochs == list(range(1, args.epochs + 1)) and "finished" in out
            events_file = remote / "runs" / run_id / "events.jsonl"
            evs = [json.loads(x) for x in events_file.read_text().splitlines()] if events_file.exists() else []
            ok_file = [e["epoch"] for e in evs if e["type"] == "epoch"] == list(range(1, args.epochs + 1))
            keys = {o["Key"].split(f"runs/{run_id}/", 1)[1]
                    for o in s3.list_objects_v2(Bucket="soak", Prefix=f"mnist/runs/{run_id}/").get("Contents", [])}
            status = json.loads(s3.get_object(Bucket="soak", Key=f"mnist/runs/{run_id}/status.json")["Body"].read()) \
                if "status.json" in keys else {}
            complete = ({"summary.json", "model.safetensors", "events.jsonl", "config.yaml", "curves.png"} <= keys
                        and any(k.endswith("/checkpoint.json") for k in keys) and status.get("state") == "succeeded")
            totals["runs"] += 1
            totals["cuts"] += cuts
            totals["launcher_kills"] += int(killed)
            totals["lost_or_repeated"] += int(not (ok_follow and ok_file))
            totals["incomplete_artifacts"] += int(not complete)
            totals["failed"] += int(rc != 0)
            print(f"{run_id}: cuts {cuts}, launcher killed {killed}, follow ok {ok_follow}, events ok {ok_file}, "
                  f"artifacts complete {complete}, {time.monotonic() - t0:.0f}s"
                  + ("" if rc == 0 else f" — {err.strip().splitlines()[-1:] }"), flush=True)
        time.sleep(1)
        left = subprocess.run(["pgrep", "-f", f"infra.agent.*{remote.name}|trainer --run-dir {remote}"],
                              capture_output=True, text=True).stdout.split()
        totals["processes_left"] = len(left)
        totals["seconds"] = round(time.monotonic() - started)
        print(json.dumps(totals))
        cli("down", "mnist", "--yes")
    finally:
        proxy.close()
        stop_sshd(srv)
        server.stop()


if __name__ == "__main__":
    main()
