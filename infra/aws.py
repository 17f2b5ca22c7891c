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
from typing import Any, Callable, Iterator, Optional, Sequence, Union

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

from core.errors import AWSError, ConfigError
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
# Another parameter: launch.ami_parameter; another image: --ami.
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/oss-nvidia-driver-gpu-pytorch-2.7-ubuntu-22.04/latest/ami-id"
DLAMI_USER = "ubuntu"
# Where the parameter is missing (a region it is not published in, a retired version): the newest image
# Amazon publishes under the same family's name, e.g.
# "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.7 (Ubuntu 22.04) 20250602".
DLAMI_OWNER = "amazon"
DLAMI_NAME_PATTERN = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch * (Ubuntu 22.04) *"
# What `up` writes on the ingress rules it adds, so that it replaces its own rule (and only its own)
# when the caller's address changes.
SSH_RULE_DESCRIPTION = "mnist-launch: ssh from the launcher"
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
    ami_parameter: Optional[str] = None  # the SSM parameter naming the default image; None: DLAMI_PARAMETER
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
    profile_arn: Optional[str] = None  # the instance profile EC2 gives the instance's processes, if any

    def uptime_seconds(self, now: Optional[datetime] = None) -> float:
        if self.state != "running" or self.launch_time is None:
            return 0.0
        return max(0.0, ((now or datetime.now(timezone.utc)) - self.launch_time).total_seconds())

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["launch_time"] = self.launch_time.isoformat() if self.launch_time else None
        return d


@dataclass(frozen=True)
class Image:
    """The image an instance boots from, as DescribeImages tells it."""

    id: str
    name: str
    root_device: str  # e.g. /dev/sda1: the device the root volume's settings go to
    root_gb: Optional[int]  # its root snapshot's size: a smaller root volume is refused by RunInstances
    user: str  # the login user of its family
    note: Optional[str] = None  # how it was found when not the usual way (a fallback by name)

    def root_volume_gb(self, asked: int) -> int:
        """The root volume's size: what was asked, but never below the image's own snapshot."""
        return max(asked, self.root_gb or 0)


@dataclass
class Step:
    """One line of a plan: what happens to one resource."""

    resource: str  # "key pair", "security group", "instance profile", "instance", "image", "root volume"
    action: str  # "create", "reuse", "start", "update", "none"; "find" and "raise": notes on the image
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
                f"AWS denied {op} ({code}) — your IAM identity needs the permissions in docs/laptop-policy.json "
                "(EC2, IAM roles and instance profiles named mnist-launch-*, SSM read, the store read)"
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


def canonical_s3(uri: str) -> str:
    """'s3://bucket/some/prefix/' -> 's3://bucket/some/prefix' (one spelling per prefix)."""
    bucket, prefix = parse_s3_uri(uri)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _arn(bucket: str, *parts: str) -> str:
    return "arn:aws:s3:::" + "/".join([bucket, *(p for p in parts if p)])


STORE_POLICY_NAME = "mnist-launch-store"
RUN_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def store_policy(stores: Union[str, Sequence[str]], data: Sequence[str] = ()) -> dict:
    """The instance role's only permissions: read, write and delete under each store's ``runs/`` (the
    agent's uploads, checkpoint pruning, restore) and read each data prefix (`train --data-dir s3://...`),
    listing limited to those prefixes. Nothing else in any bucket: not the store's other keys, not
    its data prefix for writing.

        store_policy("s3://b/mnist", ["s3://b/mnist/data"])
    """
    stores = [stores] if isinstance(stores, str) else list(stores)
    runs = sorted({(b, "/".join(x for x in (p, "runs") if x)) for b, p in map(parse_s3_uri, stores)})
    reads = sorted({parse_s3_uri(d) for d in data})
    statements: list[dict[str, Any]] = []
    if runs:
        statements.append({"Sid": "RunsReadWrite", "Effect": "Allow", "Action": RUN_ACTIONS,
                           "Resource": [_arn(b, p, "*") for b, p in runs]})
    if reads:
        statements.append({"Sid": "DataRead", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [_arn(b, p, "*") for b, p in reads]})
    for i, bucket in enumerate(sorted({b for b, _ in runs + reads})):
        prefixes = sorted({p for b, p in runs + reads if b == bucket})
        listing: dict[str, Any] = {"Sid": f"List{i}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                   "Resource": _arn(bucket)}
        if "" not in prefixes:  # a data prefix of a whole bucket lists all of it
            listing["Condition"] = {"StringLike": {"s3:prefix": [x for p in prefixes for x in (p, f"{p}/*")]}}
        statements.append(listing)
    return {"Version": "2012-10-17", "Statement": statements}


def policy_grants(doc: dict) -> tuple[set[str], set[str]]:
    """(stores, data prefixes) a ``store_policy`` document grants, as ``canonical_s3`` URIs; a document
    of another shape grants nothing (it is rewritten)."""
    stores: set[str] = set()
    data: set[str] = set()
    for st in doc.get("Statement", []):
        res = st.get("Resource", [])
        for arn in [res] if isinstance(res, str) else res:
            if not (isinstance(arn, str) and arn.startswith("arn:aws:s3:::") and arn.endswith("/*")):
                continue
            path = arn[len("arn:aws:s3:::"):-2]
            if st.get("Sid") == "RunsReadWrite" and path.endswith("/runs"):
                stores.add("s3://" + path[: -len("/runs")])
            elif st.get("Sid") == "DataRead":
                data.add("s3://" + path)
    return stores, data


EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def key_pair_name(public_key: str) -> str:
    """Named after the key's content: the same key is imported once per region and shared."""
    parts = public_key.split()
    blob = parts[1] if len(parts) > 1 else public_key
    return "mnist-launch-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def _user_of_family(text: str) -> Optional[str]:
    n = text.lower()
    if "ubuntu" in n:
        return "ubuntu"
    if "debian" in n:
        return "admin"
    if "amzn" in n or "amazon linux" in n or "al2023" in n:
        return "ec2-user"
    return None


def user_for_image(name: str, description: str = "") -> str:
    """The login user follows the image's family: its name first (a Deep Learning AMI's name says
    "(Ubuntu 22.04)" or "(Amazon Linux 2023)"), then its description; an unknown family: ubuntu."""
    return _user_of_family(name) or _user_of_family(description) or DLAMI_USER


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
            profile_arn=inst.get("IamInstanceProfile", {}).get("Arn"),
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

    def resolve_image(self, ami: Optional[str], parameter: Optional[str] = None) -> Image:
        """The image to boot: ``ami`` (--ami) if given, else the one the SSM ``parameter`` names (default
        ``self.image_parameter``, the Deep Learning AMI's), else, where that parameter is missing, the
        newest image Amazon publishes under the Deep Learning AMI's name (with a note saying so)."""
        ec2 = self.clients.ec2
        if not ami:
            parameter = parameter or self.image_parameter
            try:
                ami = self.clients.ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
            except ClientError as err:
                if error_code(err) != "ParameterNotFound":
                    raise
                img = self._newest_dlami()
                if img is None:
                    raise AWSError(
                        f"no PyTorch Deep Learning AMI in {self.region}: SSM parameter {parameter} not found and no "
                        f"image named '{DLAMI_NAME_PATTERN}' owned by {DLAMI_OWNER} — pass --ami AMI_ID, set "
                        "launch.ami_parameter, or pick another --region"
                    ) from None
                return self._image(img, note=(
                    f"SSM parameter {parameter} not found in {self.region}: using the newest image named like the "
                    f"Deep Learning AMI, {img['ImageId']} ({img.get('Name', '?')}, created {img.get('CreationDate', '?')})"))
        try:
            images = ec2.describe_images(ImageIds=[ami])["Images"]
        except ClientError as err:
            if error_code(err).startswith("InvalidAMIID"):
                images = []
            else:
                raise
        if not images:
            raise AWSError(f"image {ami} not found in {self.region} — check --ami (images are per region)")
        return self._image(images[0])

    def _newest_dlami(self) -> Optional[dict]:
        images = self.clients.ec2.describe_images(Owners=[DLAMI_OWNER], Filters=[
            {"Name": "name", "Values": [DLAMI_NAME_PATTERN]},
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "state", "Values": ["available"]},
        ])["Images"]
        # ISO 8601 times in one format sort as text; the name (it ends in a date) breaks ties
        return max(images, key=lambda i: (i.get("CreationDate", ""), i.get("Name", "")), default=None)

    @staticmethod
    def _image(img: dict, note: Optional[str] = None) -> Image:
        root = img.get("RootDeviceName", "/dev/sda1")
        size = next((m.get("Ebs", {}).get("VolumeSize") for m in img.get("BlockDeviceMappings", [])
                     if m.get("DeviceName") == root), None)
        return Image(id=img["ImageId"], name=img.get("Name", ""), root_device=root,
                     root_gb=int(size) if size else None,
                     user=user_for_image(img.get("Name", ""), img.get("Description", "")), note=note)

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
    def _stale_ssh_rules(sg: dict, cidr: str) -> list[str]:
        """The sources of the tcp/22 rules `up` added for an earlier caller address (they carry our
        description), other than ``cidr``; rules anyone else added are not ours to touch."""
        return sorted({r["CidrIp"] for perm in sg.get("IpPermissions", [])
                       if perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22
                       for r in perm.get("IpRanges", [])
                       if r.get("Description") == SSH_RULE_DESCRIPTION and r.get("CidrIp") != cidr})

    def _update_ssh(self, sg: dict, cidr: str, apply: bool = True) -> Optional[Step]:
        """Let ``cidr`` reach SSH and revoke the rule an earlier `up` added for another address (the
        caller moved: one rule, not one more per address ever used). None: nothing to change."""
        group_id = sg["GroupId"]
        have = self._has_ingress(sg, cidr)
        stale = self._stale_ssh_rules(sg, cidr)
        if have and not stale:
            return None
        if apply:
            if not have:
                self._authorize_ssh(group_id, cidr)  # first: never a moment with no rule for the caller
            if stale:
                self.clients.ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": c} for c in stale]}])
        what = [] if have else [f"allow tcp/22 from {cidr}"]
        what += [f"revoke the launcher's earlier rule for {', '.join(stale)}"] if stale else []
        return Step("security group", "update", f"{group_id}: {'; '.join(what)}")

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
            sg_step = self._update_ssh(sg, spec.ssh_cidr, apply=False) if sg is not None else None
            if sg_step is not None:
                steps.append(sg_step)
            if spec.store:
                self._check_profile(spec.name, existing, spec.store)
                if not self._grants_cover(self.role_name(spec.name), spec.store):
                    steps.append(Step("instance profile", "update", f"{self.role_name(spec.name)}: add read/write {spec.store}/runs/"))
            return Plan(self.region, steps, existing.instance_type, existing.image_id, existing.user,
                        existing.spot, hourly_price(existing.instance_type), existing)
        image = self.resolve_image(spec.ami, spec.ami_parameter)
        image_id, user = image.id, image.user
        vpc = self._default_vpc()
        steps = self._image_steps(spec, image)
        spec = replace(spec, disk_gb=image.root_volume_gb(spec.disk_gb))
        if spec.public_key:
            key_name = key_pair_name(spec.public_key)
            steps.append(Step("key pair", "reuse" if self._key_exists(key_name) else "create", key_name))
        else:
            steps.append(Step("key pair", "create", "from a new ed25519 key (generated under MNIST_LAUNCH_HOME)"))
        sg = self._find_sg(spec.name, vpc)
        if sg is None:
            steps.append(Step("security group", "create", f"{self.sg_name(spec.name)} in {vpc}: tcp/22 from {spec.ssh_cidr} only"))
        else:
            steps.append(self._update_ssh(sg, spec.ssh_cidr, apply=False)
                         or Step("security group", "reuse", f"{sg['GroupId']}: tcp/22 from {spec.ssh_cidr}"))
        if spec.store:
            parse_s3_uri(spec.store)
            role = self.role_name(spec.name)
            have = self._iam_get(self.clients.iam.get_instance_profile, InstanceProfileName=role)
            steps.append(Step("instance profile", "reuse" if have else "create", f"{role}: read/write {spec.store}/runs/ only"))
        else:
            steps.append(Step("instance profile", "none", "no s3:// store configured: the instance gets no AWS access"))
        subnets = self._subnets_by_az(vpc, spec.type_or_default, spec.avoid_az)
        market = "spot" if spec.spot else "on-demand"
        steps.append(Step("instance", "create", f"{spec.type_or_default} {market} in {subnets[0][0]} "
                          f"(then {', '.join(az for az, _ in subnets[1:]) or 'no other AZ'}), {spec.disk_gb} GB gp3 encrypted, IMDSv2"))
        self._dry_run_instance(spec, image_id, subnets[0][1])
        return Plan(self.region, steps, spec.type_or_default, image_id, user, spec.spot, hourly_price(spec.type_or_default))

    @staticmethod
    def _image_steps(spec: ClusterSpec, image: Image) -> list[Step]:
        """The plan's lines about the image: which one (and how it was found), and the root volume
        when the image's own snapshot is larger than --disk-gb (RunInstances refuses a smaller one)."""
        steps = [Step("image", "reuse", f"{image.id} ({image.name or 'no name'}), login user {image.user}")]
        if image.note:
            steps.append(Step("image", "find", image.note))
        disk = image.root_volume_gb(spec.disk_gb)
        if disk != spec.disk_gb:
            steps.append(Step("root volume", "raise", f"{disk} GB, not {spec.disk_gb}: the image's root snapshot is "
                              f"{image.root_gb} GB (--disk-gb / launch.disk_gb {spec.disk_gb} raised to it)"))
        return steps

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

    def _role_grants(self, role: str) -> Optional[tuple[set[str], set[str]]]:
        """(stores, data prefixes) the role's store policy grants; None when the role has no such policy."""
        doc = self._iam_get(self.clients.iam.get_role_policy, RoleName=role, PolicyName=STORE_POLICY_NAME)
        if doc is None:
            return None
        body = doc["PolicyDocument"]
        return policy_grants(json.loads(body) if isinstance(body, str) else body)

    def _grants_cover(self, role: str, store: Optional[str], data: Optional[str] = None) -> bool:
        grants = self._role_grants(role)
        if grants is None:
            return False
        return (not store or canonical_s3(store) in grants[0]) and (not data or canonical_s3(data) in grants[1])

    def _check_profile(self, name: str, inst: InstanceInfo, what: str) -> None:
        """Refuse in one line when the instance has no instance profile of ours: nothing it runs could reach ``what``."""
        role = self.role_name(name)
        if not (inst.profile_arn or "").endswith(f":instance-profile/{role}"):
            raise AWSError(
                f"cluster '{name}' ({inst.id}) has no instance role of ours (it was brought up without --store), so a "
                f"run there could not reach {what} — `mnist-launch down {name}`, then `up --store s3://...` "
                "(or train elsewhere with --name)")

    def store_access(self, name: str, inst: InstanceInfo, store: Optional[str],
                     data: Optional[str] = None) -> Optional[Step]:
        """Make the instance's role cover what a run needs before it starts: read/write/delete under
        ``store``/runs/ and read under ``data`` (an s3:// prefix). The role's policy grows to the union of
        what the cluster's runs were given (a run on another store may still be uploading); a cluster
        without a role of ours is refused in one line. Returns the step taken, None when nothing changed."""
        if not store and not data:
            return None
        self._check_profile(name, inst, " and ".join(x for x in (store, data) if x))
        role = self.role_name(name)
        grants = self._role_grants(role) or (set(), set())
        want_s = {canonical_s3(store)} if store else set()
        want_d = {canonical_s3(data)} if data else set()
        if want_s <= grants[0] and want_d <= grants[1]:
            return None
        self.clients.iam.put_role_policy(RoleName=role, PolicyName=STORE_POLICY_NAME, PolicyDocument=json.dumps(
            store_policy(sorted(grants[0] | want_s), sorted(grants[1] | want_d))))
        added = [f"read/write {s}/runs/" for s in sorted(want_s - grants[0])] + [f"read {d}/" for d in sorted(want_d - grants[1])]
        return Step("instance profile", "update", f"{role}: add {', '.join(added)}")

    def _reuse(self, spec: ClusterSpec, inst: InstanceInfo) -> UpOutcome:
        self._check_same_type(spec, inst)
        steps = []
        step = self.store_access(spec.name, inst, spec.store)
        if step is not None:
            steps.append(step)
        sg = self._find_sg(spec.name)
        sg_step = self._update_ssh(sg, spec.ssh_cidr) if sg is not None else None
        if sg_step is not None:
            steps.append(sg_step)
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
                            "IpRanges": [{"CidrIp": cidr, "Description": SSH_RULE_DESCRIPTION}]}],
        )

    def _create(self, spec: ClusterSpec, created: list[Created]) -> UpOutcome:
        ec2, iam = self.clients.ec2, self.clients.iam
        steps: list[Step] = []
        # everything that can fail without side effects comes first
        image = self.resolve_image(spec.ami, spec.ami_parameter)
        image_id, root_device, user = image.id, image.root_device, image.user
        steps += self._image_steps(spec, image)
        spec = replace(spec, disk_gb=image.root_volume_gb(spec.disk_gb))
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
            steps.append(self._update_ssh(sg, spec.ssh_cidr) or Step("security group", "reuse", group_id))

        profile = None
        if spec.store:
            profile = self.role_name(spec.name)
            policy = json.dumps(store_policy(spec.store))  # a reused role keeps only this store: its instance is gone
            if self._iam_get(iam.get_role, RoleName=profile) is None:
                iam.create_role(RoleName=profile, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                                Description=f"mnist-launch cluster {spec.name}: its store prefix only",
                                Tags=self.tags(spec.name))
                created.append(Created("role", profile))
            retry(lambda: iam.put_role_policy(RoleName=profile, PolicyName=STORE_POLICY_NAME, PolicyDocument=policy),
                  NEW_ROLE, what=f"PutRolePolicy {profile}", log=self.log)
            if self._iam_get(iam.get_instance_profile, InstanceProfileName=profile) is None:
                iam.create_instance_profile(InstanceProfileName=profile, Tags=self.tags(spec.name))
                created.append(Created("instance-profile", profile))
                retry(lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile),
                      NEW_ROLE, what=f"AddRoleToInstanceProfile {profile}", log=self.log)
                new.append(NEW_PROFILE)
                steps.append(Step("instance profile", "create", f"{profile}: read/write {spec.store}/runs/ only"))
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
            # IMDSv2 only, one hop: the agent runs on the host itself. 2 is what a container behind a
            # bridge needs to reach IMDS; nothing of ours runs in one, and 1 keeps any container out.
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
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
