"""The provisioning interface: what a cloud implements so `up`, `down`, `status`, `ssh` and `train` run on it.

Typed records in and out, nothing cloud-specific in their shape: ``ClusterSpec`` (what `up` asks
for) -> ``Plan`` (what it would do) / ``UpOutcome`` (what it did) / ``InstanceInfo`` (one machine).
Every resource a provider makes is tagged with the cluster's name, so a cluster is always found again
from the cloud alone; ``remove`` and ``leftovers`` together make `down` verifiable.

Today one cloud implements it: ``infra.aws.AWSProvider`` (``infra/aws/``: clients, errors, instances,
network, iam, images, and the provider composing them). A second cloud goes in a package of its own
beside it, ``infra/<cloud>/``, split the same way, with a class that satisfies ``Provider`` (held to
it by the type checker, as infra/aws/provider.py's ``_implements`` does); the launcher's cluster
commands (launcher/cluster/) then pick the class by the cluster's cloud. What runs on the instance
(SSH, sync, the agent, the store) is cloud-agnostic already.

    provider: Provider = AWSProvider(Clients.create("us-east-1"))
    plan = provider.plan(spec)          # read-only (plus the cloud's own dry run)
    outcome = provider.ensure(spec)     # reuse, start or create; rolls back what it created on failure
    provider.remove(spec.name); assert provider.leftovers(spec.name) == []
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Optional, Protocol

from infra.prices import Rate

# EC2's default instance type; a second cloud's default would come from its own package
DEFAULT_INSTANCE = "g4dn.xlarge"


@dataclass(frozen=True)
class ClusterSpec:
    """What `up` asks for. Validated by the launcher before it gets here."""

    name: str
    region: str
    public_key: str  # one OpenSSH line: "ssh-ed25519 AAAA... comment"; only this goes to the cloud
    ssh_cidr: str  # the only source allowed to reach port 22
    instance_type: Optional[str] = None  # None: whatever the existing cluster is, else DEFAULT_INSTANCE
    spot: bool = False
    disk_gb: int = 100
    ami: Optional[str] = None  # the image id; None: the region's Deep Learning AMI from SSM
    ami_parameter: Optional[str] = None  # the SSM parameter naming the default image; None: the provider's default
    store: Optional[str] = None  # s3://bucket/prefix the instance profile may read/write
    autostop: str = "60m"
    autostop_terminate: bool = False  # the watcher's shutdown terminates (always so for spot)
    avoid_az: Optional[str] = None  # tried last: a replacement for an instance lost there (spot capacity went first)
    nodes: int = 1  # instances of the cluster, in one zone (one placement group where the type has them)

    @property
    def shutdown_behavior(self) -> str:
        return "terminate" if self.spot or self.autostop_terminate else "stop"

    @property
    def type_or_default(self) -> str:
        return self.instance_type or DEFAULT_INSTANCE


@dataclass
class InstanceInfo:
    id: str
    name: str
    region: str
    instance_type: str
    state: str
    spot: bool
    launch_time: Optional[datetime]
    public_ip: Optional[str]
    az: Optional[str]
    image_id: str
    key_name: Optional[str]
    user: str
    autostop: Optional[str] = None
    autostop_action: Optional[str] = None
    profile_arn: Optional[str] = None  # the instance profile the cloud gives the instance's processes, if any
    private_ip: Optional[str] = None  # where the cluster's other nodes reach it (multi-node rendezvous)
    node: int = 0  # its rank in a multi-node cluster (0 runs the run's head: events, artifacts)
    placement_group: Optional[str] = None  # the group keeping the cluster's nodes close, if it has one

    def uptime_seconds(self, now: Optional[datetime] = None) -> float:
        if self.state != "running" or self.launch_time is None:
            return 0.0
        return max(0.0, ((now or datetime.now(timezone.utc)) - self.launch_time).total_seconds())


@dataclass
class Step:
    """One line of a plan: what happens to one resource."""

    resource: str  # "key pair", "security group", "instance profile", "placement group", "instance", "image",
    # "root volume"
    action: str  # "create", "reuse", "start", "update", "none"; "find" and "raise": notes on the image
    detail: str

    def __str__(self) -> str:
        return f"{self.action:<7} {self.resource:<17} {self.detail}"


@dataclass
class Created:
    kind: str  # "instance", "instance-profile", "role", "security-group", "key-pair", "placement-group"
    id: str


@dataclass
class Plan:
    region: str
    steps: list[Step]
    instance_type: str
    image_id: Optional[str]
    user: str
    spot: bool
    hourly_usd: Optional[float]  # one instance's own price (spot or on-demand); ``rate`` adds IPv4 and the volume
    existing: Optional[InstanceInfo] = None
    nodes: int = 1  # instances the cluster has once `up` is done
    rate: Optional[Rate] = None  # what one node will cost an hour, in parts; the cluster costs ``nodes`` times it


@dataclass
class UpOutcome:
    instance: InstanceInfo  # node 0 (the lowest rank there is)
    steps: list[Step]
    created: list[Created] = field(default_factory=list)
    instances: list[InstanceInfo] = field(default_factory=list)  # every node, by rank; [instance] when left out

    def __post_init__(self) -> None:
        if not self.instances:
            self.instances = [self.instance]


def by_rank(insts: list[InstanceInfo]) -> list[InstanceInfo]:
    """A cluster's instances by rank (stable: of two with one rank, the one listed first stays first)."""
    return sorted(insts, key=lambda i: i.node)


def missing_ranks(nodes: int, insts: list[InstanceInfo]) -> list[int]:
    """The ranks below ``nodes`` that none of ``insts`` holds: what `up` creates to make the cluster whole."""
    return sorted(set(range(nodes)) - {i.node for i in insts})


class Provider(Protocol):
    """One region of one cloud, seen as mnist-launch clusters. Raises LaunchError subclasses (one line each)."""

    region: str

    def plan(self, spec: ClusterSpec) -> Plan:
        """What ``ensure`` would do, changing nothing."""
        ...

    def ensure(self, spec: ClusterSpec, found: Optional[list[InstanceInfo]] = None) -> UpOutcome:
        """Reuse the cluster's running instances, start stopped ones, create the ranks below ``spec.nodes`` it
        lacks (all of them for a new cluster, all or none); on failure undo what it created."""
        ...

    def find_instances(self, name: Optional[str] = None, states: Optional[list[str]] = None) -> list[InstanceInfo]:
        """The instances of cluster ``name`` (every cluster's when None), newest running first."""
        ...

    def describe(self, instance_id: str) -> InstanceInfo: ...

    def wait_state(self, instance_id: str, state: str, timeout_s: float,
                   tick: Callable[[InstanceInfo], None] = lambda _i: None) -> InstanceInfo: ...

    def rates(self, insts: list[InstanceInfo]) -> dict[str, Rate]:
        """What each instance costs an hour now, by id, in parts (never fails for want of a price)."""
        ...

    def status_checks_ok(self, instance_id: str) -> bool:
        """The cloud's own health checks of a running instance passed."""
        ...

    def store_access(self, name: str, inst: InstanceInfo, store: Optional[str],
                     data: Optional[str] = None) -> Optional[Step]:
        """Let the instance write under ``store``/runs/ and read ``data`` before a run starts there."""
        ...

    def stop(self, name: str, timeout_s: float = 900) -> list[InstanceInfo]: ...

    def remove(self, name: str, timeout_s: float = 900) -> list[str]:
        """Terminate the cluster and delete what was created for it (idempotent); what was removed."""
        ...

    def leftovers(self, name: str) -> list[str]:
        """What of cluster ``name`` still exists; [] when it is gone without a trace."""
        ...

    def rollback(self, created: list[Created]) -> list[str]:
        """Undo what one ``ensure`` created, newest first."""
        ...
