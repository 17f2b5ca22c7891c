"""Several nodes on this machine (`train --local --nodes N`): an agent per node, each with its own folder,
`accelerate launch` on each with the machine count, its rank and rank 0's rendezvous on 127.0.0.1 (gloo).

The cloud's multi-node run is the same agents over SSH (tests/integration/test_multinode_cloud.py)."""

import io
import json
import os
import signal
import time

from rich.console import Console

from infra.host import LocalHost
from launcher import lifecycle
from launcher.live import RunView, follow_files
from launcher.targets.local import LocalTarget
from tests.support.runs import events_of, is_rank, process_tree, wait_until


def start(store, data, nodes, overrides, resume=None):
    target = LocalTarget(str(store), nodes=nodes)
    spec = lifecycle.RunSpec(config=None if resume else "configs/model3.yaml", overrides=overrides,
                             data_dir=str(data), resume=resume)
    return target, lifecycle.start(target, spec)


def attach(target, attempt):
    """Follow to the end as `train` does (the head's events, then every node settled): (end, view text, notes)."""
    out, notes = io.StringIO(), []
    view = RunView(Console(file=out, width=120), live=False)
    end = lifecycle.attach(target, attempt, lambda files, offset, shown: follow_files(
        files, view, offset=offset, on_offset=shown, poll=(0.1, 0.1)), notes.append)
    return end, out.getvalue(), notes


def node_status(attempt, rank):
    path = f"{attempt.node_dirs[rank]}/status.json"
    return json.loads(open(path).read()) if os.path.exists(path) else {}


def ranks_of(agent_pid):
    return [pid for pid, argv in process_tree(agent_pid).items() if is_rank(argv)]


def test_a_rank_killed_on_one_node_ends_every_node_naming_it_and_resume_continues(small_mnist, tmp_path, monkeypatch):
    # 3 epochs of 7 steps (400 images, a global batch of 64: 32 on each node); slowed so the kill lands mid-run
    monkeypatch.setenv("MNIST_LAUNCH_STEP_DELAY", "0.4")
    common = ["train.epochs=3", "train.batch_size=64", "data.train_limit=400", "train.keep_checkpoints=5"]
    target, attempt = start(tmp_path, small_mnist, 2, common)
    head = attempt.run_dir
    wait_until(lambda: (_p(head) / "events.jsonl").is_file()
               and any(e["type"] == "checkpoint" for e in events_of(_p(head))),
               "no checkpoint of epoch 1")
    agent1 = wait_until(lambda: node_status(attempt, 1).get("agent_pid"), "node 1's agent never wrote its pid")
    victims = wait_until(lambda: ranks_of(agent1), "node 1 has no training process")
    tree = {p for _r, _h, d in attempt.nodes() for p in [json.loads(open(f"{d}/status.json").read())["agent_pid"]]}
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)  # what the OOM killer does to a rank on node 1
    end, text, _notes = attach(target, attempt)
    took = time.monotonic() - killed_at
    # the head's rank lost its peer: the run ends on every node, and says which node failed and why
    assert end["state"] == "failed" and end["failed_node"] == 1, end
    assert end["reason"].startswith("node 1: ") and "SIGKILL" in end["reason"], end
    assert took < 120, f"the run took {took:.0f}s to end after node 1's rank was killed"  # not torch's 30 minutes
    head_status = json.loads(open(f"{head}/status.json").read())
    assert head_status["state"] == "failed" and head_status["failed_node"] == 1
    assert node_status(attempt, 1)["state"] == "failed"
    host = LocalHost()
    # each agent exits moments after writing its end (a last upload pass): none is left running
    wait_until(lambda: not [p for p in tree if host.is_alive(p)], "an agent outlived the run", timeout=30)
    # each node's own logs and status are in the run: node 1's under nodes/1/
    assert (_p(head) / "nodes" / "1" / "train.log").is_file() and (_p(head) / "nodes" / "1" / "agent.log").is_file()
    assert "SIGKILL" in node_status(attempt, 1)["reason"]
    # the head's checkpoint holds node 1's own files (its RNG state): written there from node 1 over gloo
    ckpt = _p(head) / "checkpoints" / "epoch_001"
    assert (ckpt / "random_states_1.pkl").is_file() and (ckpt / "checkpoint.json").is_file()
    assert not list((_p(head) / "nodes" / "1").glob("checkpoints/*/*")), "node 1 kept a partial checkpoint"

    # --resume on both nodes: each loads the whole checkpoint; every epoch appears once
    monkeypatch.delenv("MNIST_LAUNCH_STEP_DELAY")
    target, again = start(tmp_path, small_mnist, 2, [], resume=attempt.run_id)
    end, text, _notes = attach(target, again)
    assert end["state"] == "succeeded", open(f"{head}/train.log").read()[-2000:]
    summary = json.loads((_p(head) / "summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert (summary["nodes"], summary["world_size"], summary["per_process_batch"]) == (2, 2, 32)
    assert "2 process(es) on 2 nodes" in text


def _p(path):
    from pathlib import Path

    return Path(path)
