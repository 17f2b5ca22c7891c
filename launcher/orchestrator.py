"""Local runs through the lifecycle, and the run listings: `runs`, `logs` and `runs --compare` read here.

``start_run``/``cancel_run`` are ``launcher/lifecycle.py`` over the local target (this machine,
a folder store), kept for the callers that think in one request.

    run = start_run(LocalRequest(config="configs/model3.yaml", overrides=["train.epochs=1"]))
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from core.config import Config
from core.errors import RunError
from core.runstate import STATUS_FILE, parse_status
from infra.host import Host
from infra.store import RunFiles, open_store, run_files
from launcher import lifecycle
from launcher.targets.local import PROJECT_ROOT, LocalTarget, local_store, resolve_data_dir  # noqa: F401 (callers)

new_run_id = lifecycle.new_run_id


@dataclass
class LocalRequest:
    config: Optional[str] = None  # path to a recipe YAML (not needed with resume)
    overrides: list[str] = field(default_factory=list)  # --set key=value
    store: Optional[str] = None  # store root; runs go to <store>/runs/<run_id>
    run_id: Optional[str] = None
    data_dir: Optional[str] = None
    processes: int = 1
    nodes: int = 1  # nodes on this machine (multi-node mechanics without a cloud)
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


def read_status(run_dir: Path) -> dict:
    try:
        return parse_status((run_dir / STATUS_FILE).read_text())
    except FileNotFoundError:
        return {}


def start_run(req: LocalRequest, host: Optional[Host] = None) -> Run:
    target = LocalTarget(req.store, processes=req.processes, host=host, spot_watch=req.spot_watch, nodes=req.nodes)
    spec = lifecycle.RunSpec(config=req.config, overrides=req.overrides, run_id=req.run_id, data_dir=req.data_dir,
                             resume=req.resume)
    a = lifecycle.start(target, spec)
    assert a.cfg is not None and a.agent_pid is not None
    return Run(a.run_id, Path(a.run_dir), a.host, a.cfg, a.agent_pid, a.events_offset)


def find_run(run_id: str, store_uri: Optional[str]) -> Path:
    attempt = LocalTarget(store_uri).locate(run_id)
    assert attempt is not None  # a folder run is there or locate raised
    return Path(attempt.run_dir)


def open_run(run_id: str, store_uri: Optional[str]) -> RunFiles:
    """A run's files for `logs` and `runs --compare`: its folder, or its copy in an S3 store."""
    store = open_store(store_uri)
    if store.read_text(run_id, "config.yaml") is None:
        if not store.uri.startswith("s3://"):
            find_run(run_id, store_uri)  # raises, naming the latest run there
        raise RunError(f"run '{run_id}' not found in {store.uri} — "
                       f"`mnist-launch runs --store {store.uri}` lists the runs there")
    return run_files(store, run_id)


def cancel_run(run_id: str, store_uri: Optional[str], host: Optional[Host] = None, timeout: float = 30.0) -> dict:
    if (store_uri or "").startswith("s3://"):  # decided from the URI alone: no boto3, no network
        raise RunError(f"cannot cancel '{run_id}' through {store_uri}: stopping a run needs the host it runs on "
                       "— for a --local run, run `mnist-launch cancel` on that machine with its folder (--store PATH)")
    return lifecycle.cancel(LocalTarget(store_uri, host=host), run_id, timeout=timeout)


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

    def reader(run_id: str) -> Callable[[str], Optional[str]]:
        def read(name: str) -> Optional[str]:
            try:
                return store.read_text(run_id, name)
            except OSError:  # unreadable: the row shows what it can
                return None
        return read

    rows = [record_from(r, reader(r), f"{store.uri}/runs/{r}") for r in store.list_runs()]
    return sorted(rows, key=lambda r: r.get("created_at") or 0)
