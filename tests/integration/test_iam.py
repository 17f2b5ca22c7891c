"""Least privilege, enforced: moto's IAM access control on (tests/support/iam_world.py), requests signed by the
identities a real account would use — the instance role's assumed-role credentials, and a user with
exactly docs/laptop-policy.json.

What moto cannot evaluate is said where it matters (see tests/support/iam_world.py): condition keys
(``s3:prefix`` on ListBucket, ``aws:ResourceTag``, ``iam:PassedToService``), EC2 and SSM resource ARNs,
and iam:PassRole. These tests check actions and S3/IAM resources, which it does evaluate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from core.errors import AWSError
from infra.aws import (
    AWSProvider,
    Clients,
    ClusterSpec,
    aws_errors,
    policy_grants,
    store_policy,
)
from infra.aws.clients import new_session
from infra.home import ensure_default_key
from infra.prices import hourly_price
from infra.s3 import S3Store
from infra.ssh import public_key_of
from tests.support import ROOT, iam_world
from tests.support.aws_helpers import (
    fake_aws_env,
    instance_credentials,
    instance_sshd,
    start_moto_server,
    ubuntu_ami,
)
from tests.support.iam_world import IAMWorld, Keys
from tests.support.sshd_fixture import stop_sshd

REGION = "us-east-1"
BUCKET = "team-bucket"
STORE = f"s3://{BUCKET}/mnist"
DATA = f"{STORE}/data"
ROLE = "mnist-launch-mnist-us-east-1"
CIDR = "203.0.113.7/32"


def session(keys: Keys) -> boto3.Session:
    return new_session(aws_access_key_id=keys.access_key_id, aws_secret_access_key=keys.secret_access_key,
                         aws_session_token=keys.session_token, region_name=REGION)


def denied(fn) -> str:
    with pytest.raises(ClientError) as err:
        fn()
    code = err.value.response["Error"]["Code"]
    assert code in ("AccessDenied", "UnauthorizedOperation", "AccessDeniedException"), err.value
    return code


@contextmanager
def world_of(monkeypatch, tmp_path, policy: dict) -> Iterator[IAMWorld]:
    """moto in-process with IAM enforced: the laptop user holds ``policy``, the test's own calls sign as the admin."""
    fake_aws_env(monkeypatch, tmp_path / "home")
    with mock_aws():
        w = IAMWorld.start(policy)
        # the test's own calls (ubuntu_ami, looking at what was made) sign as the admin
        for k in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(k)
        for k, v in w.admin.env().items():
            monkeypatch.setenv(k, v)
        try:
            yield w
        finally:
            w.stop()


@pytest.fixture
def world(monkeypatch, tmp_path):
    with world_of(monkeypatch, tmp_path, iam_world.laptop_policy(BUCKET)) as w:
        yield w


def spec(store=STORE) -> ClusterSpec:
    return ClusterSpec(name="mnist", region=REGION, public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
                       instance_type="g4dn.xlarge", ami=ubuntu_ami(), store=store)


def test_the_instance_role_writes_only_under_runs_and_reads_only_its_data(world):
    admin = session(world.admin)
    s3 = admin.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="other-bucket")
    for key in ("mnist/data/train-images-idx3-ubyte", "mnist/config-of-someone-else.yaml", "elsewhere/data/x"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"data")
    s3.put_object(Bucket="other-bucket", Key="mnist/runs/r/x", Body=b"data")
    the_spec = spec()
    provider = AWSProvider(Clients(session(world.laptop), REGION), poll_s=0.01)
    inst = provider.ensure(the_spec).instance  # made by the laptop user: its policy allows exactly this
    assert provider.store_access("mnist", inst, STORE, DATA) is not None  # `train --data-dir s3://…/data`

    role = session(world.assume_role(ROLE))
    store = S3Store(STORE, clients=Clients(role, REGION))
    # the agent's own calls: upload (plain and verified, read back), list, read, prune a checkpoint
    f = world_file("events.jsonl")
    store.put_file("r1", "events.jsonl", f)
    import hashlib

    store.put_verified("r1", "checkpoints/epoch_001/model.bin", f, hashlib.sha256(f.read_bytes()).hexdigest())
    assert store.list_names("r1") == ["checkpoints/epoch_001/model.bin", "events.jsonl"]
    assert store.read_text("r1", "events.jsonl") == "{}\n"
    store.delete_names("r1", ["checkpoints/epoch_001/model.bin"])
    assert store.list_names("r1") == ["events.jsonl"]

    rs3 = role.client("s3")
    # reading the data prefix works; writing or deleting there does not
    assert rs3.get_object(Bucket=BUCKET, Key="mnist/data/train-images-idx3-ubyte")["Body"].read() == b"data"
    denied(lambda: rs3.put_object(Bucket=BUCKET, Key="mnist/data/train-images-idx3-ubyte", Body=b"x"))
    denied(lambda: rs3.delete_object(Bucket=BUCKET, Key="mnist/data/train-images-idx3-ubyte"))
    # anything else in the bucket (the store's other keys, another prefix) or another bucket: refused
    for bucket, key in ((BUCKET, "mnist/config-of-someone-else.yaml"), (BUCKET, "elsewhere/data/x"),
                        ("other-bucket", "mnist/runs/r/x")):
        denied(lambda b=bucket, k=key: rs3.get_object(Bucket=b, Key=k))
        denied(lambda b=bucket, k=key: rs3.put_object(Bucket=b, Key=k, Body=b"x"))
        denied(lambda b=bucket, k=key: rs3.delete_object(Bucket=b, Key=k))
    denied(lambda: rs3.put_object(Bucket=BUCKET, Key="mnist/runs-not/x", Body=b"x"))
    denied(lambda: rs3.list_objects_v2(Bucket="other-bucket"))
    # the agent's prune of a key its role may not delete fails in one line instead of passing silently
    with pytest.raises(AWSError,
                       match=r"^access denied to s3://team-bucket/elsewhere \(AccessDenied on DeleteObject\)"):
        S3Store(f"s3://{BUCKET}/elsewhere", clients=Clients(role, REGION)).delete_names("r", ["x"])
    assert s3.get_object(Bucket=BUCKET, Key="mnist/config-of-someone-else.yaml")["Body"].read() == b"data"
    # moto does not evaluate the s3:prefix condition on ListBucket, so listing another prefix of the bucket
    # would pass here; the policy names only the granted prefixes (checked as written, not enforced by moto)
    [listing] = [s for s in store_policy(STORE, [DATA])["Statement"] if s["Action"] == ["s3:ListBucket"]]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["mnist/data", "mnist/data/*", "mnist/runs",
                                                                 "mnist/runs/*"]}}
    # and nothing outside S3: no EC2, no IAM (the role cannot widen its own policy)
    denied(lambda: role.client("ec2").describe_instances())
    denied(lambda: role.client("iam").put_role_policy(RoleName=ROLE, PolicyName="more",
                                                      PolicyDocument=json.dumps(iam_world.ADMIN_POLICY)))


def world_file(name: str) -> Path:
    import tempfile

    p = Path(tempfile.mkdtemp()) / name
    p.write_text("{}\n")
    return p


def test_the_laptop_policy_allows_only_mnist_launch_roles_and_reads_the_store(world):
    laptop = session(world.laptop)
    iam = laptop.client("iam")
    trust = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    denied(lambda: iam.create_role(RoleName="admin-role", AssumeRolePolicyDocument=trust))
    with pytest.raises(AWSError, match=r"^AWS denied CreateRole \(AccessDenied\) — your IAM identity needs the "
                                       r"permissions in docs/laptop-policy.json"):
        with aws_errors():
            iam.create_role(RoleName="admin-role", AssumeRolePolicyDocument=trust)
    denied(lambda: iam.create_instance_profile(InstanceProfileName="some-profile"))
    denied(lambda: iam.create_user(UserName="someone"))
    iam.create_role(RoleName="mnist-launch-x-us-east-1", AssumeRolePolicyDocument=trust)
    session(world.admin).client("s3").create_bucket(Bucket=BUCKET)
    s3 = laptop.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    denied(lambda: s3.put_object(Bucket=BUCKET, Key="mnist/runs/x", Body=b"x"))  # only the instance writes runs
    denied(lambda: s3.create_bucket(Bucket="another-bucket"))


def test_a_cluster_without_a_role_of_ours_is_refused_in_one_line(world):
    provider = AWSProvider(Clients(session(world.admin), REGION), poll_s=0.01)
    bare = spec(store=None)
    inst = provider.ensure(bare).instance
    assert inst.profile_arn is None
    with pytest.raises(AWSError, match=r"^cluster 'mnist' \(i-\w+\) has no instance role of ours \(it was brought up "
                                       r"without --store\), so a run there could not reach s3://team-bucket/mnist — "
                                       r"`mnist-launch down mnist`, then `up --store s3://...`"):
        provider.store_access("mnist", inst, STORE)
    with pytest.raises(AWSError, match="has no instance role of ours"):  # `up --store` on it says the same
        provider.ensure(replace(bare, store=STORE))
    assert session(world.admin).client("iam").list_roles()["Roles"] == []  # nothing half-made


def test_a_train_on_another_store_or_data_widens_the_role_before_the_run(world):
    provider = AWSProvider(Clients(session(world.laptop), REGION), poll_s=0.01)
    the_spec = spec()
    inst = provider.ensure(the_spec).instance
    other = f"s3://{BUCKET}/other/"
    step = provider.store_access("mnist", inst, other, DATA)
    assert step is not None and str(step).split() == ["update", "instance", "profile", f"{ROLE}:", "add", "read/write",
                                                     f"s3://{BUCKET}/other/runs/,", "read", f"{DATA}/"]
    doc = session(world.admin).client("iam").get_role_policy(
        RoleName=ROLE, PolicyName="mnist-launch-store")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert policy_grants(doc) == ({STORE, f"s3://{BUCKET}/other"}, {DATA})
    assert provider.store_access("mnist", inst, STORE, DATA) is None  # covered: nothing written
    # the role's credentials (already issued) reach the new store at once: IAM evaluates the current policy
    session(world.admin).client("s3").create_bucket(Bucket=BUCKET)
    role = S3Store(other, clients=Clients(session(world.assume_role(ROLE)), REGION))
    role.put_file("r", "events.jsonl", world_file("events.jsonl"))
    assert role.list_names("r") == ["events.jsonl"]


def granted_actions() -> set[str]:
    return {a for st in iam_world.laptop_policy(BUCKET)["Statement"]
            for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}


def test_a_multi_node_cluster_with_exactly_the_laptop_policy(world):
    """`up --nodes 2` (a placement group, the nodes' own rule, their ranks), a lost node replaced, and `down`:
    everything through the laptop's policy, which grants what they use."""
    provider = AWSProvider(Clients(session(world.laptop), REGION), poll_s=0.01)
    two = replace(spec(), instance_type="g4dn.12xlarge", nodes=2)
    out = provider.ensure(two)
    assert [i.node for i in out.instances] == [0, 1] and out.instance.placement_group == "mnist-launch-mnist"
    session(world.admin).client("ec2").terminate_instances(InstanceIds=[out.instances[1].id])
    again = provider.ensure(two)
    assert [c.kind for c in again.created] == ["instance"]
    assert again.instances[1].placement_group == "mnist-launch-mnist"
    provider.remove("mnist")
    assert provider.leftovers("mnist") == []
    used = world.actions_of(":user/mnist-launch-test-laptop")
    assert {"ec2:CreatePlacementGroup", "ec2:DescribePlacementGroups", "ec2:DeletePlacementGroup", "ec2:CreateTags",
            "ec2:AuthorizeSecurityGroupIngress"} <= used <= granted_actions()


def test_spot_prices_with_exactly_the_laptop_policy(world):
    """A spot cluster's price is its zone's spot price, read with the laptop's policy, which grants it."""
    made = AWSProvider(Clients(session(world.admin), REGION), poll_s=0.01)  # `up` as the laptop: tests above
    inst = made.ensure(replace(spec(store=None), spot=True)).instance
    provider = AWSProvider(Clients(session(world.laptop), REGION))
    [held] = session(world.admin).client("ec2").describe_spot_price_history(
        InstanceTypes=[inst.instance_type], Filters=[{"Name": "availability-zone", "Values": [inst.az]}]
    )["SpotPriceHistory"]
    rate = provider.rates([inst])[inst.id]
    assert (rate.market, rate.instance_usd, rate.note) == ("spot", float(held["SpotPrice"]), None)
    assert "ec2:DescribeSpotPriceHistory" in world.actions_of(":user/mnist-launch-test-laptop") <= granted_actions()


def test_without_spot_price_history_a_spot_instance_shows_the_on_demand_price_and_the_grant(monkeypatch, tmp_path):
    """An identity whose policy lacks ec2:DescribeSpotPriceHistory (an older copy of the laptop policy): the
    price falls back to the on-demand list price, and the note names what to grant; nothing fails."""
    older = iam_world.laptop_policy(BUCKET)
    for st in older["Statement"]:
        if isinstance(st["Action"], list):
            st["Action"] = [a for a in st["Action"] if a != "ec2:DescribeSpotPriceHistory"]
    with world_of(monkeypatch, tmp_path, older) as w:
        made = AWSProvider(Clients(session(w.admin), REGION), poll_s=0.01)
        inst = made.ensure(replace(spec(store=None), spot=True)).instance
        provider = AWSProvider(Clients(session(w.laptop), REGION))
        rate = provider.rates([inst])[inst.id]
        assert (rate.market, rate.instance_usd) == ("spot", hourly_price(inst.instance_type))
        assert rate.note is not None and rate.note.startswith("DescribeSpotPriceHistory was refused (")
        assert "grant ec2:DescribeSpotPriceHistory (docs/laptop-policy.json)" in rate.note


# ---------------------------------------------------------------------------------------------
# the CLI with exactly docs/laptop-policy.json, the instance with its role: up -> train -> down


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    import os

    full = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
    full.update(PYTHONPATH=str(ROOT), COLUMNS="160", **env)
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=timeout)


def test_up_train_down_with_exactly_the_laptop_policy(tmp_path, small_mnist):
    mp = pytest.MonkeyPatch()
    fake_aws_env(mp, tmp_path / "home")
    for k in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        mp.delenv(k)
    server, url = start_moto_server()
    mp.setenv("AWS_ENDPOINT_URL", url)
    world = IAMWorld.start(iam_world.laptop_policy(BUCKET), url)
    creds = instance_credentials(tmp_path)
    srv = instance_sshd(tmp_path / "sshd", url, iam_world.instance_aws_env(creds))
    laptop = world.laptop.env()
    try:
        for k, v in world.admin.env().items():
            mp.setenv(k, v)
        mp.setattr(boto3, "DEFAULT_SESSION", None)  # an earlier test's default session keeps its credentials
        mp.setenv("MNIST_LAUNCH_SSH_ENDPOINT", srv.endpoint)
        mp.setenv("MNIST_LAUNCH_SSH_CIDR", CIDR)
        admin_s3 = boto3.client("s3", region_name=REGION)
        admin_s3.create_bucket(Bucket=BUCKET)
        # a bare cluster (made here, as `up` without --store makes it): `train --store` there is refused in one
        # line before anything travels
        admin = AWSProvider(Clients.create(REGION), poll_s=0.05)
        admin.ensure(ClusterSpec(name="bare", region=REGION, public_key=public_key_of(srv.client_key),
                                 ssh_cidr=CIDR, instance_type="g4dn.xlarge", ami=ubuntu_ami()))
        remote = srv.remote(f"instance-{tmp_path.name}")  # under the login user's home, as on an AMI
        train = ["train", "configs/model3.yaml", "--data-dir", str(small_mnist), "--set", "train.epochs=1",
                 "--set", f"launch.remote_dir={remote}", "--set", "launch.setup=skip",
                 "--set", f"launch.python={srv.python}"]
        p = cli(laptop, *train, "--name", "bare", "--store", STORE, "--run-id", "nope")
        assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
        assert p.stderr.startswith("error: cluster 'bare' (i-") and "has no instance role of ours" in p.stderr
        assert not remote.exists()
        admin.remove("bare", timeout_s=60)

        p = cli(laptop, "up", "--instance", "g4dn.xlarge", "--ami", ubuntu_ami(), "--identity", str(srv.client_key),
                "--store", STORE, "--name", "mnist", "--yes")
        assert p.returncode == 0, p.stderr
        world.write_role_credentials(ROLE, creds, owner=srv.login)  # what EC2 gives the instance: the role `up` made
        # another store than `up` was given: the role is widened before the run, and the agent's uploads land there
        other = f"s3://{BUCKET}/team-b"
        p = cli(laptop, *train, "--name", "mnist", "--store", other, "--run-id", "least")
        assert p.returncode == 0, p.stderr
        assert f"{ROLE}: add read/write {other}/runs/" in p.stdout and "finished" in p.stdout
        keys = [o["Key"] for o in admin_s3.list_objects_v2(Bucket=BUCKET, Prefix="team-b/runs/least/")["Contents"]]
        for name in ("summary.json", "status.json", "events.jsonl", "model.safetensors"):
            assert f"team-b/runs/least/{name}" in keys, keys
        status = json.loads(admin_s3.get_object(Bucket=BUCKET, Key="team-b/runs/least/status.json")["Body"].read())
        assert status["state"] == "succeeded"
        # the laptop reads them back (runs, results) with read-only S3 rights
        rows = json.loads(cli(laptop, "runs", "--store", other, "--json").stdout)
        assert [(r["run_id"], r["state"]) for r in rows] == [("least", "succeeded")]
        p = cli(laptop, "results", "least", "--store", other, "--dest", str(tmp_path / "results"))
        assert p.returncode == 0, p.stderr
        p = cli(laptop, "logs", "least", "--store", other)
        assert p.returncode == 0 and "finished" in p.stdout, p.stderr
        p = cli(laptop, "status", "--json")
        assert p.returncode == 0 and [r["name"] for r in json.loads(p.stdout)] == ["mnist"], p.stderr

        p = cli(laptop, "down", "mnist", "--yes")
        assert p.returncode == 0, p.stderr
        iam = boto3.client("iam", region_name=REGION)
        assert iam.list_roles()["Roles"] == [] and iam.list_instance_profiles()["InstanceProfiles"] == []

        # the policy holds nothing these commands did not use, but for what they do only in cases this test does
        # not make, and what moto does not check (AWS asks for it on top of the call it authorizes)
        used = world.actions_of(":user/mnist-launch-test-laptop")
        granted = granted_actions()
        assert used <= granted
        elsewhere = {
            "ssm:GetParameter",  # the default image (the tests pass --ami)
            "ec2:StartInstances", "ec2:StopInstances",  # `up` on a stopped cluster, `down --stop`
            "ec2:RevokeSecurityGroupIngress",  # `up` from a new address replaces the old rule
            "ec2:ModifyInstanceAttribute", "ec2:CreateTags",  # `up` with another --autostop; AWS: tags on create
            "iam:GetRolePolicy",  # read only when reusing a running cluster's role (`up`, `train` on it)
            "iam:TagRole", "iam:TagInstanceProfile", "iam:PassRole",  # AWS only: tags on create, the role to EC2
            # a cluster of several nodes (test_a_multi_node_cluster_with_exactly_the_laptop_policy)
            "ec2:CreatePlacementGroup", "ec2:DeletePlacementGroup",
            # spot prices (`up --spot`, `status`, `down`; test_spot_prices_with_exactly_the_laptop_policy)
            "ec2:DescribeSpotPriceHistory",
        }
        assert granted - used <= elsewhere, sorted(granted - used - elsewhere)
        # the instance's calls: S3 only, under the run's store and its data
        assert {a for a in world.actions_of(f":assumed-role/{ROLE}/")} <= {"s3:GetObject", "s3:PutObject",
                                                                          "s3:ListBucket", "s3:DeleteObject"}
    finally:
        try:
            cli(laptop, "down", "mnist", "--yes")
            stop_sshd(srv)
        finally:  # moto's access control is process-wide: it must end with this test, whatever failed above
            world.stop()
            server.stop()
            mp.undo()
