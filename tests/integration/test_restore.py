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

from infra.agent import ArtifactSync
from infra.restore import events_until, restore_run
from infra.store import LocalStore
from launcher.orchestrator import PROJECT_ROOT, LocalRequest, read_status, start_run
from tests.support.runs import events_of, run_to_end


def wait_for_checkpoint(path: Path, epoch: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if any(e.get("type") == "checkpoint" and e.get("epoch") == epoch
               for e in (json.loads(line) for line in text.splitlines() if line.endswith("}"))):
            return
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} in {path}"
        time.sleep(0.05)


def test_a_run_lost_with_its_host_resumes_from_the_store_and_ends_the_same(small_mnist, tmp_path, monkeypatch):
    overrides = ["train.epochs=3", "train.seed=7"]
    straight = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path / "a"),
                                      data_dir=str(small_mnist), overrides=overrides))
    end, _ = run_to_end(straight)
    assert end["state"] == "succeeded"
    want = json.loads((straight.run_dir / "summary.json").read_text())

    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.3")  # still running when the test pulls the plug, however fast
    lost = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path / "b"), data_dir=str(small_mnist),
                                  overrides=overrides, run_id="lost"))
    wait_for_checkpoint(lost.run_dir / "events.jsonl", 1)
    status = read_status(lost.run_dir)
    os.killpg(os.getpgid(status["trainer_pid"]), signal.SIGKILL)  # the instance is gone: nothing ends cleanly
    os.kill(status["agent_pid"], signal.SIGKILL)
    store = LocalStore(tmp_path / "store")
    sync = ArtifactSync(lost.run_dir, None, "lost")  # what the agent had uploaded as it went
    sync.store = store
    sync.sync()
    assert sync.error is None
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
    assert len(restored) == 1 and restored[0]["checkpoint"] == "epoch_001"
    assert json.loads((fresh / "status.json").read_text())["state"] == "succeeded"


def test_no_complete_checkpoint_in_the_store_is_one_clear_error(tmp_path):
    import pytest

    from trainer.errors import RunError

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
