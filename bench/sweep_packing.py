"""Runs per hour of a local sweep at --parallel K = 1, 2, 4: does packing runs onto this machine pay?

Each K runs the same sweep (model3, one epoch on the first --train images, one run per seed) through the real
CLI into its own store; the time is the sweep's wall clock from the launcher's start to the runner's end, and
each run's own train_seconds and img/s come from its summary.json.

    python bench/sweep_packing.py [--ks 1 2 4] [--runs 4] [--train 2048] [--data-dir ../shared/data/mnist]
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

ROOT = Path(__file__).resolve().parent.parent


def one(k: int, runs: int, train: int, data_dir: str, store: Path) -> dict:
    sid = f"pack-k{k}"
    cmd = [sys.executable, "-m", "launcher", "sweep", "configs/model3.yaml", "--local", "--store", str(store),
           "--data-dir", data_dir, "--sweep-id", sid, "--parallel", str(k), "--json",
           "--grid", "train.seed=" + ",".join(str(s) for s in range(1, runs + 1)),
           "--set", "train.epochs=1", "--set", f"data.train_limit={train}", "--set", "data.test_limit=1000"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"K={k}: {p.stderr.strip()}")
    sums = [json.loads((store / "runs" / r["run_id"] / "summary.json").read_text())
            for r in json.loads(p.stdout[p.stdout.index("{"):])["runs"]]
    return {"k": k, "runs": runs, "wall_s": wall, "runs_per_hour": 3600 * runs / wall,
            "train_s": statistics.mean(s["train_seconds"] for s in sums),
            "img_s": statistics.mean(s["images_per_second"] for s in sums)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--train", type=int, default=2048, help="training images per run (one epoch)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()} · load before: {os.getloadavg()[0]:.1f} · {time.strftime('%Y-%m-%d %H:%M')}")
    print("| K | runs | wall | runs/hour | train time / run | img/s / run |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.ks:
            r = one(k, args.runs, args.train, args.data_dir, Path(tmp) / f"k{k}")
            print(f"| {k} | {r['runs']} | {r['wall_s']:.0f} s | {r['runs_per_hour']:.0f} | {r['train_s']:.1f} s | "
                  f"{r['img_s']:,.0f} |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
