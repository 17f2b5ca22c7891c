"""Sweeps without training: the grid, the plan's checks, the runner's resume decisions, the result table's sums."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from core.errors import ConfigError
from core.runstate import StatusWriter
from infra.sweep import Runner, done_already, slot_env
from launcher.sweep import SweepSpec, expand, local_place, parse_grid, plan_runs, setting_label, setting_of
from launcher.targets.local import LocalTarget
from tests.support.cli import invoke


def test_the_grid_is_every_combination_in_the_order_given():
    grid = parse_grid(["train.lr=0.01,0.02", "augment.translate=[0.1,0.1],[0.2,0.2]", "train.seed=1,2"])
    assert grid[1] == ("augment.translate", ["[0.1,0.1]", "[0.2,0.2]"])  # commas inside brackets stay
    combos = expand(grid)
    assert len(combos) == 8 and combos[0] == {"train.lr": "0.01", "augment.translate": "[0.1,0.1]", "train.seed": "1"}
    assert [c["train.seed"] for c in combos[:2]] == ["1", "2"]  # the last key varies fastest
    assert setting_of(combos[0]) == {"train.lr": "0.01", "augment.translate": "[0.1,0.1]"}
    assert setting_label(setting_of(combos[0]), short=True) == "lr=0.01 translate=[0.1,0.1]"
    assert setting_label({"train.lr": 1, "optimizer.lr": 2}, short=True) == "train.lr=1 optimizer.lr=2"


@pytest.mark.parametrize("items, message", [
    (["train.seed"], "expected KEY=V1,V2"),
    (["train.seed=1,,2"], "expected KEY=V1,V2"),
    (["train..seed=1"], "expected KEY=V1,V2"),
    (["launch.instance=a,b"], "launch settings are the sweep's"),
    (["train.seed=1", "train.seed=2"], "given twice"),
    (["train.seed=1,1"], "listed twice"),
    ([], "no --grid given"),
])
def test_a_bad_grid_is_one_line_naming_it(items, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(items)


def test_every_setting_is_checked_before_anything_is_written_and_the_bad_one_is_named(tmp_path):
    spec = SweepSpec("configs/model3.yaml", ["train.batch_size=64,many", "train.seed=1,2"])
    with pytest.raises(ConfigError, match="setting train.batch_size=many train.seed=1: .*batch_size"):
        plan_runs(spec, LocalTarget(str(tmp_path)).load_config, "sw", nodes=1)
    runs = plan_runs(SweepSpec("configs/model3.yaml", ["train.seed=1,2,3"]), LocalTarget(str(tmp_path)).load_config,
                     "sw", nodes=2)
    assert [(r["run_id"], r["seed"], r["node"]) for r, _ in runs] == [("sw-000", 1, 0), ("sw-001", 2, 1),
                                                                       ("sw-002", 3, 0)]  # run i on node i mod N
    assert [cfg.train.seed for _, cfg in runs] == [1, 2, 3]
    assert not (tmp_path / "runs").exists()


def test_bad_input_at_the_cli_is_one_error_line(tmp_path):
    out = invoke("sweep", "configs/model3.yaml", "--local", "--store", str(tmp_path), "--grid", "train.seed")
    assert out.code == 2 and out.stderr.strip().startswith("error: --grid 'train.seed': expected KEY=V1,V2")
    out = invoke("sweep", "status", "nope", "--store", str(tmp_path))
    assert out.code != 0 and "sweep 'nope' not found" in out.stderr
    out = invoke("sweep", "configs/model3.yaml", "--local", "--store", str(tmp_path), "--grid", "train.seed=1",
                 "--parallel", "0")
    assert out.code != 0 and "--parallel 0: must be at least 1" in out.stderr
    assert not (tmp_path / "runs").exists()


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_restarted_runner_skips_what_is_done_adopts_what_runs_and_queues_the_rest(tmp_path):
    """What `sweep resume` (or a runner started again) does with each state a run can be left in."""
    import os

    left = {"ok": {"state": "succeeded", "exit_code": 0},
            "bad-setting": {"state": "failed", "exit_code": 1, "reason": "fp16 needs a CUDA GPU"},
            "killed": {"state": "failed", "reason": "the agent stopped without finishing (killed?)"},
            "cancelled": {"state": "cancelled", "exit_code": -15},
            "live": {"state": "running", "agent_pid": os.getpid()},  # an agent still going: never started twice
            "orphan": {"state": "running", "agent_pid": dead_pid()},  # its agent died with the machine
            "queued": None}
    runs = []
    for i, (name, st) in enumerate(left.items()):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        if st is not None:
            (run_dir / "status.json").write_text(json.dumps(st))
        runs.append({"run_id": name, "run_dir": str(run_dir), "node": 0 if name != "queued" else i % 1, "argv": []})
    sweep_dir = tmp_path / "runs" / "sw"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "plan.json").write_text(json.dumps({"runs": runs, "cwd": str(tmp_path)}))
    runner = Runner(sweep_dir, rank=0, parallel=2, gpus=0, cores=4)
    todo = [r["run_id"] for r in runner.queue()]
    assert todo == ["killed", "cancelled", "orphan", "queued"]
    assert sorted(runner.record["skipped"]) == ["bad-setting", "ok"]
    assert list(runner.running) == ["live"]
    orphan = StatusWriter.for_path(tmp_path / "runs" / "orphan" / "status.json").read()
    assert orphan["state"] == "failed" and "killed" in orphan["reason"]  # its end recorded before it runs again
    assert done_already({"state": "succeeded"}) and not done_already({"state": "preempted"})


def test_slots_split_the_cores_or_take_a_gpu_each():
    assert slot_env(0, slots=2, gpus=0, cores=2) == {"OMP_NUM_THREADS": "1"}
    assert slot_env(1, slots=4, gpus=0, cores=16) == {"OMP_NUM_THREADS": "4"}
    assert slot_env(5, slots=8, gpus=4, cores=32)["CUDA_VISIBLE_DEVICES"] == "1"


def test_the_result_is_the_mean_and_std_of_the_summaries_and_the_claim_holds_only_if_every_seed_met_it(tmp_path):
    place = local_place(str(tmp_path))
    runs = []
    finals = {"a": [0.9950, 0.9930], "b": [0.9960, 0.9970]}
    for i, (setting, seed) in enumerate([(s, seed) for s in "ab" for seed in (1, 2)]):
        run_id = f"sw-{i:03d}"
        run_dir = tmp_path / "runs" / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "status.json").write_text(json.dumps({"state": "succeeded"}))
        (run_dir / "summary.json").write_text(json.dumps({
            "model": "model3", "params": 7736, "epochs_completed": 15, "final_test_accuracy": finals[setting][seed - 1],
            "best_test_accuracy": finals[setting][seed - 1] + 0.001, "train_seconds": 100.0 + i,
            "claim_accuracy": 0.994, "history": []}))
        runs.append({"run_id": run_id, "setting": {"train.lr": setting}, "seed": seed})
    runs.append({"run_id": "sw-004", "setting": {"train.lr": "b"}, "seed": 3})  # queued: b is not done yet
    from launcher.sweep_table import markdown, results

    rows = results(place, {"runs": runs})
    a, b = rows
    assert a["final_test_accuracy"] == {"mean": pytest.approx(0.994),
                                        "std": pytest.approx(statistics.stdev(finals["a"]))}
    assert a["train_seconds"]["mean"] == pytest.approx(100.5) and a["seeds"] == [1, 2]
    assert a["claim_met"] is False  # 99.30% < 99.40% for seed 2
    assert b["claim_met"] is False and b["states"] == {"succeeded": 2, "queued": 1}  # not every seed ran
    assert "| train.lr=a | 7,736 | 15 | 2 | 99.40% ± 0.14 | 99.50% ± 0.14 | 99.50, 99.30 |" in markdown(rows)
