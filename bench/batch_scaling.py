"""Does a recipe's result depend on how many processes ran it? model3 on 1, 2 and 4 processes, same seeds.

``train.batch_size`` is the global batch: each of W processes takes batch_size / W, so every W takes the
same steps at the same batch. Each (W, seed) is one ordinary local run (`train --local --processes W`) on
a slice of the real MNIST; the table gives steps an epoch, final test accuracy per seed and its mean, and
the wall time. Runs that already succeeded in the store are reused.

    python bench/batch_scaling.py --data-dir ../shared/data/mnist [--train-limit 20000] [--epochs 2]
        [--processes 1 2 4] [--seeds 1 2] [--store runs/batch-scaling]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_one(world: int, seed: int, args: argparse.Namespace) -> dict:
    run_id = f"scale-w{world}-s{seed}"
    run_dir = Path(args.store) / "runs" / run_id
    if (run_dir / "summary.json").is_file():
        return {**json.loads((run_dir / "summary.json").read_text()), "wall": None}
    cmd = [sys.executable, "-m", "launcher", "train", "configs/model3.yaml", "--local", "--processes", str(world),
           "--data-dir", args.data_dir, "--store", args.store, "--run-id", run_id, "--set", f"train.seed={seed}",
           "--set", f"train.epochs={args.epochs}", "--set", f"data.train_limit={args.train_limit}"]
    print("$", " ".join(cmd[1:]), flush=True)
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{run_id} failed:\n{p.stderr[-2000:]}")
    return {**json.loads((run_dir / "summary.json").read_text()), "wall": time.monotonic() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--train-limit", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--store", default="runs/batch-scaling")
    args = ap.parse_args()
    print(f"| processes | global / per-process batch | steps an epoch | final test accuracy by seed "
          f"({', '.join(map(str, args.seeds))}) | mean | wall per run |")
    print("|---|---|---|---|---|---|")
    for world in args.processes:
        rows = [run_one(world, seed, args) for seed in args.seeds]
        accs = [r["final_test_accuracy"] for r in rows]
        steps = -(-(args.train_limit // world) // rows[0]["per_process_batch"])
        walls = [r["wall"] for r in rows if r["wall"] is not None]
        wall = f"{statistics.mean(walls):.0f} s" if walls else "(reused)"
        print(f"| {world} | {rows[0]['global_batch']} / {rows[0]['per_process_batch']} | {steps} | "
              f"{', '.join(f'{a:.2%}' for a in accs)} | {statistics.mean(accs):.2%} | {wall} |", flush=True)


if __name__ == "__main__":
    main()
