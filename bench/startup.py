"""A local run's start-up and wind-down, by phase and process: what `train --local` costs besides training.

Runs ``mnist-launch train configs/model3.yaml --local`` (a new Python, as a user types it) ``--repeats`` times on
a slice of MNIST, then reads the run's own clocks: meta.json (the launcher wrote the run), status.json (the
agent's start, the trainer's spawn and exit), the trainer's ``start`` event (its start-up phases) and the
events after it. Also times the read-only commands (`runs`, `logs`, `models`) against the same store.

    python bench/startup.py [--repeats 3] [--data-dir ../shared/data/mnist] [--train-limit 2000] [--test-limit 500]

"training" is the trainer's ``start`` event to its last ``epoch`` event (the epochs and their evaluation);
"overhead" is the command's wall time minus that: the goal is under 3 s on the idle 2-core dev machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent

ROWS = [  # (label, process, from, to)
    ("launcher: command to run written", "launcher", "t0", "created"),
    ("launcher: run written to agent up", "launcher+agent", "created", "agent"),
    ("agent: up to trainer spawned", "agent", "agent", "spawned"),
    ("trainer: Python + imports", "trainer", "spawned", "imports"),
    ("trainer: Accelerator", "trainer", "imports", "accelerator"),
    ("trainer: data", "trainer", "accelerator", "data"),
    ("trainer: model, optimizer, trackers", "trainer", "data", "start"),
    ("training and evaluation", "trainer", "start", "last_epoch"),
    ("trainer: checkpoint, summary", "trainer", "last_epoch", "finished"),
    ("trainer: exit", "trainer", "finished", "exited"),
    ("agent: final curves, run_end", "agent", "exited", "run_end"),
    ("launcher: run_end to exit", "launcher", "run_end", "t1"),
]


def one_run(args: argparse.Namespace, store: Path) -> dict[str, float]:
    tree = Path(args.tree or ROOT)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "launcher", "train", "configs/model3.yaml", "--local", "--store", str(store),
           "--data-dir", args.data_dir, "--set", f"data.train_limit={args.train_limit}",
           "--set", f"data.test_limit={args.test_limit}", "--set", f"train.epochs={args.epochs}"]
    before = set(p.name for p in (store / "runs").glob("*")) if (store / "runs").is_dir() else set()
    t0 = time.time()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t1 = time.time()
    (run_dir,) = [p for p in (store / "runs").glob("*") if p.name not in before]
    meta = json.loads((run_dir / "meta.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["type"] == "start")
    marks = {"t0": t0, "t1": t1, "created": meta["created_at"], "agent": status.get("agent_started_at"),
             "spawned": status["started_at"], "start": start["time"],
             "last_epoch": [e for e in events if e["type"] == "epoch"][-1]["time"],
             "finished": next(e for e in events if e["type"] == "finished")["time"],
             "exited": status["finished_at"], "run_end": next(e for e in events if e["type"] == "run_end")["time"]}
    if "startup" in start:  # (a tree before bench/startup.py has neither these nor agent_started_at)
        at = start["time"] - start["startup"]["model"]  # the trainer's phases, back from its start event
        for phase in ("data", "accelerator", "imports"):
            marks[phase] = at
            at -= start["startup"][phase]
    out = {label: marks[b] - marks[a] if marks.get(a) and marks.get(b) else float("nan") for label, _, a, b in ROWS}
    out["wall"] = t1 - t0
    out["overhead"] = out["wall"] - out["training and evaluation"]
    return out


def timed(cmd: list[str], tree: Path, env: Optional[dict] = None) -> float:
    t = time.time()
    subprocess.run(cmd, cwd=tree, env={**os.environ, **(env or {}), "PYTHONPATH": str(tree)}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--test-limit", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--tree", default=None, help="run another checkout's launcher (e.g. an older commit) from it")
    args = ap.parse_args()
    store = Path(tempfile.mkdtemp(prefix="startup-"))
    runs = [one_run(args, store) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"tree {args.tree or ROOT}\n")
    print(f"`train --local`, model3, {args.train_limit} train / {args.test_limit} test images, {args.epochs} "
          f"epoch(s); median of {args.repeats} (seconds)\n")
    print("| phase | process | median | runs |\n|---|---|---:|---|")
    for label, proc, _, _ in ROWS:
        print(f"| {label} | {proc} | {med[label]:.2f} | {' '.join(f'{r[label]:.2f}' for r in runs)} |")
    for key in ("wall", "overhead"):
        print(f"| **{key}** | | **{med[key]:.2f}** | {' '.join(f'{r[key]:.2f}' for r in runs)} |")
    run_id = sorted(p.name for p in (store / "runs").glob("*"))[-1]
    py = [sys.executable, "-m", "launcher"]
    print("\n| read-only command | median of 3 (s) |\n|---|---:|")
    sys.path.insert(0, str(ROOT))
    from tests.support.aws_helpers import FAKE_ENV, plain_moto_server

    server, url = plain_moto_server()  # `status` asks EC2: moto on 127.0.0.1, an account with no instance
    aws = {**FAKE_ENV, "AWS_ENDPOINT_URL": url, "MNIST_LAUNCH_HOME": str(store / "home"),
           "AWS_CONFIG_FILE": str(store / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(store / "none")}
    try:
        for name, cmd, env in (("runs", py + ["runs", "--store", str(store)], None),
                               ("logs RUN_ID", py + ["logs", run_id, "--store", str(store)], None),
                               ("status (moto, no instance)", py + ["status"], aws),
                               ("models", py + ["models"], None)):
            took = statistics.median(timed(cmd, Path(args.tree or ROOT), env) for _ in range(3))
            print(f"| `{name}` | {took:.2f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
