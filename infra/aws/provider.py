"""AWSProvider: the provisioning interface (infra/provider.py) for EC2, composed of the instances,
network, placement, IAM and images modules of this package; it knows the order of things, they know AWS.
A new cluster of one or more nodes is created here; an existing one is reused and made whole in reuse.py,
and planned in planning.py.

    provider = AWSProvider(Clients.create("us-east-1"))
    outcome = provider.ensure(spec)          # reuse, start or create; rolls back on failure
    provider.remove("mnist")                 # terminate and delete what it created
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import AWSError, ConfigError
from infra.aws.clients import Clients
from infra.aws.errors import NEW_GROUP, NEW_KEY, NEW_PLACEMENT_GROUP, NEW_PROFILE, Transient, one_line
from infra.aws.iam import IAM, parse_s3_uri
from infra.aws.images import Image, Images, image_steps
from infra.aws.instances import NOT_TERMINATED, Instances, key_pair_name
from infra.aws.network import Network, sg_name
from infra.aws.placement import Placements, placement_strategy
from infra.aws.planning import plan_cluster
from infra.aws.reuse import reuse_cluster
from infra.aws.spotprice import Pricing
from infra.aws.tags import is_managed, tags
from infra.prices import Rate
from infra.provider import (
    ClusterSpec,
    Created,
    InstanceInfo,
    Plan,
    Provider,
    Step,
    UpOutcome,
    by_rank,
)


class AWSProvider:
    """One region's view of mnist-launch clusters. All calls go through ``self.clients``."""

    def __init__(self, clients: Clients, log: Callable[[str], None] = lambda _msg: None,
                 poll_s: float = 3.0) -> None:
        self.clients = clients
        self.region = clients.region
        self.log = log
        self.poll_s = poll_s
        self.instances = Instances(clients, log, poll_s)
        self.network = Network(clients, log, poll_s)
        self.iam = IAM(clients, log, poll_s)
        self.images = Images(clients)
        self.placements = Placements(clients, log, poll_s)
        self.pricing = Pricing(clients, log, poll_s)

    # -- names ---------------------------------------------------------------------------------

    sg_name = staticmethod(sg_name)
    tags = staticmethod(tags)

    def role_name(self, cluster: str) -> str:
        return self.iam.role_name(cluster)

    @property
    def image_parameter(self) -> str:
        """The SSM parameter naming the region's default image."""
        return self.images.parameter

    @image_parameter.setter
    def image_parameter(self, value: str) -> None:
        self.images.parameter = value

    # -- reading -------------------------------------------------------------------------------

    def find_instances(self, name: Optional[str] = None, states: Optional[list[str]] = None) -> list[InstanceInfo]:
        """Instances tagged by mnist-launch (optionally one cluster), newest first."""
        return self.instances.find(name, states)

    def describe(self, instance_id: str) -> InstanceInfo:
        return self.instances.describe(instance_id)

    def status_checks_ok(self, instance_id: str) -> bool:
        return self.instances.status_checks_ok(instance_id)

    def wait_state(self, instance_id: str, state: str, timeout_s: float,
                   tick: Callable[[InstanceInfo], None] = lambda _i: None) -> InstanceInfo:
        return self.instances.wait_state(instance_id, state, timeout_s, tick)

    def rates(self, insts: list[InstanceInfo]) -> dict[str, Rate]:
        """What each instance costs an hour now (by id): the instance at its zone's spot price or the on-demand
        list price, its public IPv4 address, its volumes; a stopped one only its volumes."""
        try:
            sizes, lacks = self.instances.volume_sizes([i.id for i in insts]), None
        except (ClientError, BotoCoreError) as err:  # a price never stops `up`, `status` or `down`
            sizes, lacks = {}, f"volume sizes unknown ({one_line(str(err))}): volumes left out"
        out = {}
        for i in insts:
            rate = self.pricing.rate(i.instance_type, i.az, i.spot, i.public_ip is not None, sizes.get(i.id, 0))
            rate = replace(rate, note="; ".join(n for n in (rate.note, lacks) if n) or None)
            out[i.id] = rate if i.state in ("pending", "running") else replace(rate, instance_usd=0.0, ipv4_usd=0.0)
        return out

    def resolve_image(self, ami: Optional[str], parameter: Optional[str] = None) -> Image:
        return self.images.resolve(ami, parameter)

    # -- planning (read-only) ------------------------------------------------------------------

    def plan(self, spec: ClusterSpec) -> Plan:
        """What `up` would do, from read-only calls plus RunInstances with DryRun=True (infra/aws/planning.py)."""
        return plan_cluster(self, spec)

    @staticmethod
    def check_same_type(spec: ClusterSpec, existing: InstanceInfo) -> None:
        if spec.instance_type and spec.instance_type != existing.instance_type:
            raise ConfigError(
                f"cluster '{spec.name}' is a {existing.instance_type} ({existing.id}), not a {spec.instance_type} — "
                f"`mnist-launch down {spec.name}` first, or pick another --name"
            )

    # -- creating ------------------------------------------------------------------------------

    def ensure(self, spec: ClusterSpec, found: Optional[list[InstanceInfo]] = None) -> UpOutcome:
        """Reuse the cluster's instances (starting stopped ones, creating the ranks below ``spec.nodes`` that
        none holds), or create all ``spec.nodes`` of them; roll back what this call created on failure.

        ``found``: the cluster's live instances if the caller already looked them up.
        """
        existing = self.find_instances(spec.name) if found is None else found
        created: list[Created] = []
        try:
            if existing:
                return reuse_cluster(self, spec, by_rank(existing), created)
            return self._create(spec, created)
        except BaseException:
            self.rollback(created)
            raise

    def store_access(self, name: str, inst: InstanceInfo, store: Optional[str],
                     data: Optional[str] = None) -> Optional[Step]:
        """Make the instance's role cover ``store`` (write under runs/) and ``data`` (read) before a run
        starts; see IAM.store_access. The step taken, None when nothing changed."""
        return self.iam.store_access(name, inst, store, data)

    def set_autostop(self, instance_id: str, spec: ClusterSpec) -> None:
        self.instances.set_autostop(instance_id, spec)

    def key_for(self, spec: ClusterSpec, created: list[Created],
             have: Optional[str] = None) -> tuple[str, tuple[Transient, ...], Step]:
        """The key pair to launch with (``have``, the live nodes' own, while it exists), imported if missing."""
        if have and self.instances.key_exists(have):
            return have, (), Step("key pair", "reuse", have)
        key_name = key_pair_name(spec.public_key)
        if self.instances.key_exists(key_name):
            return key_name, (), Step("key pair", "reuse", key_name)
        self.instances.import_key(spec.name, key_name, spec.public_key)
        created.append(Created("key-pair", key_name))
        return key_name, (NEW_KEY,), Step("key pair", "create", key_name)

    def _placement(self, spec: ClusterSpec, created: list[Created], new: list[Transient]) -> tuple[Optional[str], Step]:
        """The cluster placement group of a new multi-node cluster, where its type has one (infra/aws/placement.py)."""
        strategy = placement_strategy(spec.type_or_default, spec.nodes)
        if strategy is None:
            return None, Step("placement group", "none", f"{spec.type_or_default} has no cluster placement groups: "
                              "its nodes share one AZ only")
        found = self.placements.find(spec.name)
        if found:  # an earlier cluster of this name lost all its nodes: its group is empty, and any AZ may take it
            return str(found[0]["GroupName"]), Step("placement group", "reuse", str(found[0]["GroupName"]))
        name = self.placements.create(spec.name, strategy)
        created.append(Created("placement-group", name))
        new.append(NEW_PLACEMENT_GROUP)
        return name, Step("placement group", "create", f"{name} ({strategy})")

    def launched(self, spec: ClusterSpec, raws: list[dict[str, Any]], ranks: tuple[int, ...],
                  created: list[Created]) -> list[InstanceInfo]:
        """Instances RunInstances just made: noted for the rollback first, then given their ranks."""
        created += [Created("instance", raw["InstanceId"]) for raw in raws]
        if len(raws) > 1:
            self.instances.tag_ranks([raw["InstanceId"] for raw in raws], ranks)
        return [replace(self.instances.to_info(raw), name=spec.name, node=rank) for raw, rank in zip(raws, ranks)]

    def _create(self, spec: ClusterSpec, created: list[Created]) -> UpOutcome:
        steps: list[Step] = []
        # everything that can fail without side effects comes first
        image = self.resolve_image(spec.ami, spec.ami_parameter)
        steps += image_steps(spec, image)
        spec = replace(spec, disk_gb=image.root_volume_gb(spec.disk_gb))
        vpc = self.network.default_vpc()
        subnets = self.network.subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
        if spec.store:
            parse_s3_uri(spec.store)

        key_name, made, step = self.key_for(spec, created)
        new: list[Transient] = list(made)  # what RunInstances may not see yet: the resources made just now
        steps.append(step)

        many = spec.nodes > 1
        sg = self.network.find_group(spec.name, vpc)
        if sg is None:
            group_id = self.network.create_group(spec.name, vpc)
            created.append(Created("security-group", group_id))
            self.network.allow_new(group_id, spec.ssh_cidr)
            if many:
                self.network.allow_members(group_id, just_created=True)
            new.append(NEW_GROUP)
            steps.append(Step("security group", "create", f"{group_id}: tcp/22 from {spec.ssh_cidr} only"
                              + (f"; all TCP between its {spec.nodes} nodes" if many else "")))
        else:
            group_id = sg["GroupId"]
            steps.append(self.network.update_ssh(sg, spec.ssh_cidr) or Step("security group", "reuse", group_id))
            if many:
                steps += [s for s in [self.network.update_members(sg)] if s is not None]

        profile = None
        if spec.store:
            profile, step, profile_is_new = self.iam.ensure_profile(spec.name, spec.store, created)
            if profile_is_new:
                new.append(NEW_PROFILE)
            steps.append(step)

        placement = None
        if many:
            placement, step = self._placement(spec, created, new)
            steps.append(step)

        ranks = tuple(range(spec.nodes))
        raws = self.instances.run(spec, image, key_name, group_id, profile, tuple(new), subnets, ranks, placement)
        insts = self.launched(spec, raws, ranks, created)
        market = "spot" if spec.spot else "on-demand"
        steps += [Step("instance", "create", f"{i.id} ({'node %d: ' % i.node if many else ''}"
                       f"{i.instance_type} {market} in {i.az})") for i in insts]
        return UpOutcome(insts[0], steps, created, insts)

    # -- removing ------------------------------------------------------------------------------

    def stop(self, name: str, timeout_s: float = 900) -> list[InstanceInfo]:
        insts = [i for i in self.find_instances(name) if i.state in ("pending", "running")]
        if insts:
            self.instances.stop([i.id for i in insts])
            insts = [self.wait_state(i.id, "stopped", timeout_s) for i in insts]
        return insts

    def remove(self, name: str, timeout_s: float = 900) -> list[str]:
        """Terminate the cluster's instances and delete what was created for it. Idempotent."""
        insts = self.find_instances(name, states=NOT_TERMINATED)
        removed: list[str] = []
        key_names = {i.key_name for i in insts if i.key_name}
        if insts:
            self.instances.terminate([i.id for i in insts])
            for i in insts:
                self.wait_state(i.id, "terminated", timeout_s)
                removed.append(f"instance {i.id}")
        sg = self.network.find_group(name)
        if sg is not None and is_managed(sg):
            self.network.delete_group(sg["GroupId"], timeout_s)
            removed.append(f"security group {sg['GroupId']}")
        for group in self.placements.find(name):  # once its instances are gone: they hold it until then
            self.placements.delete(group["GroupName"], timeout_s)
            removed.append(f"placement group {group['GroupName']}")
        removed += self.iam.delete_profile(self.role_name(name))
        # the key pair is shared by every cluster using the same key: delete it only when none does
        key_names |= self.instances.cluster_keys(name)
        in_use = self.instances.keys_in_use()
        for key in sorted(key_names - in_use):
            if self.instances.key_is_ours(key):
                self.clients.ec2.delete_key_pair(KeyName=key)
                removed.append(f"key pair {key}")
        return removed

    def leftovers(self, name: str) -> list[str]:
        """What `down` must not leave behind, still found for cluster ``name``: instances not yet
        terminated, volumes tagged with the cluster, its security group, placement group, role and instance
        profile, and its key pairs that no live instance uses. [] when the cluster is gone without a trace."""
        left = [f"instance {i.id} ({i.state})" for i in self.find_instances(name, states=NOT_TERMINATED)]
        left += self.instances.volumes(name)
        sg = self.network.find_group(name)
        if sg is not None and is_managed(sg):
            left.append(f"security group {sg['GroupId']}")
        left += [f"placement group {g['GroupName']}" for g in self.placements.find(name)]
        left += self.iam.leftovers(name)
        in_use = self.instances.keys_in_use()
        left += [f"key pair {k}" for k in sorted(self.instances.cluster_keys(name)) if k not in in_use]
        return left

    def rollback(self, created: list[Created]) -> list[str]:
        """Undo what one `up` created, newest first; best effort, reports what it could not undo."""
        undone = []
        for item in reversed(created):
            try:
                if item.kind == "instance":
                    self.instances.terminate([item.id], just_created=True)
                    self.wait_state(item.id, "terminated", 600)
                elif item.kind in ("instance-profile", "role"):
                    self.iam.delete_profile(item.id)
                elif item.kind == "security-group":
                    self.network.delete_group(item.id, just_created=True)
                elif item.kind == "placement-group":
                    self.placements.delete(item.id, just_created=True)
                elif item.kind == "key-pair":
                    self.clients.ec2.delete_key_pair(KeyName=item.id)
                undone.append(f"{item.kind} {item.id}")
                self.log(f"rolled back {item.kind} {item.id}")
            except (ClientError, BotoCoreError, AWSError) as err:
                self.log(f"could not roll back {item.kind} {item.id}: {one_line(str(err))} — "
                         "delete it in the EC2/IAM console")
        return undone


if TYPE_CHECKING:  # the type checker holds AWSProvider to the provisioning interface
    def _implements(provider: AWSProvider) -> Provider:
        return provider
