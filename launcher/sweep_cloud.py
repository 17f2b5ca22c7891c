"""A sweep on a cluster: every node prepared at once (code, data, environment, as `train` does), one runner per
node taking runs i with i mod N = its rank, each run an ordinary cloud run (its agent uploads it to S3).

Node 0's runner copies the plan to the store (``<store>/runs/SWEEP_ID/plan.json``, where the instance's role may
write): `sweep status ID --store s3://...` finds the cluster's nodes from it on any machine, and reads each run's
files live over SSH.

    place, plan = start_on_cluster(SweepSpec("configs/model3.yaml", ["train.seed=1,2"]), "s3://b/mnist", None,
                                   None, console)
"""

from __future__ import annotations

import json
from typing import Any, Optional

from rich.console import Console

from core.config import Config
from core.errors import ConfigError, RunError
from infra import home
from infra.host import Host
from infra.store import RunFiles
from launcher import sweep
from launcher.remote import ReconnectingRun, agent_argv, remote_layout
from launcher.sweep import Place, SweepSpec


def _reader(host: Host, run_dir: str) -> RunFiles:
    return ReconnectingRun(host, run_dir)


def start_on_cluster(spec: SweepSpec, store: Optional[str], name: Optional[str], identity: Optional[str],
                     console: Console) -> tuple[Place, dict[str, Any]]:
    from launcher.targets.ec2 import CloudFlags, EC2Target

    target = EC2Target(CloudFlags(store=store, name=name, identity=identity, data_dir=spec.data_dir), console)
    cfg = target.load_config(spec.config, spec.overrides)
    if cfg.launch.env:
        raise ConfigError("launch.env: a sweep's runs do not take environment values yet — set them in the "
                          "instance's image, or train the settings one by one with `train`")
    if not (target.store or "").startswith("s3://"):
        raise ConfigError("a sweep on a cluster keeps its runs in S3 — pass --store s3://bucket/prefix")
    sweep_id = spec.sweep_id or sweep.new_sweep_id(spec.config)
    spec.sweep_id = sweep_id
    sweep.plan_runs(spec, target.load_config, sweep_id, 1)  # every setting checked before a node is touched
    attempt = target.prepare(sweep_id, cfg, spec.data_dir, restart=False)  # every node: code, data, environment
    info = attempt.info
    root = info["paths"]["root"]
    pythons = info["pythons"]
    store_uri = target.store

    def agent(run_id: str, run_cfg: Config, node: int) -> list[str]:
        return agent_argv(pythons[node], remote_layout(root, run_id), run_id, run_cfg, store_uri)

    def prepare(run_cfg: Config) -> Config:
        run_cfg.data.dir = "data"  # relative to the remote folder, where the agents start (as `train` has it)
        run_cfg.launch.nodes = 1  # the sweep's nodes each train their own runs: a run is on one
        return run_cfg

    rels = [p[len(root) + 1:] if p.startswith(root + "/") else p for p in pythons]
    where = {"kind": "cloud", "cluster": info["cluster"], "region": info["region"], "remote_dir": root,
             "identity": identity, "instance_ids": [info["node_ids"][r] for r in sorted(info["node_ids"])]}
    place = Place(list(attempt.hosts), root, store_uri, env={"PYTHONPATH": "code"}, agent=agent, pythons=rels,
                  where=where, reader=_reader)
    plan = sweep.start(spec, place, target.load_config, prepare)
    for run in plan["runs"]:  # `logs RUN_ID` and `cancel RUN_ID` find each run as they find a `train`'s
        node = run["node"]
        home.write_run_record(run["run_id"], {
            "cluster": where["cluster"], "instance_id": where["instance_ids"][node], "region": where["region"],
            "remote_dir": root, "run_dir": place.run_dir(run["run_id"]), "store": store_uri, "identity": identity,
            "created_at": plan["created_at"], "sweep": sweep_id})
    return place, plan


def stored_plan(store: str, sweep_id: str) -> dict[str, Any]:
    from infra.store import open_store

    text = open_store(store).read_text(sweep_id, "plan.json")  # node 0's runner put it there
    if text is None:
        raise RunError(f"sweep '{sweep_id}' not found in {store}/runs — check the id and --store")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise RunError(f"{store}/runs/{sweep_id}/plan.json is not a sweep's plan") from None


def cloud_place_of(store: Optional[str], name: Optional[str], identity: Optional[str],
                   plan: Optional[dict[str, Any]]) -> Place:
    """The nodes a sweep's plan names, connected again (each still the instance the sweep started on)."""
    from launcher.targets.ec2 import hosts_for, in_parallel

    if plan is None:
        raise ConfigError("a sweep on a cluster is found from its plan in the store — pass --store s3://bucket/prefix")
    where = plan["where"]
    ids = where["instance_ids"]
    rec = {"cluster": where["cluster"], "region": where.get("region"), "identity": identity or where.get("identity"),
           "instance_id": ids[0], "nodes": [{"rank": r, "instance_id": i} for r, i in enumerate(ids)]
           if len(ids) > 1 else None}
    hosts = hosts_for(rec)
    in_parallel([h.connect for h in hosts])
    root = where["remote_dir"]
    pythons = [str(p) for p in plan.get("pythons") or ["python3"]]
    return Place(list(hosts), root, plan.get("store") or store, env=plan.get("env") or {}, pythons=pythons,
                 where=where, reader=_reader)
