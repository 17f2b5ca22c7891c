"""AWS's failures: which are transient (retried), which are the user's to fix (one AWSError line).

Two kinds of transient refusal, two mechanisms:

- Throttling (``RequestLimitExceeded``, ``Throttling``, ``ThrottlingException``, ``SlowDown``) and 5xx
  can hit any call, so botocore's own "standard" retry mode handles them for every client made by
  ``infra.aws.Clients`` (jittered exponential backoff, at most ``max_attempts()`` attempts, about a
  minute with the default 10). It is per request, covers paginators, waiters and S3 transfers alike,
  and needs no code at the call sites; when it gives up, ``aws_errors`` says so in one line.
- Eventual consistency is not an error botocore knows: ``InvalidInstanceID.NotFound`` right after
  RunInstances, ``InvalidGroup.NotFound`` right after CreateSecurityGroup, a new instance profile
  refused by RunInstances for a minute or more, ``NoSuchEntity`` right after CreateRole. Such an
  answer is only transient for a resource this very call just created, so the call sites that use
  one wrap the call in ``retry`` with the ``Transient`` that fits it; its deadline (seconds to a
  couple of minutes for EC2, minutes for IAM) comes from the environment, so tests shorten it.

Everything else ends in ``aws_errors``: boto's exceptions turned into one actionable AWSError line.

    with aws_errors():
        retry(lambda: ec2.describe_instances(InstanceIds=[i]), NEW_INSTANCE, what=f"describe {i}", log=print)
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from core import settings
from core.errors import AWSError

T = TypeVar("T")

# the durations and attempts, read through core/settings.py (defaults and meaning: docs/settings.md)
EC2_DEADLINE_ENV = settings.EC2_CONSISTENCY_S  # how long a new EC2 resource may stay unseen
IAM_DEADLINE_ENV = settings.IAM_CONSISTENCY_S  # how long a new role / instance profile may
MAX_ATTEMPTS_ENV = settings.AWS_MAX_ATTEMPTS  # botocore's attempts per request for throttling/5xx
BACKOFF_CAP_ENV = settings.AWS_RETRY_CAP_S  # the longest sleep between two tries

# what botocore's standard mode retries by itself; named here for the one line when it gave up
THROTTLE_ERRORS = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "ThrottledException",
                   "RequestThrottled", "RequestThrottledException", "TooManyRequestsException", "SlowDown",
                   "EC2ThrottledException", "BandwidthLimitExceeded"}
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


def error_code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def max_attempts() -> int:
    """botocore's attempts per request (the first one included) before a throttle is an error."""
    return settings.aws_max_attempts()


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
                f"AWS rejected your credentials ({code}) — refresh them (`aws sso login` or `aws configure`) "
                "and run again"
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
        msg = one_line(err.response.get("Error", {}).get("Message", ""))
        raise AWSError(f"AWS {op} failed: {code}: {msg} — fix the cause above and run again") from None
    except BotoCoreError as err:
        name = type(err).__name__
        if "Token" in name or "SSO" in name:
            raise AWSError(f"AWS login expired ({name}) — run `aws sso login` and run again") from None
        raise AWSError(f"AWS client error: {one_line(str(err))} — check your AWS configuration") from None


# ---------------------------------------------------------------------------------------------
# waiting: AWS catching up with what this call created, and polling for a state


@dataclass(frozen=True)
class Transient:
    """Answers AWS gives while it catches up with something just created, and how long to wait for it."""

    what: str  # "the new security group": for the waiting line and the final one
    codes: frozenset[str]
    deadline_env: str  # its default is in core/settings.py
    messages: tuple[str, ...] = ()  # when set, the error message must contain one of them too (case-insensitive)

    def matches(self, err: ClientError) -> bool:
        code = err.response.get("Error", {}).get("Code", "")
        text = err.response.get("Error", {}).get("Message", "") or ""
        return code in self.codes and (not self.messages or any(m.lower() in text.lower() for m in self.messages))

    def deadline_s(self) -> float:
        return settings.aws_seconds(self.deadline_env)


NEW_INSTANCE = Transient("the new instance", frozenset({"InvalidInstanceID.NotFound"}), EC2_DEADLINE_ENV)
NEW_GROUP = Transient("the new security group", frozenset({"InvalidGroup.NotFound"}), EC2_DEADLINE_ENV)
NEW_KEY = Transient("the new key pair", frozenset({"InvalidKeyPair.NotFound"}), EC2_DEADLINE_ENV)
NEW_PLACEMENT_GROUP = Transient("the new placement group", frozenset({"InvalidPlacementGroup.Unknown"}),
                                EC2_DEADLINE_ENV)
# RunInstances: "Value (x) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name"
NEW_PROFILE = Transient("the new instance profile", frozenset({"InvalidParameterValue"}), IAM_DEADLINE_ENV,
                        messages=("instance profile", "iamInstanceProfile"))
NEW_ROLE = Transient("the new role", frozenset({"NoSuchEntity"}), IAM_DEADLINE_ENV)


def retry(call: Callable[[], T], *transients: Transient, what: str,
          log: Callable[[str], None] = lambda _m: None, sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, again with backoff while it fails with one of ``transients``, until that one's deadline
    (counted from its first refusal); then one AWSError line. Any other error is raised at once."""
    first: dict[Transient, float] = {}
    delay, cap = 0.25, settings.aws_seconds(BACKOFF_CAP_ENV)
    while True:
        try:
            return call()
        except ClientError as err:
            t = next((t for t in transients if t.matches(err)), None)
            if t is None:
                raise
            now = time.monotonic()
            if t not in first:
                first[t] = now
                log(f"{what}: AWS does not see {t.what} yet ({_code(err)}); retrying for up to {t.deadline_s():g}s")
            waited = now - first[t]
            if waited >= t.deadline_s():
                raise AWSError(
                    f"{what}: AWS still answered {_code(err)} for {t.what} after {t.deadline_s():g}s — "
                    "AWS is slower than usual to see new resources; run the command again "
                    f"(what this call created is rolled back), or raise {t.deadline_env}"
                ) from None
            sleep(min(delay, cap, max(0.0, t.deadline_s() - waited)))
            delay *= 2


def _code(err: ClientError) -> str:
    return error_code(err) or "?"


class Backoff:
    """Sleeps 0.25s, 0.5s, 1s, ... up to ``cap``: quick answers stay quick, long waits poll gently."""

    def __init__(self, cap: float, first: float = 0.25) -> None:
        self.cap = cap
        self.delay = min(first, cap)

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def delete_when_free(call: Callable[[], Any], new: Transient, gone: str, busy: str, what: str, poll_s: float,
                     timeout_s: float, just_created: bool, log: Callable[[str], None] = lambda _m: None) -> None:
    """Delete a resource with ``call()``: one already gone (``gone``) is fine; one something still holds
    (``busy``: a just-terminated instance's network interface, its placement) is tried again with backoff until
    ``timeout_s``. A resource made by this very call may be unknown for a while yet: then ``gone`` is AWS's
    eventual consistency, retried as ``new``, not "already gone"."""
    deadline = time.monotonic() + timeout_s
    backoff = Backoff(poll_s)
    while True:
        try:
            if just_created:
                retry(call, new, what=what, log=log)
            else:
                call()
            return
        except ClientError as err:
            code = error_code(err)
            if code == gone:
                return
            if code != busy or time.monotonic() > deadline:
                raise
            backoff.sleep()
