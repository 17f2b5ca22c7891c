"""The cloud of the end-to-end tests: moto's bucket and names, and ``Cloud``, the CLI as a user of that cloud runs it
(tests/integration/test_remote_train.py, test_multinode_cloud.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import boto3

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
