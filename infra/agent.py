"""The agent: a small supervisor next to training, detached from the launcher (setsid).

It starts ``accelerate launch ... -m trainer`` (one process: ``python -m trainer``), sends its
output to ``train.log``, keeps ``status.json`` current (running / succeeded / failed / cancelled,
exit code, reason), copies new artifacts to the store as they appear, forwards SIGTERM/SIGINT to the trainer, and ends
``events.jsonl`` with one ``run_end`` event. A closed laptop or dropped SSH never kills a run.

    python -m infra.agent --run-dir runs/ID --processes 2 [--resume] [--store s3://b/p --run-id ID]

On an instance the launcher adds ``--processes 0`` (one per GPU), ``--env-file`` (``launch.env``,
a 0600 file read once and deleted, so secrets never sit on a command line or in the store) and
``--jobs-dir`` (a marker per running job: what `status` and the autostop watcher look at).

Spot instances: with ``--spot-watch`` (the launcher passes it on EC2 instances, and only there) the
agent asks the instance metadata service (IMDSv2) every ``--imds-poll`` seconds for a spot
interruption notice and a rebalance recommendation. Without it (every local run) the agent sends
the metadata service nothing: 169.254.169.254 is an EC2 host's own, not a laptop's. A notice: SIGUSR1 to the
trainer's group (every rank checkpoints at the next step boundary and exits), a last upload, and
the run ends ``preempted`` with the notice as its reason; ``--resume`` continues it exactly. A
rebalance recommendation: recorded (an event, ``status.json``'s ``rebalance``) and one checkpoint
(SIGUSR2), training goes on. Where no metadata service answers polling stops at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core import settings
from core.errors import LaunchError, RunError
from core.runstate import STATUS_FILE, RunState, StatusWriter
from infra.curves import CurvePainter
from infra.store import CHECKPOINTS, MARKER, ArtifactStore
from trainer.events import EVENTS_FILE, EventWriter
from trainer.precision import cuda_capability, cuda_device_count, resolve_mixed_precision

STARTED_AT = time.time()  # this agent's start (after its imports): status.json has it, for the start-up phases
LOG_FILE = "train.log"
# multi-node: the launcher writes this into the head's run folder when another node failed (its reason inside);
# the agent stops training and ends the run failed with that reason instead of waiting on the lost peer
ABORT_FILE = "abort"


PREEMPT_SIGNAL = signal.SIGUSR1  # trainer: checkpoint at the next step boundary, then exit
CHECKPOINT_SIGNAL = signal.SIGUSR2  # trainer: checkpoint at the next step boundary, keep training


def write_status(run_dir: Path, state: Optional[RunState] = None, **fields: object) -> dict:
    """status.json on this host, through the one writer (core/runstate.py: the transition is checked)."""
    return StatusWriter.for_path(run_dir / STATUS_FILE).update(state, **fields)


@dataclass(frozen=True)
class Nodes:
    """Where this agent's node stands in a multi-node run: ``count`` machines, this one ``rank``; every node
    reaches rank 0's torch.distributed rendezvous at ``address``:``port`` (its private address on a cluster)."""

    count: int = 1
    rank: int = 0
    address: str = ""
    port: int = 0

    @property
    def head(self) -> bool:
        return self.rank == 0


def accelerate_command(run_dir: Path, processes: int, mixed_precision: str, resume: bool,
                       python: str = sys.executable, nodes: Nodes = Nodes()) -> tuple[list[str], dict[str, str]]:
    """The trainer's command line and the environment it adds: one process per device, gloo on CPU,
    NCCL on GPUs.

    Several processes: ``accelerate launch`` (torchrun underneath); on several nodes with the machine
    count, this node's rank and rank 0's address and port. One process: the trainer itself, with the
    environment ``accelerate launch``'s single-process launcher would give it (it only sets these
    variables and starts the same ``python -m trainer``): one Python fewer, which saved about 4 s of CPU
    at every run's start (importing accelerate and torch) on a small machine. One process on each of
    several nodes: the same, with the variables torchrun's static rendezvous sets for its one worker
    (rank, world, rank 0's address): no torchrun, whose exit barrier also held a finished head for 5
    minutes when another node had vanished.

    ``mixed_precision`` may be ``auto``: it is resolved here, on the host that trains (ConfigError
    for fp16 without a GPU).
    """
    gpus = cuda_device_count()
    precision = resolve_mixed_precision(mixed_precision, cuda_capability() if gpus else None)
    env = {"ACCELERATE_USE_CPU": str(gpus == 0), "ACCELERATE_MIXED_PRECISION": precision,
           "ACCELERATE_DYNAMO_BACKEND": "NO"}
    if gpus == 0:  # Intel OpenMP settings accelerate gives CPU runs
        env.update(KMP_AFFINITY="granularity=fine,compact,1,0", KMP_BLOCKTIME="1")
    trainer = ["-m", "trainer", "--run-dir", str(run_dir), *(["--resume"] if resume else [])]
    if processes == 1:
        if gpus:
            env.setdefault("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # accelerate's GPU default
        if nodes.count > 1:  # one rank a node: the variables torchrun's static rendezvous would give it, no torchrun
            env.update(MASTER_ADDR=nodes.address, MASTER_PORT=str(nodes.port), RANK=str(nodes.rank),
                       WORLD_SIZE=str(nodes.count), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", GROUP_RANK=str(nodes.rank),
                       GROUP_WORLD_SIZE=str(nodes.count), ROLE_RANK=str(nodes.rank),
                       ROLE_WORLD_SIZE=str(nodes.count), TORCH_NCCL_ASYNC_ERROR_HANDLING="1")
        return [python, *trainer], env
    # torchrun underneath; without CUDA, Accelerate picks MULTI_CPU with gloo (ACCELERATE_USE_CPU).
    # (`--cpu` would route to the single-process launcher, which needs mpirun for more than one process.)
    if nodes.count > 1:  # torchrun's static rendezvous at rank 0's address; every node the same world
        where = ["--num_machines", str(nodes.count), "--machine_rank", str(nodes.rank),
                 "--main_process_ip", nodes.address, "--main_process_port", str(nodes.port), "--same_network"]
    else:
        where = ["--num_machines", "1", "--main_process_port", str(free_port())]
    cmd = [python, "-m", "accelerate.commands.launch", *where, "--num_processes", str(processes * nodes.count),
           "--mixed_precision", precision, "--dynamo_backend", "no", "--multi_gpu", *trainer]
    return cmd, env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failure_reason(log_path: Path, returncode: int) -> str:
    """The trainer's own 'error: ...' line if it printed one, else the log's last line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-200:]
    except FileNotFoundError:
        lines = []
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    # a rank killed from outside (the kernel's OOM killer sends SIGKILL): torchrun's report says so, and a
    # single-process trainer (the agent's own child) ends with -9
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or any(
            "SIGKILL" in line or "Signals.SIGKILL" in line or "Signal 9 " in line for line in lines[-40:]):
        return "a training process was killed by SIGKILL — out of memory? (check `dmesg`; lower train.batch_size)"
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line.strip()[:500]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"trainer exited with code {returncode}"


class ArtifactSync:
    """Copies files of the run dir that changed since the last pass to the store."""

    SKIP_SUFFIXES = (".tmp", ".part")

    def __init__(self, run_dir: Path, store_uri: Optional[str], run_id: str, prefix: str = "") -> None:
        self.run_dir, self.run_id = run_dir, run_id
        # another node than the head: its logs and status go under the run's nodes/RANK/, its checkpoint files to
        # the head over the process group (the head's checkpoint is the run's)
        self.prefix = prefix
        self.store: Optional[ArtifactStore] = None
        if store_uri:
            from infra.store import open_store

            self.store = open_store(store_uri)
        self.seen: dict[str, tuple[int, int]] = {}
        self.error: Optional[str] = None
        self.checkpoints_done: set[str] = set()  # uploaded, verified, manifest written
        self.checkpoints_started: set[str] = set()  # some files may be in the store

    def sync(self) -> int:
        """Upload what changed; a failing store is logged (agent.log) and retried next pass, never fatal."""
        store = self.store
        if store is None:
            return 0
        try:
            sent = self._sync(store)
            self.error = None  # a failure that a later pass got through is not the run's last word
            return sent
        except Exception as err:  # S3 down, access denied, ...: training goes on, the next pass retries
            msg = f"upload to {store.uri} failed: {err}"
            if msg != self.error:
                print(f"agent: {msg}", file=sys.stderr, flush=True)
            self.error = msg
            return 0

    def _sync(self, store: ArtifactStore) -> int:
        sent = 0
        for path in sorted(self.run_dir.rglob("*")):
            if not path.is_file() or path.name.endswith(self.SKIP_SUFFIXES):
                continue
            rel = str(path.relative_to(self.run_dir))
            if rel.startswith(CHECKPOINTS + "/"):
                continue  # whole checkpoints only, manifest last: below
            rel = self.prefix + rel
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # pruned between listing and stat
            key = (st.st_size, st.st_mtime_ns)
            if self.seen.get(rel) == key:
                continue
            try:
                store.put_file(self.run_id, rel, path)
            except FileNotFoundError:
                continue
            self.seen[rel] = key
            sent += 1
        return sent + (0 if self.prefix else self._sync_checkpoints(store))

    def checkpoint_waiting(self) -> bool:
        """A finished checkpoint (its trainer marker written) not yet in the store: the agent uploads it at
        once rather than at its next periodic pass, so the newest one a spot interruption or a lost instance
        resumes from is seconds old, not up to ``--sync-every`` more."""
        root = self.run_dir / CHECKPOINTS
        if self.store is None or self.prefix or not root.is_dir():
            return False
        try:
            return any((d / MARKER).is_file() for d in root.iterdir() if d.name not in self.checkpoints_done)
        except OSError:
            return False

    def _sync_checkpoints(self, store: ArtifactStore) -> int:
        """Each finished checkpoint (its trainer marker written) goes up file by file, each checked
        by SHA-256 on arrival and by size after; its manifest (sizes, sha256) goes last, so a
        checkpoint is complete in the store exactly when its manifest is there. Checkpoints the
        trainer pruned are deleted from the store too (the last K plus the best stay)."""

        from infra.manifest import file_sha256

        root = self.run_dir / CHECKPOINTS
        local = {d.name for d in root.iterdir() if (d / MARKER).is_file()} if root.is_dir() else set()
        sent = 0
        for name in sorted(local - self.checkpoints_done):
            folder = root / name
            try:
                marker = json.loads((folder / MARKER).read_text())
                files = {}
                self.checkpoints_started.add(name)
                for rel in marker["files"]:
                    digest, size = file_sha256(str(folder / rel)), (folder / rel).stat().st_size
                    key = f"{CHECKPOINTS}/{name}/{rel}"
                    store.put_verified(self.run_id, key, folder / rel, digest)
                    if store.size_of(self.run_id, key) != size:
                        raise RunError(f"{key}: the store holds another size than {size} — uploaded again next pass")
                    files[rel] = {"size": size, "sha256": digest}
            except FileNotFoundError:
                continue  # pruned by the trainer meanwhile: its partial upload is removed below
            manifest = folder / (MARKER + ".store.tmp")
            manifest.write_text(json.dumps({"epoch": marker.get("epoch"), "step": marker.get("step", 0),
                                        "processes": marker.get("processes"),  # a resume reads these too
                                        "best": marker.get("best"), "files": files}))
            try:
                store.put_file(self.run_id, f"{CHECKPOINTS}/{name}/{MARKER}", manifest)
            finally:
                manifest.unlink(missing_ok=True)
            self.checkpoints_done.add(name)
            sent += len(files) + 1
        for name in sorted((self.checkpoints_done | self.checkpoints_started) - local):
            store.delete_names(self.run_id, store.list_names(self.run_id, f"{CHECKPOINTS}/{name}/"))
            self.checkpoints_done.discard(name)
            self.checkpoints_started.discard(name)
        return sent


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, grandchildren...), from ``ps`` (Linux and macOS)."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if pid not in found:
                found.append(pid)
                todo.append(pid)
    return found


class SpotWatch:
    """Polls instance metadata every ``every`` seconds; gives up for good where none answers.
    Off (``every`` 0, or not ``enabled``): never builds a client, never sends a request."""

    def __init__(self, every: float, enabled: bool = True) -> None:
        self.every = every
        self.imds = None
        self.next_at = 0.0
        self.rebalance_seen = False
        if enabled and every > 0:
            from infra.imds import IMDS

            self.imds = IMDS()

    def poll(self) -> tuple[Optional[dict], Optional[dict]]:
        """(spot instance-action notice or None, a rebalance recommendation seen for the first time or None)."""
        if self.imds is None or self.imds.disabled or time.monotonic() < self.next_at:
            return None, None
        self.next_at = time.monotonic() + self.every
        notice = self.imds.instance_action()
        rebalance = None
        if notice is None and not self.rebalance_seen and not self.imds.disabled:
            rebalance = self.imds.rebalance()
            self.rebalance_seen = rebalance is not None
        return notice, rebalance


def preempt_reason(notice: dict, run_dir: Path) -> str:
    """'spot interruption notice: terminate at T; resumes from checkpoint NAME'."""
    from trainer.train import latest_checkpoint

    what = f"spot interruption notice: {notice.get('action', '?')} at {notice.get('time', '?')}"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        return what + "; no complete checkpoint to resume from"
    return what + f"; resumes from checkpoint {ckpt.name}"


def stopped_on_request(log_path: Path) -> bool:
    """The trainer's last words say it checkpointed on request and stopped (trainer/__main__.py)."""
    try:
        tail = log_path.read_text(errors="replace")[-20000:]
    except FileNotFoundError:
        return False
    return "trainer: stopped on request after saving" in tail


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (the launcher writes them; values may hold '=' and spaces), then the file is removed."""
    env: dict[str, str] = {}
    try:
        text = path.read_text()
    except FileNotFoundError:
        return env
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = value
    path.unlink(missing_ok=True)
    return env


def absolute_pythonpath() -> None:
    """The launcher passes PYTHONPATH relative to the remote folder: pin it before anything changes cwd."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in parts)


def resolve_processes(requested: int) -> int:
    """``--processes``: 0 is one per GPU (1 without); on a host without a GPU driver that is known without
    importing torch (about 4 s of CPU at the start of every cloud run on a CPU instance)."""
    return max(1, cuda_device_count()) if requested == 0 else requested


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.agent")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--processes", type=int, default=1, help="training processes; 0: one per GPU (1 without)")
    parser.add_argument("--mixed-precision", default="auto", help="auto, no, fp16 or bf16 (auto: by this host's GPU)")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--store", default=None, help="artifact store URI to copy the run to as it goes")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--sync-every", type=float, default=5.0)
    parser.add_argument("--env-file", type=Path, default=None,
                        help="KEY=VALUE lines for the trainer (deleted once read)")
    parser.add_argument("--jobs-dir", type=Path, default=None, help="keep a marker RUN_ID here while the run is active")
    parser.add_argument("--tmp-dir", type=Path, default=None,
                        help="TMPDIR for the agent and training (torch's caches): the run leaves nothing in /tmp")
    parser.add_argument("--restore", action="store_true",
                        help="first fetch the run and its newest complete checkpoint from --store, then resume")
    parser.add_argument("--spot-watch", action="store_true",
                        help="this host is an EC2 instance: watch its metadata service for spot interruption and "
                             "rebalance notices (the launcher passes it for cloud runs; without it nothing is asked)")
    parser.add_argument("--imds-poll", type=float, default=settings.imds_poll(),
                        help="with --spot-watch: seconds between checks; 0: off "
                             "(default 2, or $MNIST_LAUNCH_IMDS_POLL)")
    parser.add_argument("--nodes", type=int, default=1, help="machines in the run (multi-node); this is one of them")
    parser.add_argument("--node-rank", type=int, default=0, help="with --nodes: this machine's rank (0: the head)")
    parser.add_argument("--main-address", default="", help="with --nodes: where every node reaches rank 0")
    parser.add_argument("--main-port", type=int, default=0, help="with --nodes: rank 0's rendezvous port")
    parser.add_argument("--preempt-grace", type=float, default=90.0,
                        help="seconds the trainer gets to checkpoint after a spot notice before it is stopped")
    args = parser.parse_args(argv)
    absolute_pythonpath()
    if args.tmp_dir is not None:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(args.tmp_dir.resolve())
    run_dir = args.run_dir.resolve()
    extra_env = read_env_file(args.env_file) if args.env_file else {}
    args.processes = resolve_processes(args.processes)
    run_id = args.run_id or run_dir.name
    events = EventWriter(run_dir / EVENTS_FILE)
    log_path = run_dir / LOG_FILE
    nodes = Nodes(args.nodes, args.node_rank, args.main_address, args.main_port)
    if nodes.count > 1 and not (0 <= nodes.rank < nodes.count and nodes.address and nodes.port > 0):
        parser.error("--nodes needs --node-rank below it, --main-address and --main-port")
    args.nodes = nodes
    sync = ArtifactSync(run_dir, args.store, run_id, prefix="" if nodes.head else f"nodes/{nodes.rank}/")
    job = mark_job(args.jobs_dir, run_id, run_dir) if args.jobs_dir else None
    try:
        return supervise(args, run_dir, run_id, events, log_path, sync, extra_env)
    finally:
        if job is not None:
            job.unlink(missing_ok=True)


def mark_job(jobs_dir: Path, run_id: str, run_dir: Path) -> Path:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    marker = jobs_dir / run_id
    marker.write_text(f"{run_id} {os.getpid()} {run_dir}\n")
    return marker


def supervise(args: argparse.Namespace, run_dir: Path, run_id: str, events: EventWriter, log_path: Path,
              sync: ArtifactSync, extra_env: dict[str, str]) -> int:

    try:
        if args.restore:  # a fresh host: the run comes back from the store before it resumes
            from infra.restore import restore_run

            if sync.store is None:
                raise RunError("--restore needs --store: the run is fetched from there")
            ckpt = restore_run(sync.store, run_id, run_dir)
            args.resume = True
            events.emit("restored", checkpoint=ckpt["name"], epoch=ckpt["epoch"], store=sync.store.uri)
        cmd, launch_env = accelerate_command(run_dir, args.processes, args.mixed_precision, args.resume,
                                             nodes=args.nodes)
    except LaunchError as err:  # e.g. fp16 on a host without a GPU: the run fails with that one line
        with open(log_path, "a") as log:
            log.write(f"error: {err}\n")
        write_status(run_dir, RunState.FAILED, agent_pid=os.getpid(), exit_code=err.exit_code, reason=str(err),
                     finished_at=round(time.time(), 3))
        events.emit("run_end", state="failed", exit_code=err.exit_code, reason=str(err))
        sync.sync()
        return 1
    # Inherited as "ignored" by accelerate launch / torchrun, so signalling the whole group reaches
    # the ranks (which install their own handlers) without killing the launchers between.
    signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)
    signal.signal(CHECKPOINT_SIGNAL, signal.SIG_IGN)
    with open(log_path, "ab") as log_file:
        child = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True,
                                 env={**os.environ, **launch_env, **extra_env, "PYTHONUNBUFFERED": "1"})
    # the head draws curves.png (its trainer writes the events); importing matplotlib starts now, beside the trainer's
    painter = CurvePainter(run_dir) if args.nodes.head else None
    cancelled = {"sig": None}

    def forward(signum, _frame):
        cancelled["sig"] = signum
        try:
            os.killpg(child.pid, signal.SIGTERM)  # the whole group: accelerate and every rank
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal or SSH session is not a cancel
    # 'running' only once a SIGTERM is a cancel: `cancel` (or a sweep's) signals the pid it reads here
    write_status(run_dir, RunState.RUNNING, agent_pid=os.getpid(), trainer_pid=child.pid,
                 agent_started_at=round(STARTED_AT, 3),
                 launch_env=sorted(extra_env),  # the names only: values may be secrets
                 started_at=round(time.time(), 3), processes=args.processes, exit_code=None, reason=None,
                 nodes=args.nodes.count, node_rank=args.nodes.rank,
                 spot_watch=bool(args.spot_watch and args.imds_poll > 0),
                 spot_notice=None, rebalance=None)  # a resumed attempt starts without the last one's notices

    def signal_group(sig) -> None:
        """The trainer's group and every process below it: torchrun starts each rank in a session of its own."""
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            pass
        for pid in descendants(child.pid):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    aborted: Optional[str] = None
    (run_dir / ABORT_FILE).unlink(missing_ok=True)  # a request to an earlier attempt is not this one's
    watch = SpotWatch(args.imds_poll, enabled=args.spot_watch)
    notice: Optional[dict] = None
    notice_at = last_signal = 0.0
    last_sync = 0.0
    while True:
        try:
            rc = child.wait(timeout=0.2)  # a 0.2 s beat: the trainer's last events and its exit are seen at once
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if aborted is None and (run_dir / ABORT_FILE).is_file():  # the launcher saw another node fail
            aborted = (run_dir / ABORT_FILE).read_text(errors="replace").strip()[:500] or "stopped by the launcher"
            signal_group(signal.SIGTERM)
        if notice is None and cancelled["sig"] is None:
            found, rebalance = watch.poll()
            if rebalance is not None:
                write_status(run_dir, rebalance=rebalance)
                events.emit("rebalance_recommendation", notice=rebalance)
                signal_group(CHECKPOINT_SIGNAL)
            if found is not None:
                notice, notice_at = found, now
                write_status(run_dir, spot_notice=notice)
                events.emit("spot_interruption", action=notice.get("action"), notice=notice)
                print(f"agent: spot interruption notice {notice}: checkpointing", file=sys.stderr, flush=True)
                signal_group(PREEMPT_SIGNAL)
                last_signal = now
        elif notice is not None:
            if now - notice_at > args.preempt_grace:
                signal_group(signal.SIGTERM)  # out of time: the last complete checkpoint is what resumes
            elif now - last_signal >= 5.0:  # a rank still starting up (handler not yet installed) gets it again
                signal_group(PREEMPT_SIGNAL)
                last_signal = now
        if painter is not None:
            painter.poll()
        # a new checkpoint goes up at once (not while the store is failing: then every --sync-every)
        if now - last_sync >= args.sync_every or (sync.error is None and sync.checkpoint_waiting()):
            sync.sync()
            last_sync = time.monotonic()

    # make sure no rank outlives its launcher (a crashed rank can leave siblings waiting on a collective)
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

    if aborted is not None:
        state, reason = RunState.FAILED, aborted
    elif cancelled["sig"] is not None:
        state, reason = RunState.CANCELLED, f"cancelled by signal {signal.Signals(cancelled['sig']).name}"
    elif rc == 0:  # finished before the notice mattered (or the notice came during the last step)
        state, reason = RunState.SUCCEEDED, None
    elif notice is not None:
        state, reason = RunState.PREEMPTED, preempt_reason(notice, run_dir)
    elif args.nodes.count > 1 and stopped_on_request(log_path):  # another node's notice: every rank saved, stopped
        state, reason = RunState.PREEMPTED, ("a spot interruption notice on another node: every rank checkpointed at "
                                             "the same step and stopped")
    else:
        state, reason = RunState.FAILED, failure_reason(log_path, rc)
    finished_at = round(time.time(), 3)
    if painter is not None:
        painter.poll(final=True)  # the final curves are in the folder (and go up below) before run_end
    write_status(run_dir, state, exit_code=rc, reason=reason, finished_at=finished_at)
    events.emit("run_end", state=state.value, exit_code=rc, reason=reason)
    sync.sync()
    if sync.error:  # the run is complete on this host; say so where `logs` and `runs` look
        write_status(run_dir, upload_error=sync.error)
    return 0 if state is RunState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
