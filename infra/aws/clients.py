"""The boto3 clients of one region, created here and nowhere else (inject a Session in tests).

Throttling, 5xx and dropped connections are retried per request by botocore's "standard" mode
(see infra/aws/errors.py); ``AWS_ENDPOINT_URL`` is honoured by boto3 itself.

    clients = Clients.create("us-east-1")
    clients.ec2.describe_vpcs()
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config as BotoConfig

from infra.aws.errors import max_attempts

DEFAULT_REGION = "us-east-1"


@functools.lru_cache(maxsize=1)
def _shared_loader() -> botocore.loaders.Loader:
    """One reader of botocore's model files for the whole process: it caches what it parsed.

    Each boto3 Session otherwise gets a loader of its own and parses the service models again (EC2's
    is megabytes of JSON: about 0.3 s of CPU a session); a command opens a few sessions (one per region
    it looks at, one for its store), and the tests hundreds."""
    return botocore.loaders.create_loader()


def new_session(**kwargs: Any) -> boto3.Session:
    """A boto3 Session of its own (credentials and region read when first asked, from the environment
    and profile as boto3 does; ``kwargs`` as boto3.Session takes them), parsing no model file another
    session of this process has parsed."""
    loader = _shared_loader()
    core = botocore.session.get_session()
    core.register_component("data_loader", loader)
    session = boto3.Session(botocore_session=core, **kwargs)
    loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))  # boto3 appends its data folder each time
    return session


class Clients:
    """The boto3 clients of one region, created here and nowhere else (inject a Session in tests)."""

    def __init__(self, session: boto3.Session, region: str) -> None:
        self.session = session
        self.region = region
        self._cache: dict[str, Any] = {}

    @classmethod
    def create(cls, region: Optional[str] = None, session: Optional[boto3.Session] = None) -> "Clients":
        session = session or new_session()
        return cls(session, region or session.region_name or DEFAULT_REGION)

    def _client(self, service: str) -> Any:
        if service not in self._cache:
            # throttling, 5xx and dropped connections: retried per request by botocore (infra/aws/errors.py)
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


class Regional:
    """What each part of the provider (instances, network, IAM, images) works through: one region's
    clients, where its progress lines go, and how often it polls while waiting."""

    def __init__(self, clients: Clients, log: Callable[[str], None] = lambda _msg: None, poll_s: float = 3.0) -> None:
        self.clients = clients
        self.region = clients.region
        self.log = log
        self.poll_s = poll_s


def known_region(region: str) -> bool:
    """Whether botocore's own endpoint data knows ``region`` for EC2 (no network call): a typo is caught
    before any request. True when that data lists nothing (an unusual botocore)."""
    session = new_session()
    known = set(session.get_available_regions("ec2")) | set(session.get_available_regions("ec2", "aws-cn")) \
        | set(session.get_available_regions("ec2", "aws-us-gov"))
    return not known or region in known


def configured_region() -> str:
    """The region of the boto3 chain (AWS_DEFAULT_REGION, the profile's config), else us-east-1."""
    return new_session().region_name or DEFAULT_REGION
