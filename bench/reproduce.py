"""Reproduce every recipe's claim on the real MNIST and print RESULTS.md's table.

Each (recipe, seed) is one ordinary local run, ``repro-<recipe>-s<seed>`` in the store; runs
that already succeeded are reused, so the script can be stopped and restarted.

    python bench/reproduce.py --seeds 1 2 3 [--configs model3 one_epoch] [--store runs/repro]
    python bench/reproduce.py --table-only      # just print the table from what is there
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = ["model3", "one_epoch", "record", "gap_19k", "fc_baseline", "fc_baseline_onecycle", "fc_dropout",
         "fc_dropout_onecycle", "model1", "model1_onecycle", "model2", "model4"]


def run_one(config: str, seed: int, store: str, data_dir: str) -> dict | None:
    run_id = f"repro-{config}-s{seed}"
    summary = Path(store) / "runs" / run_id / "summary.json"
    status = Path(store) / "runs" / run_id / "status.json"
    if summary.is_file() and json.loads(status.read_text()).get("state") == "succeeded":
        return json.loads(summary.read_text())
    if (Path(store) / "runs" / run_id).exists():
        import shutil

        shutil.rmtree(Path(store) / "runs" / run_id)  # an interrupted attempt: start it again
    cmd = [sys.executable, "-m", "launcher", "train", f"configs/{config}.yaml", "--local", "--data-dir", data_dir,
           "--store", store, "--run-id", run_id, "--set", f"train.seed={seed}"]
    print("$", " ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stderr.strip(), flush=True)
        return None
    return json.loads(summary.read_text())


def claim_met(name: str, final: float) -> str:
    from core.config import MODEL_CLAIMS

    return "yes" if final >= MODEL_CLAIMS[name.removesuffix("_onecycle")] else "no"


def config_of(run_id: str) -> str:
    """repro-<config>-s<seed> -> config (two configs may train the same model)."""
    return run_id[len("repro-"):].rsplit("-s", 1)[0]


def table(store: str) -> str:
    from launcher.orchestrator import list_runs
    from trainer.models import MODELS

    rows = [r for r in list_runs(store) if r["run_id"].startswith("repro-") and r["state"] == "succeeded"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(config_of(r["run_id"]), []).append(r)
    out = ["| recipe | params | seed's claim | epochs | seeds | final test acc (mean ± std) | best test acc | "
           "per-seed final | train time / run | device | claim met (every seed, final) |",
           "| --- | ---: | --- | ---: | ---: | --- | --- | --- | ---: | --- | --- |"]

    def ms(xs):
        xs = [100 * x for x in xs]
        return f"{statistics.mean(xs):.2f}%" + (f" ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else "")

    for name in ORDER:
        runs = sorted(by.get(name, []), key=lambda r: r["seed"] or 0)
        if not runs:
            out.append(f"| {name} | | {MODELS[name.removesuffix('_onecycle')].claim} | | 0 | not run yet | | | | | |")
            continue
        finals = [r["final_test_accuracy"] for r in runs]
        bests = [r["best_test_accuracy"] for r in runs]
        met = all(claim_met(name, f) == "yes" for f in finals)
        secs = statistics.mean(r["train_seconds"] or 0 for r in runs)
        out.append(
            f"| {name} | {runs[0]['params']:,} | {MODELS[runs[0]['model']].claim} | {runs[0]['epochs_completed']} | "
            f"{len(runs)} | "
            f"{ms(finals)} | {ms(bests)} | {', '.join(f'{100 * f:.2f}' for f in finals)} | {secs:.0f}s | "
            f"{runs[0]['device']} | {'yes' if met else 'no'} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--configs", nargs="+", default=ORDER)
    ap.add_argument("--store", default=str(ROOT / "runs" / "repro"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        for config in args.configs:
            for seed in args.seeds:
                s = run_one(config, seed, args.store, args.data_dir)
                if s:
                    print(f"{config} seed {seed}: final {100 * s['final_test_accuracy']:.2f}% "
                          f"best {100 * s['best_test_accuracy']:.2f}% in {s['train_seconds']:.0f}s", flush=True)
    print(table(args.store))


if __name__ == "__main__":
    main()
