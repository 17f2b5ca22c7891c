"""The launcher's own overhead on a warm host: `train` to the first training event, by phase.

What runs: moto's ThreadedMotoServer as EC2/S3, a real OpenSSH sshd on 127.0.0.1 as the
instance (reached through MNIST_LAUNCH_SSH_ENDPOINT, as in the tests), `up` once, one warm-up
run (builds the venv, ships MNIST), then ``--repeats`` measured runs of the same tree, each
through ``lifecycle.start`` over the EC2 target (what `train` calls) and a follow until the first event arrives.

    python bench/remote_overhead.py [--repeats 5] [--data-dir ../shared/data/mnist] [--nodes 1]

``--nodes N``: a cluster of N nodes, each its own sshd on 127.0.0.1 with its own home (the tests' nodes),
the rendezvous on 127.0.0.1; each phase's time is the slowest node's (they run at once).

Phases: connect (EC2 lookup + SSH handshake), then at once over one connection: sync (workdir
manifest compare, 0 bytes when unchanged), data (MNIST hashes compared there), setup (venv stamp
check), their wall time being "prepare"; start (run files written over SFTP, agent spawned);
then first event (the agent starting Python, torch and `accelerate launch` until the trainer's
`start` event). "Launcher overhead" is everything before the agent runs: what mnist-launch adds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from rich.console import Console  # noqa: E402

from tests.support.aws_helpers import FAKE_ENV, instance_sshd, start_moto_server  # noqa: E402
from tests.support.sshd_fixture import stop_sshd  # noqa: E402

PHASES = ["connect", "sync", "data", "setup", "prepare", "start"]


def first_event_seconds(host, run_dir: str, timeout: float = 300) -> float:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        if host.read_from(f"{run_dir}/events.jsonl", 0, 4096):
            return time.monotonic() - t
        time.sleep(0.05)
    raise RuntimeError(f"no event in {run_dir} after {timeout}s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--nodes", type=int, default=1)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    os.environ.update(FAKE_ENV)
    os.environ.update(MNIST_LAUNCH_HOME=str(tmp / "home"), AWS_CONFIG_FILE=str(tmp / "none"),
                      AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"), MNIST_LAUNCH_SSH_CIDR="203.0.113.7/32")
    server, url = start_moto_server()
    os.environ["AWS_ENDPOINT_URL"] = url
    nodes = [instance_sshd(tmp / f"sshd-{rank}", url, node=f"{tmp.name}-node-{rank}" if args.nodes > 1 else None)
             for rank in range(args.nodes)]
    srv = nodes[0]
    for other in nodes[1:]:
        other.authorize(srv.client_key)  # the cluster's one key pair logs in to every node
    os.environ["MNIST_LAUNCH_SSH_ENDPOINT"] = ",".join(n.endpoint for n in nodes)
    os.environ["MNIST_LAUNCH_RENDEZVOUS_ADDRESS"] = "127.0.0.1"
    console = Console(file=open(os.devnull, "w"))
    try:
        from core.config import LaunchConfig
        from launcher import cluster, lifecycle
        from launcher.targets.ec2 import CloudFlags, EC2Target
        from tests.support.aws_helpers import ubuntu_ami

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench")
        cluster.up(cluster.UpRequest(launch=LaunchConfig(name="bench", ami=ubuntu_ami(), identity=str(srv.client_key),
                                                         nodes=args.nodes, max_instances=max(2, args.nodes)),
                                     store="s3://bench/mnist", yes=True), console=console)
        # under each instance user's home (each node's own)
        remote = f"~/overhead-{os.getpid()}" if args.nodes > 1 else str(srv.remote(f"overhead-{os.getpid()}"))
        rows = []
        for i in range(args.repeats + 1):  # run 0 is the warm-up: venv built, data shipped
            spec = lifecycle.RunSpec(config="configs/model3.yaml", run_id=f"overhead-{i}", data_dir=args.data_dir,
                                     overrides=["train.epochs=1", f"launch.remote_dir={remote}",
                                                f"launch.python={srv.python}", f"launch.nodes={args.nodes}"])
            t = time.monotonic()
            run = lifecycle.start(EC2Target(CloudFlags(store="s3://bench/mnist", name="bench"), console), spec)
            launcher = time.monotonic() - t
            first = first_event_seconds(run.host, run.run_dir)
            row = {**{k: round(v, 3) for k, v in run.info["timings"].items()}, "launcher_overhead": round(launcher, 3),
                   "first_event_after_start": round(first, 3), "train_to_first_event": round(launcher + first, 3)}
            print(("warm-up " if i == 0 else f"run {i}   ") + json.dumps(row), flush=True)
            if i:
                rows.append(row)
            lifecycle.cancel_anywhere(run.run_id, None)
            for host in run.hosts:
                host.close()
        keys = [*PHASES, "launcher_overhead", "first_event_after_start", "train_to_first_event"]
        print("\n| phase | median (s) | min (s) | max (s) |\n| --- | ---: | ---: | ---: |")
        for k in keys:
            xs = [r[k] for r in rows]
            print(f"| {k} | {statistics.median(xs):.2f} | {min(xs):.2f} | {max(xs):.2f} |")
        cluster.down("bench", None, yes=True, console=console)
    finally:
        for n in nodes:
            stop_sshd(n)
        server.stop()


if __name__ == "__main__":
    main()
