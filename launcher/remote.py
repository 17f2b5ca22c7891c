"""SSH-side steps of a cloud run (launcher/targets/ec2.py puts them together), and following over SSH.

Everything lives under ``launch.remote_dir`` on the instance (default ``~/mnist-launch``)::

    code/  the synced project      data/  the MNIST IDX files      venv/  the run environment
    runs/RUN_ID/  a run's folder   env/RUN_ID.env  launch.env (0600, deleted by the agent once read)
    jobs/RUN_ID   a marker while the run is active (`status`, the autostop watcher)
    tmp/  TMPDIR of the runs (torch's compile caches): nothing of a run is left in /tmp

The agent uploads the run folder to the store (``s3://...``) with the instance's own role; the
launcher keeps a note of where the run is (MNIST_LAUNCH_HOME/runs/RUN_ID.json) so `logs` and
`cancel` find it again, and meta.json in the store says the same for any other machine.

    python = prepare_host(host, console, cfg, remote_layout("~/mnist-launch", run_id), "data", None, timings)
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from rich.console import Console

from core.config import Config, format_error
from core.errors import ConfigError, RunError, SSHError
from core.runstate import STATUS_FILE, parse_status
from infra.datasync import fetch_mnist, ship_mnist
from infra.host import Host
from infra.remote_setup import ensure_env
from infra.ssh import CONNECTION_ERRORS, PERMANENT_ERRORS, TRANSPORT_ERRORS, SSHHost
from infra.store import HostRun
from infra.sync import sync_workdir
from launcher.lifecycle import HostGone
from launcher.targets.local import PROJECT_ROOT

T = TypeVar("T")


def remote_layout(remote_dir: str, run_id: str) -> dict[str, str]:
    root = remote_dir.rstrip("/") or "/"
    return {"root": root, "code": f"{root}/code", "data": f"{root}/data", "venv": f"{root}/venv",
            "run_dir": f"{root}/runs/{run_id}", "env": f"{root}/env/{run_id}.env"}


def _relative(path: str, root: str) -> str:
    """``path`` relative to ``root`` when under it: the agent starts in ``root``, and a quoted ~ never expands."""
    return path[len(root) + 1:] if path.startswith(root + "/") else path


def check_flags(flags: Any, cfg: Config, data_dir: Optional[str] = None) -> Config:
    """The flags that override ``launch:`` (``flags.name``, ``.instance``, ``.identity``, ``.ami``) and
    --store/--data-dir, checked by the same rules as the config file before anything runs; the config with
    them applied."""
    from pydantic import ValidationError

    from core.config import LaunchConfig, check_location

    update = {k: v for k, v in (("name", flags.name), ("instance", flags.instance), ("identity", flags.identity),
                                ("ami", flags.ami)) if v}
    if update:
        try:
            launch = LaunchConfig.model_validate({**cfg.launch.model_dump(), **update})
        except ValidationError as err:
            names = ", ".join(f"--{k}" for k in update)
            raise ConfigError(f"{names}: {format_error(err)} — fix it and run again") from None
        cfg = cfg.model_copy(update={"launch": launch})
    if flags.store:
        check_location(flags.store, "--store")
    if data_dir:
        check_location(data_dir, "--data-dir")
    return cfg


def prepare_host(host: SSHHost, console: Console, cfg: Config, paths: dict[str, str], local_data: Optional[str],
                 data_uri: Optional[str], timings: dict[str, float]) -> str:
    """Code, data and venv on ``host``, checked at once, each over its own channel of one connection (data
    from s3:// is fetched by the host itself with the run's environment, so after setup); the venv's python."""
    ship = [("data", lambda: ship_mnist(host, Path(local_data), paths["data"]))] if local_data else []
    sync, *shipped, setup = retrying(host, console, lambda: _in_parallel(timings, [
        ("sync", lambda: sync_workdir(host, PROJECT_ROOT, paths["code"])),
        *ship,
        ("setup", lambda: ensure_env(host, paths["venv"], cfg.launch.python, cfg.launch.setup)),
    ]))
    data = shipped[0] if shipped else retrying(host, console, lambda: _in_parallel(timings, [
        ("data", lambda: fetch_mnist(host, data_uri or "", paths["data"], python=setup.python))])[0])
    for report in (sync, data, setup):
        console.print(f"[dim]{report.summary()}[/]")
    return str(setup.python)


def agent_argv(python: str, paths: dict[str, str], run_id: str, cfg: Config, store: Optional[str]) -> list[str]:
    """The agent's command line on an instance, relative to the remote folder it starts in."""
    argv = [_relative(python, paths["root"]), "-m", "infra.agent", "--run-dir", f"runs/{run_id}",
            "--processes", str(cfg.launch.gpus or 0), "--mixed-precision", cfg.train.mixed_precision,
            "--jobs-dir", "jobs", "--tmp-dir", "tmp",
            "--spot-watch"]  # an EC2 instance: the only place that asks instance metadata
    if store:
        argv += ["--store", store, "--run-id", run_id]
    return argv


def spawn_once(host: Host, argv: list[str], root: str, run_dir: str, tag: str) -> int:
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
                pid = parse_status(host.read_text(f"{run_dir}/{STATUS_FILE}")).get("agent_pid")
                if pid:
                    return int(pid)
                time.sleep(0.5)
            raise RunError(f"the agent of {run_dir} was started but never reported — see its agent.log")
        except PERMANENT_ERRORS:
            raise
        except CONNECTION_ERRORS:
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


def retrying(host: SSHHost, console: Console, step: Callable[[], T], attempts: int = 5) -> T:
    """Run an idempotent step (sync, data, setup all are), again after a dropped connection."""
    delay = 1.0
    for attempt in range(1, attempts + 1):
        try:
            return step()
        except PERMANENT_ERRORS:
            raise
        except CONNECTION_ERRORS as err:
            if attempt == attempts:
                raise
            console.print(f"[yellow]connection to {host.name} dropped ({str(err).split(' — ')[0][:100]}); "
                          f"retrying in {delay:.0f}s[/]")
            host.close()
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
    raise AssertionError("unreachable")


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


# ---------------------------------------------------------------------------------------------
# following over SSH, through dropped connections


class ReconnectingRun:
    """A run folder on an SSHHost that survives dropped connections.

    A read that fails on the transport closes it and tries again after 0.5 s, 1 s, 2 s ... (at
    most ``cap``), for as long as ``give_up_after`` allows. The caller's offset is untouched by a
    failed read, so the follow resumes at the same byte: no event is shown twice or skipped.
    """

    mirrored = False
    poll = (0.25, 1.0)

    def __init__(self, host: Host, run_dir: str, note: Callable[[str], None] = lambda m: None,
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
            except PERMANENT_ERRORS:
                raise  # will not fix itself
            except FileNotFoundError:
                raise
            except TRANSPORT_ERRORS as err:
                now = time.monotonic()
                if since is None:
                    since = now
                    self.reconnects += 1
                    self.note(f"connection to {self.host.name} lost "
                              f"({str(err).split(' — ')[0][:120] or type(err).__name__}); reconnecting")
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

