"""The EC2 target: one instance of a cluster (``up`` first when none runs), reached over SSH, with S3 as the store.

    cluster (up if needed) -> sync the workdir, ship MNIST, check the venv (in parallel) -> the run's
    files -> the agent (setsid, exactly once) -> events.jsonl followed over SSH from a byte offset

A new attempt of a run (``--resume``, a recovery on a replacement instance) starts the agent with
``--restore``: it fetches the run and its newest complete checkpoint from the store (infra/restore.py).

    target = EC2Target(CloudFlags(store="s3://bucket/mnist"), console)
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, TypeVar

from rich.console import Console

from core import settings
from core.config import Config, load_config, per_process_batch
from core.errors import ConfigError, RunError, SSHError
from infra import home
from infra.host import Host
from infra.ssh import SSHHost
from infra.store import RunFiles, StoreRun, latest_stored_checkpoint, open_store
from launcher import cluster
from launcher.datafetch import ensure_mnist, mirrors_for
from launcher.remote import ReconnectingRun, agent_argv, check_flags, prepare_host, remote_layout, retrying, spawn_once
from launcher.targets import Attempt
from launcher.targets.local import resolve_data_dir

T = TypeVar("T")


@dataclass
class CloudFlags:
    """The flags of a cloud `train` that say where it runs (each overrides the config's ``launch:``)."""

    store: Optional[str] = None
    name: Optional[str] = None  # cluster; default launch.name
    instance: Optional[str] = None  # instance type when `up` has to create it
    identity: Optional[str] = None
    ami: Optional[str] = None  # image when the cluster has to be created (a replacement keeps the lost one's)
    avoid_az: Optional[str] = None  # a replacement tries the other AZs before the lost instance's
    data_dir: Optional[str] = None  # --data-dir: checked with the config, before anything runs
    recover: bool = False  # a lost instance is replaced: ask EC2 whether it is gone when the agent goes quiet


class EC2Target:
    def __init__(self, flags: CloudFlags, console: Console, note: Callable[[str], None] = lambda m: None,
                 confirm: Optional[cluster.Confirm] = None) -> None:
        self.flags, self.console, self.note = flags, console, note
        self.confirm = confirm  # asked before `up` creates the cluster (None: nobody to ask, go ahead)
        self.store: Optional[str] = flags.store
        self.host: Optional[SSHHost] = None  # the attempt's host, once prepared (for retrying)
        self.local_data_dir: Optional[str] = None  # a resumed run's data, as its meta.json says
        self.where = f"on {flags.name}" if flags.name else "on the cluster"

    # -- a run's config and store ---------------------------------------------------------------

    def _check_store(self, cfg: Config) -> Config:
        cfg = check_flags(self.flags, cfg, self.flags.data_dir)
        self.store = self.flags.store or cfg.store
        if self.store and not self.store.startswith("s3://"):
            raise ConfigError(f"--store {self.store}: a cloud run keeps its artifacts in S3 — pass --store "
                              "s3://bucket/prefix, or train with --local to keep them in a folder")
        self.where = f"on {self.flags.name or cfg.launch.name}"
        return cfg

    def load_config(self, config: str, overrides: list[str]) -> Config:
        return self._check_store(load_config(config, overrides))

    def saved_config(self, run_id: str) -> tuple[str, str]:
        store = self.flags.store or home.read_run_record(run_id).get("store")
        if not (store or "").startswith("s3://"):
            raise ConfigError(f"--resume {run_id}: a cloud run resumes from its store — "
                              "pass --store s3://bucket/prefix (or add --local for a run in a folder)")
        self.flags = replace(self.flags, store=store)
        s = open_store(store)
        text = s.read_text(run_id, "config.yaml")
        if text is None:
            raise RunError(f"run '{run_id}' not found in {store} — "
                           f"`mnist-launch runs --store {store}` lists the runs there")
        try:
            self.local_data_dir = json.loads(s.read_text(run_id, "meta.json") or "{}").get("local_data_dir")
        except json.JSONDecodeError:
            pass
        return text, f"{store}/runs/{run_id}/config.yaml"

    # -- one attempt -----------------------------------------------------------------------------

    def prepare(self, run_id: str, cfg: Config, data_dir: Optional[str], restart: bool) -> Attempt:
        cfg = self._check_store(cfg)
        nodes = cfg.launch.nodes
        if cfg.launch.gpus:  # processes known before anything starts (else one per GPU: the trainer checks)
            per_process_batch(cfg.train.batch_size, cfg.launch.gpus * nodes)
        if restart and not self.store:
            raise ConfigError("recovering or resuming a cloud run needs its store: pass --store s3://bucket/prefix")
        if nodes > 1 and not self.store:
            raise ConfigError(f"launch.nodes={nodes}: a multi-node run keeps its checkpoints and every node's logs in "
                              "S3 — pass --store s3://bucket/prefix")
        data_dir = data_dir or self.local_data_dir
        data_uri = data_dir if (data_dir or "").startswith("s3://") else None
        local_data = None if data_uri else resolve_data_dir(data_dir, cfg)
        if local_data:
            # the local copy is what travels: fetched here when missing, and a bad file fails here, by name
            ensure_mnist(local_data, mirrors_for(cfg))
        timings: dict[str, float] = {}
        t = time.monotonic()
        insts, hosts = self._cluster(cfg, data_uri)
        self.host = hosts[0]
        in_parallel([h.connect for h in hosts])
        timings["connect"] = time.monotonic() - t  # finding the instance(s) (EC2) and the SSH handshakes
        paths = remote_layout(cfg.launch.remote_dir, run_id)
        t = time.monotonic()
        # every node at once: the launcher's start grows little with the node count
        each = [dict(timings) for _ in hosts]
        def prepare_one(host: SSHHost, tm: dict[str, float]) -> Callable[[], str]:
            return lambda: prepare_host(host, self.console, cfg, paths, local_data, data_uri, tm)

        pythons = in_parallel([prepare_one(h, tm) for h, tm in zip(hosts, each)])
        for key in ("sync", "data", "setup"):
            timings[key] = max(tm.get(key, 0.0) for tm in each)
        timings["prepare"] = time.monotonic() - t
        cfg.data.dir = "data"  # relative to the remote folder, where the agent and trainer start
        name = self.flags.name or cfg.launch.name
        inst = insts[0]
        info = {"cluster": name, "instance_id": inst.id, "region": inst.region, "az": inst.az,
                "image_id": inst.image_id, "instance_type": inst.instance_type, "timings": timings, "paths": paths,
                "python": pythons[0], "pythons": pythons, "local_data_dir": local_data, "t_start": time.monotonic(),
                "node_ids": {i.node: i.id for i in insts}, "rendezvous": insts[0].private_ip}
        return Attempt(run_id, list(hosts), paths["run_dir"], cfg, store=self.store, info=info,
                       node_dirs=[paths["run_dir"]] * len(hosts) if len(hosts) > 1 else [])

    def _cluster(self, cfg: Config, data_uri: Optional[str]) -> tuple[list[Any], list[SSHHost]]:
        """(instances, SSHHosts) of the run's cluster, in rank order; `up` it first when nothing (or not every node)
        runs under that name. Its role covers the run's store and s3:// data before the run starts (a run that
        could upload nothing never starts)."""
        name = self.flags.name or cfg.launch.name
        nodes = cfg.launch.nodes
        try:
            insts = cluster.running_nodes(name, cfg.launch.region, nodes) if nodes > 1 \
                else [cluster.running_instance(name, cfg.launch.region)]
        except cluster.NoInstanceError as err:  # bring it up with the config's launch: section (and the flags)
            self.console.print(f"{str(err).split(' — ')[0]}: starting it" if nodes > 1
                               else f"no running instance for cluster '{name}': starting it")
            made = cluster.up(cluster.UpRequest(launch=cfg.launch, store=self.store, explicit_type=True,
                                                avoid_az=self.flags.avoid_az, confirm=self.confirm),
                              console=self.console)
            assert made.instance is not None  # up raises when it cannot start one
            insts = sorted(made.instances, key=lambda i: i.node) if nodes > 1 else [made.instance]
        for inst in {i.profile_arn: i for i in insts}.values():  # one grant per role (a cluster has one)
            changed = cluster.grant_run_access(inst, name, self.store, data_uri)
            if changed:
                self.console.print(f"[dim]{changed}[/]")
        return insts, [cluster.cluster_host(i, name, self.flags.identity) for i in insts]

    def exists(self, attempt: Attempt) -> bool:
        return self.retrying(lambda: attempt.host.read_text(f"{attempt.run_dir}/config.yaml")) is not None

    def check_resumable(self, run_id: str) -> None:
        store = self.flags.store  # saved_config found the run there
        if store is None or latest_stored_checkpoint(open_store(store), run_id) is None:
            raise RunError(f"run '{run_id}' has no complete checkpoint in {store} to resume from — start a new run")

    def write_run(self, attempt: Attempt, config_yaml: str, meta: dict[str, Any], resumed: Optional[dict[str, Any]],
                  restart: bool) -> None:
        info = attempt.info
        where = {"cluster": info["cluster"], "instance_id": info["instance_id"], "region": info["region"],
                 "remote_dir": info["paths"]["root"], "run_dir": attempt.run_dir}
        meta = {**meta, "local_data_dir": info["local_data_dir"], "cloud": where, "store": attempt.store}
        info["created_at"] = meta["created_at"]

        def write() -> None:
            # a new attempt keeps the run's meta.json (the agent fetches it from the store) and this config.yaml;
            # every node trains from its own copy of both
            for _rank, host, folder in attempt.nodes():
                host.write_text(f"{folder}/config.yaml", config_yaml)
                if not restart:
                    host.write_text(f"{folder}/meta.json", json.dumps(meta, indent=2) + "\n")

        self.retrying(write)

    def spawn_agent(self, attempt: Attempt, restart: bool) -> int:
        info, cfg = attempt.info, attempt.cfg
        assert cfg is not None  # a started attempt has its config
        paths = info["paths"]
        nodes = attempt.nodes()
        where = {"cluster": info["cluster"], "instance_id": info["instance_id"], "region": info["region"],
                 "remote_dir": paths["root"], "run_dir": attempt.run_dir}
        record = {**where, "store": attempt.store, "identity": self.flags.identity,
                  "created_at": info.get("created_at") or round(time.time(), 3)}
        if len(nodes) > 1:
            record["nodes"] = [{"rank": rank, "instance_id": info["node_ids"][rank], "run_dir": folder}
                               for rank, _host, folder in nodes]
        home.write_run_record(attempt.run_id, record)
        # a port of rank 0's for this attempt: two runs on one cluster, or a recovery next to a dying attempt,
        # never meet at the same rendezvous (the cluster's security group opens every port between its nodes)
        port = secrets.randbelow(10000) + 20000
        address = settings.rendezvous_address() or info.get("rendezvous") or ""
        if len(nodes) > 1 and not address:
            raise RunError(f"{info['instance_id']} has no private address for the other nodes to reach it — "
                           "check the cluster's subnet (or set MNIST_LAUNCH_RENDEZVOUS_ADDRESS)")
        tag = f"restore-{secrets.token_hex(3)}" if restart else "start"  # each new attempt starts its agents once
        def spawn(rank: int, host: Host, folder: str) -> Callable[[], int]:
            argv = agent_argv(info["pythons"][rank], paths, attempt.run_id, cfg, attempt.store)
            if len(nodes) > 1:
                argv += ["--nodes", str(len(nodes)), "--node-rank", str(rank), "--main-address", address,
                         "--main-port", str(port)]
            if cfg.launch.env:
                argv += ["--env-file", paths["env"][len(paths["root"]) + 1:]
                         if paths["env"].startswith(paths["root"] + "/") else paths["env"]]
            if restart:
                argv.append("--restore")

            def go() -> int:
                if cfg.launch.env:
                    host.write_text(paths["env"], "".join(f"{k}={v}\n" for k, v in cfg.launch.env.items()),
                                    mode=0o600)
                return spawn_once(host, argv, paths["root"], folder, tag=tag)
            return go

        pids = in_parallel([spawn(rank, host, folder) for rank, host, folder in nodes])  # every node at once
        pid = pids[0]
        if len(nodes) > 1:
            record["nodes"] = [{**n, "spawn_pid": p} for n, p in zip(record["nodes"], pids)]
        home.write_run_record(attempt.run_id, {**record, "spawn_pid": pid})  # an agent that dies before its first word
        info["timings"]["start"] = time.monotonic() - info["t_start"]
        if restart:  # the agent restores the run from the store: what came before its checkpoint was shown already
            from launcher.lifecycle import restored_offset

            attempt.agent_pid = pid
            attempt.events_offset = restored_offset(self.files(attempt, self.note))
        return pid

    def files(self, attempt: Attempt, note: Callable[[str], None]) -> RunFiles:
        gone = (lambda: self.gone(attempt)) if self.flags.recover else None
        return ReconnectingRun(attempt.host, attempt.run_dir, note=note, spawn_pid=attempt.agent_pid, gone=gone)

    def retrying(self, step: Callable[[], T]) -> T:
        return step() if self.host is None else retrying(self.host, self.console, step)

    def gone(self, attempt: Attempt) -> bool:
        """Whether EC2 says an instance of the attempt (any node) no longer runs (one DescribeInstances)."""
        from infra.aws import AWSProvider, Clients

        name = attempt.info["cluster"]
        provider = AWSProvider(Clients.create(cluster.default_region(None, name)))
        ids = set((attempt.info.get("node_ids") or {0: attempt.info["instance_id"]}).values())
        live = {i.id for i in provider.find_instances(name) if i.id in ids and i.state in ("pending", "running")}
        return live != ids

    def close(self, attempt: Attempt) -> None:
        for host in attempt.hosts:
            host.close()

    def replacement(self, attempt: Attempt) -> "EC2Target":
        info = attempt.info
        multi = len(info.get("node_ids") or {}) > 1  # a node joins the others in their zone and placement group
        flags = replace(self.flags, store=attempt.store, instance=info.get("instance_type") or self.flags.instance,
                        ami=info.get("image_id"), avoid_az=None if multi else info.get("az"))
        return EC2Target(flags, self.console, self.note)  # --recover agreed to replacements: nobody is asked

    # -- finding a run again: logs, cancel ----------------------------------------------------------

    def locate(self, run_id: str) -> Optional[Attempt]:
        rec = run_record(run_id, self.flags.store)
        if not rec:
            return None
        hosts = hosts_for(rec)
        in_parallel([h.connect for h in hosts])
        return Attempt(run_id, list[Host](hosts), rec["run_dir"], None, store=rec.get("store"),
                       agent_pid=rec.get("spawn_pid"), info=rec,
                       node_dirs=[n["run_dir"] for n in rec["nodes"]] if rec.get("nodes") else [])


def run_record(run_id: str, store: Optional[str]) -> dict[str, Any]:
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


def host_for(rec: dict[str, Any]) -> SSHHost:
    inst = cluster.running_instance(rec["cluster"], rec.get("region"))
    if inst.id != rec.get("instance_id"):
        raise SSHError(f"cluster '{rec['cluster']}' now runs {inst.id}, not {rec.get('instance_id')} where the run was")
    return cluster.cluster_host(inst, rec["cluster"], rec.get("identity"))


def hosts_for(rec: dict[str, Any]) -> list[SSHHost]:
    """The SSHHosts of a run's nodes (one for a single-node run), each still the instance the run started on."""
    if not rec.get("nodes"):
        return [host_for(rec)]
    live = {i.id: i for i in cluster.running_nodes(rec["cluster"], rec.get("region"))}
    missing = [f"node {n['rank']} ({n['instance_id']})" for n in rec["nodes"] if n["instance_id"] not in live]
    if missing:
        raise SSHError(f"cluster '{rec['cluster']}' no longer runs {', '.join(missing)} where the run was")
    return [cluster.cluster_host(live[n["instance_id"]], rec["cluster"], rec.get("identity")) for n in rec["nodes"]]


def in_parallel(steps: list[Callable[[], T]]) -> list[T]:
    """Run each step on its own thread (one per node); their results in order; the first error is raised."""
    if len(steps) == 1:
        return [steps[0]()]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
        return [f.result() for f in futures]


def open_cloud_run(run_id: str, store: Optional[str], note: Callable[[str], None]) -> Optional[RunFiles]:
    """The files of a cloud run: live over SSH while its instance runs, else the store's copy;
    None if not a cloud run."""
    rec = run_record(run_id, store)
    if not rec:
        return None
    try:
        host = host_for(rec)
        host.connect()
        return ReconnectingRun(host, rec["run_dir"], note=note, spawn_pid=rec.get("spawn_pid"))
    except Exception as err:  # the instance is gone or unreachable: the store still has the run
        store_uri = store or rec.get("store")
        if store_uri and store_uri.startswith("s3://"):
            note(f"{rec.get('cluster')} not reachable ({str(err).split(' — ')[0][:100]}); reading {store_uri}")
            return StoreRun(open_store(store_uri), run_id)
        raise


