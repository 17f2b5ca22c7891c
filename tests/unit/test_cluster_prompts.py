"""The cluster commands ask only through the ``confirm`` the CLI passes in (launcher/cloud_cli.py asks on
the terminal), never by themselves: `up` shows the plan and asks before creating, `down` asks before
terminating; a "no" changes nothing, and without anyone to ask `down` wants --yes. In-process moto."""

from __future__ import annotations

import io

import boto3
import pytest
from moto import mock_aws
from rich.console import Console

from core.config import LaunchConfig
from core.errors import ConfigError, LaunchError
from infra.aws import AWSProvider, Clients, ClusterSpec
from infra.home import ensure_default_key
from infra.ssh import public_key_of
from launcher import cluster
from tests.support.aws_helpers import fake_aws_env, ubuntu_ami

CIDR = "203.0.113.7/32"


class Asked:
    """A confirm that records each question and answers ``answer``."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.questions: list[tuple[str, bool]] = []

    def __call__(self, question: str, default: bool) -> bool:
        self.questions.append((question, default))
        return self.answer


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    """One in-process moto for the module (its AMI catalogue loads once); each test has its own cluster."""
    mp = pytest.MonkeyPatch()
    fake_aws_env(mp, tmp_path_factory.mktemp("home"))
    try:
        with mock_aws():
            yield
    finally:
        mp.undo()


def live(cluster: str) -> list[str]:
    res = boto3.client("ec2", region_name="us-east-1").describe_instances(Filters=[
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        {"Name": "tag:mnist-launch:cluster", "Values": [cluster]}])
    return [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]]


def test_up_shows_the_plan_asks_and_a_no_creates_nothing(aws):
    out = io.StringIO()
    ask = Asked(False)
    req = cluster.UpRequest(launch=LaunchConfig(name="no-up", ami=ubuntu_ami(), ssh_cidr=CIDR), confirm=ask)
    with pytest.raises(LaunchError, match="^cancelled — nothing was created$"):
        cluster.up(req, console=Console(file=out, width=200))
    assert ask.questions == [("create these resources?", True)]
    assert "plan for us-east-1: g4dn.xlarge on-demand" in out.getvalue()  # shown before the question
    assert live("no-up") == []
    ec2 = boto3.client("ec2", region_name="us-east-1")
    assert ec2.describe_key_pairs(Filters=[{"Name": "tag:mnist-launch:cluster", "Values": ["no-up"]}])["KeyPairs"] == []
    assert ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["mnist-launch-no-up"]}])["SecurityGroups"] == []


def test_down_asks_through_confirm_and_only_a_yes_removes(aws):
    AWSProvider(Clients.create("us-east-1")).ensure(ClusterSpec(
        name="ask", region="us-east-1", public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
        ami=ubuntu_ami()))
    [inst] = live("ask")
    quiet = Console(file=io.StringIO())
    with pytest.raises(ConfigError, match=r"down: terminate ask in us-east-1\? pass --yes to confirm"):
        cluster.down("ask", None, yes=False, console=quiet)  # nobody to ask: --yes needed
    no = Asked(False)
    with pytest.raises(LaunchError, match="^cancelled — nothing was changed$"):
        cluster.down("ask", None, yes=False, console=quiet, confirm=no)
    assert no.questions == [("terminate ask in us-east-1 and delete what mnist-launch created for it?", False)]
    assert live("ask") == [inst]
    yes = Asked(True)
    done = cluster.down("ask", None, yes=False, poll_s=0.01, console=quiet, confirm=yes)
    assert len(yes.questions) == 1 and f"instance {inst}" in done and live("ask") == []
