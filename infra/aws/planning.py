"""What `up` would do (`up --dry-run`, the plan shown before creating): from read-only calls plus
RunInstances with DryRun=True, for a new cluster of one or more nodes or an existing one (reused,
started, or made whole again where nodes are missing).

    plan = plan_cluster(provider, spec)
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from infra.aws.iam import parse_s3_uri
from infra.aws.images import image_steps
from infra.aws.instances import key_pair_name
from infra.aws.network import sg_name
from infra.aws.placement import group_name, placement_strategy
from infra.provider import ClusterSpec, InstanceInfo, Plan, Step, by_rank, missing_ranks

if TYPE_CHECKING:
    from infra.aws.provider import AWSProvider


def node_detail(inst: InstanceInfo, many: bool) -> str:
    """An instance as a step names it: its id, type and state, and its rank in a cluster of several."""
    return f"{inst.id} ({inst.instance_type}, {inst.state}" + (f", node {inst.node})" if many else ")")


def plan_cluster(p: "AWSProvider", spec: ClusterSpec) -> Plan:
    existing = p.find_instances(spec.name)
    if existing:
        return _plan_existing(p, spec, by_rank(existing))
    image = p.resolve_image(spec.ami, spec.ami_parameter)
    vpc = p.network.default_vpc()
    steps = image_steps(spec, image)
    spec = replace(spec, disk_gb=image.root_volume_gb(spec.disk_gb))
    if spec.public_key:
        key_name = key_pair_name(spec.public_key)
        steps.append(Step("key pair", "reuse" if p.instances.key_exists(key_name) else "create", key_name))
    else:
        steps.append(Step("key pair", "create", "from a new ed25519 key (generated under MNIST_LAUNCH_HOME)"))
    members = f"; all TCP between its {spec.nodes} nodes" if spec.nodes > 1 else ""
    sg = p.network.find_group(spec.name, vpc)
    if sg is None:
        steps.append(Step("security group", "create",
                          f"{sg_name(spec.name)} in {vpc}: tcp/22 from {spec.ssh_cidr} only{members}"))
    else:
        steps.append(p.network.update_ssh(sg, spec.ssh_cidr, apply=False)
                     or Step("security group", "reuse", f"{sg['GroupId']}: tcp/22 from {spec.ssh_cidr}"))
        if spec.nodes > 1:
            steps += [s for s in [p.network.update_members(sg, apply=False)] if s is not None]
    if spec.store:
        parse_s3_uri(spec.store)
        role = p.role_name(spec.name)
        have = p.iam.profile_exists(spec.name)
        steps.append(Step("instance profile", "reuse" if have else "create",
                          f"{role}: read/write {spec.store}/runs/ only"))
    else:
        steps.append(Step("instance profile", "none", "no s3:// store configured: the instance gets no AWS access"))
    if spec.nodes > 1:
        steps.append(_placement_step(p, spec))
    subnets = p.network.subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
    market = "spot" if spec.spot else "on-demand"
    what = f"{spec.nodes} x {spec.type_or_default}" if spec.nodes > 1 else spec.type_or_default
    steps.append(Step("instance", "create", f"{what} {market} in {subnets[0][0]} "
                      f"(then {', '.join(az for az, _ in subnets[1:]) or 'no other AZ'}"
                      f"{', all nodes in one AZ' if spec.nodes > 1 else ''}), "
                      f"{spec.disk_gb} GB gp3 encrypted, IMDSv2"))
    p.instances.dry_run(spec, image.id, subnets[0][1], spec.nodes)
    rate = p.pricing.rate(spec.type_or_default, subnets[0][0], spec.spot, ipv4=True, volume_gb=spec.disk_gb)
    return Plan(p.region, steps, spec.type_or_default, image.id, image.user, spec.spot, rate.instance_usd,
                nodes=spec.nodes, rate=rate)


def _placement_step(p: "AWSProvider", spec: ClusterSpec) -> Step:
    strategy = placement_strategy(spec.type_or_default, spec.nodes)
    if strategy is None:
        return Step("placement group", "none", f"{spec.type_or_default} has no cluster placement groups "
                    "(burstable, Mac and flex types): its nodes share one AZ only")
    found = p.placements.find(spec.name)
    if found:
        return Step("placement group", "reuse", f"{found[0]['GroupName']} ({found[0].get('Strategy', strategy)})")
    return Step("placement group", "create", f"{group_name(spec.name)} ({strategy}): the {spec.nodes} nodes close "
                "together in one AZ")


def _plan_existing(p: "AWSProvider", spec: ClusterSpec, insts: list[InstanceInfo]) -> Plan:
    head = insts[0]
    p.check_same_type(spec, head)
    missing = missing_ranks(spec.nodes, insts)
    many = len(insts) + len(missing) > 1
    steps = [Step("instance", "reuse" if i.state in ("running", "pending") else "start", node_detail(i, many))
             for i in insts]
    sg = p.network.find_group(spec.name)
    if sg is not None:
        steps += [s for s in [p.network.update_ssh(sg, spec.ssh_cidr, apply=False)] if s is not None]
        if many:
            steps += [s for s in [p.network.update_members(sg, apply=False)] if s is not None]
    if spec.store:
        p.iam.check_profile(spec.name, head, spec.store)
        if not p.iam.grants_cover(p.role_name(spec.name), spec.store):
            steps.append(Step("instance profile", "update",
                              f"{p.role_name(spec.name)}: add read/write {spec.store}/runs/"))
    market = "spot" if spec.spot else "on-demand"
    group = f", placement group {head.placement_group}" if head.placement_group else ""
    steps += [Step("instance", "create", f"node {r}: {head.instance_type} {market} in {head.az}{group}, "
                   f"image {head.image_id}") for r in missing]
    disk = p.instances.volume_sizes([head.id]).get(head.id, spec.disk_gb)
    rate = p.pricing.rate(head.instance_type, head.az, head.spot, ipv4=True, volume_gb=disk)
    return Plan(p.region, steps, head.instance_type, head.image_id, head.user, head.spot, rate.instance_usd, head,
                nodes=len(insts) + len(missing), rate=rate)
