"""Reproduce every recipe's claim on the real MNIST and print RESULTS.md's table.

Each recipe is one sweep over the seeds (``repro-<recipe>``: `mnist-launch sweep configs/<recipe>.yaml --grid
train.seed=1,2,3 --local`), its runs ordinary runs in the store; the table is each sweep's result row (what
`mnist-launch sweep status repro-<recipe> --markdown` prints), the recipe in the first column. Stopped and
started again, a recipe's sweep is resumed: runs that finished are not run again (its seeds are the ones it
started with).

    python bench/reproduce.py --seeds 1 2 3 [--configs model3 one_epoch] [--store runs/repro] [--parallel 2]
    python bench/reproduce.py --table-only      # just print the table from what is there
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ORDER = ["model3", "one_epoch", "record", "gap_19k", "fc_baseline", "fc_baseline_onecycle", "fc_dropout",
         "fc_dropout_onecycle", "model1", "model1_onecycle", "model2", "model4"]


def sweep_id(config: str) -> str:
    return f"repro-{config}"


def run_sweep(config: str, seeds: list[int], store: str, data_dir: str, parallel: int, sets: list[str]) -> None:
    """The recipe's sweep: started, or resumed where it stopped (finished runs are kept)."""
    started = (Path(store) / "runs" / sweep_id(config) / "plan.json").is_file()
    base = [sys.executable, "-m", "launcher", "sweep"]
    cmd = base + (["resume", sweep_id(config), "--store", store, "--parallel", str(parallel)] if started else
                  [f"configs/{config}.yaml", "--local", "--data-dir", data_dir, "--store", store, "--sweep-id",
                   sweep_id(config), "--parallel", str(parallel), "--grid",
                   "train.seed=" + ",".join(str(s) for s in seeds), *[a for v in sets for a in ("--set", v)]])
    print("$", " ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, cwd=ROOT, text=True)
    if p.returncode != 0:
        print(f"{config}: the sweep ended with failed runs (see above)", flush=True)


def table(store: str, configs: list[str]) -> str:
    from launcher.sweep import local_place, read_plan
    from launcher.sweep_table import markdown, results

    place = local_place(store)
    rows = []
    for config in configs:
        if not (Path(store) / "runs" / sweep_id(config) / "plan.json").is_file():
            continue
        for row in results(place, read_plan(place, sweep_id(config))):
            rows.append({**row, "label": config})  # the recipe: the sweep's one setting is its seeds
    return markdown(rows, first="recipe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--configs", nargs="+", default=ORDER)
    ap.add_argument("--store", default=str(ROOT / "runs" / "repro"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--parallel", type=int, default=1, help="runs of a recipe at once (cores split between them)")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="KEY=VALUE for every run (a smoke test: --set data.train_limit=256 --set train.epochs=1)")
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if not args.table_only:
        for config in args.configs:
            run_sweep(config, args.seeds, args.store, args.data_dir, args.parallel, args.sets)
    print(table(args.store, args.configs))


if __name__ == "__main__":
    main()
