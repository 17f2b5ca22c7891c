"""A run brought back on a fresh host from its store (instance gone): same epochs, same result.

Real processes: the agent and `accelerate launch`; the store is a folder (LocalStore) so the agent
subprocess reaches it without AWS (the S3 side of the same calls is tested in test_checkpoint_store.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra.host import LocalHost
from infra.restore import events_until, restore_run
from infra.store import LocalStore, latest_stored_checkpoint
from launcher.orchestrator import PROJECT_ROOT, LocalRequest, read_status, start_run
from tests.support.runs import events_of, run_to_end


class UploadingHost(LocalHost):
    """This machine, where the agent also copies the run to ``store`` as it goes, as an instance's agent
    does to S3 (``--store``): what it had uploaded when the host was lost is all a restore has."""

    def __init__(self, store: Path, run_id: str) -> None:
        self.store, self.run_id = store, run_id

    def spawn(self, argv, cwd, log, env=None):
        extra = ["--store", str(self.store), "--run-id", self.run_id, "--sync-every", "0.2"]
        return super().spawn([*argv, *extra], cwd, log, env)


def wait_until(pred, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := pred()):
        assert time.monotonic() < deadline, f"{what} after {timeout}s"
        time.sleep(0.1)
    return found


def test_a_run_lost_with_its_host_resumes_from_the_store_and_ends_the_same(small_mnist, tmp_path, monkeypatch):
    overrides = ["train.epochs=3", "train.seed=7"]
    straight = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path / "a"),
                                      data_dir=str(small_mnist), overrides=overrides))
    end, _ = run_to_end(straight)
    assert end["state"] == "succeeded"
    want = json.loads((straight.run_dir / "summary.json").read_text())

    # 4 steps an epoch at >= 1.2 s each: still running when the test pulls the plug, however fast
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "1.2")
    store = LocalStore(tmp_path / "store")
    lost = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path / "b"), data_dir=str(small_mnist),
                                  overrides=overrides, run_id="lost"), host=UploadingHost(store.root, "lost"))
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
    got = json.loads((fresh / "summary.json").read_text())
    assert got["epochs_completed"] == 3
    assert got["final_test_accuracy"] == want["final_test_accuracy"]  # resumed exactly, same seed
    evs = events_of(fresh)
    assert [e["epoch"] for e in evs if e["type"] == "epoch"] == [1, 2, 3]  # each epoch once
    restored = [e for e in evs if e["type"] == "restored"]
    assert len(restored) == 1 and restored[0]["checkpoint"] == uploaded["name"]
    assert uploaded["epoch"] < 3 and not uploaded["step"]  # an epoch's checkpoint from before the loss
    starts = [e["start_epoch"] for e in evs if e["type"] == "start"]
    assert starts == [1, uploaded["epoch"] + 1]  # the uploaded events, cut back to it, then the resumed attempt
    assert json.loads((fresh / "status.json").read_text())["state"] == "succeeded"


def test_no_complete_checkpoint_in_the_store_is_one_clear_error(tmp_path):
    import pytest

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
