"""The cloud of the end-to-end tests: moto's bucket and names, and ``Cloud``, the CLI as a user of that cloud runs it
(tests/integration/test_remote_train.py, test_multinode_cloud.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import boto3
import pytest

from tests.support import ROOT
from tests.support.strict_instance import Instance

BUCKET = "runs-bucket"
STORE = f"s3://{BUCKET}/mnist"
CIDR = "203.0.113.7/32"
ROLE = "mnist-launch-mnist-us-east-1"  # the instance role `up --name mnist` makes


@dataclass
class Cloud:
    home: Path
    moto_url: str
    sshd: Instance  # tests/support/strict_instance.py: non-root user, the image's torch in its own venv, slow boot
    tmp: Path
    # the CLI's own AWS identity (the laptop user in the strict IAM world)
    env: dict = field(default_factory=dict, repr=False)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
        env.update(PYTHONPATH=str(ROOT), COLUMNS="160", **self.env)
        return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "MNIST_LAUNCH_DEBUG"}
        env.update(PYTHONPATH=str(ROOT), COLUMNS="160", **self.env)
        return subprocess.Popen([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def has(self, run_id: str, name: str) -> bool:
        """Whether the run's ``name`` is in the bucket (one HEAD: what a wait loop polls)."""
        s3 = boto3.client("s3", region_name="us-east-1")
        try:
            s3.head_object(Bucket=BUCKET, Key=f"mnist/runs/{run_id}/{name}")
            return True
        except s3.exceptions.ClientError:
            return False

    def objects(self, run_id: str) -> dict[str, bytes]:
        s3 = boto3.client("s3", region_name="us-east-1")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"mnist/runs/{run_id}/").get("Contents", [])]
        return {k.split(f"runs/{run_id}/", 1)[1]: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


@dataclass
class World:
    """What :func:`strict_cloud` started: moto's url, the IAM world (None when off), where the instance's role
    credentials go, and the SetEnv words that give an "instance" its role."""

    url: str
    iam: Optional[Any]
    creds: Path

    def instance_env(self) -> list[str]:
        from tests.support import iam_world

        return [iam_world.instance_aws_env(self.creds)] if self.iam else []


def strict_cloud(stack: contextlib.ExitStack, mp: pytest.MonkeyPatch, tmp: Path) -> World:
    """The end-to-end tests' AWS, undone by ``stack`` in reverse order whatever fails on the way (moto's access
    control in particular is process-wide and must end with the module): this process's AWS settings faked;
    AWS as it really behaves (tests/support/strict_aws.py; MNIST_LAUNCH_TEST_STRICT_AWS=0 turns it off: a proxy
    in front of moto that answers each eventual-consistency and throttling fault once, and 403 for missing keys);
    the strict IAM world (tests/support/iam_world.py; MNIST_LAUNCH_TEST_IAM=off turns it off: the test acts as
    an admin, the CLI as a user with exactly docs/laptop-policy.json, the "instance" with the role `up` made)."""
    from tests.support import iam_world
    from tests.support.aws_helpers import STRICT_ENV, fake_aws_env, instance_credentials, start_moto_server

    fake_aws_env(mp, tmp / "home")
    server, url = start_moto_server(strict=os.environ.get(STRICT_ENV, "1") != "0")
    stack.callback(server.stop)
    mp.setenv("AWS_ENDPOINT_URL", url)
    world = iam_world.IAMWorld.start(iam_world.laptop_policy(BUCKET), url) if iam_world.enabled() else None
    if world:
        stack.callback(world.stop)
        for k in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            mp.delenv(k, raising=False)
        for k, v in world.admin.env().items():
            mp.setenv(k, v)
        mp.setattr(boto3, "DEFAULT_SESSION", None)  # an earlier test's default session keeps its credentials
    return World(url, world, instance_credentials(tmp))
