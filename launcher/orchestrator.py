"""The run lifecycle: resolve config -> create the run in the store -> start the agent on a Host.

``--local`` runs use ``LocalHost`` and a ``LocalStore`` whose run folder is also where the
trainer writes, so the agent has nothing to copy; cloud runs use the same steps with an
``SSHHost`` and S3.

    run = start_run(LocalRequest(config="configs/model3.yaml", overrides=["train.epochs=1"]))
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from core import settings
from core.config import Config, apply_overrides, config_to_yaml, load_config, redact_argv, validate_config
from core.errors import ConfigError, RunError
from infra.host import Host, LocalHost
from infra.store import HostRun, LocalStore, RunFiles, StoreRun, open_store, valid_run_id
from trainer.data import check_dir
from trainer.precision import cuda_capability, resolve_mixed_precision

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = "data"
TERMINAL = ("succeeded", "failed", "cancelled", "preempted")


@dataclass
class LocalRequest:
    config: Optional[str] = None  # path to a recipe YAML (not needed with resume)
    overrides: list[str] = field(default_factory=list)  # --set key=value
    store: Optional[str] = None  # store root; runs go to <store>/runs/<run_id>
    run_id: Optional[str] = None
    data_dir: Optional[str] = None
    processes: int = 1
    resume: Optional[str] = None  # run id to continue
    # the agent watches instance metadata for spot notices: only for code that knows this host is an EC2
    # instance; `train --local` never sets it (a laptop has no metadata service to ask)
    spot_watch: bool = False


@dataclass
class Run:
    run_id: str
    run_dir: Path
    host: Host
    config: Config
    agent_pid: int
    events_offset: int = 0  # where this attempt's events begin (a resumed run appends)


def new_run_id(stem: str) -> str:
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def code_revision() -> Optional[str]:
    """The git commit of the project (with '+dirty' for local changes), stored with every run."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_data_dir(flag: Optional[str], cfg: Config) -> str:
    chosen = flag or cfg.data.dir or settings.data_dir() or DEFAULT_DATA_DIR
    return str(Path(chosen).expanduser().resolve())


def local_store(uri: Optional[str]) -> LocalStore:
    if (uri or "").startswith("s3://"):  # decided from the URI alone: no boto3, no network
        raise ConfigError(f"--local keeps artifacts in a folder, not {uri} — drop --store or pass a path")
    store = open_store(uri)
    if not isinstance(store, LocalStore):
        raise ConfigError(f"--local keeps artifacts in a folder, not {uri} — drop --store or pass a path")
    return store


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def start_run(req: LocalRequest, host: Optional[Host] = None) -> Run:
    host = host or LocalHost()
    if req.processes < 1:
        raise ConfigError(f"--processes {req.processes}: must be at least 1")
    store = local_store(req.store)
    if req.resume:
        run_id = req.resume
        run_dir = store.run_dir(run_id)
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"run '{run_id}' not found in {store.uri}/runs — `mnist-launch runs` lists them")
        if read_status(run_dir).get("state") in ("starting", "running") and not _agent_dead(host, run_dir):
            raise RunError(f"run '{run_id}' is still running — follow it with `mnist-launch logs {run_id} --follow`")
        import yaml

        data = yaml.safe_load((run_dir / "config.yaml").read_text())
        where = f"{run_dir}/config.yaml"
        cfg = validate_config(apply_overrides(data, req.overrides), where + (" with --set" if req.overrides else ""))
        if cfg.scheduler.name == "onecycle" and cfg.train.epochs != data["train"]["epochs"]:
            raise ConfigError("--set train.epochs: a OneCycle schedule is fixed at the start of a run — "
                              "resume with the same epochs or start a new run")
        if not list((run_dir / "checkpoints").glob("*/checkpoint.json")):
            raise RunError(f"run '{run_id}' has no complete checkpoint to resume from — start a new run")
    else:
        if not req.config:
            raise ConfigError("no config given — pass a recipe such as configs/model3.yaml (see `mnist-launch models`)")
        cfg = load_config(req.config, req.overrides)
        run_id = req.run_id or new_run_id(Path(req.config).stem)
        if not _valid_run_id(run_id):
            raise ConfigError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
        run_dir = store.run_dir(run_id)
        if run_dir.exists():
            raise RunError(f"run '{run_id}' already exists in {store.uri}/runs — pick another --run-id or --resume it")
    cfg.data.dir = resolve_data_dir(req.data_dir, cfg)
    check_dir(cfg.data.dir)  # one clear line now, not a traceback from the trainer later
    if isinstance(host, LocalHost):  # this machine trains: fp16 without a GPU fails now, not in the agent
        resolve_mixed_precision(cfg.train.mixed_precision, cuda_capability())

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {
        "run_id": run_id, "created_at": round(time.time(), 3), "host": host.name,
        "config_file": req.config, "code_revision": code_revision(), "argv": redact_argv(sys.argv[1:]),
    }
    if req.resume:
        meta.setdefault("resumes", []).append({"at": round(time.time(), 3), "overrides": redact_argv(req.overrides)})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    host.write_text(str(run_dir / "status.json"), json.dumps({"state": "starting", "updated_at": time.time()}))

    events = run_dir / "events.jsonl"
    offset = events.stat().st_size if events.is_file() else 0
    argv = [sys.executable, "-m", "infra.agent", "--run-dir", str(run_dir), "--processes", str(req.processes),
            "--mixed-precision", cfg.train.mixed_precision]
    if req.resume:
        argv.append("--resume")
    if req.spot_watch:
        argv.append("--spot-watch")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    pid = host.spawn(argv, cwd=str(PROJECT_ROOT), log=str(run_dir / "agent.log"), env=env)
    return Run(run_id, run_dir, host, cfg, pid, offset)


def _valid_run_id(run_id: str) -> bool:
    return valid_run_id(run_id)


def _agent_dead(host: Host, run_dir: Path) -> bool:
    pid = read_status(run_dir).get("agent_pid")
    return pid is not None and not host.is_alive(int(pid))


def find_run(run_id: str, store_uri: Optional[str]) -> Path:
    store = local_store(store_uri)
    run_dir = store.run_dir(run_id)
    if not (run_dir / "config.yaml").is_file():
        known = store.list_runs()
        hint = f" (latest: {known[-1]})" if known else ""
        raise RunError(f"run '{run_id}' not found in {store.uri}/runs{hint} — `mnist-launch runs` lists them")
    return run_dir


def open_run(run_id: str, store_uri: Optional[str]) -> RunFiles:
    """A run's files for `logs` and `runs --compare`: its folder, or its copy in an S3 store."""
    store = open_store(store_uri)
    if isinstance(store, LocalStore):
        return HostRun(LocalHost(), find_run(run_id, store_uri))
    if store.read_text(run_id, "config.yaml") is None:
        raise RunError(f"run '{run_id}' not found in {store.uri} — `mnist-launch runs --store {store.uri}` lists the runs there")
    return StoreRun(store, run_id)


def cancel_run(run_id: str, store_uri: Optional[str], host: Optional[Host] = None, timeout: float = 30.0) -> dict:
    if (store_uri or "").startswith("s3://"):  # decided from the URI alone: no boto3, no network
        raise RunError(f"cannot cancel '{run_id}' through {store_uri}: stopping a run needs the host it runs on "
                       "— for a --local run, run `mnist-launch cancel` on that machine with its folder (--store PATH)")
    host = host or LocalHost()
    run_dir = find_run(run_id, store_uri)
    status = read_status(run_dir)
    if status.get("state") in TERMINAL:
        return status
    pid = status.get("agent_pid")
    if pid is None:
        raise RunError(f"run '{run_id}' has not started its agent yet — try again in a few seconds")
    host.kill(int(pid), signal.SIGTERM)
    # done when the agent has exited: it records the final state, then stops the trainer's group
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and host.is_alive(int(pid)):
        time.sleep(0.2)
    status = read_status(run_dir)
    if status.get("state") not in TERMINAL:
        raise RunError(f"run '{run_id}' did not stop within {timeout:.0f}s — check `mnist-launch logs {run_id}`")
    return status


def run_record(run_dir: Path) -> dict:
    """One row of `runs`: settings and results, from the run's own files."""

    def read(name: str) -> Optional[str]:
        try:
            return (run_dir / name).read_text()
        except OSError:  # missing or unreadable: the row shows what it can
            return None

    return record_from(run_dir.name, read, str(run_dir))


def record_from(run_id: str, read: Callable[[str], Optional[str]], path: str) -> dict:
    """One row of `runs` from ``read(name) -> text or None``: a folder and S3 give the same columns."""
    import yaml

    def load(name: str) -> dict:
        try:
            return json.loads(read(name) or "{}")
        except json.JSONDecodeError:
            return {}

    summary, status, meta = load("summary.json"), load("status.json"), load("meta.json")
    try:
        cfg = yaml.safe_load(read("config.yaml") or "") or {}
    except yaml.YAMLError:
        cfg = {}
    history = summary.get("history") or []
    if not history:  # still running: take the epochs seen so far from events
        history = _epochs_from_lines((read("events.jsonl") or "").splitlines())
    accs = [h["test_accuracy"] for h in history]
    return {
        "run_id": run_id,
        "created_at": meta.get("created_at"),
        "model": cfg.get("model"),
        "params": summary.get("params"),
        "state": status.get("state", "unknown"),
        "reason": status.get("reason"),
        "epochs_completed": len(history),
        "epochs": (cfg.get("train") or {}).get("epochs"),
        "best_test_accuracy": max(accs) if accs else None,
        "final_test_accuracy": accs[-1] if accs else None,
        "train_seconds": summary.get("train_seconds"),
        "images_per_second": summary.get("images_per_second"),
        "seed": (cfg.get("train") or {}).get("seed"),
        # what the run used (auto resolved on its host); the config's request while none is known yet
        "mixed_precision": summary.get("mixed_precision") or (cfg.get("train") or {}).get("mixed_precision"),
        "num_processes": summary.get("num_processes"),
        "device": summary.get("device"),
        "code_revision": meta.get("code_revision"),
        "path": path,
    }


def _epochs_from_lines(lines: Iterable[str | bytes]) -> list[dict]:
    out = []
    for line in lines:
        if '"type":"epoch"' in (line.decode(errors="replace") if isinstance(line, bytes) else line):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def list_runs(store_uri: Optional[str]) -> list[dict]:
    """The rows of `runs` for a folder or an S3 store (read with the store's own reads)."""
    store = open_store(store_uri)
    if isinstance(store, LocalStore):
        rows = [run_record(store.run_dir(r)) for r in store.list_runs()]
    else:
        rows = [record_from(r, lambda name, r=r: store.read_text(r, name), f"{store.uri}/runs/{r}")
                for r in store.list_runs()]
    return sorted(rows, key=lambda r: r.get("created_at") or 0)
