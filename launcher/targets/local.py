"""The local target: this machine trains, and the store is a folder that is also the run's folder.

``train --local`` and every test that trains without a cloud go through it; the agent has
nothing to copy, since the trainer writes where the store keeps the run.

    attempt = lifecycle.start(LocalTarget("runs-store", processes=2), RunSpec(config="configs/model3.yaml"))
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from core import settings
from core.config import Config, load_config, per_process_batch
from core.errors import ConfigError, RunError
from infra.host import Host, LocalHost
from infra.store import HostRun, LocalStore, RunFiles, folder_store
from launcher.datafetch import ensure_mnist, mirrors_for
from launcher.targets import Attempt
from trainer.precision import cuda_capability, resolve_mixed_precision

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_DATA_DIR = "data"
T = TypeVar("T")


def local_store(uri: Optional[str]) -> LocalStore:
    """The folder store of a ``--local`` run (decided from the URI alone: no boto3, no network)."""
    store = folder_store(uri)
    if store is None:
        raise ConfigError(f"--local keeps artifacts in a folder, not {uri} — drop --store or pass a path")
    return store


def resolve_data_dir(flag: Optional[str], cfg: Config) -> str:
    chosen = flag or cfg.data.dir or settings.data_dir() or DEFAULT_DATA_DIR
    return str(Path(chosen).expanduser().resolve())


class LocalTarget:
    """This machine: ``LocalHost`` and a ``LocalStore`` whose run folders are where the trainer writes."""

    def __init__(self, store: Optional[str] = None, processes: int = 1, host: Optional[Host] = None,
                 spot_watch: bool = False, nodes: int = 1) -> None:
        if processes < 1:
            raise ConfigError(f"--processes {processes}: must be at least 1")
        if not 1 <= nodes <= 16:
            raise ConfigError(f"--nodes {nodes}: a --local run takes 1 to 16 nodes on this machine")
        # several nodes here: an agent per node, each with its own folder (runs/ID/nodes/RANK/ for ranks above 0,
        # as on separate machines), meeting at a rendezvous on 127.0.0.1: the multi-node mechanics without AWS
        self.nodes = nodes
        self.store = local_store(store)
        self.host: Host = host or LocalHost()
        self.processes = processes
        # the agent watches instance metadata for spot notices: only for code that knows this host is an EC2
        # instance; `train --local` never sets it (a laptop has no metadata service to ask)
        self.spot_watch = spot_watch
        self.where = f"in {self.store.uri}/runs"

    def load_config(self, config: str, overrides: list[str]) -> Config:
        return load_config(config, overrides)

    def saved_config(self, run_id: str) -> tuple[str, str]:
        path = self.store.run_dir(run_id) / "config.yaml"
        if not path.is_file():
            raise RunError(f"run '{run_id}' not found in {self.store.uri}/runs — `mnist-launch runs` lists them")
        return path.read_text(), str(path)

    def prepare(self, run_id: str, cfg: Config, data_dir: Optional[str], restart: bool) -> Attempt:
        per_process_batch(cfg.train.batch_size, self.processes * self.nodes)  # shared evenly, or one line now
        cfg.data.dir = resolve_data_dir(data_dir, cfg)
        # missing files downloaded, the four checked: one clear line now, not a traceback from the trainer later
        ensure_mnist(cfg.data.dir, mirrors_for(cfg))
        # this machine trains: fp16 without a GPU fails now, not in the agent (only fp16 asks torch for the
        # GPU; the agent resolves 'auto' where it trains, so the launcher does not import torch for it)
        if cfg.train.mixed_precision == "fp16":
            resolve_mixed_precision("fp16", cuda_capability())
        run_dir = str(self.store.run_dir(run_id))
        dirs = [run_dir, *(node_dir(run_dir, rank) for rank in range(1, self.nodes))] if self.nodes > 1 else []
        return Attempt(run_id, [self.host] * self.nodes, run_dir, cfg, store=self.store.uri, node_dirs=dirs)

    def exists(self, attempt: Attempt) -> bool:
        return Path(attempt.run_dir).exists()

    def check_resumable(self, run_id: str) -> None:
        if not list((self.store.run_dir(run_id) / "checkpoints").glob("*/checkpoint.json")):
            raise RunError(f"run '{run_id}' has no complete checkpoint to resume from — start a new run")

    def write_run(self, attempt: Attempt, config_yaml: str, meta: dict[str, Any], resumed: Optional[dict[str, Any]],
                  restart: bool) -> None:
        run_dir = Path(attempt.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        meta_path = run_dir / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
        if resumed is not None:
            meta.setdefault("resumes", []).append(resumed)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        events = run_dir / "events.jsonl"
        attempt.events_offset = events.stat().st_size if events.is_file() else 0  # a resumed run appends
        for _rank, _host, folder in attempt.nodes()[1:]:  # each node's own folder, as on its own disk
            Path(folder).mkdir(parents=True, exist_ok=True)
            (Path(folder) / "config.yaml").write_text(config_yaml)
            (Path(folder) / "meta.json").write_text(meta_path.read_text())
            if restart and (run_dir / "checkpoints").is_dir():  # every rank loads the whole checkpoint
                shutil.copytree(run_dir / "checkpoints", Path(folder) / "checkpoints", dirs_exist_ok=True)

    def spawn_agent(self, attempt: Attempt, restart: bool) -> int:
        assert attempt.cfg is not None  # a started attempt has its config
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
        port = free_port() if self.nodes > 1 else 0
        if self.nodes > 1 and "OMP_NUM_THREADS" not in os.environ:  # the nodes share this machine's cores
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (self.nodes * self.processes)))
        pids = []
        for rank, host, folder in attempt.nodes():
            argv = [sys.executable, "-m", "infra.agent", "--run-dir", folder, "--processes", str(self.processes),
                    "--mixed-precision", attempt.cfg.train.mixed_precision]
            if self.nodes > 1:
                argv += ["--nodes", str(self.nodes), "--node-rank", str(rank), "--main-address", "127.0.0.1",
                         "--main-port", str(port)]
            if restart:
                argv.append("--resume")
            if self.spot_watch:
                argv.append("--spot-watch")
            pids.append(host.spawn(argv, cwd=str(PROJECT_ROOT), log=f"{folder}/agent.log", env=env))
        attempt.info["node_pids"] = pids
        return pids[0]

    def files(self, attempt: Attempt, note: Callable[[str], None]) -> RunFiles:
        return HostRun(attempt.host, attempt.run_dir)

    def retrying(self, step: Callable[[], T]) -> T:
        return step()  # nothing to reconnect

    def gone(self, attempt: Attempt) -> bool:
        return False  # this machine is here while we ask

    def close(self, attempt: Attempt) -> None:
        pass

    def replacement(self, attempt: Attempt) -> None:
        return None

    def locate(self, run_id: str) -> Optional[Attempt]:
        run_dir = self.store.run_dir(run_id)
        if not (run_dir / "config.yaml").is_file():
            known = self.store.list_runs()
            hint = f" (latest: {known[-1]})" if known else ""
            raise RunError(f"run '{run_id}' not found in {self.store.uri}/runs{hint} — `mnist-launch runs` lists them")
        from core.config import config_from_yaml

        ranks = sorted(int(d.name) for d in (run_dir / "nodes").glob("*") if d.name.isdigit()) \
            if (run_dir / "nodes").is_dir() else []
        dirs = [str(run_dir), *(node_dir(str(run_dir), r) for r in ranks)] if ranks else []
        return Attempt(run_id, [self.host] * (1 + len(ranks)), str(run_dir),
                       config_from_yaml((run_dir / "config.yaml").read_text()), store=self.store.uri, node_dirs=dirs)


def node_dir(run_dir: str, rank: int) -> str:
    """The folder of node ``rank`` (above 0) of a run on this machine: inside the run's, so its logs are the run's."""
    return f"{run_dir}/nodes/{rank}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now: the local nodes' rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
