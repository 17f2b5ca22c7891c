"""A multi-node cluster against moto in-process: N instances in one AZ and one placement group, ranked,
reaching each other on every TCP port; all or nothing across zones; a lost node replaced next to the others;
`down` leaving nothing. (Placement groups are tests/support/moto_placement.py's: moto has none.)"""

from __future__ import annotations

from dataclasses import replace

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from core.errors import AWSError
from infra.aws import (
    MEMBERS_RULE_DESCRIPTION,
    TAG_CLUSTER,
    TAG_MANAGED,
    TAG_NODE,
    AWSProvider,
    Clients,
    ClusterSpec,
    placement_strategy,
)
from infra.home import ensure_default_key
from infra.ssh import public_key_of
from tests.support.aws_helpers import (
    fake_aws_env,
    inject_run_instances_error,
    install_recorder,
    live,
    nothing_left,
    ubuntu_ami,
)

REGION = "us-east-1"
CIDR = "203.0.113.7/32"
GROUP = "mnist-launch-mnist"


@pytest.fixture
def aws(monkeypatch, tmp_path):
    fake_aws_env(monkeypatch, tmp_path / "home")
    with mock_aws():
        yield


@pytest.fixture
def rec(monkeypatch):
    return install_recorder(monkeypatch)


@pytest.fixture
def spec(aws) -> ClusterSpec:
    return ClusterSpec(name="mnist", region=REGION, public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
                       instance_type="g4dn.12xlarge", ami=ubuntu_ami(), store="s3://team-bucket/mnist", nodes=2)


def provider() -> AWSProvider:
    return AWSProvider(Clients.create(REGION), poll_s=0.01)


def ec2():
    return boto3.client("ec2", region_name=REGION)


def tags_of(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def our_groups() -> list[dict]:
    managed = [{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]
    return ec2().describe_security_groups(Filters=managed)["SecurityGroups"]


def by_node() -> dict[int, dict]:
    return {int(tags_of(i)[TAG_NODE]): i for i in live()}


def runs(rec) -> list[dict]:
    return [c.params for c in rec.calls if c.operation == "RunInstances" and not c.params.get("DryRun")]


def test_two_nodes_in_one_zone_and_group_ranked_and_reaching_each_other(spec, rec):
    out = provider().ensure(spec)
    assert [i.node for i in out.instances] == [0, 1] and out.instance is out.instances[0]
    nodes = by_node()
    assert sorted(nodes) == [0, 1] and [i.id for i in out.instances] == [nodes[0]["InstanceId"], nodes[1]["InstanceId"]]
    assert {i["Placement"]["AvailabilityZone"] for i in nodes.values()} == {"us-east-1a"}
    assert {i["Placement"]["GroupName"] for i in nodes.values()} == {GROUP}
    assert all(tags_of(i)[TAG_CLUSTER] == "mnist" for i in nodes.values())
    [run] = runs(rec)  # all or nothing in one call
    assert (run["MinCount"], run["MaxCount"], run["Placement"]) == (2, 2, {"GroupName": GROUP})

    [group] = ec2().describe_placement_groups()["PlacementGroups"]
    assert (group["GroupName"], group["Strategy"]) == (GROUP, "cluster")
    assert tags_of(group) == {TAG_MANAGED: "true", TAG_CLUSTER: "mnist"}

    found = provider().find_instances("mnist")
    assert sorted((i.node, i.private_ip, i.placement_group) for i in found) == [
        (n, nodes[n]["PrivateIpAddress"], GROUP) for n in (0, 1)]
    assert all(i.private_ip for i in out.instances)
    assert all((i.profile_arn or "").endswith("/mnist-launch-mnist-us-east-1") for i in found)  # each has the role

    [sg] = our_groups()
    rules = {(p["IpProtocol"], p["FromPort"], p["ToPort"]): p for p in sg["IpPermissions"]}
    assert set(rules) == {("tcp", 22, 22), ("tcp", 0, 65535)}
    assert [r["CidrIp"] for r in rules[("tcp", 22, 22)]["IpRanges"]] == [CIDR]  # SSH: the caller only
    members = rules[("tcp", 0, 65535)]
    assert members["IpRanges"] == [] and members.get("Ipv6Ranges", []) == []  # nobody else on the other ports
    assert [(p["GroupId"], p["Description"]) for p in members["UserIdGroupPairs"]] == [
        (sg["GroupId"], MEMBERS_RULE_DESCRIPTION)]
    assert [(s.resource, s.action) for s in out.steps][-3:] == [
        ("placement group", "create"), ("instance", "create"), ("instance", "create")]


def test_down_removes_the_nodes_and_the_placement_group(spec):
    p = provider()
    out = p.ensure(spec)
    removed = p.remove("mnist")
    assert f"placement group {GROUP}" in removed
    assert {f"instance {i.id}" for i in out.instances} <= set(removed)
    assert p.leftovers("mnist") == []
    nothing_left()


def test_leftovers_name_a_placement_group_still_there(spec):
    p = provider()
    p.ensure(spec)
    p.remove("mnist")
    ec2().create_placement_group(GroupName=GROUP, Strategy="cluster", TagSpecifications=[
        {"ResourceType": "placement-group", "Tags": [{"Key": TAG_MANAGED, "Value": "true"},
                                                     {"Key": TAG_CLUSTER, "Value": "mnist"}]}])
    assert p.leftovers("mnist") == [f"placement group {GROUP}"]
    assert p.remove("mnist") == [f"placement group {GROUP}"]


def test_a_lost_node_is_replaced_alone_next_to_the_others(spec, rec):
    first = provider().ensure(spec)
    ec2().terminate_instances(InstanceIds=[first.instances[1].id])
    rec.clear()
    plan = provider().plan(spec)
    assert [(s.resource, s.action) for s in plan.steps] == [("instance", "reuse"), ("instance", "create")]
    assert plan.nodes == 2 and "node 1:" in plan.steps[1].detail and rec.mutating() == []
    out = provider().ensure(spec)
    [run] = runs(rec)
    assert (run["MinCount"], run["Placement"]) == (1, {"GroupName": GROUP})
    assert [c.operation for c in rec.mutating()] == ["RunInstances"]  # its rank goes on at launch
    assert [(c.kind, c.id) for c in out.created] == [("instance", out.instances[1].id)]
    assert [(s.resource, s.action) for s in out.steps] == [("instance", "reuse"), ("instance", "create")]
    assert out.instance.id == first.instance.id and [i.node for i in out.instances] == [0, 1]
    nodes = by_node()
    assert nodes[0]["InstanceId"] == first.instance.id and nodes[1]["InstanceId"] != first.instances[1].id
    assert nodes[1]["Placement"] == nodes[0]["Placement"]  # same AZ, same group
    assert len(ec2().describe_placement_groups()["PlacementGroups"]) == 1


def test_a_lost_head_is_replaced_as_node_0(spec):
    first = provider().ensure(spec)
    ec2().terminate_instances(InstanceIds=[first.instance.id])
    out = provider().ensure(spec)
    assert [i.node for i in out.instances] == [0, 1] and out.instances[1].id == first.instances[1].id
    assert out.instance.id != first.instance.id and by_node()[0]["InstanceId"] == out.instance.id


def test_a_capacity_error_moves_every_node_to_the_next_zone(spec, monkeypatch):
    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"us-east-1a"})
    out = p.ensure(spec)
    assert tried == ["us-east-1a", "us-east-1b"]
    assert {i.az for i in out.instances} == {"us-east-1b"} and len(live()) == 2


def test_no_room_for_all_nodes_anywhere_rolls_back_everything(spec, monkeypatch):
    p = provider()
    inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"*"})
    with pytest.raises(AWSError, match=r"^no capacity for 2 x g4dn.12xlarge in us-east-1 \(tried us-east-1a, .*: "
                                       r"InsufficientInstanceCapacity\) — retry later, or pick another --instance type "
                                       r"or --region \(or try --spot\) or fewer --nodes$"):
        p.ensure(spec)
    nothing_left()  # the placement group, the security group, the role and the key went too


def test_no_room_in_the_clusters_zone_for_a_replacement_leaves_the_live_node_alone(spec, monkeypatch):
    p = provider()
    first = p.ensure(spec)
    ec2().terminate_instances(InstanceIds=[first.instances[1].id])
    tried = inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"*"})
    with pytest.raises(AWSError, match=r"^no capacity for g4dn.12xlarge in us-east-1a, the zone of cluster 'mnist' "
                                       r"\(InsufficientInstanceCapacity\) — retry later, or `mnist-launch down mnist` "
                                       r"and `up` it again to take a zone with room$"):
        p.ensure(spec)
    assert tried == ["us-east-1a"]  # a cluster placement group holds one zone: no other is tried
    assert [i["InstanceId"] for i in live()] == [first.instance.id]


def test_a_failure_after_the_launch_rolls_back_the_nodes_too(spec, monkeypatch):
    p = provider()

    def refuse(**_kw):
        raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "no"}}, "CreateTags")

    monkeypatch.setattr(p.clients.ec2, "create_tags", refuse)  # the ranks of nodes launched together
    with pytest.raises(ClientError, match="UnauthorizedOperation"):
        p.ensure(spec)
    nothing_left()


def test_a_stopped_cluster_is_started_whole(spec, rec):
    first = provider().ensure(spec)
    ec2().stop_instances(InstanceIds=[i.id for i in first.instances])
    rec.clear()
    out = provider().ensure(spec)
    assert [(c.operation, sorted(c.params["InstanceIds"])) for c in rec.mutating()] == [
        ("StartInstances", sorted(i.id for i in first.instances))]
    assert [(s.resource, s.action) for s in out.steps] == [("instance", "start")] * 2
    assert [i.id for i in out.instances] == [i.id for i in first.instances]


def test_fewer_nodes_asked_than_there_are_reuses_them_all(spec, rec):
    first = provider().ensure(spec)
    rec.clear()
    out = provider().ensure(replace(spec, nodes=1))  # `up` never removes a node
    assert rec.mutating() == [] and [i.id for i in out.instances] == [i.id for i in first.instances]


def test_one_node_is_todays_cluster(spec, rec):
    out = provider().ensure(replace(spec, nodes=1))
    assert not [op for op in rec.ops() if "PlacementGroup" in op] and "CreateTags" not in rec.ops()
    assert out.instances == [out.instance] and out.instance.placement_group is None
    [inst] = live()
    assert tags_of(inst)[TAG_NODE] == "0"
    [sg] = our_groups()
    assert [(p["FromPort"], p["ToPort"]) for p in sg["IpPermissions"]] == [(22, 22)]


def test_burstable_nodes_share_a_zone_without_a_placement_group(spec, rec):
    out = provider().ensure(replace(spec, instance_type="t3.large"))
    assert ec2().describe_placement_groups()["PlacementGroups"] == []
    assert "Placement" not in runs(rec)[0] and len({i.az for i in out.instances}) == 1
    assert ("placement group", "none") in [(s.resource, s.action) for s in out.steps]


@pytest.mark.parametrize("instance_type, nodes, strategy", [
    ("g4dn.12xlarge", 2, "cluster"), ("p4d.24xlarge", 8, "cluster"), ("g4dn.xlarge", 1, None),
    ("t3.large", 2, None), ("t3a.micro", 2, None), ("t4g.small", 2, None), ("t2.micro", 2, None),
    ("mac2.metal", 2, None), ("m7i-flex.large", 2, None), ("m7i.large", 2, "cluster"),
])
def test_which_types_get_a_cluster_placement_group(instance_type, nodes, strategy):
    assert placement_strategy(instance_type, nodes) == strategy


def test_the_plan_of_a_new_cluster_names_the_group_and_every_node(spec, rec):
    plan = provider().plan(spec)
    assert rec.mutating() == []
    [dry] = [c.params for c in rec.calls if c.operation == "RunInstances"]
    assert dry["DryRun"] is True and (dry["MinCount"], dry["MaxCount"]) == (2, 2)
    steps = {s.resource: s for s in plan.steps}
    assert steps["placement group"].action == "create" and GROUP in steps["placement group"].detail
    assert steps["security group"].detail.endswith(f"tcp/22 from {CIDR} only; all TCP between its 2 nodes")
    assert steps["instance"].detail.startswith("2 x g4dn.12xlarge on-demand in us-east-1a")
    assert plan.nodes == 2
    nothing_left()
