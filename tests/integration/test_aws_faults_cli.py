"""`up`, `train` (creating its cluster) and `down` as a user runs them (`python -m launcher` subprocesses)
against AWS as strict as the real one: tests/support/strict_aws.py's proxy in front of moto injects eventual
consistency, throttling and S3's 403 for missing keys, for the CLI and for the "instance" (a real sshd
whose sessions reach AWS through the same proxy) alike."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from tests.support.aws_helpers import (
    fake_aws_env,
    instance_sshd,
    nothing_left,
    start_moto_server,
    ubuntu_ami,
)
from tests.support.cli import cli
from tests.support.sshd_fixture import stop_sshd
from tests.support.strict_aws import PROFILE_REFUSAL, every_fault

CIDR = "203.0.113.7/32"
BUCKET = "faults-bucket"
STORE = f"s3://{BUCKET}/mnist"


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """moto behind the proxy, and an sshd "instance" whose sessions reach AWS through it too."""
    tmp = tmp_path_factory.mktemp("strict")
    server, url = start_moto_server(strict=True, schedule=lambda _p: None)
    srv = instance_sshd(tmp / "sshd", url)
    yield server, srv, tmp
    stop_sshd(srv)
    server.stop()


@pytest.fixture
def world(strict, tmp_path, monkeypatch):
    server, srv, _tmp = strict
    fake_aws_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.proxy.url)
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", srv.endpoint)
    monkeypatch.setenv("MNIST_LAUNCH_SSH_CIDR", CIDR)
    monkeypatch.setenv("MNIST_LAUNCH_EC2_CONSISTENCY_S", "20")
    monkeypatch.setenv("MNIST_LAUNCH_IAM_CONSISTENCY_S", "20")
    monkeypatch.setenv("MNIST_LAUNCH_AWS_RETRY_CAP_S", "0.5")
    urllib.request.urlopen(urllib.request.Request(server.moto_url + "/moto-api/reset", method="POST")).read()
    server.proxy.clear()
    yield server.proxy, srv
    server.proxy.clear()


def up_args(srv, *extra: str) -> list[str]:
    return ["up", "--instance", "g4dn.xlarge", "--ami", ubuntu_ami(), "--identity", str(srv.client_key), "--yes",
            *extra]


def test_up_and_down_get_through_every_fault(world):
    proxy, srv = world
    every_fault(proxy)
    p = cli(*up_args(srv, "--name", "faulty", "--store", STORE))
    assert p.returncode == 0, p.stderr
    assert "faulty is up" in p.stderr
    assert "AWS does not see the new instance profile yet (InvalidParameterValue); retrying for up to 20s" in p.stderr
    assert "rolling back" not in p.stderr
    assert proxy.injected[("RunInstances", "InvalidParameterValue")] >= 1
    assert proxy.injected[("DescribeInstances", "InvalidInstanceID.NotFound")] == 2
    assert proxy.injected[("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound")] == 2

    proxy.fail("TerminateInstances", "RequestLimitExceeded", times=1)
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=2)
    proxy.fail("DeleteSecurityGroup", "DependencyViolation", times=2)
    proxy.fail("DeleteInstanceProfile", "Throttling", times=1)
    p = cli("down", "faulty", "--yes")
    assert p.returncode == 0, p.stderr
    assert "verified: nothing of faulty remains" in p.stderr
    assert proxy.injected[("DeleteSecurityGroup", "DependencyViolation")] == 2
    nothing_left()


def test_a_fault_outlasting_its_deadline_is_one_line_and_rolls_back(world):
    proxy, srv = world
    proxy.fail("RunInstances", PROFILE_REFUSAL[0], message=PROFILE_REFUSAL[1], seconds=3600,
               after="AddRoleToInstanceProfile")
    p = cli(*up_args(srv, "--name", "stuck", "--store", STORE), env={"MNIST_LAUNCH_IAM_CONSISTENCY_S": "1"})
    assert p.returncode == 1
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in p.stderr
    assert errors[0].startswith("error: RunInstances in us-east-1a: AWS still answered InvalidParameterValue "
                                "for the new instance profile after 1s"), p.stderr
    assert "raise MNIST_LAUNCH_IAM_CONSISTENCY_S" in errors[0]
    for kind in ("instance-profile", "role", "security-group", "key-pair"):
        assert f"rolled back {kind} " in p.stderr, p.stderr
    nothing_left()


def test_train_creates_its_cluster_through_faults_and_uploads_where_missing_keys_answer_403(
        world, small_mnist, tmp_path):
    proxy, srv = world
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
    every_fault(proxy)
    proxy.missing_keys_403 = True
    proxy.fail("PutObject", "SlowDown", times=1)  # S3 throttles the agent's first upload
    remote = srv.remote(f"instance-{tmp_path.name}")  # under the login user's home, as on an AMI
    p = cli("train", "configs/model3.yaml", "--name", "trainer", "--store", STORE, "--data-dir", str(small_mnist),
            "--run-id", "strict-1", "--instance", "g4dn.xlarge", "--set", f"launch.ami={ubuntu_ami()}",
            "--identity", str(srv.client_key),
            "--set", "train.epochs=1", "--set", f"launch.remote_dir={remote}", "--set", "launch.setup=skip",
            "--set", f"launch.python={srv.python}", timeout=600)
    try:
        assert p.returncode == 0, p.stderr
        assert "no running instance for cluster 'trainer': starting it" in p.stdout + p.stderr
        assert "finished" in p.stdout
        assert proxy.injected[("RunInstances", "InvalidParameterValue")] >= 1
        assert proxy.injected[("PutObject", "SlowDown")] == 1
        s3 = boto3.client("s3", region_name="us-east-1")
        keys = {o["Key"].split("runs/strict-1/", 1)[1]
                for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mnist/runs/strict-1/").get("Contents", [])}
        for name in ("config.yaml", "events.jsonl", "train.log", "summary.json", "status.json", "model.safetensors"):
            assert name in keys, sorted(keys)
        assert any(k.startswith("checkpoints/") and k.endswith("/checkpoint.json") for k in keys), sorted(keys)
        status = json.loads(s3.get_object(Bucket=BUCKET, Key="mnist/runs/strict-1/status.json")["Body"].read())
        assert status["state"] == "succeeded"
        p = cli("results", "strict-1", "--store", STORE, "--dest", str(tmp_path / "fetched"))
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "fetched" / "strict-1" / "summary.json").is_file()
    finally:
        down = cli("down", "trainer", "--yes")
    assert down.returncode == 0, down.stderr
    nothing_left()
