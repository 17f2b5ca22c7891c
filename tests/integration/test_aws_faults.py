"""AWS as it really behaves: eventual consistency, throttling and S3's 403 for a missing key, injected by
the proxy of tests/support/strict_aws.py in front of one moto server; `up`, `down`, the S3 store and a restore
get through each, and a fault that outlasts its deadline ends in one line with nothing left behind."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from core.errors import AWSError
from infra.aws import AWSProvider, Clients, ClusterSpec
from infra.home import ensure_default_key
from infra.s3 import S3Store
from infra.ssh import public_key_of
from tests.support.aws_helpers import fake_aws_env, nothing_left, start_moto_server, ubuntu_ami
from tests.support.strict_aws import PROFILE_REFUSAL, StrictAWS, every_fault, light_schedule

REGION = "us-east-1"
CIDR = "203.0.113.7/32"
STORE = "s3://strict-bucket/mnist"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One moto server behind the proxy for the module; each test starts from an empty account."""
    server, url = start_moto_server(strict=True, schedule=lambda _p: None)
    yield server
    server.stop()


@pytest.fixture
def proxy(world, tmp_path, monkeypatch) -> StrictAWS:
    fake_aws_env(monkeypatch, tmp_path / "home")
    monkeypatch.setenv("AWS_ENDPOINT_URL", world.proxy.url)
    # the deadlines and backoff of a real account, shortened: a fault that outlasts them fails in seconds
    monkeypatch.setenv("MNIST_LAUNCH_EC2_CONSISTENCY_S", "20")
    monkeypatch.setenv("MNIST_LAUNCH_IAM_CONSISTENCY_S", "20")
    monkeypatch.setenv("MNIST_LAUNCH_AWS_RETRY_CAP_S", "0.5")
    urllib.request.urlopen(urllib.request.Request(world.moto_url + "/moto-api/reset", method="POST")).read()
    world.proxy.clear()
    yield world.proxy
    world.proxy.clear()


def spec(store: str | None = STORE) -> ClusterSpec:
    return ClusterSpec(name="mnist", region=REGION, public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
                       instance_type="g4dn.xlarge", ami=ubuntu_ami(), store=store)


def test_up_waits_out_eventual_consistency_and_throttling(proxy):
    lines: list[str] = []
    p = AWSProvider(Clients.create(REGION), log=lines.append, poll_s=0.05)
    every_fault(proxy)
    out = p.ensure(spec())
    assert p.wait_state(out.instance.id, "running", 30).state == "running"
    assert p.status_checks_ok(out.instance.id) in (True, False)
    for op, code in [("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound"), ("PutRolePolicy", "NoSuchEntity"),
                     ("RunInstances", "InvalidGroup.NotFound"), ("RunInstances", "InvalidParameterValue"),
                     ("DescribeInstances", "InvalidInstanceID.NotFound"),
                     ("DescribeInstanceStatus", "InvalidInstanceID.NotFound"), ("DescribeVpcs", "RequestLimitExceeded"),
                     ("CreateSecurityGroup", "RequestLimitExceeded"), ("CreateRole", "Throttling")]:
        assert proxy.injected[(op, code)] >= 1, (op, code, proxy.injected)
    # one instance, one group, one profile: a retried call never made a second of anything
    assert [i.id for i in p.find_instances("mnist")] == [out.instance.id]
    assert proxy.calls["CreateSecurityGroup"] == 2 and proxy.calls["CreateInstanceProfile"] == 1
    assert any("AWS does not see the new instance profile yet (InvalidParameterValue)" in m for m in lines), lines
    assert not any("rolled back" in m for m in lines)
    assert p.remove("mnist") and p.leftovers("mnist") == []


def test_the_light_schedule_of_the_remote_e2e_tests_is_met_and_got_through(proxy):
    """MNIST_LAUNCH_TEST_STRICT_AWS=1 runs every remote e2e session under it: each fault fires once."""
    light_schedule(proxy)
    p = AWSProvider(Clients.create(REGION), poll_s=0.05)
    out = p.ensure(spec())
    assert p.wait_state(out.instance.id, "running", 30).state == "running"
    assert sorted(proxy.injected.items()) == [
        (("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound"), 1),
        (("DescribeInstances", "InvalidInstanceID.NotFound"), 1),
        (("RunInstances", "InvalidParameterValue"), 1), (("RunInstances", "RequestLimitExceeded"), 1)]
    assert p.remove("mnist") and p.leftovers("mnist") == []


def test_a_refusal_that_outlasts_its_deadline_is_one_line_and_rolls_back(proxy, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_IAM_CONSISTENCY_S", "1")
    proxy.fail("RunInstances", PROFILE_REFUSAL[0], message=PROFILE_REFUSAL[1], seconds=3600,
               after="AddRoleToInstanceProfile")
    # and the rollback itself meets AWS not yet seeing the group it deletes
    proxy.fail("DeleteSecurityGroup", "InvalidGroup.NotFound", times=2)
    lines: list[str] = []
    with pytest.raises(AWSError) as err:
        AWSProvider(Clients.create(REGION), log=lines.append, poll_s=0.05).ensure(spec())
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("RunInstances in us-east-1a: AWS still answered InvalidParameterValue for the new instance "
                          "profile after 1s") and "MNIST_LAUNCH_IAM_CONSISTENCY_S" in msg
    rolled = [m.split()[2] for m in lines if m.startswith("rolled back")]
    assert rolled == ["instance-profile", "role", "security-group", "key-pair"], lines
    assert proxy.injected[("DeleteSecurityGroup", "InvalidGroup.NotFound")] == 2
    nothing_left()


def test_throttling_beyond_the_attempts_is_one_line(proxy, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_AWS_MAX_ATTEMPTS", "2")
    proxy.fail("DescribeVpcs", "RequestLimitExceeded", times=100)
    from infra.aws import aws_errors

    with pytest.raises(AWSError, match=r"^AWS kept throttling DescribeVpcs \(RequestLimitExceeded\) through 2 attempts "
                                       r"— wait a minute and run again"):
        with aws_errors():
            AWSProvider(Clients.create(REGION), poll_s=0.05).ensure(spec(store=None))
    assert proxy.injected[("DescribeVpcs", "RequestLimitExceeded")] == 2
    nothing_left()


def test_down_gets_through_throttling_and_a_group_still_in_use(proxy):
    p = AWSProvider(Clients.create(REGION), poll_s=0.05)
    p.ensure(spec())
    proxy.fail("TerminateInstances", "RequestLimitExceeded", times=1)
    proxy.fail("DescribeInstances", "RequestLimitExceeded", times=2)
    proxy.fail("DeleteSecurityGroup", "DependencyViolation", times=2)
    proxy.fail("DeleteRole", "Throttling", times=1)
    removed = p.remove("mnist")
    assert any(r.startswith("instance ") for r in removed) and any(r.startswith("security group") for r in removed)
    assert proxy.injected[("DeleteSecurityGroup", "DependencyViolation")] == 2
    assert p.leftovers("mnist") == []


# ---------------------------------------------------------------------------------------------
# S3: 403, not 404, for a missing key


def bucket_with_a_run(run_id: str = "r1") -> S3Store:
    boto3.client("s3", region_name=REGION).create_bucket(Bucket="strict-bucket")
    store = S3Store(STORE)
    s3 = boto3.client("s3", region_name=REGION)
    s3.put_object(Bucket="strict-bucket", Key=f"mnist/runs/{run_id}/config.yaml", Body=b"model: model3\n")
    s3.put_object(Bucket="strict-bucket", Key=f"mnist/runs/{run_id}/events.jsonl", Body=b'{"type": "x"}\n')
    return store


def test_missing_keys_answering_403_are_missing_to_the_store(proxy):
    store = bucket_with_a_run()
    proxy.missing_keys_403 = True
    assert store.read_text("r1", "summary.json") is None
    assert store.read_from("r1", "train.log", 0) == b""
    assert store.size_of("r1", "model.safetensors") is None
    assert store.read_text("r1", "config.yaml") == "model: model3\n"
    assert store.read_from("r1", "events.jsonl", 2) == b'type": "x"}\n'
    assert store.list_runs() == ["r1"]
    # S3 really did answer 403 (not 404) for each missing key
    assert proxy.injected[("GetObject", "AccessDenied")] == 2 and proxy.injected[("HeadObject", "AccessDenied")] == 1


def test_a_store_the_caller_cannot_read_still_fails_in_one_line(proxy):
    store = bucket_with_a_run()
    proxy.missing_keys_403 = True
    proxy.denied_buckets.add("strict-bucket")
    for read in (lambda: store.read_text("r1", "summary.json"), lambda: store.read_from("r1", "events.jsonl", 0),
                 lambda: store.size_of("r1", "config.yaml"), store.list_runs):
        with pytest.raises(AWSError, match=r"^access denied to s3://strict-bucket/mnist \((AccessDenied|403) on "):
            read()


def test_a_denied_key_that_exists_is_not_taken_for_missing(proxy):
    store = bucket_with_a_run()
    # the key is listed, yet GET answers 403: a real denial (a KMS key, a bucket policy), said as one
    proxy.fail("GetObject", "AccessDenied", times=1, when=lambda _p: True)
    with pytest.raises(AWSError, match="access denied to s3://strict-bucket/mnist"):
        store.read_text("r1", "config.yaml")


def test_restore_logs_and_results_when_missing_keys_answer_403(proxy, tmp_path, monkeypatch):
    """A run with two stored checkpoints, restored by the agent's code, followed by `logs` and fetched by
    `results` through the CLI, with every missing key answering 403."""
    from infra.restore import restore_run

    store = bucket_with_a_run("r2")
    s3 = boto3.client("s3", region_name=REGION)
    events = "".join(json.dumps(e) + "\n" for e in [
        {"type": "checkpoint", "epoch": 1, "path": "checkpoints/epoch-1", "best": True},
        {"type": "run_end", "state": "failed", "exit_code": 1, "reason": "instance lost"}])
    s3.put_object(Bucket="strict-bucket", Key="mnist/runs/r2/events.jsonl", Body=events.encode())
    s3.put_object(Bucket="strict-bucket", Key="mnist/runs/r2/status.json",
                  Body=json.dumps({"state": "failed", "error": "instance lost", "exit_code": 1}).encode())
    import hashlib

    blob = b"\x01" * 100
    s3.put_object(Bucket="strict-bucket", Key="mnist/runs/r2/checkpoints/epoch-1/model.safetensors", Body=blob)
    s3.put_object(Bucket="strict-bucket", Key="mnist/runs/r2/checkpoints/epoch-1/checkpoint.json", Body=json.dumps(
        {"epoch": 1, "step": 0,
         "files": {"model.safetensors": {"size": 100, "sha256": hashlib.sha256(blob).hexdigest()}}}).encode())
    proxy.missing_keys_403 = True

    ckpt = restore_run(store, "r2", tmp_path / "run")
    assert ckpt["name"] == "epoch-1"
    assert (tmp_path / "run" / "config.yaml").is_file() and not (tmp_path / "run" / "train.log").exists()
    assert (tmp_path / "run" / "events.jsonl").read_text().count("\n") == 1  # cut back to the checkpoint
    assert proxy.injected[("GetObject", "AccessDenied")] >= 2  # meta.json, train.log, model.safetensors are missing

    # `logs --follow` and `results` as the user types them (in-process: the proxy is this process's endpoint too)
    from typer.testing import CliRunner

    from launcher.cli import app

    res = CliRunner().invoke(app, ["logs", "r2", "--store", STORE, "--follow"])
    assert "instance lost" in res.stdout + res.stderr, (res.stdout, res.stderr, res.exception)
    res = CliRunner().invoke(app, ["results", "r2", "--store", STORE, "--dest", str(tmp_path / "fetched")])
    assert res.exit_code == 0, (res.stdout, res.stderr, res.exception)
    got = sorted(str(f.relative_to(tmp_path / "fetched")) for f in (tmp_path / "fetched").rglob("*") if f.is_file())
    assert got == ["r2/checkpoints/epoch-1/checkpoint.json", "r2/checkpoints/epoch-1/model.safetensors",
                   "r2/config.yaml", "r2/events.jsonl", "r2/status.json"], got
