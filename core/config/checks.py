"""Values that reach a shell, a path or an AWS call: checked here, once, at load.

Each check raises ValueError saying which rule a value breaks (pydantic turns it into the config
error line), except ``check_location``, which raises the ConfigError users see for a flag.

    check_remote_path("~/mnist-launch")  # returned as given; "~/a b" raises ValueError
"""

from __future__ import annotations

import re

from core.errors import ConfigError

# remote paths and programs: a conservative character set, so that a value is the same word in every
# shell, log line and systemd unit it reaches (and is still quoted wherever it goes)
# (no %: cron reads it as a newline and systemd as a specifier, and both see these paths in the autostop watcher)
_PATH_PART = re.compile(r"[A-Za-z0-9._+@,=:-]+")
PROGRAM = re.compile(r"[A-Za-z0-9._+-]+")
_CHARS = "letters, digits and . _ - + @ , = :"
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")
AMI_ID = re.compile(r"ami-[0-9a-f]{1,32}")
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,30}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# AWS wants 3+ characters; the charset is what matters here
S3_BUCKET = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")

# AWS_* names that may be set in launch.env: plain client settings. Every other AWS_* name is refused:
# the instance reaches AWS with its own role, and an AWS_* variable either carries credentials
# (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_SECURITY_TOKEN, ...), says where
# to find them (AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_WEB_IDENTITY_TOKEN_FILE,
# AWS_ROLE_ARN, AWS_CONTAINER_CREDENTIALS_*, AWS_CONTAINER_AUTHORIZATION_TOKEN*), or changes where the
# SDK sends them (AWS_ENDPOINT_URL*, AWS_EC2_METADATA_*). Deny by default: new credential variables
# appear with new SDK releases, and a list of known names would silently let them through.
AWS_ENV_ALLOWED = frozenset({"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE",
                             "AWS_DEFAULT_OUTPUT", "AWS_PAGER"})


def has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def check_remote_path(value: str) -> str:
    """An absolute path, ``~`` or ``~/path`` on the instance: each part of _PATH_PART's characters,
    none starting with '-', no '..'. ValueError says which rule it breaks."""
    rest = value[2:] if value.startswith("~/") else value[1:] if value.startswith("/") else None
    if value == "~" or value == "/":
        return value
    if rest is None:
        raise ValueError("must be an absolute path or ~/path on the instance")
    parts = [p for p in rest.split("/") if p]
    if not parts:
        raise ValueError("must name a folder below / or ~")
    for part in parts:
        if part == "..":
            raise ValueError("must not contain '..'")
        if part.startswith("-"):
            raise ValueError("no part of it may start with '-'")
        if not _PATH_PART.fullmatch(part):
            raise ValueError(f"use only {_CHARS} in each part (no spaces, quotes or shell characters)")
    return value


def check_s3_uri(uri: str) -> str:
    """s3://bucket[/prefix] with a real bucket name and a prefix of printable characters, no '..' part."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not S3_BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"bucket {bucket!r} is not an S3 bucket name (lowercase letters, digits, '.' and '-')")
    if has_control(prefix) or ".." in prefix.split("/") or "\\" in prefix:
        raise ValueError("the prefix must be printable, with no '..' part")
    return uri


def check_location(value: str, what: str) -> str:
    """A store or data location: s3://bucket/prefix, or a local folder (no control characters, no
    leading '-'). Raises ConfigError naming ``what`` (the flag or key)."""
    try:
        if value.startswith("s3://"):
            check_s3_uri(value)
        elif has_control(value):
            raise ValueError("control characters in a path")
        elif value.startswith("-"):
            raise ValueError("a path may not start with '-' (write ./" + value[:20] + "...)")
        elif not value:
            raise ValueError("empty")
    except ValueError as err:
        raise ConfigError(f"{what} {value!r}: {err} — pass s3://bucket/prefix or a folder") from None
    return value


def check_env(env: dict[str, str]) -> None:
    """launch.env: valid names, no AWS credentials (AWS_ENV_ALLOWED), values on one line without control
    characters. The message names the variable, never its value."""
    for key, val in env.items():
        if not ENV_NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not a valid variable name — use letters, digits and _ (not first a digit)")
        if key.upper().startswith("AWS_") and key.upper() not in AWS_ENV_ALLOWED:
            raise ValueError(f"{key} would copy your AWS credentials (or where to find them) to the instance "
                             "— remove it; the instance reaches the store with its own role (`up --store s3://...`)")
        if has_control(val):
            raise ValueError(f"the value of {key} holds a control character (newline, tab, escape, ...) — "
                             "give it on one line of printable characters")


def check_mirror(url: str) -> str:
    """A download mirror: an http(s) URL of a folder (the file's fixed name is appended), printable, one line."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"mirror {url!r} is not an http:// or https:// URL")
    if has_control(url) or " " in url or parts.query or parts.fragment:
        raise ValueError(f"mirror {url!r}: give the folder's URL alone (no spaces, ?query or #fragment)")
    return url
