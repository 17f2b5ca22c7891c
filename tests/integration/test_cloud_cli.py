"""`up`, `status`, `down`, `ssh` through typer, against moto and a real sshd on 127.0.0.1.

The instance moto makes is reached through MNIST_LAUNCH_SSH_ENDPOINT, which points at the sshd
fixture; the sshd's client key is given with --identity. Nothing here reaches the internet.
"""

from __future__ import annotations

import json
import socket
from datetime import timezone

import boto3
import pytest
from moto import mock_aws

from infra.aws import TAG_MANAGED, AWSProvider, Clients, ClusterSpec
from infra.prices import usd
from tests.support.aws_helpers import CIDR, fake_aws_env, install_recorder, live, published_image, ubuntu_ami, up_args
from tests.support.cli import invoke as cli
from tests.support.sshd_fixture import sshd  # noqa: F401


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    fake_aws_env(monkeypatch, h)
    return h


@pytest.fixture
def aws(home):
    with mock_aws():
        yield


def assert_nothing_left() -> None:
    ec2, iam = boto3.client("ec2", region_name="us-east-1"), boto3.client("iam", region_name="us-east-1")
    assert live() == []
    assert ec2.describe_security_groups(
        Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])["SecurityGroups"] == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert [r for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("mnist-launch")] == []
    assert [p for p in iam.list_instance_profiles()["InstanceProfiles"]
            if p["InstanceProfileName"].startswith("mnist-launch")] == []


def test_dry_run_prints_the_plan_and_changes_nothing(aws, home, monkeypatch):
    rec = install_recorder(monkeypatch)
    out = cli(*up_args(ubuntu_ami(), "--dry-run", "--store", "s3://b/p"))
    assert out.code == 0, out.stderr
    assert "plan for us-east-1: g4dn.xlarge on-demand" in out.stderr
    # the list price, the public IPv4 address, the 100 GB gp3 volume (0.08 x 100 / 730 per hour)
    assert ("~$0.542/h ($0.526 on-demand + IPv4 $0.005 + 100 GB gp3 $0.011; on-demand list price (us-east-1, "
            "2025-07))") in out.stderr
    for line in ("create  key pair", "create  security group", "create  instance profile", "create  instance"):
        assert line in out.stderr
    assert "dry run: nothing was changed" in out.stderr
    assert rec.mutating() == []
    assert not (home / "id_ed25519").exists()  # not even the local key
    assert_nothing_left()


def test_up_status_reuse_ssh_down(aws, home, sshd, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    ami = ubuntu_ami()
    out = cli(*up_args(ami, "--identity", str(sshd.client_key), "--store", "s3://b/p"))
    assert out.code == 0, out.stderr
    assert "mnist is up" in out.stderr and "status checks" in out.stderr
    [inst] = live()
    assert inst["InstanceId"] in (home / "known_hosts").read_text()  # pinned under the instance id

    out = cli("status", "--json")
    assert out.code == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert (row["name"], row["id"], row["type"], row["state"], row["market"]) == (
        "mnist", inst["InstanceId"], "g4dn.xlarge", "running", "on-demand")
    assert row["hourly_usd"] == pytest.approx(0.526) and row["cost_usd"] >= 0
    assert (row["ipv4_usd_per_h"], row["volume_gb"]) == (0.005, 100)
    assert row["total_usd_per_h"] == pytest.approx(0.526 + 0.005 + 0.08 * 100 / 730)

    out = cli(*up_args(ami))  # no --identity: the one the cluster was made with is remembered
    assert out.code == 0, out.stderr
    assert "reuse   instance" in out.stderr
    assert len(live()) == 1

    out = cli("down", "mnist")
    assert out.code == 2 and "pass --yes to confirm" in out.stderr
    out = cli("down", "mnist", "--yes")
    assert out.code == 0, out.stderr
    assert f"instance {inst['InstanceId']}" in out.stderr
    assert_nothing_left()
    assert inst["InstanceId"] not in (home / "known_hosts").read_text()
    out = cli("down", "mnist", "--yes")
    assert out.code == 0 and "nothing to terminate" in out.stderr


def test_up_rolls_back_when_ssh_never_answers(aws, home, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", f"root@127.0.0.1:{closed}")
    out = cli(*up_args(ubuntu_ami(), "--timeout", "1s", "--no-status-checks"))
    assert out.code == 1
    assert f"error: no SSH answer from 127.0.0.1:{closed} after 1s — check --ssh-cidr is your address" in out.stderr
    assert "rolling back" in out.stderr
    assert_nothing_left()


@pytest.mark.parametrize("args, message", [
    (["--ssh-cidr", "0.0.0.0/0"], "refusing to open SSH to the whole internet"),
    (["--name", "Bad Name"], "--name 'Bad Name': use 1-31 lowercase letters"),
    (["--timeout", "soon"], "--timeout 'soon': expected a duration"),
    (["--autostop", "later"], "--autostop 'later': expected a duration"),
    (["--disk-gb", "10"], "disk_gb: Input should be greater than or equal to 30"),
    (["--identity", "/nonexistent/key"], "--identity /nonexistent/key: no such file"),
    (["--ami-parameter", "/x; rm -rf ~"], "ami_parameter: String should match pattern"),
])
def test_bad_input_is_one_line_and_creates_nothing(aws, monkeypatch, args, message):
    rec = install_recorder(monkeypatch)
    out = cli("up", "--ssh-cidr", CIDR, "--ami", "ami-1", "--yes", *args)
    assert out.code == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in out.stderr
    assert rec.mutating() == []


def test_plan_says_which_image_was_found_and_when_the_disk_was_raised(aws, tmp_path):
    """The DLAMI's SSM parameter is configurable; where it is missing the newest DLAMI by name is taken
    (one line says which), and a root volume below the image's own snapshot is raised (one line says so)."""
    name = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20250602"
    ami = published_image(name, 140, "2025-06-02T10:00:00Z")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: model3\nlaunch:\n  ami_parameter: /team/dlami\n  disk_gb: 100\n  ssh_cidr: {CIDR}\n")
    out = cli("up", "--config", str(cfg), "--dry-run")
    assert out.code == 0, out.stderr
    text = " ".join(out.stderr.split())
    assert f"image {ami} (user ubuntu)" in text
    assert (f"find image SSM parameter /team/dlami not found in us-east-1: using the newest image named like the "
            f"Deep Learning AMI, {ami} ({name}, created 2025-06-02T10:00:00.000Z)") in text
    assert "raise root volume 140 GB, not 100: the image's root snapshot is 140 GB" in text
    assert "140 GB gp3 encrypted" in text
    # a parameter that exists wins, from the flag as from the file
    other = published_image(name.replace("Ubuntu 22.04", "Amazon Linux 2023"), 60, "2025-05-01T10:00:00Z")
    boto3.client("ssm", region_name="us-east-1").put_parameter(Name="/team/al2023", Value=other, Type="String")
    out = cli("up", "--config", str(cfg), "--ami-parameter", "/team/al2023", "--dry-run")
    assert out.code == 0, out.stderr
    text = " ".join(out.stderr.split())
    assert f"image {other} (user ec2-user)" in text and "find image" not in text and "raise root volume" not in text


def test_settings_come_from_a_config_launch_section(aws, tmp_path):
    ami = ubuntu_ami()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: model3\nstore: s3://b/runs\nlaunch:\n  instance: g5.xlarge\n  spot: true\n"
                   f"  ami: {ami}\n  ssh_cidr: {CIDR}\n")
    out = cli("up", "--config", str(cfg), "--dry-run")
    assert out.code == 0, out.stderr
    assert "g5.xlarge spot" in out.stderr and "read/write s3://b/runs/runs/ only" in out.stderr
    out = cli("up", "--config", str(cfg), "--instance", "g6.xlarge", "--dry-run")
    assert "g6.xlarge spot" in out.stderr  # flags win over the file
    cfg.write_text("model: model3\nlaunch:\n  instnce: g5.xlarge\n")
    out = cli("up", "--config", str(cfg), "--dry-run")
    assert out.code == 2 and "unknown key 'instnce'" in out.stderr


def test_max_instances_is_enforced(aws, home, monkeypatch):
    from infra.home import ensure_default_key
    from infra.ssh import public_key_of

    p = AWSProvider(Clients.create("us-east-1"))
    key = public_key_of(ensure_default_key())
    for name in ("a", "b"):
        p.ensure(ClusterSpec(name=name, region="us-east-1", public_key=key, ssh_cidr=CIDR,
                             instance_type="g4dn.xlarge", ami=ubuntu_ami()))
    rec = install_recorder(monkeypatch)
    out = cli(*up_args(ubuntu_ami(), "--name", "c"))
    assert out.code == 1
    assert ("2 mnist-launch instances already run in us-east-1 (max_instances=2) — "
            "`mnist-launch down NAME` one, or pass --force") in out.stderr
    assert rec.mutating() == []


def test_ssh_to_a_missing_cluster_is_one_line(aws):
    out = cli("ssh", "ghost", "--", "true")
    assert out.code == 1
    assert ("error: no running instance for cluster 'ghost' in us-east-1 — "
            "`mnist-launch up --name ghost` first") in out.stderr


def test_status_without_instances(aws):
    out = cli("status")
    assert out.code == 0 and "no mnist-launch instances in us-east-1" in out.stdout
    out = cli("status", "--json")
    assert json.loads(out.stdout) == []


# ---------------------------------------------------------------------------------------------
# the real CLI end to end: moto as a server on 127.0.0.1, the real sshd, the system ssh


@pytest.fixture
def moto_server(home, monkeypatch):
    from tests.support.aws_helpers import plain_moto_server

    server, url = plain_moto_server()
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    try:
        yield url
    finally:
        server.stop()


def test_end_to_end_up_status_ssh_down(moto_server, sshd, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    ami = ubuntu_ami()
    out = cli(*up_args(ami, "--name", "e2e", "--identity", str(sshd.client_key), "--store", "s3://bucket/prefix"))
    assert out.code == 0, out.stderr
    [inst] = live()

    out = cli("status", "--json")
    assert out.code == 0, out.stderr
    assert [(r["name"], r["id"], r["state"]) for r in json.loads(out.stdout)] == [
        ("e2e", inst["InstanceId"], "running")]

    out = cli("ssh", "e2e", "--", "true")
    assert out.code == 0, out.stderr
    out = cli("ssh", "e2e", "--", "sh", "-c", "exit 7")
    assert out.code == 7

    out = cli("down", "e2e", "--yes")
    assert out.code == 0, out.stderr
    assert_nothing_left()
    tagged = boto3.client("resourcegroupstaggingapi", region_name="us-east-1").get_resources(
        TagFilters=[{"Key": TAG_MANAGED, "Values": ["true"]}])["ResourceTagMappingList"]
    assert [t["ResourceARN"] for t in tagged if ":instance/" not in t["ResourceARN"]] == []


def make_clusters(*names: str, spot: bool = False) -> list[str]:
    """Instances made by the provider directly (no SSH wait): for down/status tests."""
    from infra.home import ensure_default_key
    from infra.ssh import public_key_of

    p = AWSProvider(Clients.create("us-east-1"))
    key = public_key_of(ensure_default_key())
    return [p.ensure(ClusterSpec(name=n, region="us-east-1", public_key=key, ssh_cidr=CIDR, spot=spot,
                                 instance_type="g4dn.xlarge", ami=ubuntu_ami())).instance.id for n in names]


def spot_price_held(zone: str) -> tuple[str, str]:
    """The spot price of g4dn.xlarge in ``zone`` as EC2 (moto) holds it, as `up` shows it, and its timestamp."""
    [held] = boto3.client("ec2", region_name="us-east-1").describe_spot_price_history(
        InstanceTypes=["g4dn.xlarge"], Filters=[{"Name": "availability-zone", "Values": [zone]}])["SpotPriceHistory"]
    return usd(float(held["SpotPrice"])), held["Timestamp"].astimezone(timezone.utc).isoformat()


@pytest.fixture
def unreachable_instances(monkeypatch):
    """`status` asks each running instance over SSH for its runs: here they answer nothing, from 127.0.0.1
    (the addresses moto invents for instances are real ones on the internet, never to be dialled)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", f"root@127.0.0.1:{closed}")


def test_status_table_and_down_stop_then_all(aws, home, unreachable_instances):
    [a], [b] = make_clusters("a"), make_clusters("b", spot=True)
    out = cli("status")
    assert out.code == 0
    for text in (a, b, "g4dn.xlarge", "running", "on-demand", "spot", "0.542", "+ $0.005/h per public IPv4 address"):
        assert text in out.stdout
    out = cli("down", "a", "--stop", "--yes")
    assert out.code == 0 and f"stopped instance {a}" in out.stderr
    rows = {r["id"]: r for r in json.loads(cli("status", "--json").stdout)}
    assert {i: r["state"] for i, r in rows.items()} == {a: "stopped", b: "running"}
    # the spot instance: its zone's spot price as EC2 (moto) holds it, with its timestamp
    price, when = spot_price_held(rows[b]["az"])
    assert (rows[b]["market"], rows[b]["hourly_usd"], rows[b]["spot_price_time"]) == ("spot", float(price), when)
    assert rows[b]["price_source"] == f"spot price in {rows[b]['az']} at {when}" and rows[b]["price_note"] is None
    assert rows[a]["total_usd_per_h"] == pytest.approx(0.08 * 100 / 730)  # stopped: its volume only
    out = cli("down", "--all", "--yes")
    assert out.code == 0, out.stderr
    assert f"instance {a}" in out.stderr and f"instance {b}" in out.stderr
    text = " ".join(out.stderr.split())
    assert "cost of a: ~$0.00 in all (an estimate: 0.00 instance-hours since launch; the bill is the truth)" in text
    assert "cost of b: ~$0.00 in all (an estimate: 0.00 instance-hours since launch x ~$0.016/h " \
           f"(${price} spot + IPv4 $0.005 + 100 GB gp3 $0.011; spot price in {rows[b]['az']} at {when}); " \
           "the bill is the truth)" in text
    assert_nothing_left()


def test_unknown_region_is_caught_before_any_call(aws, monkeypatch):
    rec = install_recorder(monkeypatch)
    out = cli("status", "--region", "us-esat-1")
    assert out.code == 2 and "error: --region 'us-esat-1': not an EC2 region" in out.stderr
    assert rec.calls == []


def test_a_refused_key_fails_at_once_and_rolls_back(aws, home, sshd, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    out = cli(*up_args(ubuntu_ami(), "--timeout", "5m"))  # the generated key, which sshd does not know
    assert out.code == 1
    assert "refused key" in out.stderr and "(--identity)" in out.stderr
    # not retried until the timeout: sshd saw the key offered once (a clock would measure the machine's load)
    assert (sshd.dir / "sshd.log").read_text().count("Failed publickey") == 1
    assert_nothing_left()


def test_missing_credentials_via_the_cli(home, monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    out = cli("up", "--ssh-cidr", CIDR, "--ami", "ami-1", "--yes")
    assert out.code == 1
    assert out.stderr.strip().splitlines()[-1] == (
        "error: no AWS credentials found — run `aws configure` (or `aws sso login`), or set AWS_PROFILE")
    out = cli("status", "--json")
    assert out.code == 1 and "no AWS credentials found" in out.stderr


def test_a_deleted_state_folder_loses_nothing(aws, home, sshd, monkeypatch):  # noqa: F811
    import shutil

    monkeypatch.setenv("MNIST_LAUNCH_SSH_ENDPOINT", sshd.endpoint)
    assert cli(*up_args(ubuntu_ami(), "--identity", str(sshd.client_key))).code == 0
    shutil.rmtree(home)  # AWS tags are the truth
    [row] = json.loads(cli("status", "--json").stdout)
    assert row["name"] == "mnist" and row["user"] == "ubuntu"
    # the key is the user's own: without the cache, `ssh` is told which one
    out = cli("ssh", "mnist", "--", "true")
    assert out.code == 1 and "which is not ours — pass its private key with --identity" in out.stderr
    out = cli("ssh", "mnist", "--identity", str(sshd.client_key), "--", "true")
    assert out.code == 0, out.stderr
    assert row["id"] in (home / "known_hosts").read_text()  # pinned again on first use
    assert cli("down", "mnist", "--yes").code == 0
    assert_nothing_left()


def test_ssh_cidr_from_the_environment_and_spot_flag(aws, monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_SSH_CIDR", "198.51.100.20/32")
    out = cli("up", "--ami", ubuntu_ami(), "--spot", "--instance", "g5.xlarge", "--dry-run")
    assert out.code == 0, out.stderr
    assert "tcp/22 from 198.51.100.20/32 only" in out.stderr and "g5.xlarge spot" in out.stderr


def test_help_lists_the_flags():
    out = cli("up", "--help")
    for flag in ("--instance", "--name", "--region", "--spot", "--nodes", "--disk-gb", "--ami", "--ami-parameter",
                 "--identity", "--ssh-cidr", "--autostop", "--timeout", "--dry-run", "--yes"):
        assert flag in out.stdout


def test_end_to_end_through_the_real_entry_point(moto_server, sshd, home, tmp_path):  # noqa: F811
    """The real `mnist-launch` entry point in a subprocess, as a user runs it."""
    import subprocess

    from tests.support.cli import cli as entry_point

    def run(*args: str) -> subprocess.CompletedProcess:
        return entry_point(*args, cwd=tmp_path, env={"MNIST_LAUNCH_SSH_ENDPOINT": sshd.endpoint, "COLUMNS": "200"},
                           timeout=120)

    p = run(*up_args(ubuntu_ami(), "--name", "real", "--identity", str(sshd.client_key)))
    assert p.returncode == 0, p.stderr
    [row] = json.loads(run("status", "--json").stdout)
    assert (row["name"], row["state"]) == ("real", "running")
    p = run("ssh", "real", "--", "true")
    assert p.returncode == 0, p.stderr
    p = run("ssh", "real", "--", "sh", "-c", "echo hi; exit 7")
    assert (p.returncode, p.stdout) == (7, "hi\n")
    p = run("up", "--ssh-cidr", "0.0.0.0/0", "--name", "real")
    assert p.returncode == 2
    assert p.stderr.strip() == ("error: --ssh-cidr 0.0.0.0/0: refusing to open SSH to the whole internet — "
                                "pass your address as A.B.C.D/32")
    p = run("down", "real", "--yes")
    assert p.returncode == 0, p.stderr
    assert_nothing_left()


def test_status_covers_several_regions(aws, home, unreachable_instances):
    from infra.home import ensure_default_key
    from infra.ssh import public_key_of

    key = public_key_of(ensure_default_key())
    west = AWSProvider(Clients.create("us-west-2")).ensure(ClusterSpec(
        name="west", region="us-west-2", public_key=key, ssh_cidr=CIDR, instance_type="g5.xlarge",
        ami=ubuntu_ami("us-west-2"), spot=True)).instance
    [east] = make_clusters("east")
    rows = json.loads(cli("status", "--json", "--region", "us-east-1", "--region", "us-west-2").stdout)
    assert sorted((r["name"], r["region"], r["id"], r["market"]) for r in rows) == [
        ("east", "us-east-1", east, "on-demand"), ("west", "us-west-2", west.id, "spot")]
    assert [r["name"] for r in json.loads(cli("status", "--json").stdout)] == ["east"]  # default region only


def test_status_warns_about_instances_that_look_forgotten():
    from launcher.cluster import orphan_warnings

    base = {"state": "running", "uptime_s": 600, "idle_s": 0, "autostop": "60m", "cost_usd": 0.09}
    rows = [
        {**base, "name": "busy", "id": "i-1"},
        {**base, "name": "idle", "id": "i-2", "idle_s": 45 * 60, "cost_usd": 1.25},
        {**base, "name": "old", "id": "i-3", "uptime_s": 13 * 3600 + 300, "cost_usd": 6.88},
        {**base, "name": "nostop", "id": "i-4", "autostop": "off"},
        {**base, "name": "stopped", "id": "i-5", "state": "stopped", "idle_s": 99999},
    ]
    assert orphan_warnings(rows) == [
        "idle (i-2) idle 45m00s, ~$1.25 so far — `mnist-launch down idle` if you are done",
        "old (i-3) up 13h05m, ~$6.88 so far — `mnist-launch down old` if you are done",
        "nostop (i-4) autostop off, ~$0.09 so far — `mnist-launch down nostop` if you are done",
    ]


def test_down_verifies_nothing_of_the_cluster_remains(aws, home):
    from infra.aws import TAG_CLUSTER

    make_clusters("tidy", "leaky")
    out = cli("down", "tidy", "--yes")
    assert out.code == 0, out.stderr
    assert "verified: nothing of tidy remains" in out.stderr
    # a volume tagged with the cluster that outlives its instance (detached, say) is found and named
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vol = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10, TagSpecifications=[
        {"ResourceType": "volume",
         "Tags": [{"Key": TAG_CLUSTER, "Value": "leaky"}, {"Key": TAG_MANAGED, "Value": "true"}]}])
    out = cli("down", "leaky", "--yes")
    assert out.code != 0
    assert f"still there after removal: volume {vol['VolumeId']} (available)" in out.stderr
    ec2.delete_volume(VolumeId=vol["VolumeId"])
    out = cli("down", "leaky", "--yes")
    assert out.code == 0 and "nothing to terminate" in out.stderr
