"""Cloud runs: the same lifecycle as ``--local``, on a cluster's instance over SSH.

    cluster (up if needed) -> sync the workdir -> ship MNIST -> check the venv -> write the run's
    files -> start the agent (setsid) -> follow events.jsonl over SSH from a byte offset

Everything lives under ``launch.remote_dir`` on the instance (default ``~/mnist-launch``)::

    code/  the synced project      data/  the MNIST IDX files      venv/  the run environment
    runs/RUN_ID/  a run's folder   env/RUN_ID.env  launch.env (0600, deleted by the agent once read)
    jobs/RUN_ID   a marker while the run is active (`status`, the autostop watcher)
    tmp/  TMPDIR of the runs (torch's compile caches): nothing of a run is left in /tmp

The agent uploads the run folder to the store (``s3://...``) with the instance's own role; the
launcher keeps a note of where the run is (MNIST_LAUNCH_HOME/runs/RUN_ID.json) so `logs` and
`cancel` find it again, and meta.json in the store says the same for any other machine.

    run = start_remote_run(RemoteRequest(config="configs/model3.yaml"), console)
"""

from __future__ import annotations

import json
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import paramiko
from rich.console import Console

from core.config import Config, config_to_yaml, load_config
from core.errors import ConfigError, RunError, SSHError
from infra import home
from infra.datasync import fetch_mnist, ship_mnist
from infra.remote_setup import ensure_env
from infra.ssh import HostKeyChangedError, KeyRefusedError, SSHHost
from infra.store import HostRun, RunFiles, StoreRun, open_store
from infra.sync import sync_workdir
from launcher.orchestrator import PROJECT_ROOT, TERMINAL, _valid_run_id, code_revision, new_run_id, resolve_data_dir
from trainer.data import check_dir

@dataclass
class RemoteRequest:
    config: str
    overrides: list[str] = field(default_factory=list)
    store: Optional[str] = None
    run_id: Optional[str] = None
    data_dir: Optional[str] = None
    name: Optional[str] = None  # cluster; default launch.name
    instance: Optional[str] = None  # instance type when `up` has to create it
    identity: Optional[str] = None
    ami: Optional[str] = None  # image when the cluster has to be created (a replacement keeps the lost one's)
    avoid_az: Optional[str] = None  # a replacement tries the other AZs before the lost instance's


@dataclass
class RemoteRun:
    run_id: str
    host: SSHHost
    run_dir: str  # on the instance
    store: Optional[str]
    cluster: str
    instance_id: str
    timings: dict = field(default_factory=dict)  # seconds per phase: sync, data, setup, start
    spawn_pid: Optional[int] = None  # the agent's pid, known before it writes status.json
    image_id: Optional[str] = None
    instance_type: Optional[str] = None
    az: Optional[str] = None


def remote_layout(remote_dir: str, run_id: str) -> dict[str, str]:
    root = remote_dir.rstrip("/") or "/"
    return {"root": root, "code": f"{root}/code", "data": f"{root}/data", "venv": f"{root}/venv",
            "run_dir": f"{root}/runs/{run_id}", "env": f"{root}/env/{run_id}.env"}


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` when under it: the agent starts in ``root``, and a quoted ~ never expands."""
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def check_flags(req: RemoteRequest, cfg: Config) -> Config:
    """The flags that override ``launch:`` (--name, --instance, --identity, --ami) and --store/--data-dir,
    checked by the same rules as the config file before anything runs; the config with them applied."""
    from pydantic import ValidationError

    from core.config import LaunchConfig, check_location, format_error

    update = {k: v for k, v in (("name", req.name), ("instance", req.instance), ("identity", req.identity),
                                ("ami", req.ami)) if v}
    if update:
        try:
            launch = LaunchConfig.model_validate({**cfg.launch.model_dump(), **update})
        except ValidationError as err:
            flags = ", ".join(f"--{k}" for k in update)
            raise ConfigError(f"{flags}: {format_error(err)} — fix it and run again") from None
        cfg = cfg.model_copy(update={"launch": launch})
    if req.store:
        check_location(req.store, "--store")
    if req.data_dir:
        check_location(req.data_dir, "--data-dir")
    return cfg


def _cluster(req: RemoteRequest, cfg: Config, store: Optional[str], console: Console, data_uri: Optional[str] = None):
    """(instance, SSHHost) of the run's cluster; `up` it first when nothing runs under that name. Its role
    covers the run's store and s3:// data before the run starts (a run that could upload nothing never starts)."""
    from launcher import cluster

    name = req.name or cfg.launch.name
    region = cfg.launch.region
    try:
        inst = cluster.running_instance(name, region)
    except cluster.NoInstanceError:  # bring it up with the config's launch: section (and the flags)
        launch = cfg.launch  # the flags are in it already (check_flags)
        console.print(f"no running instance for cluster '{name}': starting it")
        inst = cluster.up(cluster.UpRequest(launch=launch, store=store, explicit_type=True, avoid_az=req.avoid_az),
                          console=console).instance
    changed = cluster.grant_run_access(inst, name, store, data_uri)
    if changed:
        console.print(f"[dim]{changed}[/]")
    return inst, cluster.cluster_host(inst, name, req.identity)


def start_remote_run(req: RemoteRequest, console: Console, recover: Optional[str] = None) -> RemoteRun:
    """Start a run on the cluster; with ``recover=RUN_ID``, start that run again on the (replacement)
    instance: its agent restores it from the store and resumes from the newest complete checkpoint."""
    cfg = check_flags(req, load_config(req.config, req.overrides))
    store = req.store or cfg.store
    if store and not store.startswith("s3://"):
        raise ConfigError(f"--store {store}: a cloud run keeps its artifacts in S3 — pass --store s3://bucket/prefix, "
                          "or train with --local to keep them in a folder")
    run_id = recover or req.run_id or new_run_id(Path(req.config).stem)
    if recover and not store:
        raise ConfigError("recovering a run needs its store: pass --store s3://bucket/prefix")
    if not _valid_run_id(run_id):
        raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    data_uri = req.data_dir if (req.data_dir or "").startswith("s3://") else None
    data_dir = data_uri or resolve_data_dir(req.data_dir, cfg)
    if not data_uri:
        check_dir(data_dir)  # the local copy is what travels: a bad file fails here, by name

    timings: dict[str, float] = {}
    t = time.monotonic()
    inst, host = _cluster(req, cfg, store, console, data_uri)
    host.connect()
    timings["connect"] = time.monotonic() - t  # finding the instance (EC2) and the SSH handshake
    name = req.name or cfg.launch.name
    paths = remote_layout(cfg.launch.remote_dir, run_id)
    # code, data and venv are independent: checked at once, each over its own channel of one connection;
    # data from s3:// is fetched by the host itself with the run's environment (boto3), so after setup
    t = time.monotonic()
    ship = [] if data_uri else [("data", lambda: ship_mnist(host, Path(data_dir), paths["data"]))]
    sync, *shipped, setup = _retrying(host, console, lambda: _in_parallel(timings, [
        ("sync", lambda: sync_workdir(host, PROJECT_ROOT, paths["code"])),
        *ship,
        ("setup", lambda: ensure_env(host, paths["venv"], cfg.launch.python, cfg.launch.setup)),
    ]))
    data = shipped[0] if shipped else _retrying(host, console, lambda: _in_parallel(timings, [
        ("data", lambda: fetch_mnist(host, data_uri or "", paths["data"], python=setup.python))])[0])
    timings["prepare"] = time.monotonic() - t
    for report in (sync, data, setup):
        console.print(f"[dim]{report.summary()}[/]")

    t = time.monotonic()
    run_dir = paths["run_dir"]
    if recover:
        return _spawn_agent(host, cfg, req, paths, run_id, store, name, inst, timings, t, ["--restore"], python=setup.python)
    if host.read_text(f"{run_dir}/config.yaml") is not None:
        raise RunError(f"run '{run_id}' already exists on {name} — pick another --run-id")
    local_data_dir = data_dir
    cfg.data.dir = "data"  # relative to the remote folder, where the agent and trainer start
    where = {"cluster": name, "instance_id": inst.id, "region": inst.region,
             "remote_dir": paths["root"], "run_dir": run_dir}
    meta = {"run_id": run_id, "created_at": round(time.time(), 3), "host": str(host.name),
            "config_file": req.config, "code_revision": code_revision(), "argv": _argv(),
            "local_data_dir": local_data_dir, "cloud": where, "store": store}
    def write_files() -> None:
        host.write_text(f"{run_dir}/config.yaml", config_to_yaml(cfg))
        host.write_text(f"{run_dir}/meta.json", json.dumps(meta, indent=2) + "\n")
        host.write_text(f"{run_dir}/status.json", json.dumps({"state": "starting", "updated_at": time.time()}))

    _retrying(host, console, write_files)
    return _spawn_agent(host, cfg, req, paths, run_id, store, name, inst, timings, t, [],
                        python=setup.python, created_at=meta["created_at"])


def _spawn_agent(host: SSHHost, cfg: Config, req: RemoteRequest, paths: dict, run_id: str, store: Optional[str],
                 name: str, inst, timings: dict, t: float, extra: list[str], python: Optional[str] = None,
                 created_at: Optional[float] = None) -> RemoteRun:
    run_dir = paths["run_dir"]
    python = python or ensure_env(host, paths["venv"], cfg.launch.python, cfg.launch.setup).python  # stamp: cheap
    where = {"cluster": name, "instance_id": inst.id, "region": inst.region,
             "remote_dir": paths["root"], "run_dir": run_dir}
    argv = [_relative(python, paths["root"]), "-m", "infra.agent", "--run-dir", f"runs/{run_id}",
            "--processes", str(cfg.launch.gpus or 0), "--mixed-precision", cfg.train.mixed_precision,
            "--jobs-dir", "jobs", "--tmp-dir", "tmp",
            "--spot-watch"]  # an EC2 instance: the only place that asks instance metadata
    if store:
        argv += ["--store", store, "--run-id", run_id]
    if cfg.launch.env:
        host.write_text(paths["env"], "".join(f"{k}={v}\n" for k, v in cfg.launch.env.items()), mode=0o600)
        argv += ["--env-file", _relative(paths["env"], paths["root"])]
    argv += extra
    record = {**where, "store": store, "identity": req.identity, "created_at": created_at or round(time.time(), 3)}
    home.write_run_record(run_id, record)
    pid = _spawn_once(host, argv, paths["root"], run_dir, tag="restore" if "--restore" in extra else "start")
    home.write_run_record(run_id, {**record, "spawn_pid": pid})  # an agent that dies before its first word is seen
    timings["start"] = time.monotonic() - t
    return RemoteRun(run_id, host, run_dir, store, name, inst.id, timings, pid, inst.image_id, inst.instance_type,
                     inst.az)


def _spawn_once(host: SSHHost, argv: list[str], root: str, run_dir: str, tag: str) -> int:
    """Start the agent exactly once, even when the connection drops around the spawn: an atomic
    mkdir on the host claims the start; a retry that finds it claimed takes the running agent's pid."""
    guard = f"{run_dir}/.agent-{tag}"
    for tries in range(5):
        try:
            claim = host.exec(f"mkdir -p {_rq_path(run_dir)} && {{ mkdir {_rq_path(guard)} 2>/dev/null && echo claimed "
                              "|| echo taken; }", timeout=60)
            if claim.stdout.strip().endswith("claimed"):
                return host.spawn(argv, cwd=root, log=f"{run_dir}/agent.log", env={"PYTHONPATH": "code"})
            deadline = time.monotonic() + 30  # another attempt started it: wait for its pid
            while time.monotonic() < deadline:
                pid = json.loads(host.read_text(f"{run_dir}/status.json") or "{}").get("agent_pid")
                if pid:
                    return int(pid)
                time.sleep(0.5)
            raise RunError(f"the agent of {run_dir} was started but never reported — see its agent.log")
        except (HostKeyChangedError, KeyRefusedError):
            raise
        except (SSHError, paramiko.SSHException, EOFError, ConnectionError):
            if tries == 4:
                raise
            host.close()
            time.sleep(1.0 + tries)
    raise AssertionError("unreachable")


def _rq_path(path: str) -> str:
    """A remote path quoted for sh; a leading ~/ becomes "$HOME"/ (quoted, a ~ would not expand)."""
    if path == "~":
        return '"$HOME"'
    return shlex.quote(path) if not path.startswith("~/") else '"$HOME"/' + shlex.quote(path[2:])


def _retrying(host: SSHHost, console: Console, step: Callable[[], object], attempts: int = 5):
    """Run an idempotent step (sync, data, setup all are), again after a dropped connection."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except (HostKeyChangedError, KeyRefusedError):
            raise
        except (SSHError, paramiko.SSHException, EOFError, ConnectionError) as err:
            if attempt == attempts:
                raise
            console.print(f"[yellow]connection to {host.name} dropped ({str(err).split(' — ')[0][:100]}); "
                          f"retrying in {delay:.0f}s[/]")
            host.close()
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _in_parallel(timings: dict[str, float], jobs: list[tuple[str, Callable[[], object]]]) -> list:
    """Run ``jobs`` in threads; their results in order, each one's seconds in ``timings``; the first error raised."""
    from concurrent.futures import ThreadPoolExecutor

    def timed(name: str, fn: Callable[[], object]):
        t = time.monotonic()
        try:
            return fn()
        finally:
            timings[name] = time.monotonic() - t

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(timed, name, fn) for name, fn in jobs]
        return [f.result() for f in futures]  # in order: the first failing phase is the one reported


def _argv() -> list[str]:
    import sys

    from core.config import redact_argv

    return redact_argv(sys.argv[1:])


# ---------------------------------------------------------------------------------------------
# following over SSH, through dropped connections


TRANSPORT_ERRORS = (SSHError, paramiko.SSHException, EOFError, OSError)


class HostGone(RunError):
    """The run's instance is no longer running (terminated, stopped, reclaimed)."""


def instance_gone(run: RemoteRun, region: Optional[str]) -> bool:
    """Whether EC2 says the run's instance no longer runs (one DescribeInstances)."""
    from infra.aws import AWSProvider, Clients
    from launcher import cluster

    provider = AWSProvider(Clients.create(cluster.default_region(region, run.cluster)))
    live = [i for i in provider.find_instances(run.cluster) if i.id == run.instance_id]
    return not any(i.state in ("pending", "running") for i in live)


def restored_offset(files: RunFiles, timeout: float = 600.0) -> int:
    """Byte offset of the ``restored`` event on a replacement host: what came before it was shown already."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = files.read_from("events.jsonl", 0, 64 << 20)
        offset = 0
        for line in data.splitlines(keepends=True):
            if b'"type":"restored"' in line or b'"type": "restored"' in line:
                return offset
            offset += len(line)
        status = json.loads(files.read_text("status.json") or "{}") if files.read_text("status.json") else {}
        if status.get("state") in TERMINAL:
            return 0  # it ended before restoring: show everything, with its reason
        time.sleep(0.5)
    return 0


class ReconnectingRun:
    """A run folder on an SSHHost that survives dropped connections.

    A read that fails on the transport closes it and tries again after 0.5 s, 1 s, 2 s ... (at
    most ``cap``), for as long as ``give_up_after`` allows. The caller's offset is untouched by a
    failed read, so the follow resumes at the same byte: no event is shown twice or skipped.
    """

    mirrored = False
    poll = (0.25, 1.0)

    def __init__(self, host: SSHHost, run_dir: str, note: Callable[[str], None] = lambda m: None,
                 cap: float = 8.0, give_up_after: float = 600.0, spawn_pid: Optional[int] = None,
                 gone: Optional[Callable[[], bool]] = None) -> None:
        self.host, self.where, self.spawn_pid, self.gone = host, run_dir, spawn_pid, gone
        self.inner = HostRun(host, run_dir)
        self.note, self.cap, self.give_up_after = note, cap, give_up_after
        self.reconnects = 0

    def _retry(self, what: Callable[[], object]):
        delay, since = 0.5, None
        while True:
            try:
                out = what()
                if since is not None:
                    self.note(f"reconnected after {time.monotonic() - since:.1f}s")
                return out
            except (HostKeyChangedError, KeyRefusedError):
                raise  # will not fix itself
            except FileNotFoundError:
                raise
            except TRANSPORT_ERRORS as err:
                now = time.monotonic()
                if since is None:
                    since = now
                    self.reconnects += 1
                    self.note(f"connection to {self.host.name} lost ({str(err).split(' — ')[0][:120] or type(err).__name__}); reconnecting")
                elif self.gone is not None and self.gone():
                    raise HostGone(f"{self.host.name}: the instance is gone") from None
                elif now - since > self.give_up_after:
                    raise SSHError(f"lost {self.host.name} for {self.give_up_after:.0f}s — the run goes on there; "
                                   "re-attach later with `mnist-launch logs RUN_ID --follow`") from None
                self.host.close()
                time.sleep(delay)
                delay = min(delay * 2, self.cap)

    def read_from(self, name: str, offset: int, limit: int = 1 << 20) -> bytes:
        return self._retry(lambda: self.inner.read_from(name, offset, limit))

    def read_text(self, name: str) -> Optional[str]:
        return self._retry(lambda: self.inner.read_text(name))

    def is_alive(self, pid: int) -> Optional[bool]:
        return self._retry(lambda: self.inner.is_alive(pid))

    def instance_lost(self) -> bool:
        """Whether EC2 says the instance is gone (asked when the agent died): the run is lost, not failed."""
        return bool(self.gone is not None and self.gone())


def settle_status(files: ReconnectingRun, end: dict) -> None:
    """Record ``end`` in status.json when the agent died before it could (still 'starting'/'running')."""
    try:
        status = json.loads(files.read_text("status.json") or "{}")
    except json.JSONDecodeError:
        status = {}
    if status.get("state") in ("starting", "running"):
        status.update(state=end["state"], reason=end.get("reason"), updated_at=round(time.time(), 3))
        files.host.write_text(f"{files.where}/status.json", json.dumps(status, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# finding a cloud run again: logs, cancel


def _record(run_id: str, store: Optional[str]) -> dict:
    """Where a cloud run is: this machine's note, else meta.json in an s3:// store; {} for a folder run."""
    rec = home.read_run_record(run_id)
    if rec:
        return rec
    if (store or "").startswith("s3://"):
        try:
            meta = json.loads(open_store(store).read_text(run_id, "meta.json") or "{}")
        except json.JSONDecodeError:
            meta = {}
        if meta.get("cloud"):
            return {**meta["cloud"], "store": store}
    return {}


def _host_for(rec: dict) -> SSHHost:
    from launcher import cluster

    inst = cluster.running_instance(rec["cluster"], rec.get("region"))
    if inst.id != rec.get("instance_id"):
        raise SSHError(f"cluster '{rec['cluster']}' now runs {inst.id}, not {rec.get('instance_id')} where the run was")
    return cluster.cluster_host(inst, rec["cluster"], rec.get("identity"))


def open_cloud_run(run_id: str, store: Optional[str], note: Callable[[str], None]) -> Optional[RunFiles]:
    """The files of a cloud run: live over SSH while its instance runs, else the store's copy; None if not a cloud run."""
    rec = _record(run_id, store)
    if not rec:
        return None
    try:
        host = _host_for(rec)
        host.connect()
        return ReconnectingRun(host, rec["run_dir"], note=note, spawn_pid=rec.get("spawn_pid"))
    except Exception as err:  # the instance is gone or unreachable: the store still has the run
        store_uri = store or rec.get("store")
        if store_uri and store_uri.startswith("s3://"):
            note(f"{rec.get('cluster')} not reachable ({str(err).split(' — ')[0][:100]}); reading {store_uri}")
            return StoreRun(open_store(store_uri), run_id)
        raise


def cancel_cloud_run(run_id: str, store: Optional[str], timeout: float = 60.0) -> Optional[dict]:
    """Stop a cloud run through its instance (SIGTERM to the agent); None if ``run_id`` is not a cloud run."""
    rec = _record(run_id, store)
    if not rec:
        return None
    with _host_for(rec) as host:
        files = HostRun(host, rec["run_dir"])

        def status() -> dict:
            try:
                return json.loads(files.read_text("status.json") or "{}")
            except json.JSONDecodeError:
                return {}

        st = status()
        if st.get("state") in TERMINAL:
            return st
        pid = st.get("agent_pid")
        if pid is None:
            raise RunError(f"run '{run_id}' has not started its agent yet — try again in a few seconds")
        host.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = status()
            if st.get("state") in TERMINAL and not host.is_alive(int(pid)):
                return st
            time.sleep(0.5)
    raise RunError(f"run '{run_id}' did not stop within {timeout:.0f}s — check `mnist-launch logs {run_id}`")
