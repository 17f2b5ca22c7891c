"""A cluster's running instances and the way in: which instance (node 0, or every node by rank), which key
logs in, an SSHHost with its host key pinned under the instance id, and the instance role's access to a
run's store and data. Used by `ssh`, `status` and cloud runs alike.

    inst = running_instance("mnist", None)
    head, *workers = running_nodes("mnist", None, nodes=2)
    with cluster_host(inst, "mnist", None) as host:
        host.run(["nvidia-smi"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from core.errors import LaunchError, SSHError
from infra import home
from infra.aws import AWSProvider, Clients, InstanceInfo, aws_errors, by_rank, key_pair_name, missing_ranks
from infra.ssh import SSHHost, endpoint_for, public_key_of
from launcher.cluster.settings import check_name, default_region, identity_for


class NoInstanceError(LaunchError):
    """No running instance under a cluster name (`train` then brings one up)."""


def running_instance(name: str, region: Optional[str]) -> InstanceInfo:
    """The cluster's running instance of the lowest rank (node 0 of a whole multi-node cluster), or one line
    saying how to get one."""
    return running_nodes(name, region)[0]


def running_nodes(name: str, region: Optional[str], nodes: Optional[int] = None) -> list[InstanceInfo]:
    """The cluster's running instances by rank, or one line (NoInstanceError) saying how to get them: when
    none runs, and, with ``nodes``, when a rank below it is missing or not running (`up` creates or starts it).
    With ``nodes``: exactly ranks 0 .. nodes-1, one instance each."""
    region = default_region(region, name)
    provider = AWSProvider(Clients.create(region))
    with aws_errors():
        running = by_rank([i for i in provider.find_instances(check_name(name)) if i.state == "running"])
    if not running:
        raise NoInstanceError(f"no running instance for cluster '{name}' in {region} — "
                              f"`mnist-launch up --name {name}` first")
    if not nodes:
        return running
    missing = missing_ranks(nodes, running)
    if missing:
        raise NoInstanceError(
            f"cluster '{name}' in {region} has {nodes - len(missing)} of its {nodes} nodes running: "
            f"{'node' if len(missing) == 1 else 'nodes'} {', '.join(map(str, missing))} "
            f"{'is' if len(missing) == 1 else 'are'} missing or not running — "
            f"`mnist-launch up --name {name} --nodes {nodes}` brings {'it' if len(missing) == 1 else 'them'} up")
    return [next(i for i in running if i.node == rank) for rank in range(nodes)]


def grant_run_access(inst: InstanceInfo, name: str, store: Optional[str], data: Optional[str]) -> Optional[str]:
    """Before a run starts on ``inst``: its role covers ``store`` (write under runs/) and ``data`` (read),
    updated if not, refused in one line if it has no role of ours. A line to print when it changed."""
    provider = AWSProvider(Clients.create(inst.region))
    with aws_errors():
        step = provider.store_access(name, inst, store, data)
    return None if step is None else str(step).strip()


def login_key(inst: InstanceInfo, name: str, identity: Optional[str]) -> Path:
    """The private key that logs in to ``inst``: --identity, the one the cluster was made with, or ours."""
    cached = home.read_cluster_cache(name).get("identity")
    key = identity_for(identity or cached, create=False)
    if key is None or (not identity and not cached and inst.key_name != key_pair_name(public_key_of(key))):
        raise SSHError(f"{inst.id} was created with key pair {inst.key_name}, which is not ours — "
                       "pass its private key with --identity")
    return key


def cluster_host(inst: InstanceInfo, name: str, identity: Optional[str]) -> SSHHost:
    """An SSHHost for the cluster's instance, its host key pinned under the instance id."""
    return SSHHost(endpoint_for(inst.public_ip, inst.user, node=inst.node), login_key(inst, name, identity),
                   alias=inst.id)
