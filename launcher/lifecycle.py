"""One run lifecycle over every target: start, attach (follow), cancel, resume and recover.

    starting -> running -> succeeded | failed | cancelled | preempted | lost   (core/runstate.py)

The steps are written once here; a target (launcher/targets/) supplies the hosts, the run's
paths on them and the store. ``--resume`` and a recovery are new attempts of the same run: the
agent continues from the newest complete checkpoint (a folder run's own; from the store on an
instance).

    attempt = start(LocalTarget("."), RunSpec(config="configs/model3.yaml", overrides=["train.epochs=1"]))
    end = attach(target, attempt, follow)
"""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from core.config import REDACTED, Config, apply_overrides, load_yaml, model_file, redact_argv, validate_config
from core.errors import ConfigError, LaunchError, RunError
from core.runstate import ACTIVE, STATUS_FILE, TERMINAL, RunState, StatusWriter, parse_status
from infra.host import Host
from infra.store import RunFiles, check_run_id, valid_run_id
from launcher.targets import Attempt, Target

_ROOT = Path(__file__).resolve().parent.parent  # the project: its git revision goes with every run
# render events from an offset, telling how far it read; the run_end (None: detached)
Follow = Callable[[RunFiles, int, Callable[[int], None]], Optional[dict]]
Note = Callable[[str], None]


@dataclass
class RunSpec:
    """What the user asked for: a new run of ``config``, or ``resume`` an existing one."""

    config: Optional[str] = None  # a recipe YAML (not with resume)
    overrides: list[str] = field(default_factory=list)  # --set key=value
    run_id: Optional[str] = None
    data_dir: Optional[str] = None
    resume: Optional[str] = None  # run id to continue from its newest complete checkpoint


def new_run_id(stem: str) -> str:
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def checked_new_run_id(spec: RunSpec) -> str:
    """The id of a new run: ``--run-id`` if valid, else one made from the config's name."""
    run_id = spec.run_id or new_run_id(Path(spec.config or "run").stem)
    if not valid_run_id(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return run_id


def host_status(host: Host, run_dir: str | Path) -> StatusWriter:
    """The run's status.json on ``host``, written through the host (a rename there, like the agent's)."""
    path = f"{run_dir}/{STATUS_FILE}"
    return StatusWriter(lambda: host.read_text(path), lambda text: host.write_text(path, text))


def resumed_config(text: str, where: str, overrides: list[str]) -> Config:
    """A run's saved config with ``--set`` applied; a OneCycle schedule keeps its epochs."""
    data = load_yaml(text)
    launch = data.get("launch") if isinstance(data, dict) else None
    if isinstance(launch, dict) and isinstance(launch.get("env"), dict):  # values were never kept: pass them again
        launch["env"] = {k: v for k, v in launch["env"].items() if v != REDACTED}
    cfg = validate_config(apply_overrides(data, overrides), where + (" with --set" if overrides else ""))
    if cfg.scheduler.name == "onecycle" and cfg.train.epochs != data["train"]["epochs"]:
        raise ConfigError("--set train.epochs: a OneCycle schedule is fixed at the start of a run — "
                          "resume with the same epochs or start a new run")
    return cfg


def start(target: Target, spec: RunSpec, recover: Optional[str] = None) -> Attempt:
    """Start a new run, ``spec.resume`` one, or ``recover`` a lost one (same spec, on the target's new hosts)."""
    restart = bool(spec.resume or recover)
    if spec.resume:
        run_id = check_run_id(spec.resume)
        cfg = resumed_config(*target.saved_config(run_id), spec.overrides)
        target.check_resumable(run_id)  # before the hosts are prepared: nothing to resume from, nothing done
    else:
        if not spec.config:
            raise ConfigError("no config given — pass a recipe such as configs/model3.yaml (see `mnist-launch models`)")
        cfg = target.load_config(spec.config, spec.overrides)
        run_id = recover or checked_new_run_id(spec)
    check_model(cfg)
    attempt = target.prepare(run_id, cfg, spec.data_dir, restart)
    status = host_status(attempt.host, attempt.run_dir)
    if restart:
        _end_previous(target, attempt, status, lost=bool(recover))
    elif target.exists(attempt):
        raise RunError(f"run '{run_id}' already exists {target.where} — pick another --run-id or --resume it")
    meta = {"run_id": run_id, "created_at": round(time.time(), 3), "host": attempt.host.name,
            "config_file": spec.config, "code_revision": code_revision(), "argv": run_argv()}
    resumed = {"at": round(time.time(), 3), "overrides": redact_argv(spec.overrides)} if spec.resume else None
    target.write_run(attempt, _config_yaml(cfg), meta, resumed, restart)
    target.retrying(status.start)
    for _rank, host, folder in attempt.nodes()[1:]:  # every node begins this attempt at 'starting': nobody reads an
        target.retrying(lambda: _begin(host_status(host, folder)))  # earlier attempt's end as this one's
    attempt.agent_pid = target.spawn_agent(attempt, restart)
    return attempt


def check_model(cfg: Config) -> None:
    """A model from a file of the project, or any model under ``train.max_params``, is built on this machine before
    anything starts (no instance, no run folder): an error in the user's file or a model over budget is one line
    now. Only then is torch imported here; the trainer checks both again where it trains."""
    if model_file(cfg.model) is None and cfg.train.max_params is None:
        return
    from trainer.usermodel import model_params

    model_params(cfg.model, cfg.train.max_params)


def _begin(status: StatusWriter) -> None:
    if status.read().get("state") in ACTIVE:  # an agent of the last attempt that never wrote its end
        status.settle(RunState.FAILED, "superseded by a new attempt")
    status.start()


def _end_previous(target: Target, attempt: Attempt, status: StatusWriter, lost: bool) -> None:
    """Before a new attempt: refuse while the last one runs; record the end of one that died unheard."""
    current = target.retrying(status.read)
    if current.get("state") not in ACTIVE:
        return
    if lost:  # the last attempt's hosts are gone: whatever its file says, it ended with them
        target.retrying(lambda: status.settle(RunState.LOST, "the instance is gone, and its agent with it"))
        return
    pid = current.get("agent_pid")
    if pid is None or target.retrying(lambda: attempt.host.is_alive(int(pid))):
        raise RunError(f"run '{attempt.run_id}' is still running — follow it with "
                       f"`mnist-launch logs {attempt.run_id} --follow`")
    target.retrying(lambda: status.settle(RunState.FAILED, "the agent stopped without finishing (killed?)"))


def run_argv() -> list[str]:
    """This command line as a run records it (``launch.env`` values redacted)."""
    return redact_argv(sys.argv[1:])


def _config_yaml(cfg: Config) -> str:
    from core.config import config_to_yaml

    return config_to_yaml(cfg)


def code_revision() -> Optional[str]:
    """The git commit of the project (with '+dirty' for local changes), stored with every run."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=_ROOT, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def attach(target: Target, attempt: Attempt, follow: Follow, note: Note, recover: Optional[RunSpec] = None,
           max_recoveries: int = 3) -> Optional[dict]:
    """Follow ``attempt`` to its end; with ``recover`` (the run's spec), a lost one goes on on replacement
    hosts, from the newest complete checkpoint in the store.

    The run_end (None when detached); a run that did not succeed is the caller's to report."""
    recoveries = 0
    shown: list[int] = []  # how far the events were read and shown, across attempts
    while True:
        files = target.files(attempt, note)
        watcher = NodeWatch(attempt)
        # a recovered attempt's events are the store's copy cut back to its checkpoint, byte for byte what the lost
        # host wrote up to there: they are followed from where the screen stopped, if that was earlier than the
        # restored event (a host lost a second after its epoch's checkpoint went up took that epoch's row with it)
        offset = min(attempt.events_offset, shown[-1]) if shown else attempt.events_offset
        try:
            end = follow(files, offset, shown.append)
        except HostGone:
            end = {"state": RunState.LOST.value, "reason": f"instance {attempt.info.get('instance_id')} is gone"}
        finally:
            watcher.stop()
        end = settle_nodes(target, attempt, end, note)
        lost = bool(recover and end and end.get("state") in ("failed", "lost", "preempted") and target.gone(attempt))
        if end and end.get("state") == "failed" and not lost:
            # an agent that died unheard leaves no run saying "starting"
            target.retrying(
                lambda: host_status(attempt.host, attempt.run_dir).settle(RunState.FAILED, end.get("reason")))
        target.close(attempt)
        if not lost:
            return end
        replacement = target.replacement(attempt)
        if replacement is None or recover is None or end is None:
            return end
        if recoveries >= max_recoveries:
            raise LaunchError(f"run {attempt.run_id}: instance lost {recoveries + 1} times; gave up after "
                              f"--max-recoveries {max_recoveries} — its checkpoints stay in the store: "
                              f"mnist-launch results {attempt.run_id} --store {attempt.store}")
        recoveries += 1
        az = attempt.info.get("az")
        multi = len(attempt.nodes()) > 1  # a node's replacement joins the others in their zone
        gone_id = (attempt.info.get("node_ids") or {}).get(end.get("failed_node"), attempt.info.get("instance_id"))
        note(f"{gone_id} is gone ({end.get('reason')}): recovery {recoveries}/{max_recoveries} "
             "on a replacement instance" + (f" in {az}, with the other nodes" if multi and az else
                                            f" outside {az}" if az else "")
             + ", from the newest complete checkpoint in the store")
        target = replacement
        attempt = start(target, recover, recover=attempt.run_id)


# a rank's error that only says a peer went away (its node failed first): never the node to blame
_PEER_ERROR = re.compile(r"gloo|nccl|connection (closed|reset) by peer|broken pipe|DistBackendError|DistNetworkError|"
                         r"ProcessGroup|TCPStore|rendezvous|timed out|timeout", re.IGNORECASE)


class NodeWatch:
    """While a multi-node run is followed, the other nodes' status every ``every`` seconds: one that ended
    without succeeding (its agent failed, its rank died before the rendezvous, its instance went) gets the head
    told at once (``infra.agent.ABORT_FILE``), so the run ends naming it instead of waiting on a collective."""

    def __init__(self, attempt: Attempt, every: float = 2.0) -> None:
        import threading

        self.attempt, self.every = attempt, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True) if attempt.nodes()[1:] else None
        if self.thread is not None:
            self.thread.start()

    def _watch(self) -> None:
        from infra.agent import ABORT_FILE

        while not self.done.wait(self.every):
            for rank, host, folder in self.attempt.nodes()[1:]:
                try:
                    st = parse_status(host.read_text(f"{folder}/{STATUS_FILE}"))
                except Exception:
                    continue  # unreachable for now: a lost instance is settled after the head's end
                if st.get("state") in (RunState.FAILED.value, RunState.LOST.value):  # not a preempted one: saving
                    why = f"node {rank} {st.get('state')}: {st.get('reason') or 'no reason recorded'}"
                    try:
                        self.attempt.host.write_text(f"{self.attempt.run_dir}/{ABORT_FILE}", why + "\n")
                    except Exception:
                        pass
                    return

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(timeout=10)


def settle_nodes(target: Target, attempt: Attempt, end: Optional[dict], note: Note, wait_s: float = 30.0,
                 poll: float = 0.5) -> Optional[dict]:
    """A multi-node run after its head's end: every other node ends too (an agent still running ``wait_s`` later
    gets SIGTERM: no rank is left waiting on a collective), and a run that failed names the node that failed
    first, the one whose error is its own rather than a lost peer's. One node: ``end`` as it is."""
    others = attempt.nodes()[1:]
    if not others or end is None:
        return end
    states: dict[int, dict] = {}
    deadline = time.monotonic() + wait_s
    while True:
        for rank, host, folder in others:
            if rank in states and states[rank].get("state") not in ACTIVE:
                continue
            try:
                states[rank] = parse_status(host.read_text(f"{folder}/{STATUS_FILE}"))
            except Exception as err:  # its instance is gone or unreachable: it ended with it
                states[rank] = {"state": RunState.LOST.value, "reason": f"unreachable ({str(err).split(' — ')[0]})"}
            if not states[rank].get("state"):  # no status.json: its disk went with its instance, or it never started
                states[rank] = {"state": RunState.LOST.value, "reason": "its run folder is gone (instance lost?)"}
        running = [r for r, st in states.items() if st.get("state") in ACTIVE]
        if not running or time.monotonic() > deadline:
            break
        time.sleep(poll)
    for rank, host, _folder in others:
        pid = states[rank].get("agent_pid")
        if rank in running and pid:
            note(f"node {rank} still runs {wait_s:.0f}s after the head ended: stopping its agent")
            try:
                host.kill(int(pid), signal.SIGTERM)
            except Exception:
                pass
    if end.get("state") not in ("failed", "lost"):
        return end
    failed = {0: {"reason": end.get("reason"), "finished_at": 0.0}}  # the head: blamed only if nobody else is
    failed.update({r: st for r, st in states.items() if st.get("state") in ("failed", "lost")})
    own = [r for r, st in failed.items() if not _PEER_ERROR.search(str(st.get("reason") or ""))]
    rank = min(own or sorted(failed, reverse=True), key=lambda r: (r == 0, failed[r].get("finished_at") or 0.0))
    where = attempt.info.get("node_ids", {}).get(rank) if isinstance(attempt.info.get("node_ids"), dict) else None
    reason = f"node {rank}{f' ({where})' if where else ''}: {failed[rank].get('reason') or 'failed'}"
    try:
        target.retrying(lambda: host_status(attempt.host, attempt.run_dir).update(reason=reason, failed_node=rank))
    except Exception:
        pass  # the head is gone: the reason is still shown
    return {**end, "reason": reason, "failed_node": rank}


class HostGone(RunError):
    """The run's instance is no longer running (terminated, stopped, reclaimed)."""


def restored_offset(files: RunFiles, timeout: float = 600.0) -> int:
    """Byte offset of the ``restored`` event on a new attempt's host: what came before it was shown already."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = files.read_from("events.jsonl", 0, 64 << 20)
        offset = 0
        for line in data.splitlines(keepends=True):
            if b'"type":"restored"' in line or b'"type": "restored"' in line:
                return offset
            offset += len(line)
        if parse_status(files.read_text(STATUS_FILE)).get("state") in TERMINAL:
            return 0  # it ended before restoring: show everything, with its reason
        time.sleep(0.5)
    return 0


def cancel(target: Target, run_id: str, timeout: float = 30.0, poll: float = 0.2) -> dict:
    """Stop a run (SIGTERM to its agent, which records the end and stops the trainer's group); its status."""
    attempt = target.locate(run_id)
    if attempt is None:
        raise RunError(f"run '{run_id}' not found {target.where} — `mnist-launch runs` lists them")
    try:
        status = host_status(attempt.host, attempt.run_dir)
        st = status.read()
        if st.get("state") in TERMINAL:
            return st
        pid = st.get("agent_pid")
        if pid is None:
            raise RunError(f"run '{run_id}' has not started its agent yet — try again in a few seconds")
        attempt.host.kill(int(pid), signal.SIGTERM)
        for _rank, host, folder in attempt.nodes()[1:]:  # every node's agent: each records cancelled
            other = parse_status(host.read_text(f"{folder}/{STATUS_FILE}")).get("agent_pid")
            if other:
                host.kill(int(other), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # done when the agent has recorded the end and exited
            st = status.read()
            alive = attempt.host.is_alive(int(pid))
            if st.get("state") in TERMINAL and not alive:
                return st
            if not alive:
                break  # it died without recording an end
            time.sleep(poll)
    finally:
        target.close(attempt)
    raise RunError(f"run '{run_id}' did not stop within {timeout:.0f}s — check `mnist-launch logs {run_id}`")


def open_files(run_id: str, store: Optional[str], note: Note) -> RunFiles:
    """A run's files for `logs`: live from its instance while that runs, else its folder or its store's copy."""
    from infra import home
    from launcher.orchestrator import open_run

    # the cloud side (boto3, paramiko: ~0.6 s to import) only for a run this machine started in the cloud or a
    # store in S3: `logs` of a folder run answers without it
    if home.read_run_record(run_id) or (store or "").startswith("s3://"):
        from launcher.targets.ec2 import open_cloud_run

        files = open_cloud_run(run_id, store, note=note)
        if files is not None:
            return files
    return open_run(run_id, store)


def cancel_anywhere(run_id: str, store: Optional[str]) -> dict:
    """`cancel`: through the run's instance for a cloud run, else on this machine (a folder store)."""
    from launcher.orchestrator import cancel_run
    from launcher.targets.ec2 import CloudFlags, EC2Target, run_record

    if run_record(run_id, store):
        from rich.console import Console

        return cancel(EC2Target(CloudFlags(store=store), Console(quiet=True)), run_id, timeout=60.0, poll=0.5)
    return cancel_run(run_id, store)
