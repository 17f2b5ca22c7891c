"""Shared pieces of the AWS tests: fake credentials, a moto image id, an API-call recorder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import boto3
import pytest
from botocore.exceptions import ClientError

import infra.aws
from infra.aws.clients import new_session

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never wait on 169.254.169.254
}
MUTATING_PREFIXES = ("Create", "Delete", "Run", "Start", "Stop", "Terminate", "Import", "Authorize", "Revoke",
                     "Put", "Add", "Remove", "Attach", "Detach", "Associate", "Modify", "Tag", "Untag")


def fake_aws_env(monkeypatch: pytest.MonkeyPatch, home) -> None:
    for k, v in FAKE_ENV.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "MNIST_LAUNCH_SSH_ENDPOINT", "MNIST_LAUNCH_SSH_CIDR"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    monkeypatch.setenv("MNIST_LAUNCH_HOME", str(home))
    # boto3's default session caches the credentials it first resolved: a test's boto3.client(...) must see its own
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    # the "instance" these tests reach over SSH is this machine: `up` must not leave a watcher running on it
    # (tests/integration/test_autostop.py installs one on purpose, in a temporary folder, and kills it)
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_INSTALL", "0")


# "1": every start_moto_server() (the remote e2e tests' moto) sits behind the fault-injecting proxy
STRICT_ENV = "MNIST_LAUNCH_TEST_STRICT_AWS"


@dataclass
class StrictServer:
    """moto behind tests/support/strict_aws.py's proxy: ``stop()`` stops both; ``proxy`` holds the schedule and
    counters."""

    moto: object
    proxy: object
    moto_url: str

    def stop(self) -> None:
        self.proxy.stop()
        self.moto.stop()


def moto_bucket(monkeypatch: pytest.MonkeyPatch, home_dir: Path, bucket: str) -> Iterator:
    """For a fixture: fake credentials, in-process moto, one empty bucket; yields an S3 client."""
    from moto import mock_aws

    fake_aws_env(monkeypatch, home_dir / "home")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        yield client


def plain_moto_server():
    """moto's ThreadedMotoServer on 127.0.0.1, on a port the OS picks as it binds (a port found free
    first could be taken by another test worker before the server binds it, and then start() would
    wait forever): (server, url). Stop it with ``server.stop()``."""
    from moto.server import ThreadedMotoServer

    from tests.support.moto_placement import install

    install()  # placement groups, which moto lacks (the tests' conftest installs them too; benchmarks need this)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def start_moto_server(strict: Optional[bool] = None, schedule: Optional[Callable] = None):
    """moto's ThreadedMotoServer on a free 127.0.0.1 port, for other processes (an agent behind sshd):
    (server, url). Stop it with ``server.stop()``.

    ``strict`` (default: ``MNIST_LAUNCH_TEST_STRICT_AWS=1``): the url is a proxy in front of moto that
    behaves like real AWS (tests/support/strict_aws.py): a missing S3 key answers 403, and ``schedule(proxy)``
    (default: ``light_schedule``, one throttle and one not-yet-visible answer of each kind per session)
    injects faults. The proxy is ``server.proxy``."""
    server, url = plain_moto_server()
    if strict is None:
        strict = os.environ.get(STRICT_ENV) == "1"
    if not strict:
        return server, url
    from tests.support.strict_aws import StrictAWS, light_schedule

    proxy = StrictAWS(url)
    proxy.missing_keys_403 = True
    (schedule or light_schedule)(proxy)
    return StrictServer(server, proxy, url), proxy.url


def instance_sshd(where, url: str, aws_env: str = "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
                  node: Optional[str] = None):
    """A real sshd playing an instance (tests/support/strict_instance.py: a non-root login user, the image's
    torch in a venv of its own at ``.python``, SSH refused then dropped while it boots; the run's
    folders go under ``.home``): its sessions reach moto at ``url`` with fake credentials, as an
    instance's role would (``aws_env``: other SetEnv words for them, e.g. tests.support.iam_world.instance_aws_env).
    ``node``: one node of a cluster, its home a folder of that name (see ``strict_instance``).
    Stop it with ``tests.support.sshd_fixture.stop_sshd``."""
    from tests.support.strict_instance import strict_instance

    return strict_instance(where, node=node, extra_config=(
        f"SetEnv AWS_ENDPOINT_URL={url} {aws_env} "
        # the agent there watches for spot notices (--spot-watch): no metadata service, and were it asked, 127.0.0.1
        "AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true "
        "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:1 "
        # one compute thread a process, as for everything else the tests start (tests/conftest.py)
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}",))


def instance_credentials(tmp: Path) -> Path:
    """Where an "instance" (tests/support/strict_instance.py) finds its role's credentials file: under the login
    user's home when the session made one (the test's own temporary folders are 0700 root's), else under
    ``tmp``; never the real ~/.aws."""
    from tests.support.strict_instance import login_user

    user = login_user()
    base = user.home / f".role-{Path(tmp).name}" if user.created else Path(tmp) / "instance-aws"
    return base / "credentials"


def ubuntu_ami(region: str = "us-east-1") -> str:
    images = boto3.client("ec2", region_name=region).describe_images(
        Owners=["amazon"], Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}])["Images"]
    return sorted(images, key=lambda i: i["ImageId"])[0]["ImageId"]


@dataclass
class Call:
    operation: str
    params: dict


@dataclass
class Recorder:
    """Every AWS API call made through clients created by infra.aws.Clients.create."""

    calls: list[Call] = field(default_factory=list)

    def ops(self) -> list[str]:
        return [c.operation for c in self.calls]

    def mutating(self) -> list[Call]:
        return [c for c in self.calls if c.operation.startswith(MUTATING_PREFIXES) and not c.params.get("DryRun")]

    def clear(self) -> None:
        self.calls.clear()


def install_recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    original = infra.aws.Clients.create.__func__

    def create(cls, region=None, session=None):
        session = session or new_session()  # parses no model another session of this process parsed

        def hook(model, params, **_kw):
            rec.calls.append(Call(model.name, dict(params)))

        session.events.register("provide-client-params", hook)
        return original(cls, region, session)

    monkeypatch.setattr(infra.aws.Clients, "create", classmethod(create))
    return rec


def published_image(name: str, root_gb: int, created: str, region: str = "us-east-1", device: str = "/dev/sda1") -> str:
    """An image as Amazon publishes one, put into moto's backend (in this process): owner ``amazon``, a
    root snapshot of ``root_gb`` (moto reports 15 GB for every image, where a Deep Learning AMI's is
    tens of GB) and its own creation time (ISO 8601, e.g. '2025-06-02T10:00:00Z'). Its id."""
    from datetime import datetime

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami

    class PublishedAmi(Ami):
        @property
        def block_device_mappings(self) -> list[dict]:
            return [{"DeviceName": self.root_device_name, "Ebs": {
                "SnapshotId": self.ebs_snapshot.id, "VolumeSize": root_gb, "DeleteOnTermination": True,
                "VolumeType": "gp3"}}]

    ami = ec2_backends[DEFAULT_ACCOUNT_ID][region].register_image(name=name, description=name)
    ami.__class__ = PublishedAmi
    ami.owner_id, ami.owner_alias, ami.architecture = "898082745236", "amazon", "x86_64"
    ami.root_device_name, ami.root_device_type = device, "ebs"
    ami.creation_date = datetime.fromisoformat(created.replace("Z", "+00:00"))
    return ami.id


def inject_run_instances_error(monkeypatch: pytest.MonkeyPatch, p: "infra.aws.AWSProvider", code: str,
                               bad_azs: set[str]) -> list[str]:
    """Fault injection: RunInstances fails with ``code`` in the given AZs ("*": all of them), a real ClientError
    from ``p``'s own client; the AZs it was called for, in order."""
    client = p.clients.ec2
    real = client.run_instances
    subnet_az = {s["SubnetId"]: s["AvailabilityZone"] for s in client.describe_subnets()["Subnets"]}
    tried: list[str] = []

    def run_instances(**kw):
        az = subnet_az.get(kw.get("SubnetId"), "?")
        tried.append(az)
        if az in bad_azs or "*" in bad_azs:
            raise ClientError({"Error": {"Code": code, "Message": f"no {kw['InstanceType']} in {az}"}}, "RunInstances")
        return real(**kw)

    monkeypatch.setattr(client, "run_instances", run_instances)
    return tried


def nothing_left() -> None:
    """No live instance, managed security group, placement group, key pair, mnist-launch role or instance profile
    is left."""
    ec2, iam = boto3.client("ec2", region_name="us-east-1"), boto3.client("iam", region_name="us-east-1")
    live = [i for r in ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": [
        "pending", "running", "stopping", "stopped"]}])["Reservations"] for i in r["Instances"]]
    assert live == []
    assert ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{infra.aws.TAG_MANAGED}", "Values": ["true"]}])["SecurityGroups"] == []
    assert ec2.describe_placement_groups()["PlacementGroups"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("mnist-launch")] == []
    assert [p["InstanceProfileName"] for p in iam.list_instance_profiles()["InstanceProfiles"]] == []


CIDR = "203.0.113.7/32"  # the --ssh-cidr the cloud tests give `up` (TEST-NET-3: nobody's address)


def live(region: str = "us-east-1") -> list[dict]:
    res = boto3.client("ec2", region_name=region).describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return [i for r in res["Reservations"] for i in r["Instances"]]


def up_args(ami: str, *extra: str) -> list[str]:
    return ["up", "--instance", "g4dn.xlarge", "--ami", ami, "--ssh-cidr", CIDR, "--yes", *extra]
