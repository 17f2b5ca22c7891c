"""An existing cluster brought back to what `up` asks: its running nodes reused, stopped ones started, its
security group let in the caller (and its nodes each other), its autostop settings updated, and the ranks
it lacks (a node lost or terminated, or more --nodes than before) created next to the live ones: same
image, type, zone and placement group.

    outcome = reuse_cluster(provider, spec, by_rank(provider.find_instances("mnist")), created=[])
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

from core.errors import AWSError
from infra.aws.network import sg_name
from infra.aws.planning import node_detail
from infra.provider import ClusterSpec, Created, InstanceInfo, Step, UpOutcome, by_rank, missing_ranks

if TYPE_CHECKING:
    from infra.aws.provider import AWSProvider


def reuse_cluster(p: "AWSProvider", spec: ClusterSpec, insts: list[InstanceInfo], created: list[Created]) -> UpOutcome:
    """``insts``: the cluster's live instances by rank. What this call creates goes in ``created``."""
    head = insts[0]
    p.check_same_type(spec, head)
    missing = tuple(missing_ranks(spec.nodes, insts))
    many = len(insts) + len(missing) > 1
    steps: list[Step] = []
    step = p.store_access(spec.name, head, spec.store)
    if step is not None:
        steps.append(step)
    sg = p.network.find_group(spec.name)
    if sg is not None:
        steps += [s for s in [p.network.update_ssh(sg, spec.ssh_cidr)] if s is not None]
        if many:
            steps += [s for s in [p.network.update_members(sg)] if s is not None]
    insts = [p.wait_state(i.id, "stopped", timeout_s=600) if i.state == "stopping" else i for i in insts]
    for n, inst in enumerate(insts):
        if (inst.autostop, inst.autostop_action) != (spec.autostop, spec.shutdown_behavior):
            p.set_autostop(inst.id, spec)
            steps.append(Step("instance", "update",
                              f"{inst.id}: autostop {spec.autostop}, then {spec.shutdown_behavior}"))
            insts[n] = replace(inst, autostop=spec.autostop, autostop_action=spec.shutdown_behavior)
    stopped = [i.id for i in insts if i.state == "stopped"]
    if stopped:
        p.instances.start(stopped)
    node = (lambda i: f", node {i.node}") if many else (lambda i: "")
    steps[:0] = [Step("instance", "start", f"{i.id} ({i.instance_type}{node(i)})") if i.id in stopped
                 else Step("instance", "reuse", node_detail(i, many)) for i in insts]
    insts = [p.describe(i.id) if i.id in stopped else i for i in insts]
    if missing:
        new = add_nodes(p, spec, head, missing, sg, created, steps)
        market = "spot" if spec.spot else "on-demand"
        steps += [Step("instance", "create", f"{i.id} (node {i.node}: {i.instance_type} {market} in {i.az})")
                  for i in new]
        insts = by_rank(insts + new)
    return UpOutcome(insts[0], steps, created, insts)


def add_nodes(p: "AWSProvider", spec: ClusterSpec, head: InstanceInfo, ranks: tuple[int, ...],
              sg: Optional[dict[str, Any]], created: list[Created], steps: list[Step]) -> list[InstanceInfo]:
    """The cluster's missing ranks, next to its live nodes: their image, type, zone and placement group
    (a cluster placement group holds one zone), their security group and role."""
    if sg is None:
        raise AWSError(f"cluster '{spec.name}' has lost its security group {sg_name(spec.name)} — "
                       f"`mnist-launch down {spec.name}`, then `up` it again")
    image = p.resolve_image(head.image_id)
    spec = replace(spec, instance_type=head.instance_type, disk_gb=image.root_volume_gb(spec.disk_gb))
    offered = p.network.subnets_by_az(p.network.default_vpc(), head.instance_type)
    subnets = [(az, subnet) for az, subnet in offered if az == head.az]
    if not subnets:
        raise AWSError(f"no default subnet in {head.az}, where cluster '{spec.name}' runs — "
                       f"`mnist-launch down {spec.name}`, then `up` it again")
    key_name, new, step = p.key_for(spec, created, have=head.key_name)
    if step.action == "create":
        steps.append(step)
    role = p.role_name(spec.name)
    profile = role if (head.profile_arn or "").endswith(f":instance-profile/{role}") else None
    raws = p.instances.run(spec, image, key_name, sg["GroupId"], profile, new, subnets, ranks, head.placement_group,
                           joining=True)
    return p.launched(spec, raws, ranks, created)
