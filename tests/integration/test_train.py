"""Real runs through the agent (one process: the trainer itself; several: `accelerate launch`), on small IDX
files cut from the real MNIST."""

import json
import re
import time

import pytest
from safetensors.torch import load_file

from infra.host import LocalHost
from launcher.orchestrator import LocalRequest, cancel_run, read_status, run_record, start_run
from tests.support.runs import events_of, is_rank, process_tree, run_to_end
from trainer.precision import cuda_capability, resolve_mixed_precision


def wait_for_event(run_dir, kind, timeout=120):
    """Block until the run's events.jsonl holds a whole line of type ``kind`` (fail after ``timeout``)."""
    path = run_dir / "events.jsonl"
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if any(line.endswith("}") and json.loads(line).get("type") == kind for line in text.splitlines()):
            return
        assert time.monotonic() < deadline, f"no {kind!r} event in {path} after {timeout}s"
        time.sleep(0.1)


def test_two_process_run_trains_shards_and_checkpoints(two_process_run):
    d, end, text = two_process_run  # tests/conftest.py: TWO_PROCESS on mnist_2k, shared with the 2-node cloud test
    assert end["state"] == "succeeded", (d / "train.log").read_text()[-2000:]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["epochs_completed"] == 2
    assert 0.5 < summary["final_test_accuracy"] <= 1.0
    # train.batch_size is the global batch: each rank takes half of it, and an epoch has the steps one
    # process would take at that batch
    assert (summary["world_size"], summary["global_batch"], summary["per_process_batch"]) == (2, 64, 32)
    start = next(e for e in events_of(d) if e["type"] == "start")
    assert start["steps_per_epoch"] == 32  # 2,000 images / 2 ranks / 32 a rank = 2,000 / a global batch of 64
    assert (start["batch_size"], start["per_process_batch"]) == (64, 32)
    assert re.search(r"2 process\(es\) on cpu \(\d+ threads?\) · batch 64 \(32 a process\)", text), text
    # each rank its own shard: the two ranks together trained on 2,000 different images every epoch
    # (both on rank 0's shard would be 1,000)
    assert [h["distinct_images"] for h in summary["history"]] == [2000, 2000]
    kinds = [e["type"] for e in events_of(d) if e["type"] != "step"]
    assert kinds == ["start", "epoch", "checkpoint", "epoch", "checkpoint", "finished", "run_end"]
    ckpts = sorted(p.name for p in (d / "checkpoints").iterdir())
    best = summary["best_epoch"]
    assert "epoch_002" in ckpts and set(ckpts) <= {"epoch_002", f"epoch_{best:03d}"}  # last K=1 plus the best
    assert (d / "checkpoints" / "epoch_002" / "checkpoint.json").is_file()
    weights, kept = (load_file(str(d / "model.safetensors")),
                     load_file(str(d / f"checkpoints/epoch_{best:03d}/model.safetensors")))
    assert weights.keys() == kept.keys() and all(weights[k].equal(kept[k]) for k in kept)  # the best epoch's
    assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TensorBoard holds each epoch's metrics (one scalar event per epoch and tag; read without tensorboard)
    assert sum(p.read_bytes().count(b"test_accuracy") for p in (d / "tensorboard").rglob("events.out.tfevents.*")) == 2
    assert "Layer (type)" in (d / "train.log").read_text()
    assert "finished" in text



def test_target_accuracy_stops_early(small_mnist, tmp_path):
    run = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path), data_dir=str(small_mnist),
                                 overrides=["train.epochs=5", "train.target_accuracy=0.05", "data.train_limit=500"]))
    end, text = run_to_end(run)
    assert end["state"] == "succeeded"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 1 and summary["stop_reason"] == "target_accuracy"
    # the default precision is auto, resolved on this host ("no" on a CPU): the run records both
    used = resolve_mixed_precision("auto", cuda_capability())
    assert summary["mixed_precision"] == used and summary["mixed_precision_requested"] == "auto"
    start = next(e for e in events_of(run.run_dir) if e["type"] == "start")
    assert start["mixed_precision"] == used and start["mixed_precision_requested"] == "auto"
    assert f"mixed precision {used} (auto)" in text
    assert run_record(run.run_dir)["mixed_precision"] == used  # `runs` shows what was used, not "auto"


def test_a_crashing_trainer_marks_the_run_failed_with_its_reason(small_mnist, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_mnist, data)
    run = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path), data_dir=str(data)))
    # the data goes bad after the launcher checked it (a disk problem, a concurrent download...)
    (data / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    end, text = run_to_end(run)
    assert end["state"] == "failed"
    status = read_status(run.run_dir)
    assert status["state"] == "failed" and status["exit_code"] != 0
    assert "t10k-labels-idx1-ubyte.gz" in status["reason"]
    assert "failed" in text


def test_a_rank_killed_like_the_oom_killer_does_fails_the_run_with_that_reason(small_mnist, tmp_path):
    import os
    import signal

    run = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path), data_dir=str(small_mnist),
                                 overrides=["train.epochs=20"]))
    wait_for_event(run.run_dir, "step")
    # one process: the agent's child is the rank itself (several: accelerate launch's children)
    ranks = [pid for pid, argv in process_tree(read_status(run.run_dir)["trainer_pid"]).items() if is_rank(argv)]
    assert ranks, "the run has no training process"
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does
    end, text = run_to_end(run)
    assert end["state"] == "failed"
    status = read_status(run.run_dir)
    assert status["state"] == "failed" and "killed by SIGKILL — out of memory?" in status["reason"], status


def test_cancel_stops_every_process_and_keeps_the_run(small_mnist, tmp_path):
    run = start_run(LocalRequest(config="configs/model3.yaml", store=str(tmp_path), data_dir=str(small_mnist),
                                 processes=2, overrides=["train.epochs=50"]))
    wait_for_event(run.run_dir, "checkpoint")  # epoch 1 saved: the ranks are well into epoch 2
    # every process of this run, found from its agent while it runs: accelerate launch and both ranks
    tree = process_tree(read_status(run.run_dir)["agent_pid"])
    ranks = [pid for pid, argv in tree.items() if is_rank(argv)]
    assert len(ranks) == 2, tree
    status = cancel_run(run.run_id, str(tmp_path))
    assert status["state"] == "cancelled"
    host = LocalHost()
    assert {status["agent_pid"], status["trainer_pid"], *ranks} <= set(tree)
    deadline = time.monotonic() + 10  # a SIGKILLed process is gone within moments: no rank may outlive the run
    while (alive := [p for p in tree if host.is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, {p: tree[p] for p in alive}
    assert events_of(run.run_dir)[-1]["type"] == "run_end"
    assert (run.run_dir / "checkpoints" / "epoch_001" / "checkpoint.json").is_file()


def test_the_step_throttle_is_read_from_the_environment(monkeypatch):
    from core.errors import RunError
    from trainer.train import step_delay

    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY", raising=False)
    assert step_delay() == 0.0
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.25")
    assert step_delay() == 0.25
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "soon")
    with pytest.raises(RunError, match="MNIST_LAUNCH_STEP_DELAY='soon' is not a number of seconds"):
        step_delay()
