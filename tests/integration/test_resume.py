"""A run goes on where it stopped and ends as if it never had: resumed by the user, brought back on a fresh
host from what its agent had uploaded (the instance gone), or after a spot notice. Each is checked against
one uninterrupted run of the same settings (``straight``, made once for the module): checkpoints are exact,
so every epoch's numbers must match it.

Real processes: the agent and the trainer; the store is a folder (LocalStore) so the agent reaches it
without AWS (the S3 side of the same calls is in test_checkpoint_store.py and the cloud tests).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from infra.host import LocalHost
from infra.restore import events_until, restore_run
from infra.store import LocalStore, latest_stored_checkpoint
from launcher.orchestrator import PROJECT_ROOT, LocalRequest, read_status, start_run
from tests.support.imds import NOTICE, REBALANCE
from tests.support.runs import events_of, has_event, run_to_end, wait_until

# 13 steps an epoch (400 images, batch 32): room for a checkpoint in the middle of one. A stepped learning
# rate and augmentation: a resume that lost the scheduler's or the augmentation's state would differ.
COMMON = ["train.epochs=3", "train.batch_size=32", "data.train_limit=400", "train.seed=7", "train.keep_checkpoints=9",
          "scheduler.name=step", "scheduler.step_size=1", "scheduler.gamma=0.5", "augment.rotation=10"]


def request(store, data, run_id, *more, **kw) -> LocalRequest:
    return LocalRequest(config="configs/model3.yaml", store=str(store), data_dir=str(data), run_id=run_id,
                        overrides=[*COMMON, *more], **kw)


@pytest.fixture(scope="module")
def straight(small_mnist, tmp_path_factory) -> Path:
    """The uninterrupted run: its folder."""
    run = start_run(request(tmp_path_factory.mktemp("straight"), small_mnist, "straight"))
    end, _ = run_to_end(run)
    assert end["state"] == "succeeded", (run.run_dir / "train.log").read_text()[-2000:]
    return run.run_dir


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def assert_same_epochs(got: dict, want: dict) -> None:
    assert [h["epoch"] for h in got["history"]] == [h["epoch"] for h in want["history"]] == [1, 2, 3]
    for hw, hg in zip(want["history"], got["history"]):
        assert hg["test_accuracy"] == hw["test_accuracy"]
        assert hg["train_loss"] == pytest.approx(hw["train_loss"], rel=1e-6)
    assert got["final_test_accuracy"] == want["final_test_accuracy"]


def test_resume_continues_exactly_where_it_stopped(straight, small_mnist, tmp_path):
    first = start_run(request(tmp_path, small_mnist, "split", "train.epochs=1"))
    assert run_to_end(first)[0]["state"] == "succeeded"
    resumed = start_run(LocalRequest(store=str(tmp_path), data_dir=str(small_mnist), resume="split",
                                     overrides=["train.epochs=3"]))
    assert run_to_end(resumed)[0]["state"] == "succeeded"
    got = summary(resumed.run_dir)
    assert got["epochs_completed"] == 3
    assert_same_epochs(got, summary(straight))
    wa = load_file(str(straight / "checkpoints/epoch_003/model.safetensors"))
    wb = load_file(str(resumed.run_dir / "checkpoints/epoch_003/model.safetensors"))
    assert all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)
    assert [s["start_epoch"] for s in events_of(resumed.run_dir) if s["type"] == "start"] == [1, 2]


class UploadingHost(LocalHost):
    """This machine, where the agent also copies the run to ``store`` as it goes, as an instance's agent
    does to S3 (``--store``): what it had uploaded when the host was lost is all a restore has."""

    def __init__(self, store: Path, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def spawn(self, argv, cwd, log, env=None):
        extra = ["--store", str(self.store), "--run-id", self.run_id, "--sync-every", "0.2"]
        return super().spawn([*argv, *extra], cwd, log, env)


def test_a_run_lost_with_its_host_resumes_from_the_store_and_ends_the_same(straight, small_mnist, tmp_path,
                                                                            monkeypatch):
    # 13 steps an epoch at >= 0.4 s each: still running when the test pulls the plug, however fast
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.4")
    store = LocalStore(tmp_path / "store")
    lost = start_run(request(tmp_path / "b", small_mnist, "lost"), host=UploadingHost(store.root, "lost"))
    # the agent has uploaded a whole checkpoint (files, then its manifest): the plug is pulled at once
    wait_until(lambda: latest_stored_checkpoint(store, "lost"), "the agent uploaded no complete checkpoint")
    status = read_status(lost.run_dir)
    assert status["state"] == "running", f"the store had no checkpoint while the run ran: {status}"
    os.killpg(os.getpgid(status["trainer_pid"]), signal.SIGKILL)  # the instance is gone: nothing ends cleanly
    os.kill(status["agent_pid"], signal.SIGKILL)
    wait_until(lambda: not LocalHost().is_alive(status["agent_pid"]), "the agent outlived SIGKILL")
    uploaded = latest_stored_checkpoint(store, "lost")  # exactly what the agent had uploaded, nothing added
    shutil.rmtree(lost.run_dir)  # a fresh host has none of it
    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY")

    fresh = tmp_path / "fresh" / "runs" / "lost"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    p = subprocess.run([sys.executable, "-m", "infra.agent", "--run-dir", str(fresh), "--store", str(store.root),
                        "--run-id", "lost", "--restore"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.stderr, (fresh / "train.log").read_text()[-2000:])
    got = summary(fresh)
    assert got["epochs_completed"] == 3
    assert_same_epochs(got, summary(straight))  # resumed exactly, same seed
    evs = events_of(fresh)
    assert [e["epoch"] for e in evs if e["type"] == "epoch"] == [1, 2, 3]  # each epoch once
    restored = [e for e in evs if e["type"] == "restored"]
    assert len(restored) == 1 and restored[0]["checkpoint"] == uploaded["name"]
    assert uploaded["epoch"] < 3 and not uploaded["step"]  # an epoch's checkpoint from before the loss
    starts = [e["start_epoch"] for e in evs if e["type"] == "start"]
    assert starts == [1, uploaded["epoch"] + 1]  # the uploaded events, cut back to it, then the resumed attempt
    assert json.loads((fresh / "status.json").read_text())["state"] == "succeeded"


def test_spot_notice_checkpoints_marks_preempted_and_resume_matches_an_uninterrupted_run(straight, imds, small_mnist,
                                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_IMDS_POLL", "0.3")  # the agent's poll (2 s by default), for a short test
    # 13 steps an epoch at >= 0.3 s each: the notices land mid-run on any machine, however fast
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.3")
    store = str(tmp_path)
    # what the launcher asks of an instance's agent (a local run never watches: see below)
    run = start_run(request(store, small_mnist, "spot", spot_watch=True))
    host = LocalHost()
    try:
        # a rebalance recommendation first: one checkpoint mid-epoch, training goes on
        wait_until(lambda: has_event(run.run_dir, lambda e: e["type"] == "epoch"), "no epoch 1", timeout=120)
        imds.rebalance = REBALANCE
        wait_until(lambda: has_event(run.run_dir, lambda e: e["type"] == "checkpoint"
                                     and e.get("reason") == "rebalance"), "no rebalance checkpoint", timeout=30)
        assert read_status(run.run_dir)["state"] == "running"
        imds.action = NOTICE  # then the interruption notice
        end, _ = run_to_end(run)
    finally:
        status = read_status(run.run_dir)
        for pid in (status.get("agent_pid"), status.get("trainer_pid")):
            if pid and host.is_alive(int(pid)):
                os.kill(int(pid), signal.SIGTERM)
    log = (run.run_dir / "train.log").read_text()[-3000:]
    assert end["state"] == "preempted", log
    status = read_status(run.run_dir)
    assert status["state"] == "preempted" and status["spot_notice"] == NOTICE
    assert "terminate at 2026-11-23T13:00:00Z" in status["reason"] and "resumes from" in status["reason"], (
        status["reason"])
    assert status["rebalance"] == REBALANCE
    evs = events_of(run.run_dir)
    assert evs[-1]["type"] == "run_end" and evs[-1]["state"] == "preempted" and "terminate" in evs[-1]["reason"]
    assert any(e["type"] == "rebalance_recommendation" for e in evs)
    assert any(e["type"] == "spot_interruption" and e["notice"] == NOTICE for e in evs)
    assert all(isinstance(e["time"], float) for e in evs)
    assert not any(e["type"] == "finished" for e in evs)
    assert not host.is_alive(status["trainer_pid"])
    from trainer.train import latest_checkpoint

    ckpt = latest_checkpoint(run.run_dir)
    assert ckpt is not None and (ckpt / "checkpoint.json").is_file()
    assert ckpt.name in status["reason"]
    assert any(e["type"] == "checkpoint" and e.get("reason") == "preempt" and e["path"].endswith(ckpt.name)
               for e in evs) \
        or "_step_" not in ckpt.name  # saved on the notice, mid-epoch (or the epoch's own, when it came at its end)

    # resume to the end: same epochs, and (checkpoints are exact, mid-epoch ones included: RNG, running
    # sums, augmentation generator) the same numbers as the straight run. A local resume as `train --local`
    # starts it (no --spot-watch): the notice still stands, and it must neither see it nor ask the
    # metadata service anything at all
    asked = len(imds.requests)
    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY")
    resumed = start_run(LocalRequest(store=store, data_dir=str(small_mnist), resume="spot"))
    assert run_to_end(resumed)[0]["state"] == "succeeded", (run.run_dir / "train.log").read_text()[-3000:]
    assert len(imds.requests) == asked, imds.requests[asked:]
    assert read_status(resumed.run_dir)["spot_watch"] is False and read_status(straight)["spot_watch"] is False
    got = summary(resumed.run_dir)
    assert got["epochs_completed"] == 3
    assert_same_epochs(got, summary(straight))
    starts = [e for e in events_of(resumed.run_dir) if e["type"] == "start"]
    assert len(starts) == 2 and starts[1]["resumed"]


def test_compare_puts_runs_side_by_side_with_an_overlay_plot(straight, small_mnist, tmp_path):
    from launcher.compare import compare_runs

    store = straight.parent.parent
    run = start_run(request(store, small_mnist, "lr-b", "optimizer.lr=0.01"))
    assert run_to_end(run)[0]["state"] == "succeeded"
    differing, columns, png = compare_runs(["straight", "lr-b"], str(store), tmp_path / "cmp.png")
    assert differing == ["optimizer.lr"]
    assert [c["settings"]["optimizer.lr"] for c in columns] == [0.05, 0.01]  # configs/model3.yaml's, then --set
    assert all(len(c["history"]) == 3 and c["results"]["final_test_accuracy"] is not None for c in columns)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_no_complete_checkpoint_in_the_store_is_one_clear_error(tmp_path):
    from core.errors import RunError

    store = LocalStore(tmp_path / "store")
    folder = store.run_dir("r") / "checkpoints" / "epoch_001"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")  # files, but no store manifest: never resumed from
    with pytest.raises(RunError, match="has no complete checkpoint in .* to resume from — start a new run"):
        restore_run(store, "r", tmp_path / "fresh")


def test_events_are_cut_back_to_the_checkpoint():
    lines = [{"type": "start"}, {"type": "epoch", "epoch": 1}, {"type": "checkpoint", "epoch": 1},
             {"type": "epoch", "epoch": 2}, {"type": "step", "epoch": 3}]
    text = "".join(json.dumps(e) + "\n" for e in lines) + '{"type": "st'
    assert [json.loads(x) for x in events_until(text, 1).splitlines()] == lines[:3]
