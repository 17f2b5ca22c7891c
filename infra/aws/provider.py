"""AWSProvider: the provisioning interface (infra/provider.py) for EC2, composed of the instances,
network, IAM and images modules of this package; it knows the order of things, they know AWS.

    provider = AWSProvider(Clients.create("us-east-1"))
    outcome = provider.ensure(spec)          # reuse, start or create; rolls back on failure
    provider.remove("mnist")                 # terminate and delete what it created
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from core.errors import AWSError, ConfigError
from infra.aws.clients import Clients
from infra.aws.errors import NEW_GROUP, NEW_KEY, NEW_PROFILE, Transient, one_line
from infra.aws.iam import IAM, parse_s3_uri
from infra.aws.images import Image, Images, image_steps
from infra.aws.instances import NOT_TERMINATED, Instances, key_pair_name
from infra.aws.network import Network, sg_name
from infra.aws.tags import is_managed, tags
from infra.prices import hourly_price
from infra.provider import ClusterSpec, Created, InstanceInfo, Plan, Provider, Step, UpOutcome


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

    def resolve_image(self, ami: Optional[str], parameter: Optional[str] = None) -> Image:
        return self.images.resolve(ami, parameter)

    # -- planning (read-only) ------------------------------------------------------------------

    def plan(self, spec: ClusterSpec) -> Plan:
        """What `up` would do, from read-only calls plus RunInstances with DryRun=True."""
        existing = next(iter(self.find_instances(spec.name)), None)
        if existing is not None:
            self._check_same_type(spec, existing)
            action = "reuse" if existing.state in ("running", "pending") else "start"
            steps = [Step("instance", action, f"{existing.id} ({existing.instance_type}, {existing.state})")]
            sg = self.network.find_group(spec.name)
            sg_step = self.network.update_ssh(sg, spec.ssh_cidr, apply=False) if sg is not None else None
            if sg_step is not None:
                steps.append(sg_step)
            if spec.store:
                self.iam.check_profile(spec.name, existing, spec.store)
                if not self.iam.grants_cover(self.role_name(spec.name), spec.store):
                    steps.append(Step("instance profile", "update",
                                      f"{self.role_name(spec.name)}: add read/write {spec.store}/runs/"))
            return Plan(self.region, steps, existing.instance_type, existing.image_id, existing.user,
                        existing.spot, hourly_price(existing.instance_type), existing)
        image = self.resolve_image(spec.ami, spec.ami_parameter)
        vpc = self.network.default_vpc()
        steps = image_steps(spec, image)
        spec = replace(spec, disk_gb=image.root_volume_gb(spec.disk_gb))
        if spec.public_key:
            key_name = key_pair_name(spec.public_key)
            steps.append(Step("key pair", "reuse" if self.instances.key_exists(key_name) else "create", key_name))
        else:
            steps.append(Step("key pair", "create", "from a new ed25519 key (generated under MNIST_LAUNCH_HOME)"))
        sg = self.network.find_group(spec.name, vpc)
        if sg is None:
            steps.append(Step("security group", "create",
                              f"{sg_name(spec.name)} in {vpc}: tcp/22 from {spec.ssh_cidr} only"))
        else:
            steps.append(self.network.update_ssh(sg, spec.ssh_cidr, apply=False)
                         or Step("security group", "reuse", f"{sg['GroupId']}: tcp/22 from {spec.ssh_cidr}"))
        if spec.store:
            parse_s3_uri(spec.store)
            role = self.role_name(spec.name)
            have = self.iam.profile_exists(spec.name)
            steps.append(Step("instance profile", "reuse" if have else "create",
                              f"{role}: read/write {spec.store}/runs/ only"))
        else:
            steps.append(Step("instance profile", "none", "no s3:// store configured: the instance gets no AWS access"))
        subnets = self.network.subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
        market = "spot" if spec.spot else "on-demand"
        steps.append(Step("instance", "create", f"{spec.type_or_default} {market} in {subnets[0][0]} "
                          f"(then {', '.join(az for az, _ in subnets[1:]) or 'no other AZ'}), "
                          f"{spec.disk_gb} GB gp3 encrypted, IMDSv2"))
        self.instances.dry_run(spec, image.id, subnets[0][1])
        return Plan(self.region, steps, spec.type_or_default, image.id, image.user, spec.spot,
                    hourly_price(spec.type_or_default))

    @staticmethod
    def _check_same_type(spec: ClusterSpec, existing: InstanceInfo) -> None:
        if spec.instance_type and spec.instance_type != existing.instance_type:
            raise ConfigError(
                f"cluster '{spec.name}' is a {existing.instance_type} ({existing.id}), not a {spec.instance_type} — "
                f"`mnist-launch down {spec.name}` first, or pick another --name"
            )

    # -- creating ------------------------------------------------------------------------------

    def ensure(self, spec: ClusterSpec, found: Optional[list[InstanceInfo]] = None) -> UpOutcome:
        """Reuse a running instance, start a stopped one, or create one; roll back on failure.

        ``found``: the cluster's live instances if the caller already looked them up.
        """
        existing = next(iter(self.find_instances(spec.name) if found is None else found), None)
        if existing is not None:
            return self._reuse(spec, existing)
        created: list[Created] = []
        try:
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

    def _reuse(self, spec: ClusterSpec, inst: InstanceInfo) -> UpOutcome:
        self._check_same_type(spec, inst)
        steps = []
        step = self.store_access(spec.name, inst, spec.store)
        if step is not None:
            steps.append(step)
        sg = self.network.find_group(spec.name)
        sg_step = self.network.update_ssh(sg, spec.ssh_cidr) if sg is not None else None
        if sg_step is not None:
            steps.append(sg_step)
        if inst.state == "stopping":
            inst = self.wait_state(inst.id, "stopped", timeout_s=600)
        if (inst.autostop, inst.autostop_action) != (spec.autostop, spec.shutdown_behavior):
            self.set_autostop(inst.id, spec)
            steps.append(Step("instance", "update",
                              f"{inst.id}: autostop {spec.autostop}, then {spec.shutdown_behavior}"))
            inst = replace(inst, autostop=spec.autostop, autostop_action=spec.shutdown_behavior)
        if inst.state == "stopped":
            self.instances.start(inst.id)
            steps.insert(0, Step("instance", "start", f"{inst.id} ({inst.instance_type})"))
            inst = self.describe(inst.id)
        else:
            steps.insert(0, Step("instance", "reuse", f"{inst.id} ({inst.instance_type}, {inst.state})"))
        return UpOutcome(inst, steps)

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

        key_name = key_pair_name(spec.public_key)
        new: list[Transient] = []  # what RunInstances may not see yet: the resources made just now
        if self.instances.key_exists(key_name):
            steps.append(Step("key pair", "reuse", key_name))
        else:
            self.instances.import_key(spec.name, key_name, spec.public_key)
            created.append(Created("key-pair", key_name))
            new.append(NEW_KEY)
            steps.append(Step("key pair", "create", key_name))

        sg = self.network.find_group(spec.name, vpc)
        if sg is None:
            group_id = self.network.create_group(spec.name, vpc)
            created.append(Created("security-group", group_id))
            self.network.allow_new(group_id, spec.ssh_cidr)
            new.append(NEW_GROUP)
            steps.append(Step("security group", "create", f"{group_id}: tcp/22 from {spec.ssh_cidr} only"))
        else:
            group_id = sg["GroupId"]
            steps.append(self.network.update_ssh(sg, spec.ssh_cidr) or Step("security group", "reuse", group_id))

        profile = None
        if spec.store:
            profile, step, profile_is_new = self.iam.ensure_profile(spec.name, spec.store, created)
            if profile_is_new:
                new.append(NEW_PROFILE)
            steps.append(step)

        raw = self.instances.run(spec, image, key_name, group_id, profile, tuple(new), subnets)
        created.append(Created("instance", raw["InstanceId"]))
        inst = self.instances.to_info(raw)
        market = "spot" if spec.spot else "on-demand"
        steps.append(Step("instance", "create", f"{inst.id} ({inst.instance_type} {market} in {inst.az})"))
        return UpOutcome(inst, steps, created)

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
        terminated, volumes tagged with the cluster, its security group, role and instance profile,
        and its key pairs that no live instance uses. [] when the cluster is gone without a trace."""
        left = [f"instance {i.id} ({i.state})" for i in self.find_instances(name, states=NOT_TERMINATED)]
        left += self.instances.volumes(name)
        sg = self.network.find_group(name)
        if sg is not None and is_managed(sg):
            left.append(f"security group {sg['GroupId']}")
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
