"""EC2 provider: find, create, start, stop and remove one cluster's AWS resources.

Typed records in and out (``ClusterSpec`` -> ``Plan`` / ``UpOutcome`` / ``InstanceInfo``), boto3
clients created in one place (``Clients``, injectable; ``AWS_ENDPOINT_URL`` is honoured by boto3
itself), every resource tagged ``mnist-launch:managed=true`` + ``mnist-launch:cluster=NAME`` so a
cluster can always be found from AWS alone, and only transient errors retried: throttling, 5xx and
connection errors by botocore's "standard" retry mode, AWS's eventual consistency (a resource this
call just created, not yet seen) by ``infra.aws_retry.retry`` until a deadline.

    provider = AWSProvider(Clients.create("us-east-1"))
    outcome = provider.ensure(spec)          # reuse, start or create; rolls back on failure
    provider.remove("mnist")                 # terminate and delete what it created
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Iterator, Optional

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from launcher.errors import AWSError, ConfigError
from infra.aws_retry import (
    NEW_GROUP, NEW_INSTANCE, NEW_KEY, NEW_PROFILE, NEW_ROLE, THROTTLE_ERRORS, MAX_ATTEMPTS_ENV, Transient,
    max_attempts, retry,
)
from infra.prices import hourly_price

TAG_MANAGED = "mnist-launch:managed"
TAG_CLUSTER = "mnist-launch:cluster"
TAG_USER = "mnist-launch:user"  # the login user of the image, so `ssh` needs no local state
TAG_AUTOSTOP = "mnist-launch:autostop"  # the idle limit the watcher on the instance enforces ('30m', 'off')
TAG_AUTOSTOP_ACTION = "mnist-launch:autostop-action"  # what its OS shutdown does: 'stop' or 'terminate'

# The AWS Deep Learning AMI (PyTorch, GPU, Ubuntu 22.04), resolved per region; logs in as ubuntu.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04/latest/ami-id"
DLAMI_USER = "ubuntu"
DEFAULT_REGION = "us-east-1"

# Errors where another AZ may have what this one lacks.
CAPACITY_ERRORS = {"InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientCapacity", "Unsupported"}
# Region-wide limits: another AZ cannot help.
QUOTA_ERRORS = {"VcpuLimitExceeded", "MaxSpotInstanceCountExceeded", "InstanceLimitExceeded"}
CREDENTIAL_ERRORS = {
    "ExpiredToken", "ExpiredTokenException", "RequestExpired", "InvalidClientTokenId",
    "UnrecognizedClientException", "AuthFailure", "SignatureDoesNotMatch", "InvalidToken",
    "InvalidAccessKeyId",  # S3's word for an unknown key id
}
ACCESS_ERRORS = {"UnauthorizedOperation", "AccessDenied", "AccessDeniedException"}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


# ---------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class ClusterSpec:
    """What `up` asks for. Validated by the launcher before it gets here."""

    name: str
    region: str
    public_key: str  # one OpenSSH line: "ssh-ed25519 AAAA... comment"; only this goes to AWS
    ssh_cidr: str  # the only source allowed to reach port 22
    instance_type: Optional[str] = None  # None: whatever the existing cluster is, else DEFAULT_INSTANCE
    spot: bool = False
    disk_gb: int = 100
    ami: Optional[str] = None  # None: the region's Deep Learning AMI from SSM
    store: Optional[str] = None  # s3://bucket/prefix the instance profile may read/write
    autostop: str = "60m"
    autostop_terminate: bool = False  # the watcher's shutdown terminates (always so for spot)
    avoid_az: Optional[str] = None  # tried last: a replacement for an instance lost there (spot capacity went first)

    @property
    def shutdown_behavior(self) -> str:
        return "terminate" if self.spot or self.autostop_terminate else "stop"

    @property
    def type_or_default(self) -> str:
        return self.instance_type or DEFAULT_INSTANCE


DEFAULT_INSTANCE = "g4dn.xlarge"


@dataclass
class InstanceInfo:
    id: str
    name: str
    region: str
    instance_type: str
    state: str
    spot: bool
    launch_time: Optional[datetime]
    public_ip: Optional[str]
    az: Optional[str]
    image_id: str
    key_name: Optional[str]
    user: str
    autostop: Optional[str] = None
    autostop_action: Optional[str] = None

    def uptime_seconds(self, now: Optional[datetime] = None) -> float:
        if self.state != "running" or self.launch_time is None:
            return 0.0
        return max(0.0, ((now or datetime.now(timezone.utc)) - self.launch_time).total_seconds())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["launch_time"] = self.launch_time.isoformat() if self.launch_time else None
        return d


@dataclass
class Step:
    """One line of a plan: what happens to one resource."""

    resource: str  # "key pair", "security group", "instance profile", "instance", "image"
    action: str  # "create", "reuse", "start", "update", "none"
    detail: str

    def __str__(self) -> str:
        return f"{self.action:<7} {self.resource:<17} {self.detail}"


@dataclass
class Created:
    kind: str  # "instance", "instance-profile", "role", "security-group", "key-pair"
    id: str


@dataclass
class Plan:
    region: str
    steps: list[Step]
    instance_type: str
    image_id: Optional[str]
    user: str
    spot: bool
    hourly_usd: Optional[float]
    existing: Optional[InstanceInfo] = None


@dataclass
class UpOutcome:
    instance: InstanceInfo
    steps: list[Step]
    created: list[Created] = field(default_factory=list)


class Backoff:
    """Sleeps 0.25s, 0.5s, 1s, ... up to ``cap``: quick answers stay quick, long waits poll gently."""

    def __init__(self, cap: float, first: float = 0.25) -> None:
        self.cap = cap
        self.delay = min(first, cap)

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


# ---------------------------------------------------------------------------------------------
# clients and errors


class Clients:
    """The boto3 clients of one region, created here and nowhere else (inject a Session in tests)."""

    def __init__(self, session: boto3.Session, region: str) -> None:
        self.session = session
        self.region = region
        self._cache: dict[str, Any] = {}

    @classmethod
    def create(cls, region: Optional[str] = None, session: Optional[boto3.Session] = None) -> "Clients":
        session = session or boto3.Session()
        return cls(session, region or session.region_name or DEFAULT_REGION)

    def _client(self, service: str) -> Any:
        if service not in self._cache:
            # throttling, 5xx and dropped connections: retried per request by botocore (infra/aws_retry.py)
            cfg = BotoConfig(retries={"mode": "standard", "total_max_attempts": max_attempts()}, connect_timeout=10,
                             read_timeout=60)
            self._cache[service] = self.session.client(service, region_name=self.region, config=cfg)
        return self._cache[service]

    @property
    def ec2(self) -> Any:
        return self._client("ec2")

    @property
    def iam(self) -> Any:
        return self._client("iam")

    @property
    def ssm(self) -> Any:
        return self._client("ssm")

    @property
    def s3(self) -> Any:
        return self._client("s3")


def error_code(err: ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn boto failures into one actionable line (AWSError); nothing here prints secrets."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError):
        raise AWSError(
            "no AWS credentials found — run `aws configure` (or `aws sso login`), or set AWS_PROFILE"
        ) from None
    except NoRegionError:
        raise AWSError("no AWS region configured — pass --region or set AWS_DEFAULT_REGION") from None
    except EndpointConnectionError as err:
        raise AWSError(
            f"cannot reach AWS at {err.kwargs.get('endpoint_url', '?')} — check the network (or AWS_ENDPOINT_URL)"
        ) from None
    except ClientError as err:
        code = error_code(err)
        op = getattr(err, "operation_name", "an AWS call")
        if code in CREDENTIAL_ERRORS:
            raise AWSError(
                f"AWS rejected your credentials ({code}) — refresh them (`aws sso login` or `aws configure`) and run again"
            ) from None
        if code in THROTTLE_ERRORS:
            raise AWSError(
                f"AWS kept throttling {op} ({code}) through {max_attempts()} attempts — wait a minute and run again "
                f"(other tools on this account may be using its API rate; {MAX_ATTEMPTS_ENV} allows more attempts)"
            ) from None
        if code in ACCESS_ERRORS:
            raise AWSError(
                f"AWS denied {op} ({code}) — your IAM identity needs EC2, IAM (roles, instance profiles) and SSM read access"
            ) from None
        msg = _one_line(err.response.get("Error", {}).get("Message", ""))
        raise AWSError(f"AWS {op} failed: {code}: {msg} — fix the cause above and run again") from None
    except BotoCoreError as err:
        name = type(err).__name__
        if "Token" in name or "SSO" in name:
            raise AWSError(f"AWS login expired ({name}) — run `aws sso login` and run again") from None
        raise AWSError(f"AWS client error: {_one_line(str(err))} — check your AWS configuration") from None


CHECKIP_URL = "https://checkip.amazonaws.com"


def caller_cidr(url: str = CHECKIP_URL, timeout: float = 5.0) -> str:
    """This machine's public IPv4 address as a /32, looked up once from checkip.amazonaws.com."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ip = resp.read().decode().strip()
        return str(ipaddress.ip_network(f"{ipaddress.ip_address(ip)}/32"))
    except (OSError, ValueError) as err:
        raise AWSError(
            f"could not find your public IP address ({_one_line(str(err))}) — pass --ssh-cidr A.B.C.D/32"
        ) from None


def validate_cidr(cidr: str) -> str:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"--ssh-cidr {cidr!r}: not a CIDR — pass your address as A.B.C.D/32") from None
    if net.prefixlen == 0:
        raise ConfigError(f"--ssh-cidr {cidr}: refusing to open SSH to the whole internet — pass your address as A.B.C.D/32")
    if net.version != 4:
        raise ConfigError(f"--ssh-cidr {cidr}: only IPv4 is supported — pass your address as A.B.C.D/32")
    return str(net)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix/' -> ('bucket', 'some/prefix')."""
    bad = f"store {uri!r}: expected s3://bucket/prefix — e.g. --store s3://my-bucket/mnist"
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ConfigError(bad)
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(bad)
    return bucket, prefix.strip("/")


def store_policy(store: str) -> dict:
    """Read/write on the store's bucket prefix only (and listing under it); nothing else."""
    bucket, prefix = parse_s3_uri(store)
    objects = f"arn:aws:s3:::{bucket}/{prefix}/*" if prefix else f"arn:aws:s3:::{bucket}/*"
    listing: dict[str, Any] = {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": f"arn:aws:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": objects,
            },
            listing,
        ],
    }


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def key_pair_name(public_key: str) -> str:
    """Named after the key's content: the same key is imported once per region and shared."""
    parts = public_key.split()
    blob = parts[1] if len(parts) > 1 else public_key
    return "mnist-launch-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def user_for_image(name: str) -> str:
    """The login user follows the image."""
    n = name.lower()
    if "ubuntu" in n or "deep learning" in n:
        return "ubuntu"
    if "debian" in n:
        return "admin"
    if "amzn" in n or "amazon linux" in n or "al2023" in n:
        return "ec2-user"
    return DLAMI_USER


# ---------------------------------------------------------------------------------------------
# the provider


class AWSProvider:
    """One region's view of mnist-launch clusters. All calls go through ``self.clients``."""

    def __init__(self, clients: Clients, log: Callable[[str], None] = lambda _msg: None,
                 poll_s: float = 3.0) -> None:
        self.clients = clients
        self.region = clients.region
        self.log = log
        self.poll_s = poll_s
        self.image_parameter = DLAMI_PARAMETER  # the SSM parameter naming the region's default image

    # -- names and tags ------------------------------------------------------------------------

    def sg_name(self, cluster: str) -> str:
        return f"mnist-launch-{cluster}"

    def role_name(self, cluster: str) -> str:
        # IAM is global: the region keeps two clusters of the same name apart
        return f"mnist-launch-{cluster}-{self.region}"[:64]

    @staticmethod
    def tags(cluster: str, extra: Optional[dict[str, str]] = None) -> list[dict[str, str]]:
        t = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, **(extra or {})}
        return [{"Key": k, "Value": v} for k, v in t.items()]

    # -- reading -------------------------------------------------------------------------------

    def _to_info(self, inst: dict) -> InstanceInfo:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        return InstanceInfo(
            id=inst["InstanceId"],
            name=tags.get(TAG_CLUSTER, "?"),
            region=self.region,
            instance_type=inst["InstanceType"],
            state=inst["State"]["Name"],
            spot=inst.get("InstanceLifecycle") == "spot",
            launch_time=inst.get("LaunchTime"),
            public_ip=inst.get("PublicIpAddress"),
            az=inst.get("Placement", {}).get("AvailabilityZone"),
            image_id=inst.get("ImageId", ""),
            key_name=inst.get("KeyName"),
            user=tags.get(TAG_USER, DLAMI_USER),
            autostop=tags.get(TAG_AUTOSTOP),
            autostop_action=tags.get(TAG_AUTOSTOP_ACTION),
        )

    def find_instances(self, name: Optional[str] = None, states: Optional[list[str]] = None) -> list[InstanceInfo]:
        """Instances tagged by mnist-launch (optionally one cluster), newest first."""
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": states or LIVE_STATES},
        ]
        if name:
            filters.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [name]})
        found = []
        for page in self.clients.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for res in page["Reservations"]:
                found.extend(self._to_info(i) for i in res["Instances"])
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(found, key=lambda i: (i.state == "running", i.launch_time or epoch), reverse=True)

    def describe(self, instance_id: str) -> InstanceInfo:
        # right after RunInstances, DescribeInstances may not know the id yet
        res = retry(lambda: self.clients.ec2.describe_instances(InstanceIds=[instance_id]), NEW_INSTANCE,
                    what=f"DescribeInstances {instance_id}", log=self.log)["Reservations"]
        return self._to_info(res[0]["Instances"][0])

    def status_checks_ok(self, instance_id: str) -> bool:
        st = retry(lambda: self.clients.ec2.describe_instance_status(InstanceIds=[instance_id]), NEW_INSTANCE,
                   what=f"DescribeInstanceStatus {instance_id}", log=self.log)["InstanceStatuses"]
        if not st:
            return False
        s = st[0]
        return s.get("InstanceStatus", {}).get("Status") == "ok" and s.get("SystemStatus", {}).get("Status") == "ok"

    def resolve_image(self, ami: Optional[str]) -> tuple[str, str, str]:
        """(image id, root device name, login user); --ami overrides the SSM parameter."""
        ec2 = self.clients.ec2
        if not ami:
            try:
                ami = self.clients.ssm.get_parameter(Name=self.image_parameter)["Parameter"]["Value"]
            except ClientError as err:
                if error_code(err) == "ParameterNotFound":
                    raise AWSError(
                        f"no PyTorch Deep Learning AMI published in {self.region} ({self.image_parameter}) — pass --ami AMI_ID or another --region"
                    ) from None
                raise
        try:
            images = ec2.describe_images(ImageIds=[ami])["Images"]
        except ClientError as err:
            if error_code(err).startswith("InvalidAMIID"):
                images = []
            else:
                raise
        if not images:
            raise AWSError(f"image {ami} not found in {self.region} — check --ami (images are per region)")
        img = images[0]
        name = f"{img.get('Name', '')} {img.get('Description', '')}"
        return ami, img.get("RootDeviceName", "/dev/sda1"), user_for_image(name)

    def _default_vpc(self) -> str:
        vpcs = self.clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise AWSError(
                f"no default VPC in {self.region} — create one (`aws ec2 create-default-vpc --region {self.region}`) or pick another --region"
            )
        return vpcs[0]["VpcId"]

    def _subnets_by_az(self, vpc_id: str, instance_type: str, avoid: Optional[str] = None) -> list[tuple[str, str]]:
        """(az, subnet) of the default subnets in AZs that offer the type (all of them if AWS doesn't say),
        in name order but with ``avoid`` (where a lost instance was) last."""
        ec2 = self.clients.ec2
        subnets = ec2.describe_subnets(Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]},
        ])["Subnets"]
        pairs = sorted((s["AvailabilityZone"], s["SubnetId"]) for s in subnets)
        offered = {
            o["Location"]
            for o in ec2.describe_instance_type_offerings(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
            )["InstanceTypeOfferings"]
        }
        if offered and any(az in offered for az, _ in pairs):
            pairs = [p for p in pairs if p[0] in offered]
        elif offered == set() and pairs:
            raise AWSError(f"{instance_type} is not offered in {self.region} — pick another --instance type or --region")
        if not pairs:
            raise AWSError(f"the default VPC in {self.region} has no default subnets — create them or pick another --region")
        return sorted(pairs, key=lambda pair: pair[0] == avoid)  # stable

    def _find_sg(self, cluster: str, vpc_id: Optional[str] = None) -> Optional[dict]:
        filters = [{"Name": "group-name", "Values": [self.sg_name(cluster)]}]
        if vpc_id:
            filters.append({"Name": "vpc-id", "Values": [vpc_id]})
        groups = self.clients.ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
        return groups[0] if groups else None

    def _key_exists(self, key_name: str) -> bool:
        try:
            return bool(self.clients.ec2.describe_key_pairs(KeyNames=[key_name])["KeyPairs"])
        except ClientError as err:
            if error_code(err) == "InvalidKeyPair.NotFound":
                return False
            raise

    def _iam_get(self, fn: Callable[..., Any], **kwargs: Any) -> Optional[dict]:
        try:
            return fn(**kwargs)
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise

    @staticmethod
    def _has_ingress(sg: dict, cidr: str) -> bool:
        for perm in sg.get("IpPermissions", []):
            if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22:
                if any(r.get("CidrIp") == cidr for r in perm.get("IpRanges", [])):
                    return True
        return False

    # -- planning (read-only) ------------------------------------------------------------------

    def plan(self, spec: ClusterSpec) -> Plan:
        """What `up` would do, from read-only calls plus RunInstances with DryRun=True."""
        existing = next(iter(self.find_instances(spec.name)), None)
        if existing is not None:
            self._check_same_type(spec, existing)
            action = "reuse" if existing.state in ("running", "pending") else "start"
            steps = [Step("instance", action, f"{existing.id} ({existing.instance_type}, {existing.state})")]
            sg = self._find_sg(spec.name)
            if sg is not None and not self._has_ingress(sg, spec.ssh_cidr):
                steps.append(Step("security group", "update", f"{sg['GroupId']}: allow tcp/22 from {spec.ssh_cidr}"))
            if spec.store and self._policy_is_current(self.role_name(spec.name), spec.store) is False:
                steps.append(Step("instance profile", "update", f"{self.role_name(spec.name)}: read/write {spec.store} only"))
            return Plan(self.region, steps, existing.instance_type, existing.image_id, existing.user,
                        existing.spot, hourly_price(existing.instance_type), existing)
        image_id, _root, user = self.resolve_image(spec.ami)
        vpc = self._default_vpc()
        steps = [Step("image", "reuse", f"{image_id} (login user {user})")]
        if spec.public_key:
            key_name = key_pair_name(spec.public_key)
            steps.append(Step("key pair", "reuse" if self._key_exists(key_name) else "create", key_name))
        else:
            steps.append(Step("key pair", "create", "from a new ed25519 key (generated under MNIST_LAUNCH_HOME)"))
        sg = self._find_sg(spec.name, vpc)
        if sg is None:
            steps.append(Step("security group", "create", f"{self.sg_name(spec.name)} in {vpc}: tcp/22 from {spec.ssh_cidr} only"))
        elif not self._has_ingress(sg, spec.ssh_cidr):
            steps.append(Step("security group", "update", f"{sg['GroupId']}: allow tcp/22 from {spec.ssh_cidr}"))
        else:
            steps.append(Step("security group", "reuse", f"{sg['GroupId']}: tcp/22 from {spec.ssh_cidr}"))
        if spec.store:
            parse_s3_uri(spec.store)
            role = self.role_name(spec.name)
            have = self._iam_get(self.clients.iam.get_instance_profile, InstanceProfileName=role)
            steps.append(Step("instance profile", "reuse" if have else "create", f"{role}: read/write {spec.store} only"))
        else:
            steps.append(Step("instance profile", "none", "no s3:// store configured: the instance gets no AWS access"))
        subnets = self._subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
        market = "spot" if spec.spot else "on-demand"
        steps.append(Step("instance", "create", f"{spec.type_or_default} {market} in {subnets[0][0]} "
                          f"(then {', '.join(az for az, _ in subnets[1:]) or 'no other AZ'}), {spec.disk_gb} GB gp3 encrypted, IMDSv2"))
        self._dry_run_instance(spec, image_id, subnets[0][1])
        return Plan(self.region, steps, spec.type_or_default, image_id, user, spec.spot, hourly_price(spec.type_or_default))

    def _dry_run_instance(self, spec: ClusterSpec, image_id: str, subnet: str) -> None:
        """AWS's own DryRun: permissions, type and image are checked without launching anything."""
        try:
            self.clients.ec2.run_instances(ImageId=image_id, InstanceType=spec.type_or_default, MinCount=1,
                                           MaxCount=1, SubnetId=subnet, DryRun=True)
        except ClientError as err:
            if error_code(err) != "DryRunOperation":
                raise

    @staticmethod
    def _check_same_type(spec: ClusterSpec, existing: InstanceInfo) -> None:
        if spec.instance_type and spec.instance_type != existing.instance_type:
            raise ConfigError(
                f"cluster '{spec.name}' is a {existing.instance_type} ({existing.id}), not a {spec.instance_type} — "
                f"`mnist-launch down {spec.name}` first, or pick another --name"
            )

    # -- creating ------------------------------------------------------------------------------

    def ensure(self, spec: ClusterSpec, found: Optional[list[InstanceInfo]] = None) -> UpOutcome:
        """Reuse a running instance, start a stopped one, or create one; roll back on failure.

        ``found``: the cluster's live instances if the caller already looked them up.
        """
        existing = next(iter(self.find_instances(spec.name) if found is None else found), None)
        if existing is not None:
            return self._reuse(spec, existing)
        created: list[Created] = []
        try:
            return self._create(spec, created)
        except BaseException:
            self.rollback(created)
            raise

    def _policy_is_current(self, role: str, store: str) -> Optional[bool]:
        """None: no such role; else whether its store policy is the one ``store`` needs."""
        try:
            doc = self.clients.iam.get_role_policy(RoleName=role, PolicyName="mnist-launch-store")["PolicyDocument"]
        except ClientError as err:
            if error_code(err) != "NoSuchEntity":
                raise
            return None if self._iam_get(self.clients.iam.get_role, RoleName=role) is None else False
        doc = json.loads(doc) if isinstance(doc, str) else doc
        return doc == store_policy(store)

    def _reuse(self, spec: ClusterSpec, inst: InstanceInfo) -> UpOutcome:
        self._check_same_type(spec, inst)
        steps = []
        if spec.store and self._policy_is_current(self.role_name(spec.name), spec.store) is False:
            self.clients.iam.put_role_policy(RoleName=self.role_name(spec.name), PolicyName="mnist-launch-store",
                                             PolicyDocument=json.dumps(store_policy(spec.store)))
            steps.append(Step("instance profile", "update", f"{self.role_name(spec.name)}: read/write {spec.store} only"))
        sg = self._find_sg(spec.name)
        if sg is not None and not self._has_ingress(sg, spec.ssh_cidr):
            self._authorize_ssh(sg["GroupId"], spec.ssh_cidr)
            steps.append(Step("security group", "update", f"{sg['GroupId']}: allow tcp/22 from {spec.ssh_cidr}"))
        if inst.state == "stopping":
            inst = self.wait_state(inst.id, "stopped", timeout_s=600)
        if (inst.autostop, inst.autostop_action) != (spec.autostop, spec.shutdown_behavior):
            self.set_autostop(inst.id, spec)
            steps.append(Step("instance", "update", f"{inst.id}: autostop {spec.autostop}, then {spec.shutdown_behavior}"))
            inst = replace(inst, autostop=spec.autostop, autostop_action=spec.shutdown_behavior)
        if inst.state == "stopped":
            self.clients.ec2.start_instances(InstanceIds=[inst.id])
            steps.insert(0, Step("instance", "start", f"{inst.id} ({inst.instance_type})"))
            inst = self.describe(inst.id)
        else:
            steps.insert(0, Step("instance", "reuse", f"{inst.id} ({inst.instance_type}, {inst.state})"))
        return UpOutcome(inst, steps)

    def set_autostop(self, instance_id: str, spec: ClusterSpec) -> None:
        """What an OS shutdown (the autostop watcher's) does to the instance, and the tags `status` shows."""
        # the Attribute/Value form of ModifyInstanceAttribute (moto knows only this one for this attribute)
        self.clients.ec2.modify_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior", Value=spec.shutdown_behavior)
        self.clients.ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": TAG_AUTOSTOP, "Value": spec.autostop}, {"Key": TAG_AUTOSTOP_ACTION, "Value": spec.shutdown_behavior}])

    def _authorize_ssh(self, group_id: str, cidr: str) -> None:
        self.clients.ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                            "IpRanges": [{"CidrIp": cidr, "Description": "mnist-launch: ssh from the launcher"}]}],
        )

    def _create(self, spec: ClusterSpec, created: list[Created]) -> UpOutcome:
        ec2, iam = self.clients.ec2, self.clients.iam
        steps: list[Step] = []
        # everything that can fail without side effects comes first
        image_id, root_device, user = self.resolve_image(spec.ami)
        steps.append(Step("image", "reuse", f"{image_id} (login user {user})"))
        vpc = self._default_vpc()
        subnets = self._subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
        if spec.store:
            parse_s3_uri(spec.store)

        key_name = key_pair_name(spec.public_key)
        new: list[Transient] = []  # what RunInstances may not see yet: the resources made just now
        if self._key_exists(key_name):
            steps.append(Step("key pair", "reuse", key_name))
        else:
            ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=spec.public_key.encode(),
                                TagSpecifications=[{"ResourceType": "key-pair", "Tags": self.tags(spec.name)}])
            created.append(Created("key-pair", key_name))
            new.append(NEW_KEY)
            steps.append(Step("key pair", "create", key_name))

        sg = self._find_sg(spec.name, vpc)
        if sg is None:
            group_id = ec2.create_security_group(
                GroupName=self.sg_name(spec.name), VpcId=vpc,
                Description=f"mnist-launch cluster {spec.name}: ssh from the launcher only",
                TagSpecifications=[{"ResourceType": "security-group", "Tags": self.tags(spec.name)}],
            )["GroupId"]
            created.append(Created("security-group", group_id))
            retry(lambda: self._authorize_ssh(group_id, spec.ssh_cidr), NEW_GROUP,
                  what=f"AuthorizeSecurityGroupIngress {group_id}", log=self.log)
            new.append(NEW_GROUP)
            steps.append(Step("security group", "create", f"{group_id}: tcp/22 from {spec.ssh_cidr} only"))
        else:
            group_id = sg["GroupId"]
            if not self._has_ingress(sg, spec.ssh_cidr):
                self._authorize_ssh(group_id, spec.ssh_cidr)
                steps.append(Step("security group", "update", f"{group_id}: allow tcp/22 from {spec.ssh_cidr}"))
            else:
                steps.append(Step("security group", "reuse", group_id))

        profile = None
        if spec.store:
            profile = self.role_name(spec.name)
            policy = json.dumps(store_policy(spec.store))
            if self._iam_get(iam.get_role, RoleName=profile) is None:
                iam.create_role(RoleName=profile, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                                Description=f"mnist-launch cluster {spec.name}: its store prefix only",
                                Tags=self.tags(spec.name))
                created.append(Created("role", profile))
            retry(lambda: iam.put_role_policy(RoleName=profile, PolicyName="mnist-launch-store", PolicyDocument=policy),
                  NEW_ROLE, what=f"PutRolePolicy {profile}", log=self.log)
            if self._iam_get(iam.get_instance_profile, InstanceProfileName=profile) is None:
                iam.create_instance_profile(InstanceProfileName=profile, Tags=self.tags(spec.name))
                created.append(Created("instance-profile", profile))
                retry(lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile),
                      NEW_ROLE, what=f"AddRoleToInstanceProfile {profile}", log=self.log)
                new.append(NEW_PROFILE)
                steps.append(Step("instance profile", "create", f"{profile}: read/write {spec.store} only"))
            else:
                steps.append(Step("instance profile", "reuse", profile))

        inst = self._run_instance(spec, image_id, root_device, user, key_name, group_id, profile,
                                  tuple(new), subnets, created)
        market = "spot" if spec.spot else "on-demand"
        steps.append(Step("instance", "create", f"{inst.id} ({inst.instance_type} {market} in {inst.az})"))
        return UpOutcome(inst, steps, created)

    def _run_instance(self, spec: ClusterSpec, image_id: str, root_device: str, user: str, key_name: str,
                      group_id: str, profile: Optional[str], new: tuple[Transient, ...],
                      subnets: list[tuple[str, str]], created: list[Created]) -> InstanceInfo:
        """``new``: the refusals to wait out because this call just made the resource (key, group, profile)."""
        extra = {TAG_USER: user, TAG_AUTOSTOP: spec.autostop, TAG_AUTOSTOP_ACTION: spec.shutdown_behavior,
                 "Name": f"mnist-launch-{spec.name}"}
        params: dict[str, Any] = dict(
            ImageId=image_id, InstanceType=spec.type_or_default, MinCount=1, MaxCount=1,
            KeyName=key_name, SecurityGroupIds=[group_id],
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
            BlockDeviceMappings=[{"DeviceName": root_device, "Ebs": {
                "VolumeSize": spec.disk_gb, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": self.tags(spec.name, extra)},
                {"ResourceType": "volume", "Tags": self.tags(spec.name)},
            ],
            # autostop shuts the OS down; on-demand then stops (keeps the disk) unless --autostop-terminate,
            # one-time spot must terminate
            InstanceInitiatedShutdownBehavior=spec.shutdown_behavior,
        )
        if profile:
            params["IamInstanceProfile"] = {"Name": profile}
        if spec.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        token = uuid.uuid4().hex[:24]
        tried: list[str] = []
        last = ""
        for az, subnet in subnets:
            try:
                # the same ClientToken on every try: a retried launch never makes a second instance
                res = retry(partial(self.clients.ec2.run_instances, **params, SubnetId=subnet, ClientToken=f"{token}-{az}"),
                            *new, what=f"RunInstances in {az}", log=self.log)
            except ClientError as err:
                code = error_code(err)
                if code in QUOTA_ERRORS:
                    raise AWSError(
                        f"{spec.type_or_default} in {self.region}: {code} (account quota) — request more at "
                        f"https://console.aws.amazon.com/servicequotas/home?region={self.region}#!/services/ec2/quotas, "
                        "or pick a smaller --instance type" + (" or drop --spot" if spec.spot else "")
                    ) from None
                if code in CAPACITY_ERRORS:
                    tried.append(az)
                    last = code
                    self.log(f"{az}: {code}; trying the next availability zone")
                    continue
                raise
            inst = res["Instances"][0]
            created.append(Created("instance", inst["InstanceId"]))
            return self._to_info(inst)
        raise AWSError(
            f"no capacity for {spec.type_or_default} in {self.region} (tried {', '.join(tried)}: {last}) — "
            "retry later, or pick another --instance type or --region" + ("" if spec.spot else " (or try --spot)")
        )

    # -- waiting -------------------------------------------------------------------------------

    def wait_state(self, instance_id: str, state: str, timeout_s: float,
                   tick: Callable[[InstanceInfo], None] = lambda _i: None) -> InstanceInfo:
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(self.poll_s)
        while True:
            info = self.describe(instance_id)
            tick(info)
            if info.state == state:
                return info
            if state == "running" and info.state in ("terminated", "shutting-down", "stopped"):
                raise AWSError(f"instance {instance_id} went {info.state} while starting — check the EC2 console, then run `up` again")
            if time.monotonic() > deadline:
                raise AWSError(f"instance {instance_id} still {info.state} after {timeout_s:.0f}s — check the EC2 console or raise --timeout")
            backoff.sleep()

    # -- removing ------------------------------------------------------------------------------

    def stop(self, name: str, timeout_s: float = 900) -> list[InstanceInfo]:
        insts = [i for i in self.find_instances(name) if i.state in ("pending", "running")]
        if insts:
            self.clients.ec2.stop_instances(InstanceIds=[i.id for i in insts])
            insts = [self.wait_state(i.id, "stopped", timeout_s) for i in insts]
        return insts

    def remove(self, name: str, timeout_s: float = 900) -> list[str]:
        """Terminate the cluster's instances and delete what was created for it. Idempotent."""
        insts = self.find_instances(name, states=["pending", "running", "stopping", "stopped", "shutting-down"])
        removed: list[str] = []
        key_names = {i.key_name for i in insts if i.key_name}
        if insts:
            self.clients.ec2.terminate_instances(InstanceIds=[i.id for i in insts])
            for i in insts:
                self.wait_state(i.id, "terminated", timeout_s)
                removed.append(f"instance {i.id}")
        sg = self._find_sg(name)
        if sg is not None and {"Key": TAG_MANAGED, "Value": "true"} in sg.get("Tags", []):
            self._delete_sg(sg["GroupId"], timeout_s)
            removed.append(f"security group {sg['GroupId']}")
        removed += self._delete_profile(self.role_name(name))
        # the key pair is shared by every cluster using the same key: delete it only when none does
        for kp in self.clients.ec2.describe_key_pairs(
                Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]}])["KeyPairs"]:
            key_names.add(kp["KeyName"])
        in_use = {i.key_name for i in self.find_instances(states=["pending", "running", "stopping", "stopped", "shutting-down"])}
        for key in sorted(key_names - in_use):
            if self._key_is_ours(key):
                self.clients.ec2.delete_key_pair(KeyName=key)
                removed.append(f"key pair {key}")
        return removed

    def leftovers(self, name: str) -> list[str]:
        """What `down` must not leave behind, still found for cluster ``name``: instances not yet
        terminated, volumes tagged with the cluster, its security group, role and instance profile,
        and its key pairs that no live instance uses. [] when the cluster is gone without a trace."""
        ec2, iam = self.clients.ec2, self.clients.iam
        left = [f"instance {i.id} ({i.state})"
                for i in self.find_instances(name, states=["pending", "running", "stopping", "stopped", "shutting-down"])]
        vols = ec2.describe_volumes(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]},
                                             {"Name": "status", "Values": ["creating", "available", "in-use"]}])["Volumes"]
        left += [f"volume {v['VolumeId']} ({v['State']})" for v in vols]
        sg = self._find_sg(name)
        if sg is not None and {"Key": TAG_MANAGED, "Value": "true"} in sg.get("Tags", []):
            left.append(f"security group {sg['GroupId']}")
        role = self.role_name(name)
        if self._iam_get(iam.get_instance_profile, InstanceProfileName=role) is not None:
            left.append(f"instance profile {role}")
        if self._iam_get(iam.get_role, RoleName=role) is not None:
            left.append(f"role {role}")
        in_use = {i.key_name for i in self.find_instances(states=["pending", "running", "stopping", "stopped", "shutting-down"])}
        for kp in ec2.describe_key_pairs(Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [name]}])["KeyPairs"]:
            if kp["KeyName"] not in in_use:
                left.append(f"key pair {kp['KeyName']}")
        return left

    def _key_is_ours(self, key: str) -> bool:
        try:
            kps = self.clients.ec2.describe_key_pairs(KeyNames=[key])["KeyPairs"]
        except ClientError as err:
            if error_code(err) == "InvalidKeyPair.NotFound":
                return False
            raise
        return bool(kps) and {"Key": TAG_MANAGED, "Value": "true"} in kps[0].get("Tags", [])

    def _delete_sg(self, group_id: str, timeout_s: float = 300, just_created: bool = False) -> None:
        # a just-terminated instance's network interface holds the group for a little while
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(self.poll_s)

        def delete() -> None:
            if just_created:  # a group made by this very call may be unknown for a while yet: not "already gone"
                retry(lambda: self.clients.ec2.delete_security_group(GroupId=group_id), NEW_GROUP,
                      what=f"DeleteSecurityGroup {group_id}", log=self.log)
            else:
                self.clients.ec2.delete_security_group(GroupId=group_id)

        while True:
            try:
                delete()
                return
            except ClientError as err:
                code = error_code(err)
                if code == "InvalidGroup.NotFound":
                    return
                if code != "DependencyViolation" or time.monotonic() > deadline:
                    raise
                backoff.sleep()

    def _delete_profile(self, name: str) -> list[str]:
        iam = self.clients.iam
        removed = []
        prof = self._iam_get(iam.get_instance_profile, InstanceProfileName=name)
        if prof is not None:
            for role in prof["InstanceProfile"].get("Roles", []):
                iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=name)
            removed.append(f"instance profile {name}")
        if self._iam_get(iam.get_role, RoleName=name) is not None:
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            iam.delete_role(RoleName=name)
            removed.append(f"role {name}")
        return removed

    def rollback(self, created: list[Created]) -> list[str]:
        """Undo what one `up` created, newest first; best effort, reports what it could not undo."""
        undone = []
        for item in reversed(created):
            try:
                if item.kind == "instance":
                    retry(partial(self.clients.ec2.terminate_instances, InstanceIds=[item.id]), NEW_INSTANCE,
                          what=f"TerminateInstances {item.id}", log=self.log)
                    self.wait_state(item.id, "terminated", 600)
                elif item.kind == "instance-profile":
                    self._delete_profile(item.id)
                elif item.kind == "role":
                    self._delete_profile(item.id)
                elif item.kind == "security-group":
                    self._delete_sg(item.id, just_created=True)
                elif item.kind == "key-pair":
                    self.clients.ec2.delete_key_pair(KeyName=item.id)
                undone.append(f"{item.kind} {item.id}")
                self.log(f"rolled back {item.kind} {item.id}")
            except (ClientError, BotoCoreError, AWSError) as err:
                self.log(f"could not roll back {item.kind} {item.id}: {_one_line(str(err))} — delete it in the EC2/IAM console")
        return undone
