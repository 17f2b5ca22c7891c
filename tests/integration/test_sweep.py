"""Sweeps on this machine, through the real CLI: runners, agents and trainers as real processes, on tiny data.

One 2x2 sweep (a setting x two seeds, 2 runs at once) serves three tests: its launcher is killed mid-sweep
and `sweep status` re-attaches; the setting's second value (fp16, which a CPU host cannot do) fails each of its
runs before any training while the others finish; the result table is checked against the runs' summary.json.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess

import pytest

from tests.support import ROOT
from tests.support.cli import cli, entry_point
from tests.support.runs import has_event, wait_until

SID = "sw-e2e"
TINY = ["--set", "train.epochs=1", "--set", "data.train_limit=256", "--set", "data.test_limit=128"]


def sweep_args(store, data, sid, *extra):
    return ["sweep", "configs/model3.yaml", "--local", "--store", str(store), "--data-dir", str(data), "--sweep-id",
            sid, *TINY, *extra]


def status_of(run_dir) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.fixture(scope="module")
def sweep(small_mnist, tmp_path_factory):
    """The 2x2 sweep, its launcher killed (SIGKILL) once the first run trains, then `sweep status --json`
    followed to the end: (store, the JSON it printed, that command, the runner's pid before the kill)."""
    store = tmp_path_factory.mktemp("sweep") / "store"
    env = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
    launcher = subprocess.Popen([*entry_point(), *sweep_args(store, small_mnist, SID, "--grid",
                                                             "train.mixed_precision=no,fp16", "--grid",
                                                             "train.seed=1,2", "--parallel", "2")],
                                cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "120"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = store / "runs" / f"{SID}-000"
    try:
        wait_until(lambda: has_event(first, lambda e: e.get("type") == "start") or launcher.poll() is not None,
                   "the first run never started training")
        assert launcher.poll() is None, launcher.communicate()
        runner = json.loads((store / "runs" / SID / "runner-0.json").read_text())["pid"]
        launcher.kill()  # the terminal closed under it: the runner and the runs go on
        launcher.wait()
        assert os.path.exists(f"/proc/{runner}")
    finally:
        if launcher.poll() is None:
            launcher.kill()
    p = cli("sweep", "status", SID, "--store", str(store), "--json")
    return store, json.loads(p.stdout), p, runner


def test_a_killed_launcher_changes_nothing_and_status_reattaches_each_run_once(sweep):
    store, out, p, runner = sweep
    assert p.returncode == 1 and "2 of 4 runs failed" in p.stderr, p.stderr  # the fp16 runs
    assert not out["running"] and [r["run_id"] for r in out["runs"]] == [f"{SID}-00{i}" for i in range(4)]
    rec = json.loads((store / "runs" / SID / "runner-0.json").read_text())
    assert rec["pid"] == runner and rec["state"] == "finished"
    assert sorted(rec["started"]) == [r["run_id"] for r in out["runs"]]  # each started once, by the one runner
    for r in out["runs"]:
        events = [json.loads(line) for line in (store / "runs" / r["run_id"] / "events.jsonl").read_text().splitlines()]
        assert [e["type"] for e in events].count("run_end") == 1, r["run_id"]
        assert json.loads((store / "runs" / r["run_id"] / "meta.json").read_text())["sweep"] == SID
    plan = json.loads((store / "runs" / SID / "plan.json").read_text())
    assert [(r["setting"], r["seed"]) for r in plan["runs"]] == [
        ({"train.mixed_precision": m}, s) for m in ("no", "fp16") for s in (1, 2)]
    # resumed when it is over: nothing runs again (two succeeded, two failed by themselves)
    again = cli("sweep", "resume", SID, "--store", str(store))
    assert "2 of 4 runs failed" in again.stderr, again.stderr
    rec = json.loads((store / "runs" / SID / "runner-0.json").read_text())
    assert rec["started"] == [] and sorted(rec["skipped"]) == [r["run_id"] for r in plan["runs"]]


def test_a_failing_setting_fails_its_runs_alone_before_training(sweep):
    store, out, _p, _runner = sweep
    states = {r["run_id"]: (r["setting"]["train.mixed_precision"], r["state"]) for r in out["runs"]}
    assert sorted(states.values()) == [("fp16", "failed")] * 2 + [("no", "succeeded")] * 2
    for r in out["runs"]:
        if r["state"] == "failed":
            assert "fp16 needs a CUDA GPU" in r["reason"]
            assert not (store / "runs" / r["run_id"] / "summary.json").exists()  # nothing trained
    failed = [s for s in out["settings"] if s["setting"] == {"train.mixed_precision": "fp16"}][0]
    assert (failed["runs"], failed["succeeded"], failed["states"]) == (2, 0, {"failed": 2})


def test_the_table_is_what_the_runs_summary_json_say(sweep):
    store, out, _p, _runner = sweep
    row = [s for s in out["settings"] if s["setting"] == {"train.mixed_precision": "no"}][0]
    sums = [json.loads((store / "runs" / rid / "summary.json").read_text()) for rid in row["run_ids"]]
    assert row["seeds"] == [1, 2] and len(sums) == 2
    finals = [s["final_test_accuracy"] for s in sums]
    assert row["final_test_accuracy"]["mean"] == pytest.approx(statistics.mean(finals), abs=1e-12)
    assert row["final_test_accuracy"]["std"] == pytest.approx(statistics.stdev(finals), abs=1e-12)
    assert row["best_test_accuracy"]["mean"] == pytest.approx(statistics.mean(s["best_test_accuracy"] for s in sums))
    assert row["train_seconds"]["mean"] == pytest.approx(statistics.mean(s["train_seconds"] for s in sums))
    assert row["params"] == sums[0]["params"] == 7736 and row["per_seed_final"] == finals
    assert row["claim"] == 0.994 and row["claim_met"] is (min(finals) >= 0.994)  # model3's claim
    assert os.path.getsize(out["plot"]) > 0
    table = cli("sweep", "status", SID, "--store", str(store), env={"COLUMNS": "160"}).stdout
    shown = f"{100 * statistics.mean(finals):.2f}% ± {100 * statistics.stdev(finals):.2f}"
    assert shown in table and "mixed_precision=no" in table and "0/2 (2 failed)" in table, table


def test_cancel_stops_the_running_run_and_starts_no_more(small_mnist, tmp_path):
    """A second sweep, throttled so its first run is still training when `sweep cancel` comes."""
    p = cli(*sweep_args(tmp_path, small_mnist, "sw-cancel", "--grid", "train.seed=1,2", "--detach"),
            env={"MNIST_LAUNCH_STEP_DELAY": "5"})
    assert p.returncode == 0 and "detached" in p.stdout, p.stderr
    first = tmp_path / "runs" / "sw-cancel-000"
    wait_until(lambda: status_of(first).get("state") == "running", "the first run never started")
    c = cli("cancel", "sw-cancel", "--store", str(tmp_path))  # `cancel` takes a sweep's id too
    assert c.returncode == 0, c.stderr
    assert status_of(first)["state"] == "cancelled"
    assert status_of(tmp_path / "runs" / "sw-cancel-001") == {}  # queued, never started
    rec = json.loads((tmp_path / "runs" / "sw-cancel" / "runner-0.json").read_text())
    assert rec["state"] == "cancelled" and rec["started"] == ["sw-cancel-000"]
    assert "1 cancelled" in c.stdout and "1 queued" in c.stdout, c.stdout
    assert not os.path.exists(f"/proc/{rec['pid']}")  # the runner ended with its sweep
