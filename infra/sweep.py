"""The sweep runner: the queue of a sweep, next to the runs on the host that trains, detached from the launcher.

It reads the sweep's ``plan.json``, takes this node's share of the runs (``node == --node-rank``) and starts the
ordinary per-run agent (``infra/agent.py``) for each, ``--parallel`` at a time per GPU (on a CPU host K at a time,
``OMP_NUM_THREADS`` = cores // K each). Each run keeps its own status.json, events, artifacts and store upload; the
runner writes its own ``runner-RANK.json`` (its pid, state, what it started, skipped and saw end). A failed run is
recorded and the rest go on; SIGTERM (``sweep cancel``) stops every agent it runs (each records ``cancelled``) and
starts nothing more. Started again (``sweep resume``) it skips what is done: a run that succeeded, or failed by
itself (its agent recorded an exit code); a run still going under a live agent is waited for, not started twice.

    python -m infra.sweep --sweep-dir runs/SWEEP_ID --node-rank 0 --parallel 2 [--store s3://bucket/prefix]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from core.runstate import ACTIVE, STATUS_FILE, RunState, StatusWriter
from infra.host import LocalHost
from infra.store import CHECKPOINTS, MARKER, ArtifactStore, check_run_id, open_store

PLAN_FILE = "plan.json"


def runner_file(rank: int) -> str:
    return f"runner-{rank}.json"


def done_already(status: dict[str, Any]) -> bool:
    """A run a resumed sweep does not start again: it succeeded, or it failed by itself (the agent recorded its
    exit code: the same setting fails the same way). Cancelled, lost, preempted or never started: run again."""
    state = status.get("state")
    return state == RunState.SUCCEEDED.value or (state == RunState.FAILED.value and status.get("exit_code")
                                                   is not None)


def alive(pid: int) -> bool:
    """Whether an agent runs (a zombie of ours, not yet waited for, does not): the same test as a local run's."""
    return LocalHost().is_alive(pid)


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / CHECKPOINTS).glob(f"*/{MARKER}"))


def slot_env(slot: int, slots: int, gpus: int, cores: int) -> dict[str, str]:
    """A slot's environment: its GPU on a GPU host (``--parallel`` runs share each), else its share of the cores."""
    if gpus:
        return {"CUDA_VISIBLE_DEVICES": str(slot % gpus), "OMP_NUM_THREADS": "1"}
    return {"OMP_NUM_THREADS": str(max(1, cores // max(1, slots)))}


class Runner:
    def __init__(self, sweep_dir: Path, rank: int, parallel: int, gpus: int, cores: int,
                 store: Optional[str] = None) -> None:
        self.sweep_dir, self.rank = sweep_dir, rank
        check_run_id(sweep_dir.name)
        self.store: Optional[ArtifactStore] = open_store(store) if store else None
        self.plan = json.loads((sweep_dir / PLAN_FILE).read_text())
        self.slots = parallel * max(1, gpus)
        self.gpus, self.cores = gpus, cores
        self.cwd = Path.cwd()  # the sweep's root (the launcher starts runners there): plan paths are relative to it
        self.mine = [r for r in self.plan["runs"] if int(r.get("node", 0)) == rank]
        for r in self.mine:
            check_run_id(r["run_id"])  # a plan is read from a file: every id names a folder
        self.running: dict[str, tuple[int, Union[subprocess.Popen, int]]] = {}  # run id -> (slot, agent)
        self.record: dict[str, Any] = {"state": "running", "pid": os.getpid(), "node": rank, "slots": self.slots,
                                       "parallel": parallel, "gpus": gpus, "started": [], "skipped": [],
                                       "ended": {}, "started_at": round(time.time(), 3)}
        self.stopping: Optional[str] = None

    def run_dir(self, run: dict[str, Any]) -> Path:
        return self.cwd / run["run_dir"]

    def status(self, run: dict[str, Any]) -> StatusWriter:
        return StatusWriter.for_path(self.run_dir(run) / STATUS_FILE)

    def write(self) -> None:
        self.record["updated_at"] = round(time.time(), 3)
        self.record["running"] = sorted(self.running)
        path = self.sweep_dir / runner_file(self.rank)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        os.replace(tmp, path)
        self.upload(runner_file(self.rank))

    def upload(self, name: str) -> None:
        """The sweep's files to the store (``runs/SWEEP_ID/``) where it is not this folder: `sweep status` on
        any machine reads the plan there. A failing store is logged and tried again on the next write."""
        if self.store is None:
            return
        try:
            self.store.put_file(self.sweep_dir.name, name, self.sweep_dir / name)
        except Exception as err:  # S3 down, access denied...: the runs go on, each uploads its own
            print(f"sweep: upload of {name} to {self.store.uri} failed: {err}", file=sys.stderr, flush=True)

    def queue(self) -> list[dict[str, Any]]:
        """This node's runs still to start; a run some agent is still running (a runner killed before us left
        it going) is adopted: waited for, never started twice."""
        todo = []
        for run in self.mine:
            st = self.status(run).read()
            pid = st.get("agent_pid")
            if st.get("state") in ACTIVE and pid and alive(int(pid)):
                self.running[run["run_id"]] = (self.free_slot(), int(pid))
            elif st.get("state") in ACTIVE:
                self.status(run).settle(RunState.FAILED, "the agent stopped without finishing (killed?)")
                todo.append(run)
            elif done_already(st):
                self.record["skipped"].append(run["run_id"])
            else:
                todo.append(run)
        return todo

    def free_slot(self) -> int:
        used = {slot for slot, _ in self.running.values()}
        return min(s for s in range(self.slots + len(self.running) + 1) if s not in used)

    def start(self, run: dict[str, Any]) -> None:
        run_dir = self.run_dir(run)
        resume = has_checkpoint(run_dir)  # a cancelled or preempted run goes on from its checkpoint
        self.status(run).start()
        slot = self.free_slot()
        argv = [*run["argv"], *(["--resume"] if resume else [])]
        env = {**os.environ, **self.plan.get("env", {}), **slot_env(slot, self.slots, self.gpus, self.cores)}
        with open(run_dir / "agent.log", "ab") as log, open(os.devnull, "rb") as devnull:
            proc = subprocess.Popen(argv, cwd=self.cwd, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)  # its own group: a signal to ours is not its
        self.running[run["run_id"]] = (slot, proc)
        self.record["started"].append(run["run_id"])

    def reap(self) -> None:
        for run_id, (_slot, agent) in list(self.running.items()):
            if isinstance(agent, subprocess.Popen):
                if agent.poll() is None:
                    continue
            elif alive(agent):
                continue
            run = next(r for r in self.mine if r["run_id"] == run_id)
            end = (RunState.CANCELLED, f"cancelled by {self.stopping} as its agent started") if self.stopping \
                else (RunState.FAILED, "the agent stopped without finishing (killed?)")
            st = self.status(run).settle(*end) or self.status(run).read()
            self.record["ended"][run_id] = st.get("state")
            del self.running[run_id]

    def stop(self, signum: int, _frame: object) -> None:
        self.stopping = signal.Signals(signum).name
        for _slot, agent in self.running.values():
            try:
                os.kill(agent.pid if isinstance(agent, subprocess.Popen) else agent, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def loop(self, poll: float = 0.5) -> int:
        if self.rank == 0:
            self.upload(PLAN_FILE)
        todo = self.queue()
        self.write()
        while todo or self.running:
            while todo and len(self.running) < self.slots and self.stopping is None:
                self.start(todo.pop(0))
                self.write()
            if self.stopping is not None:
                todo = []
            time.sleep(poll)
            before = len(self.running)
            self.reap()
            if len(self.running) != before:
                self.write()
        self.record.update(state="cancelled" if self.stopping else "finished", finished_at=round(time.time(), 3),
                           reason=f"stopped by {self.stopping}" if self.stopping else None)
        self.write()
        return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.sweep")
    parser.add_argument("--sweep-dir", required=True, type=Path, help="the folder holding the sweep's plan.json")
    parser.add_argument("--node-rank", type=int, default=0, help="this node: it runs the plan's runs with this node")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once per GPU (or on a CPU host)")
    parser.add_argument("--store", default=None, help="copy plan.json and this runner's file to this store's "
                                                      "runs/SWEEP_ID/ (a cloud sweep's S3)")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    from trainer.precision import cuda_device_count

    runner = Runner(args.sweep_dir.resolve(), args.node_rank, args.parallel, cuda_device_count(),
                    os.cpu_count() or 1, args.store)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal or SSH session is not a cancel
    return runner.loop()


if __name__ == "__main__":
    sys.exit(main())
