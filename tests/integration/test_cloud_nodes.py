"""A multi-node cluster through the cluster commands: `up --nodes` (every node waited for at once, against
moto and the real sshd on 127.0.0.1), `status` per node, `down`, max_instances counting nodes, and
``running_nodes`` for the run side."""

from __future__ import annotations

import json
import socket

import boto3
import pytest
from moto import mock_aws

from infra.aws import AWSProvider, Clients, ClusterSpec
from infra.home import ensure_default_key
from infra.ssh import public_key_of
from launcher.cluster import NoInstanceError, running_instance, running_nodes, status_rows
from launcher.cluster.listing import cluster_lines
from tests.support.aws_helpers import CIDR, fake_aws_env, install_recorder, live, nothing_left, ubuntu_ami, up_args
from tests.support.cli import invoke as cli
from tests.support.sshd_fixture import sshd  # noqa: F401

TYPE = "g4dn.12xlarge"


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    fake_aws_env(monkeypatch, h)
    return h


@pytest.fixture
def aws(home):
    with mock_aws():
        yield


def make_cluster(name: str = "mnist", nodes: int = 2):
    """A cluster made by the provider directly (no SSH wait)."""
    return AWSProvider(Clients.create("us-east-1"), poll_s=0.01).ensure(ClusterSpec(
        name=name, region="us-east-1", public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
        instance_type=TYPE, ami=ubuntu_ami(), nodes=nodes))


def terminate(*ids: str) -> None:
    boto3.client("ec2", region_name="us-east-1").terminate_instances(InstanceIds=list(ids))


def test_up_status_down_of_two_nodes(aws, home, sshd, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    out = cli(*up_args(ubuntu_ami(), "--instance", TYPE, "--nodes", "2", "--identity", str(sshd.client_key)))
    assert out.code == 0, out.stderr
    assert "2 nodes ready" in out.stderr and "create  placement group" in out.stderr
    assert "mnist is up: 2 nodes, g4dn.12xlarge in us-east-1a, placement group mnist-launch-mnist" in out.stderr
    # each node: the list price, its public IPv4 address, its 100 GB gp3 volume (0.08 x 100 / 730 per hour)
    assert "~2 x $3.928/h = $7.856/h (each $3.912 on-demand + IPv4 $0.005 + 100 GB gp3 $0.011; " in out.stderr
    insts = live()
    assert len(insts) == 2
    pinned = (home / "known_hosts").read_text()
    assert all(i["InstanceId"] in pinned for i in insts)  # both pinned, waited for at once

    out = cli("status", "--json")
    assert out.code == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["name"], r["node"], r["az"], r["state"]) for r in rows] == [
        ("mnist", 0, "us-east-1a", "running"), ("mnist", 1, "us-east-1a", "running")]
    by_id = {i["InstanceId"]: i for i in insts}
    assert all(r["private_ip"] == by_id[r["id"]]["PrivateIpAddress"] for r in rows)
    assert all(r["hourly_usd"] == pytest.approx(3.912) for r in rows)
    out = cli("status")
    assert out.code == 0 and "mnist: 2 of 2 nodes running, ~$7.856/h" in out.stdout

    out = cli("down", "mnist", "--yes")
    assert out.code == 0, out.stderr
    # what both nodes cost since launch, summed (moto's launch times are real: seconds ago, so cents at most)
    assert "cost of mnist: ~$0.0" in out.stderr and " in all for 2 nodes (an estimate: " in out.stderr
    assert "placement group mnist-launch-mnist" in out.stderr and "verified: nothing of mnist remains" in out.stderr
    nothing_left()


def test_nodes_that_never_answer_ssh_roll_back_the_whole_cluster(aws, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", f"root@127.0.0.1:{closed}")
    out = cli(*up_args(ubuntu_ami(), "--instance", TYPE, "--nodes", "2", "--timeout", "1s", "--no-status-checks"))
    assert out.code == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: no SSH answer from 127.0.0.1:{closed} after 1s — check --ssh-cidr is your address, or raise --timeout")
    assert "rolling back" in out.stderr
    nothing_left()


def test_dry_run_lists_the_group_and_every_node(aws, monkeypatch):
    rec = install_recorder(monkeypatch)
    out = cli(*up_args(ubuntu_ami(), "--instance", TYPE, "--nodes", "3", "--dry-run"))
    assert out.code == 0, out.stderr
    text = " ".join(out.stderr.split())
    assert "~3 x $3.928/h = $11.784/h (each $3.912 on-demand + IPv4 $0.005 + 100 GB gp3 $0.011; on-demand" in text
    assert "create placement group mnist-launch-mnist (cluster)" in text
    assert "create instance 3 x g4dn.12xlarge on-demand in us-east-1a" in text
    assert "all TCP between its 3 nodes" in text
    assert rec.mutating() == []
    nothing_left()


def test_max_instances_counts_nodes(aws, monkeypatch):
    make_cluster("a", nodes=1)
    rec = install_recorder(monkeypatch)
    out = cli(*up_args(ubuntu_ami(), "--name", "b", "--nodes", "2"))
    assert out.code == 1
    assert out.stderr.strip() == (
        "error: 2 new nodes for 'b' would make 3 mnist-launch instances run in us-east-1 (1 already do; "
        "max_instances=2) — lower --nodes, raise launch.max_instances, `mnist-launch down NAME` one, or pass --force")
    assert rec.mutating() == []


def test_max_instances_counts_only_the_nodes_a_replacement_adds(aws, monkeypatch):
    first = make_cluster("a", nodes=2)
    terminate(first.instances[1].id)
    make_cluster("b", nodes=1)
    rec = install_recorder(monkeypatch)
    out = cli(*up_args(ubuntu_ami(), "--instance", TYPE, "--name", "a", "--nodes", "2"))
    assert out.code == 1 and "2 mnist-launch instances already run in us-east-1 (max_instances=2)" in out.stderr
    assert rec.mutating() == []


def test_running_nodes_by_rank_and_the_missing_ones_by_name(aws):
    first = make_cluster()
    ids = [i.id for i in first.instances]
    assert [i.id for i in running_nodes("mnist", None)] == ids
    assert [(i.node, i.id) for i in running_nodes("mnist", None, nodes=2)] == [(0, ids[0]), (1, ids[1])]
    assert all(i.private_ip for i in running_nodes("mnist", None, nodes=2))
    with pytest.raises(NoInstanceError, match=r"^cluster 'mnist' in us-east-1 has 2 of its 4 nodes running: nodes 2, 3 "
                                              r"are missing or not running — `mnist-launch up --name mnist --nodes 4` "
                                              r"brings them up$"):
        running_nodes("mnist", None, nodes=4)
    terminate(ids[1])
    with pytest.raises(NoInstanceError, match=r"^cluster 'mnist' in us-east-1 has 1 of its 2 nodes running: node 1 is "
                                              r"missing or not running — `mnist-launch up --name mnist --nodes 2` "
                                              r"brings it up$"):
        running_nodes("mnist", None, nodes=2)
    again = make_cluster()  # `up` fills the rank in: now the newest instance, still listed after node 0
    assert [i.node for i in running_nodes("mnist", None, nodes=2)] == [0, 1]
    assert running_instance("mnist", None).id == ids[0] and again.instances[1].id not in ids
    terminate(*[i.id for i in again.instances])
    with pytest.raises(NoInstanceError, match=r"^no running instance for cluster 'mnist' in us-east-1 — "
                                              r"`mnist-launch up --name mnist` first$"):
        running_nodes("mnist", None, nodes=2)


def test_status_rows_are_per_node_with_the_clusters_cost(aws):
    make_cluster("solo", nodes=1)
    pair = make_cluster("pair", nodes=2)
    rows = status_rows(["us-east-1"], jobs=False)
    assert sorted((r["name"], r["node"]) for r in rows) == [("pair", 0), ("pair", 1), ("solo", 0)]
    pair_rows = [r for r in rows if r["name"] == "pair"]
    assert [r["id"] for r in pair_rows] == [i.id for i in pair.instances]  # together, by rank
    assert all(r["private_ip"] and r["az"] == "us-east-1a" for r in rows)
    [line] = cluster_lines(rows)
    assert line.startswith("pair: 2 of 2 nodes running, ~$7.856/h, ~$")
