"""A run across a 2-node cluster, end to end: moto (ThreadedMotoServer, behind the strict AWS proxy and the
enforced IAM world) as EC2 and S3, two real sshds on 127.0.0.1 as the two instances, each with its own home
(``~``) as separate machines have, gloo between the nodes, one process a node.

Every node address maps to 127.0.0.1: SSH through MNIST_LAUNCH_SSH_ENDPOINT (one endpoint per node, in rank
order), the rendezvous through MNIST_LAUNCH_RENDEZVOUS_ADDRESS; nothing is sent to the addresses moto invents.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time

import boto3
import pytest

from infra.agent import descendants
from tests.support.aws_helpers import (
    instance_sshd,
    ubuntu_ami,
)
from tests.support.cloud import BUCKET, CIDR, ROLE, STORE, Cloud, strict_cloud
from tests.support.runs import EPOCH_ROW
from tests.support.sshd_fixture import stop_sshd

NAME = "duo"
REMOTE = "~/mnist-launch-duo"  # the same on both nodes; each node's ~ is its own


@pytest.fixture(scope="module")
def duo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("duo")
    with contextlib.ExitStack() as stack:
        mp = pytest.MonkeyPatch()
        stack.callback(mp.undo)
        aws = strict_cloud(stack, mp, tmp)
        url, world, creds = aws.url, aws.iam, aws.creds
        nodes = []
        for rank in range(2):
            srv = instance_sshd(tmp / f"sshd-{rank}", url, *aws.instance_env(),
                                node=f"{tmp.name}-node-{rank}")
            stack.callback(stop_sshd, srv)
            nodes.append(srv)
        nodes[1].authorize(nodes[0].client_key)  # the cluster's one key pair logs in to every node
        mp.setenv("MNIST_LAUNCH_SSH_ENDPOINT", ",".join(s.endpoint for s in nodes))
        mp.setenv("MNIST_LAUNCH_RENDEZVOUS_ADDRESS", "127.0.0.1")
        mp.setenv("MNIST_LAUNCH_SSH_CIDR", CIDR)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        c = Cloud(tmp / "home", url, nodes[0], tmp, env=world.laptop.env() if world else {})
        c.nodes = nodes  # type: ignore[attr-defined]
        stack.callback(c.cli, "down", NAME, "--yes")
        up = c.cli("up", "--nodes", "2", "--instance", "g4dn.xlarge", "--ami", ubuntu_ami(), "--identity",
                   str(nodes[0].client_key), "--store", STORE, "--name", NAME, "--yes")
        assert up.returncode == 0, up.stderr
        if world:
            world.write_role_credentials(ROLE.replace("-mnist-", f"-{NAME}-"), creds, owner=nodes[0].login)
        yield c


def running(ec2) -> dict[int, str]:
    """rank -> instance id of the cluster's running nodes."""
    out = {}
    for r in ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]},
                                             {"Name": "tag:mnist-launch:cluster", "Values": [NAME]}])["Reservations"]:
        for i in r["Instances"]:
            tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
            out[int(tags["mnist-launch:node"])] = i["InstanceId"]
    return out


def test_a_sweep_spreads_its_runs_over_both_nodes(duo, small_mnist):
    """A 2x2 sweep on the 2-node cluster (before the test below takes it down): every node prepared as `train`
    prepares it, node k runs the plan's runs i with i mod 2 = k, each on its own disk, one at a time, each
    uploading itself to S3; the fp16 one on each node fails there before training (no GPU) and the other
    finishes; the table is the runs' summary.json, and `sweep status --store s3://...` finds it all again."""
    p = duo.cli("sweep", "configs/model3.yaml", "--store", STORE, "--data-dir", str(small_mnist), "--name", NAME,
                "--sweep-id", "sw-duo", "--set", f"launch.remote_dir={REMOTE}", "--set",
                f"launch.python={duo.sshd.python}", "--set", "launch.nodes=2", "--set", "train.epochs=1", "--set",
                "data.train_limit=256", "--set", "data.test_limit=128", "--grid", "train.mixed_precision=no,fp16",
                "--grid", "train.seed=1,2", "--json")
    assert p.returncode == 1 and "2 of 4 runs failed" in p.stderr, p.stdout + p.stderr
    out = json.loads(p.stdout[p.stdout.index('{\n  "sweep_id"'):])
    for i, r in enumerate(out["runs"]):
        assert r["node"] == i % 2 and r["state"] == ("succeeded" if r["setting"]["train.mixed_precision"] == "no"
                                                     else "failed")
        for rank, node in enumerate(duo.nodes):  # the run's folder is on its node's disk only
            assert (node.home / REMOTE[2:] / "runs" / r["run_id"] / "config.yaml").exists() == (rank == r["node"])
    objs = duo.objects("sw-duo")
    for rank in (0, 1):
        rec = json.loads(objs[f"runner-{rank}.json"])
        assert rec["state"] == "finished" and rec["started"] == [r["run_id"] for r in out["runs"]][rank::2]
    finals = []
    for r in out["runs"]:  # every run uploaded itself, ran once, and says which sweep it is of
        run_objs = duo.objects(r["run_id"])
        events = [json.loads(line) for line in run_objs["events.jsonl"].decode().splitlines()]
        assert [e["type"] for e in events].count("run_end") == 1, r["run_id"]
        assert json.loads(run_objs["meta.json"])["sweep"] == "sw-duo"
        assert json.loads(run_objs["status.json"])["state"] == r["state"]
        if r["state"] == "succeeded":
            finals.append(json.loads(run_objs["summary.json"])["final_test_accuracy"])
    [row] = [s for s in out["settings"] if s["setting"] == {"train.mixed_precision": "no"}]
    assert row["per_seed_final"] == finals and len(finals) == 2
    assert row["final_test_accuracy"]["mean"] == pytest.approx(sum(finals) / 2, abs=1e-12)
    # found again from the plan node 0's runner put in the store, both nodes read over SSH
    again = duo.cli("sweep", "status", "sw-duo", "--store", STORE, "--json")
    assert json.loads(again.stdout)["settings"] == out["settings"], again.stderr
    assert out["plot"] == str(duo.home / "sweeps" / "sw-duo-curves.png")  # MNIST_LAUNCH_HOME, not the checkout


def test_two_nodes_train_lose_the_head_recover_and_down_leaves_nothing(duo, mnist_2k, request):
    """--recover on 2 nodes: EC2 terminates node 0, the head, mid-run (its processes and disk go with it); the
    rank on node 1 stops, the launcher replaces node 0 in the cluster, both nodes restore the run from S3, and
    it ends with every epoch once, at the accuracy of the same run on 2 processes of one machine.

    (One instance lost from a one-node cluster is the same path with one node: what it adds, another zone
    tried first for the replacement, is checked in tests/unit/test_aws_provider.py.)"""
    from tests.support.runs import TWO_PROCESS

    ec2 = boto3.client("ec2", region_name="us-east-1")
    before = running(ec2)
    assert sorted(before) == [0, 1]
    common = [a for o in TWO_PROCESS for a in ("--set", o)]  # the shared 2-process run's settings, on its data
    # 0.3 s a step (32 steps, 10 s an epoch at least): node 0 is gone long before epoch 2 ends, whatever the machine
    proc = duo.popen("train", "configs/model3.yaml", "--store", STORE, "--data-dir", str(mnist_2k), "--run-id",
                     "duo-1", "--name", NAME, "--set", f"launch.remote_dir={REMOTE}", "--set",
                     f"launch.python={duo.sshd.python}", "--set", "launch.nodes=2", *common, "--recover",
                     "--set=launch.env.MNIST_LAUNCH_STEP_DELAY=0.3")
    deadline = time.monotonic() + 300
    while not duo.has("duo-1", "checkpoints/epoch_001/checkpoint.json"):  # the head's agent uploaded it whole
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    ec2.terminate_instances(InstanceIds=[before[0]])
    node0 = duo.nodes[0].home / REMOTE[2:]
    status = json.loads((node0 / "runs" / "duo-1" / "status.json").read_text())
    for pid in (status["agent_pid"], *descendants(status["agent_pid"])):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(node0 / "runs" / "duo-1")  # the disk went with the instance
    out, err = proc.communicate(timeout=400)
    print(out, err)  # the transcript (`pytest -rP` shows it)
    assert proc.returncode == 0, err
    assert f"{before[0]} is gone" in out and "recovery 1/3" in out and "restored from" in out, out
    assert "lost: the instance is gone" in out and "finished" in out, out  # lost with its instance, not failed
    assert [int(e) for e in EPOCH_ROW.findall(out)] == [1, 2], out  # every epoch shown once, across attempts
    after = running(ec2)
    assert after[1] == before[1] and after[0] != before[0]  # node 0 replaced (as node 0), node 1 kept

    objs = duo.objects("duo-1")
    summary = json.loads(objs["summary.json"])
    assert (summary["epochs_completed"], summary["nodes"], summary["world_size"], summary["per_process_batch"]) == (
        2, 2, 2, 32)
    for name in ("train.log", "agent.log", "status.json", "nodes/1/train.log", "nodes/1/agent.log",
                 "nodes/1/status.json", "model.safetensors", "curves.png"):
        assert name in objs, sorted(objs)
    assert json.loads(objs["nodes/1/status.json"])["state"] == "succeeded"
    assert not [k for k in objs if k.startswith("nodes/1/checkpoints")]  # the head's checkpoint is the run's
    assert "random_states_1.pkl" in json.loads(objs["checkpoints/epoch_002/checkpoint.json"])["files"]

    # the same run on 2 processes of this machine (made once a session, for test_train too; asked for only
    # now, so this long test does not wait for it): the same numbers (same shards, same global batch)
    ref, _end, _text = request.getfixturevalue("two_process_run")
    one = json.loads((ref / "summary.json").read_text())
    assert summary["final_test_accuracy"] == pytest.approx(one["final_test_accuracy"], abs=1e-6)
    assert [h["test_loss"] for h in summary["history"]] == pytest.approx([h["test_loss"] for h in one["history"]],
                                                                        rel=1e-5)

    p = duo.cli("down", NAME, "--yes")
    assert p.returncode == 0, p.stderr
    assert not running(ec2)
    assert not ec2.describe_placement_groups(
        Filters=[{"Name": "tag:mnist-launch:cluster", "Values": [NAME]}])["PlacementGroups"]
