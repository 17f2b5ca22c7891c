"""The EC2 provider against moto in-process: what `up` creates, reuse, AZ fallback, rollback, down."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from core.errors import AWSError, ConfigError
from infra.aws import (
    SSH_RULE_DESCRIPTION,
    TAG_CLUSTER,
    TAG_MANAGED,
    AWSProvider,
    Clients,
    ClusterSpec,
    aws_errors,
    key_pair_name,
    policy_grants,
    store_policy,
    user_for_image,
    validate_cidr,
)
from infra.home import ensure_default_key
from infra.ssh import public_key_of
from tests.support.aws_helpers import (
    fake_aws_env,
    inject_run_instances_error,
    install_recorder,
    published_image,
    ubuntu_ami,
)

REGION = "us-east-1"
CIDR = "203.0.113.7/32"
STORE = "s3://team-bucket/mnist"


@pytest.fixture
def aws(monkeypatch, tmp_path):
    fake_aws_env(monkeypatch, tmp_path / "home")
    with mock_aws():
        yield


@pytest.fixture
def rec(monkeypatch):
    return install_recorder(monkeypatch)


@pytest.fixture
def spec(aws) -> ClusterSpec:
    return ClusterSpec(name="mnist", region=REGION, public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
                       instance_type="g4dn.xlarge", disk_gb=120, ami=ubuntu_ami(), store=STORE)


def provider(poll_s: float = 0.01) -> AWSProvider:
    return AWSProvider(Clients.create(REGION), poll_s=poll_s)


def ec2():
    return boto3.client("ec2", region_name=REGION)


def iam():
    return boto3.client("iam", region_name=REGION)


def tags_of(resource: dict) -> dict:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def live_instances() -> list[dict]:
    res = ec2().describe_instances(
        Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}])
    return [i for r in res["Reservations"] for i in r["Instances"]]


def our_groups() -> list[dict]:
    return ec2().describe_security_groups(
        Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])["SecurityGroups"]


def nothing_left() -> None:
    assert live_instances() == []
    assert our_groups() == []
    assert ec2().describe_key_pairs()["KeyPairs"] == []
    assert [r["RoleName"] for r in iam().list_roles()["Roles"] if r["RoleName"].startswith("mnist-launch")] == []
    assert [p for p in iam().list_instance_profiles()["InstanceProfiles"]
            if p["InstanceProfileName"].startswith("mnist-launch")] == []


def test_up_creates_exactly_the_resources_with_safe_settings(spec, rec):
    out = provider().ensure(spec)
    assert [(s.resource, s.action) for s in out.steps] == [
        ("image", "reuse"), ("key pair", "create"), ("security group", "create"),
        ("instance profile", "create"), ("instance", "create")]

    [inst] = live_instances()
    assert inst["InstanceId"] == out.instance.id
    assert inst["InstanceType"] == "g4dn.xlarge"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    tags = tags_of(inst)
    assert tags[TAG_MANAGED] == "true" and tags[TAG_CLUSTER] == "mnist" and tags["mnist-launch:user"] == "ubuntu"
    assert tags["mnist-launch:autostop"] == "60m"
    assert inst.get("InstanceLifecycle") != "spot"

    [vol] = ec2().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [inst["InstanceId"]]}])["Volumes"]
    assert (vol["Encrypted"], vol["VolumeType"], vol["Size"]) == (True, "gp3", 120)
    assert tags_of(vol)[TAG_CLUSTER] == "mnist"

    [sg] = our_groups()
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [sg["GroupId"]]
    assert tags_of(sg)[TAG_CLUSTER] == "mnist"
    perms = sg["IpPermissions"]
    assert len(perms) == 1
    assert (perms[0]["IpProtocol"], perms[0]["FromPort"], perms[0]["ToPort"]) == ("tcp", 22, 22)
    assert [r["CidrIp"] for r in perms[0]["IpRanges"]] == [CIDR]
    assert perms[0].get("Ipv6Ranges", []) == []

    [kp] = ec2().describe_key_pairs()["KeyPairs"]
    assert kp["KeyName"] == key_pair_name(spec.public_key) == inst["KeyName"]
    assert tags_of(kp)[TAG_MANAGED] == "true"
    # only the public half went to AWS: the key pair was imported, never created there
    ops = rec.ops()
    assert "ImportKeyPair" in ops and "CreateKeyPair" not in ops
    [imp] = [c for c in rec.calls if c.operation == "ImportKeyPair"]
    assert b"PRIVATE" not in imp.params["PublicKeyMaterial"]

    role = iam().get_role(RoleName="mnist-launch-mnist-us-east-1")["Role"]
    assert tags_of(role)[TAG_CLUSTER] == "mnist"
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert iam().list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"] == []
    policy = iam().get_role_policy(RoleName=role["RoleName"], PolicyName="mnist-launch-store")["PolicyDocument"]
    policy = json.loads(policy) if isinstance(policy, str) else policy
    # write/delete under <store>/runs/ only (tests/integration/test_iam.py enforces it)
    assert policy == store_policy(STORE)
    resources = [s["Resource"] for s in policy["Statement"]]
    assert resources == [["arn:aws:s3:::team-bucket/mnist/runs/*"], "arn:aws:s3:::team-bucket"]
    assert policy["Statement"][1]["Condition"] == {"StringLike": {"s3:prefix": ["mnist/runs", "mnist/runs/*"]}}
    assert "*" not in json.dumps([s["Action"] for s in policy["Statement"]])
    prof = iam().get_instance_profile(InstanceProfileName=role["RoleName"])["InstanceProfile"]
    assert [r["RoleName"] for r in prof["Roles"]] == [role["RoleName"]]
    assert inst["IamInstanceProfile"]["Arn"] == prof["Arn"]

    run = [c for c in rec.calls if c.operation == "RunInstances"][0].params
    assert run["BlockDeviceMappings"][0]["Ebs"] == {"VolumeSize": 120, "VolumeType": "gp3", "Encrypted": True,
                                                    "DeleteOnTermination": True}
    assert "InstanceMarketOptions" not in run
    # IMDSv2 only, and one hop: the agent runs on the host; a container behind a bridge (2 hops) gets nothing
    assert run["MetadataOptions"] == {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1}


def test_spot_goes_through_instance_market_options(spec, rec):
    from dataclasses import replace

    out = provider().ensure(replace(spec, spot=True, store=None))
    run = [c for c in rec.calls if c.operation == "RunInstances"][0].params
    assert run["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "IamInstanceProfile" not in run  # no store: no AWS access at all
    assert out.instance.spot
    assert iam().list_instance_profiles()["InstanceProfiles"] == []


def test_up_twice_reuses_and_creates_nothing(spec, rec):
    first = provider().ensure(spec)
    rec.clear()
    second = provider().ensure(spec)
    assert second.instance.id == first.instance.id
    assert [(s.resource, s.action) for s in second.steps] == [("instance", "reuse")]
    assert second.created == []
    assert rec.mutating() == []
    assert len(live_instances()) == 1
    plan = provider().plan(spec)
    assert [(s.resource, s.action) for s in plan.steps] == [("instance", "reuse")]
    assert plan.existing.id == first.instance.id and rec.mutating() == []


def test_reuse_with_another_type_is_refused(spec):
    from dataclasses import replace

    provider().ensure(spec)
    with pytest.raises(ConfigError,
                       match=r"cluster 'mnist' is a g4dn.xlarge .* not a g5.xlarge — `mnist-launch down mnist` first"):
        provider().ensure(replace(spec, instance_type="g5.xlarge"))


def ssh_rules() -> dict[str, str]:
    [sg] = our_groups()
    return {r["CidrIp"]: r.get("Description", "") for p in sg["IpPermissions"]
            if (p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) == ("tcp", 22, 22) for r in p["IpRanges"]}


def test_up_from_a_new_address_replaces_its_own_rule_and_leaves_others_alone(spec, rec):
    from dataclasses import replace

    provider().ensure(spec)
    assert ssh_rules() == {CIDR: SSH_RULE_DESCRIPTION}
    [sg] = our_groups()
    # a rule someone added by hand (a bastion): not the launcher's to revoke
    ec2().authorize_security_group_ingress(GroupId=sg["GroupId"], IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "192.0.2.50/32", "Description": "bastion"}]}])
    moved = replace(spec, ssh_cidr="198.51.100.9/32")
    rec.clear()
    plan = provider().plan(moved)
    assert rec.mutating() == []
    [step] = [s for s in plan.steps if s.resource == "security group"]
    assert (step.action, step.detail) == ("update", f"{sg['GroupId']}: allow tcp/22 from 198.51.100.9/32; "
                                                    f"revoke the launcher's earlier rule for {CIDR}")
    out = provider().ensure(moved)
    assert [str(s) for s in out.steps if s.resource == "security group"] == [str(step)]
    assert ssh_rules() == {"198.51.100.9/32": SSH_RULE_DESCRIPTION, "192.0.2.50/32": "bastion"}
    # back home: still one rule of ours
    provider().ensure(spec)
    assert ssh_rules() == {CIDR: SSH_RULE_DESCRIPTION, "192.0.2.50/32": "bastion"}


def test_stopped_instance_is_started(spec, rec):
    first = provider().ensure(spec)
    ec2().stop_instances(InstanceIds=[first.instance.id])
    rec.clear()
    out = provider().ensure(spec)
    assert out.instance.id == first.instance.id
    assert [(s.resource, s.action) for s in out.steps] == [("instance", "start")]
    assert [c.operation for c in rec.mutating()] == ["StartInstances"]
    assert provider().describe(first.instance.id).state in ("pending", "running")


def test_capacity_error_in_first_az_moves_to_the_next(spec, monkeypatch):
    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"us-east-1a"})
    out = p.ensure(spec)
    assert tried == ["us-east-1a", "us-east-1b"]
    assert out.instance.az == "us-east-1b"
    assert len(live_instances()) == 1


def test_a_replacement_tries_the_lost_instances_az_last(spec, monkeypatch):
    from dataclasses import replace

    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"us-east-1b"})
    out = p.ensure(replace(spec, avoid_az="us-east-1a"))
    assert tried[:2] == ["us-east-1b", "us-east-1c"]  # 1a, where the spot capacity went, only after the others
    assert out.instance.az == "us-east-1c"


def test_no_capacity_anywhere_is_one_line_and_rolls_back(spec, monkeypatch):
    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "InsufficientInstanceCapacity", {"*"})
    with pytest.raises(AWSError, match=r"^no capacity for g4dn.xlarge in us-east-1 \(tried us-east-1a, .*\) — "
                                       r"retry later, or pick another --instance type or --region"):
        p.ensure(spec)
    assert len(tried) == len(set(tried)) > 1
    nothing_left()


def test_quota_error_stops_at_once_with_the_quota_page(spec, monkeypatch):
    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "VcpuLimitExceeded", {"*"})
    with pytest.raises(AWSError, match=r"VcpuLimitExceeded \(account quota\) — request more at https://console.aws.amazon.com/servicequotas"):
        p.ensure(spec)
    assert tried == ["us-east-1a"]
    nothing_left()


def test_failure_after_the_security_group_exists_rolls_it_back(spec, monkeypatch):
    p = provider()

    def boom(**_kw):
        raise ClientError({"Error": {"Code": "LimitExceeded", "Message": "too many roles"}}, "CreateRole")

    monkeypatch.setattr(p.clients.iam, "create_role", boom)
    with pytest.raises(ClientError, match="LimitExceeded"):
        p.ensure(spec)
    nothing_left()
    # through the error translation the user sees one line
    with pytest.raises(AWSError, match=r"^AWS CreateRole failed: LimitExceeded: too many roles — "):
        with aws_errors():
            p.ensure(spec)


def test_down_leaves_nothing_tagged_behind_and_is_idempotent(spec):
    p = provider()
    inst = p.ensure(spec).instance
    removed = p.remove("mnist")
    assert f"instance {inst.id}" in removed and any(r.startswith("security group") for r in removed)
    assert "role mnist-launch-mnist-us-east-1" in removed and f"key pair {key_pair_name(spec.public_key)}" in removed
    nothing_left()
    tagged = boto3.client("resourcegroupstaggingapi", region_name=REGION).get_resources(
        TagFilters=[{"Key": TAG_MANAGED, "Values": ["true"]}])["ResourceTagMappingList"]
    assert [t["ResourceARN"] for t in tagged if ":instance/" not in t["ResourceARN"]] == []
    assert p.remove("mnist") == []


def test_down_keeps_a_key_pair_another_cluster_uses(spec):
    from dataclasses import replace

    p = provider()
    p.ensure(spec)
    other = p.ensure(replace(spec, name="other")).instance
    p.remove("mnist")
    assert [k["KeyName"] for k in ec2().describe_key_pairs()["KeyPairs"]] == [key_pair_name(spec.public_key)]
    assert [i["InstanceId"] for i in live_instances()] == [other.id]
    p.remove("other")
    nothing_left()


def test_stop_keeps_everything(spec):
    p = provider()
    inst = p.ensure(spec).instance
    [stopped] = p.stop("mnist")
    assert stopped.id == inst.id and stopped.state == "stopped"
    assert len(our_groups()) == 1 and len(ec2().describe_key_pairs()["KeyPairs"]) == 1


def test_plan_makes_no_mutating_call(spec, rec):
    plan = provider().plan(spec)
    assert rec.mutating() == []
    dry = [c for c in rec.calls if c.operation == "RunInstances"]
    assert len(dry) == 1 and dry[0].params["DryRun"] is True
    assert [(s.resource, s.action) for s in plan.steps] == [
        ("image", "reuse"), ("key pair", "create"), ("security group", "create"),
        ("instance profile", "create"), ("instance", "create")]
    assert plan.hourly_usd == pytest.approx(0.526)
    nothing_left()


def test_image_errors_name_the_way_out(spec):
    from dataclasses import replace

    with pytest.raises(AWSError, match=r"no PyTorch Deep Learning AMI in us-east-1: SSM parameter /aws/service/\S+ not "
                                       r"found and no image named .* owned by amazon — pass --ami AMI_ID, set "
                                       r"launch.ami_parameter, or pick another --region"):
        provider().ensure(replace(spec, ami=None))
    with pytest.raises(AWSError, match=r"image ami-12345678 not found in us-east-1 — check --ami"):
        provider().ensure(replace(spec, ami="ami-12345678"))
    nothing_left()


def test_ssh_cidr_validation():
    assert validate_cidr("203.0.113.7") == "203.0.113.7/32"
    with pytest.raises(ConfigError, match="refusing to open SSH to the whole internet"):
        validate_cidr("0.0.0.0/0")
    with pytest.raises(ConfigError, match="not a CIDR"):
        validate_cidr("my-laptop")


def test_store_policy_without_prefix_is_the_buckets_runs_only():
    policy = store_policy("s3://b")
    assert policy["Statement"][0]["Resource"] == ["arn:aws:s3:::b/runs/*"]
    assert policy["Statement"][1]["Condition"] == {"StringLike": {"s3:prefix": ["runs", "runs/*"]}}
    with pytest.raises(ConfigError, match="expected s3://bucket/prefix"):
        store_policy("/local/folder")


def test_missing_credentials_are_one_line(monkeypatch, tmp_path):
    fake_aws_env(monkeypatch, tmp_path)
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k)
    with pytest.raises(AWSError, match=r"^no AWS credentials found — run `aws configure`"):
        with aws_errors():
            provider().find_instances()


@pytest.mark.parametrize("code", ["ExpiredToken", "RequestExpired", "InvalidClientTokenId"])
def test_expired_credentials_are_one_line(code):
    with pytest.raises(AWSError, match=rf"^AWS rejected your credentials \({code}\) — refresh them"):
        with aws_errors():
            raise ClientError({"Error": {"Code": code, "Message": "secret-looking detail"}}, "DescribeInstances")


def test_reuse_with_a_new_store_adds_it_to_the_role_policy_only(spec, rec):
    from dataclasses import replace

    provider().ensure(spec)
    rec.clear()
    p = provider()
    plan = p.plan(replace(spec, store="s3://team-bucket/other"))
    assert ("instance profile", "update") in [(s.resource, s.action) for s in plan.steps]
    assert rec.mutating() == []
    out = p.ensure(replace(spec, store="s3://team-bucket/other"))
    assert [(s.resource, s.action) for s in out.steps] == [("instance", "reuse"), ("instance profile", "update")]
    assert [c.operation for c in rec.mutating()] == ["PutRolePolicy"]
    doc = iam().get_role_policy(RoleName="mnist-launch-mnist-us-east-1",
                                PolicyName="mnist-launch-store")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    # added, not replaced: a run on the first store may still be uploading
    assert doc == store_policy([STORE, "s3://team-bucket/other"])
    assert policy_grants(doc) == ({STORE, "s3://team-bucket/other"}, set())
    rec.clear()
    assert [(s.resource, s.action) for s in p.ensure(replace(spec, store="s3://team-bucket/other/")).steps] == [
        ("instance", "reuse")]  # covered already, however it is spelled: nothing written
    assert rec.mutating() == []


def test_default_image_comes_from_the_ssm_parameter(aws):
    amzn = ec2().describe_images(Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn-ami-*"]}])["Images"][0]
    # moto refuses writes under /aws/ (reserved, like AWS): the same lookup under a name we may write
    boto3.client("ssm", region_name=REGION).put_parameter(Name="/mnist-launch-test/dlami", Value=amzn["ImageId"],
                                                          Type="String")
    p = provider()
    image = p.resolve_image(None, "/mnist-launch-test/dlami")  # launch.ami_parameter
    assert (image.id, image.root_device, image.user, image.note) == (
        amzn["ImageId"], amzn["RootDeviceName"], "ec2-user", None)
    assert p.resolve_image(ubuntu_ami(), "/mnist-launch-test/dlami").user == "ubuntu"  # --ami wins, the user follows it


DLAMI = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 ({os}) {date}"


def test_a_missing_parameter_falls_back_to_the_newest_dlami_by_name_and_says_which(spec, rec):
    from dataclasses import replace

    published_image(DLAMI.format(os="Ubuntu 22.04", date="20250301"), 75, "2025-03-01T10:00:00Z")
    newest = published_image(DLAMI.format(os="Ubuntu 22.04", date="20250602"), 75, "2025-06-02T10:00:00Z")
    published_image(DLAMI.format(os="Amazon Linux 2023", date="20250701"), 75, "2025-07-01T10:00:00Z")  # another family
    # an image anyone may register under the same name is not Amazon's: never picked
    ec2().register_image(Name=DLAMI.format(os="Ubuntu 22.04", date="20991231"), RootDeviceName="/dev/sda1")
    plan = provider().plan(replace(spec, ami=None, ami_parameter="/mnist-launch-test/retired"))
    assert plan.image_id == newest and plan.user == "ubuntu"
    [find] = [s for s in plan.steps if (s.resource, s.action) == ("image", "find")]
    assert find.detail == (f"SSM parameter /mnist-launch-test/retired not found in us-east-1: using the newest image "
                           f"named like the Deep Learning AMI, {newest} "
                           f"({DLAMI.format(os='Ubuntu 22.04', date='20250602')}, "
                           "created 2025-06-02T10:00:00.000Z)")
    assert rec.mutating() == []
    out = provider().ensure(replace(spec, ami=None, ami_parameter="/mnist-launch-test/retired"))
    assert out.instance.image_id == newest and out.instance.user == "ubuntu"
    assert ("image", "find") in [(s.resource, s.action) for s in out.steps]


def test_the_login_user_follows_the_image_family(spec):
    from dataclasses import replace

    al = published_image(DLAMI.format(os="Amazon Linux 2023", date="20250701"), 75, "2025-07-01T10:00:00Z",
                         device="/dev/xvda")
    boto3.client("ssm", region_name=REGION).put_parameter(Name="/mnist-launch-test/al2023", Value=al, Type="String")
    out = provider().ensure(replace(spec, ami=None, ami_parameter="/mnist-launch-test/al2023"))
    assert out.instance.user == "ec2-user" and tags_of(live_instances()[0])["mnist-launch:user"] == "ec2-user"
    assert user_for_image(DLAMI.format(os="Ubuntu 22.04", date="20250602")) == "ubuntu"
    assert user_for_image("Deep Learning AMI GPU PyTorch 2.0.1 (Amazon Linux 2) 20230627") == "ec2-user"
    assert user_for_image("my-image", "Deep Learning AMI on Ubuntu") == "ubuntu"


def test_root_volume_is_at_least_the_images_own_snapshot(spec, rec):
    from dataclasses import replace

    big = published_image(DLAMI.format(os="Ubuntu 22.04", date="20250602"), 140, "2025-06-02T10:00:00Z")
    # more than the snapshot: what was asked, and no note
    plan = provider().plan(replace(spec, ami=big, disk_gb=200))
    assert "root volume" not in [s.resource for s in plan.steps] and "200 GB gp3" in plan.steps[-1].detail
    plan = provider().plan(replace(spec, ami=big, disk_gb=120))
    [raised] = [s for s in plan.steps if s.resource == "root volume"]
    assert str(raised) == ("raise   root volume       140 GB, not 120: the image's root snapshot is 140 GB "
                           "(--disk-gb / launch.disk_gb 120 raised to it)")
    assert "140 GB gp3 encrypted" in plan.steps[-1].detail
    out = provider().ensure(replace(spec, ami=big, disk_gb=120))
    assert ("root volume", "raise") in [(s.resource, s.action) for s in out.steps]
    run = [c for c in rec.calls if c.operation == "RunInstances" and not c.params.get("DryRun")][0].params
    assert run["BlockDeviceMappings"] == [{"DeviceName": "/dev/sda1", "Ebs": {
        "VolumeSize": 140, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}]
    [vol] = ec2().describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [out.instance.id]}])["Volumes"]
    assert vol["Size"] == 140


def test_caller_address_lookup(tmp_path):
    import http.server
    import threading

    from infra.aws import caller_cidr

    answers = iter([b"198.51.100.20\n", b"<html>captive portal</html>"])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = next(answers)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    try:
        assert caller_cidr(url) == "198.51.100.20/32"
        with pytest.raises(AWSError, match=r"^could not find your public IP address .* — pass --ssh-cidr A.B.C.D/32"):
            caller_cidr(url)
    finally:
        srv.shutdown()
    with pytest.raises(AWSError, match="could not find your public IP address"):
        caller_cidr("http://127.0.0.1:1/", timeout=1)


def test_a_fresh_instance_profile_is_retried_until_ec2_sees_it(spec, monkeypatch):
    p = provider()
    client = p.clients.ec2
    real = client.run_instances
    attempts = []

    def run_instances(**kw):
        attempts.append(kw["SubnetId"])
        if len(attempts) < 3:  # IAM is eventually consistent: EC2 does not know the new profile yet
            raise ClientError({"Error": {"Code": "InvalidParameterValue", "Message":
                               "Value (mnist-launch-mnist-us-east-1) for parameter iamInstanceProfile.name "
                               "is invalid."}}, "RunInstances")
        return real(**kw)

    monkeypatch.setattr(client, "run_instances", run_instances)
    out = p.ensure(spec)
    assert len(attempts) == 3 and len(set(attempts)) == 1  # same AZ, not a capacity problem
    assert out.instance.az == "us-east-1a"


def test_other_errors_are_not_retried(spec, monkeypatch):
    p = provider()
    tried = inject_run_instances_error(monkeypatch, p, "InvalidParameterCombination", {"*"})
    with pytest.raises(ClientError, match="InvalidParameterCombination"):
        p.ensure(spec)
    assert tried == ["us-east-1a"]
    nothing_left()


def test_down_waits_out_a_security_group_still_in_use(spec, monkeypatch):
    p = provider()
    p.ensure(spec)
    client = p.clients.ec2
    real = client.delete_security_group
    calls = []

    def delete_security_group(**kw):
        calls.append(kw)
        if len(calls) == 1:  # the terminated instance's network interface still holds it
            raise ClientError({"Error": {"Code": "DependencyViolation", "Message": "has a dependent object"}},
                              "DeleteSecurityGroup")
        return real(**kw)

    monkeypatch.setattr(client, "delete_security_group", delete_security_group)
    p.remove("mnist")
    assert len(calls) == 2
    nothing_left()


def test_a_type_the_region_does_not_offer_is_one_line(spec):
    from dataclasses import replace

    with pytest.raises(AWSError,
                       match=r"^g4dn.typo is not offered in us-east-1 — pick another --instance type or --region$"):
        provider().ensure(replace(spec, instance_type="g4dn.typo"))
    nothing_left()
