"""Sweeps: a grid of settings and seeds, each an ordinary run, queued by a runner next to the runs.

The launcher checks every setting's config, writes each run's folder (config.yaml, meta.json tagged with the
sweep's id) and the sweep's ``plan.json`` (``<store>/runs/SWEEP_ID/``, beside its runs), then starts one detached
runner per node (``infra/sweep.py``): the queue lives with it, not here, so a closed terminal changes nothing.
On a cluster node k runs the plan's runs i with i mod N = k. ``sweep status`` reads it all again from the plan.

    sweep = start(SweepSpec("configs/model3.yaml", grid=["train.seed=1,2", "optimizer.lr=0.01,0.02"], parallel=2),
                  local_place("runs-store"))
"""

from __future__ import annotations

import itertools
import json
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from core.config import Config, config_to_yaml, per_process_batch, redact_argv
from core.errors import ConfigError, RunError
from core.runstate import STATUS_FILE, parse_status
from infra.host import Host, LocalHost
from infra.store import HostRun, RunFiles, check_run_id, valid_run_id
from infra.sweep import PLAN_FILE, runner_file

SEED_KEY = "train.seed"
SPAWNED_FILE = "spawned.json"  # the runners' pids as the launcher started them (before each writes its own file)


@dataclass
class SweepSpec:
    config: str
    grid: list[str]  # KEY=V1,V2,...
    overrides: list[str] = field(default_factory=list)  # --set, for every run
    parallel: int = 1
    data_dir: Optional[str] = None
    sweep_id: Optional[str] = None


@dataclass
class Place:
    """Where a sweep's runs go: the hosts (a node each) and the folder on every one that holds ``runs/`` and
    each sweep's folder (runners start in it; plan paths are relative to it), and the store the runs end in."""

    hosts: list[Host]
    root: str
    store: Optional[str]
    env: dict[str, str] = field(default_factory=dict)  # the runner's and agents' environment (PYTHONPATH)
    agent: Callable[[str, Config, int], list[str]] = lambda run_id, cfg, node: []  # a run's agent on node k
    pythons: list[str] = field(default_factory=lambda: [sys.executable])  # each node's Python
    where: dict[str, Any] = field(default_factory=lambda: {"kind": "local"})
    reader: Optional[Callable[[Host, str], RunFiles]] = None  # a run folder as a follower reads it

    def sweep_dir(self, sweep_id: str) -> str:
        """Beside its runs, under ``runs/`` (the only prefix an instance's role may write; without a config.yaml
        it is no run to `runs`)."""
        return f"{self.root}/runs/{check_run_id(sweep_id)}"

    def run_dir(self, run_id: str) -> str:
        return f"{self.root}/runs/{check_run_id(run_id)}"

    def files(self, run: dict[str, Any]) -> RunFiles:
        host = self.hosts[int(run.get("node", 0)) % len(self.hosts)]
        return (self.reader or HostRun)(host, self.run_dir(run["run_id"]))


def split_values(raw: str) -> list[str]:
    """'1,2,[3,4]' -> ['1', '2', '[3,4]']: commas inside brackets belong to a value."""
    out, depth, cur = [], 0, ""
    for ch in raw:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    """``--grid KEY=V1,V2`` flags -> [(key, values)], in the order given; one error line for a bad one."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not sep or not key or any(not p for p in key.split(".")) or not values or "" in values:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,... with a dotted key, "
                              "e.g. --grid train.seed=1,2,3")
        if key.startswith("launch."):
            raise ConfigError(f"--grid {key}: launch settings are the sweep's, not a run's — pass them with --set")
        if key in dict(grid):
            raise ConfigError(f"--grid {key} given twice — list every value in one --grid {key}=V1,V2")
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {item!r}: a value is listed twice — list each once")
        grid.append((key, values))
    if not grid:
        raise ConfigError("no --grid given — e.g. --grid train.seed=1,2,3 --grid optimizer.lr=0.01,0.02")
    return grid


def expand(grid: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    """Every combination, the last key varying fastest (seeds listed last run side by side)."""
    keys = [k for k, _ in grid]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in grid))]


def setting_of(combo: dict[str, str]) -> dict[str, str]:
    """What a row of the results stands for: the grid's values but the seed."""
    return {k: v for k, v in combo.items() if k != SEED_KEY}


def setting_label(setting: dict[str, Any], short: bool = False) -> str:
    """'optimizer.lr=0.01 augment.rotation=15'; ``short``: each key's last part where that names it alone."""
    last = [k.rsplit(".", 1)[-1] for k in setting]
    names = last if short and len(set(last)) == len(last) else list(setting)
    return " ".join(f"{n}={v}" for n, v in zip(names, setting.values())) or "(one setting)"


def new_sweep_id(config: str) -> str:
    return f"sweep-{Path(config).stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def plan_runs(spec: SweepSpec, load: Callable[[str, list[str]], Config], sweep_id: str,
              nodes: int) -> list[tuple[dict[str, Any], Config]]:
    """(the plan's entry, the config) of every run; each setting's config checked before anything is written."""
    combos = expand(parse_grid(spec.grid))
    out = []
    for i, combo in enumerate(combos):
        sets = [f"{k}={v}" for k, v in combo.items()]
        try:
            cfg = load(spec.config, [*spec.overrides, *sets])
        except ConfigError as err:
            raise ConfigError(f"setting {setting_label(combo)}: {err}") from None
        run = {"index": i, "run_id": f"{sweep_id}-{i:03d}", "setting": setting_of(combo), "seed": cfg.train.seed,
               "overrides": sets, "node": i % nodes}
        out.append((run, cfg))
    return out


def start(spec: SweepSpec, place: Place, load: Callable[[str, list[str]], Config],
          prepare: Callable[[Config], Config] = lambda cfg: cfg) -> dict[str, Any]:
    """Check every setting, write every run's folder and the plan, start the runners; the plan."""
    from launcher.lifecycle import code_revision, run_argv

    if spec.parallel < 1:
        raise ConfigError(f"--parallel {spec.parallel}: must be at least 1")
    sweep_id = spec.sweep_id or new_sweep_id(spec.config)
    if not valid_run_id(sweep_id):
        raise ConfigError(f"--sweep-id {sweep_id!r}: use letters, digits, '.', '_' and '-' only")
    nodes = len(place.hosts)
    runs = plan_runs(spec, load, sweep_id, nodes)
    for _run, cfg in runs:
        per_process_batch(cfg.train.batch_size, 1)
        prepare(cfg)  # the target's own checks (data), the same for every run
    head = place.hosts[0]
    sweep_dir = place.sweep_dir(sweep_id)
    if head.read_text(f"{sweep_dir}/{PLAN_FILE}") is not None or \
            head.read_text(f"{sweep_dir}/config.yaml") is not None:
        raise RunError(f"sweep '{sweep_id}' already exists — `mnist-launch sweep status {sweep_id}` shows it, "
                       f"`mnist-launch sweep resume {sweep_id}` continues it")
    taken = [r["run_id"] for r, _ in runs
             if place.hosts[r["node"]].read_text(f"{place.run_dir(r['run_id'])}/config.yaml") is not None]
    if taken:
        raise RunError(f"run '{taken[0]}' already exists — pick another --sweep-id")
    created = round(time.time(), 3)
    revision = code_revision()
    for run, cfg in runs:
        host, run_dir = place.hosts[run["node"]], place.run_dir(run["run_id"])
        meta = {"run_id": run["run_id"], "created_at": created, "host": host.name, "config_file": spec.config,
                "code_revision": revision, "argv": run_argv(), "sweep": sweep_id, "setting": run["setting"],
                **({"store": place.store, "cloud": cloud_meta(place, run["node"], run_dir)}
                   if place.where.get("kind") == "cloud" else {})}
        host.write_text(f"{run_dir}/config.yaml", config_to_yaml(cfg))
        host.write_text(f"{run_dir}/meta.json", json.dumps(meta, indent=2) + "\n")
        run["run_dir"] = f"runs/{run['run_id']}"  # for the runner, which starts in place.root
        run["argv"] = place.agent(run["run_id"], cfg, run["node"])
    plan = {"sweep_id": sweep_id, "config": spec.config, "grid": dict(parse_grid(spec.grid)),
            "overrides": redact_argv(spec.overrides), "created_at": created, "parallel": spec.parallel,
            "nodes": nodes, "store": place.store, "where": place.where, "env": place.env, "pythons": place.pythons,
            "code_revision": revision, "runs": [r for r, _ in runs]}
    for host in place.hosts:  # every node's runner reads its own copy (a cluster's nodes share no disk)
        host.write_text(f"{sweep_dir}/{PLAN_FILE}", json.dumps(plan, indent=2) + "\n")
    spawn_runners(place, plan, spec.parallel)
    return plan


def cloud_meta(place: Place, node: int, run_dir: str) -> dict[str, Any]:
    """Where a cluster run is, as a cloud `train` records it in meta.json (`logs` finds it from the store)."""
    w = place.where
    return {"cluster": w.get("cluster"), "instance_id": (w.get("instance_ids") or [None] * (node + 1))[node],
            "region": w.get("region"), "remote_dir": place.root, "run_dir": run_dir}


def spawn_runners(place: Place, plan: dict[str, Any], parallel: int) -> None:
    sweep_dir = place.sweep_dir(plan["sweep_id"])
    pids = {}
    at = round(time.time(), 3)
    for rank, host in enumerate(place.hosts):
        argv = [place.pythons[rank % len(place.pythons)], "-m", "infra.sweep", "--sweep-dir",
                f"runs/{plan['sweep_id']}", "--node-rank", str(rank), "--parallel", str(parallel),
                *(["--store", place.store] if place.where.get("kind") == "cloud" and place.store else [])]
        pids[str(rank)] = host.spawn(argv, cwd=place.root, log=f"{sweep_dir}/runner-{rank}.log", env=place.env)
    place.hosts[0].write_text(f"{sweep_dir}/{SPAWNED_FILE}", json.dumps({"at": at, "pids": pids}) + "\n")


def read_plan(place: Place, sweep_id: str) -> dict[str, Any]:
    text = place.hosts[0].read_text(f"{place.sweep_dir(sweep_id)}/{PLAN_FILE}")
    if text is None:
        raise RunError(f"sweep '{sweep_id}' not found in {place.root}/runs — pass the --store it was started with")
    try:
        plan = json.loads(text)
        for run in plan["runs"]:
            check_run_id(run["run_id"])
        return plan
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"{place.sweep_dir(sweep_id)}/{PLAN_FILE} is not a sweep's plan — it was changed by hand?") \
            from None


def runner_states(place: Place, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Each node's runner: its own file, with ``alive`` (its pid runs); a runner not yet heard from by its
    spawned pid."""
    sweep_dir = place.sweep_dir(plan["sweep_id"])
    spawned = parse_status(place.hosts[0].read_text(f"{sweep_dir}/{SPAWNED_FILE}"))
    out = []
    for rank, host in enumerate(place.hosts):
        st = parse_status(host.read_text(f"{sweep_dir}/{runner_file(rank)}"))
        last = (spawned.get("pids") or {}).get(str(rank))  # the runner started last (spawn gives its own pid)
        if last and st.get("pid") != last:  # the file is an earlier runner's: the new one has not written yet
            st = {}
        pid = st.get("pid") or last
        out.append({**st, "node": rank, "pid": pid, "alive": pid is not None and host.is_alive(int(pid))})
    return out


def active(runners: list[dict[str, Any]]) -> bool:
    return any(r["alive"] for r in runners)


def resume(place: Place, sweep_id: str, parallel: Optional[int]) -> dict[str, Any]:
    """Start the runners again; each skips its runs that are done (infra/sweep.py). Refused while one runs."""
    plan = read_plan(place, sweep_id)
    if active(runner_states(place, plan)):
        raise RunError(f"sweep '{sweep_id}' is still running — follow it with `mnist-launch sweep status {sweep_id}`")
    spawn_runners(place, plan, parallel or plan["parallel"])
    return plan


def cancel(place: Place, sweep_id: str, timeout: float = 60.0, poll: float = 0.3) -> list[dict[str, Any]]:
    """SIGTERM to every runner: each stops its agents (every running run records cancelled) and starts no more."""
    plan = read_plan(place, sweep_id)
    runners = runner_states(place, plan)
    for r in runners:
        if r["alive"]:
            place.hosts[r["node"]].kill(int(r["pid"]), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while active(runners := runner_states(place, plan)):
        if time.monotonic() > deadline:
            raise RunError(f"sweep '{sweep_id}' did not stop within {timeout:.0f}s — "
                           f"see {place.sweep_dir(sweep_id)}/runner-*.log")
        time.sleep(poll)
    return runners


def run_status(place: Place, run: dict[str, Any]) -> dict[str, Any]:
    return parse_status(place.files(run).read_text(STATUS_FILE))


def local_place(store: Optional[str], host: Optional[Host] = None) -> Place:
    """This machine: runs and sweeps in the folder store (``./runs/``), agents as `train --local`."""
    import os

    from launcher.targets.local import PROJECT_ROOT, local_store

    s = local_store(store)
    pythonpath = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))

    def agent(run_id: str, cfg: Config, node: int) -> list[str]:
        return [sys.executable, "-m", "infra.agent", "--run-dir", str(s.run_dir(run_id)), "--processes", "1",
                "--mixed-precision", cfg.train.mixed_precision]

    return Place([host or LocalHost()], str(s.root), s.uri, env={"PYTHONPATH": pythonpath}, agent=agent)


def local_prepare(data_dir: Optional[str]) -> Callable[[Config], Config]:
    """A local run's data folder, resolved and checked once (one line naming it, before anything is written).
    What depends on the host's GPUs (fp16) is the agent's to say, run by run, as on a cluster."""
    from launcher.targets.local import resolve_data_dir
    from trainer.data import check_dir

    checked: set[str] = set()

    def prepare(cfg: Config) -> Config:
        cfg.data.dir = resolve_data_dir(data_dir, cfg)
        if cfg.data.dir not in checked:
            check_dir(cfg.data.dir)
            checked.add(cfg.data.dir)
        return cfg

    return prepare
