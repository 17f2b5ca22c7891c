"""Shared pieces of the AWS tests: fake credentials, a moto image id, an API-call recorder."""

from __future__ import annotations

from dataclasses import dataclass, field

import boto3
import pytest

import infra.aws

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
    # the "instance" these tests reach over SSH is this machine: `up` must not leave a watcher running on it
    # (tests/test_autostop.py installs one on purpose, in a temporary folder, and kills it)
    monkeypatch.setenv("MNIST_LAUNCH_AUTOSTOP_INSTALL", "0")


def start_moto_server():
    """moto's ThreadedMotoServer on a free 127.0.0.1 port, for other processes (an agent behind sshd):
    (server, url). Stop it with ``server.stop()``."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def instance_sshd(where, url: str):
    """A real sshd playing an instance (tests/strict_instance.py: a non-root login user, the image's
    torch in a venv of its own at ``.python``, SSH refused then dropped while it boots; the run's
    folders go under ``.home``): its sessions reach moto at ``url`` with fake credentials, as an
    instance's role would. Stop it with ``tests.sshd_fixture.stop_sshd``."""
    from tests.strict_instance import strict_instance

    return strict_instance(where, extra_config=(
        f"SetEnv AWS_ENDPOINT_URL={url} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing "
        "AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true",))


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
        session = session or boto3.Session()

        def hook(model, params, **_kw):
            rec.calls.append(Call(model.name, dict(params)))

        session.events.register("provide-client-params", hook)
        return original(cls, region, session)

    monkeypatch.setattr(infra.aws.Clients, "create", classmethod(create))
    return rec
