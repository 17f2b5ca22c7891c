"""The one module that reads the project's environment variables (``MNIST_LAUNCH_*``).

Each variable is documented once, in the table in docs/settings.md; ``DEFAULTS`` here is what an
unset (or empty) variable means, and tests/unit/test_settings.py fails when the table and this
module disagree, or when other code reads a ``MNIST_LAUNCH_*`` variable itself. Values are read
on every call, never cached, so a test that sets a variable sees it at once.
The one exception is ``infra/autostop.py``: it is copied to the instance as one stdlib-only file
and reads its own two variables (the table says which).

    delay = settings.step_delay()  # MNIST_LAUNCH_STEP_DELAY, 0.0 when unset
"""

from __future__ import annotations

import os
from typing import Optional

from core.errors import AWSError, ConfigError, LaunchError, RunError

DEBUG = "MNIST_LAUNCH_DEBUG"
HOME = "MNIST_LAUNCH_HOME"
DATA = "MNIST_LAUNCH_DATA"
DATA_MIRRORS = "MNIST_LAUNCH_DATA_MIRRORS"
STEP_DELAY = "MNIST_LAUNCH_STEP_DELAY"
SSH_ENDPOINT = "MNIST_LAUNCH_SSH_ENDPOINT"
SSH_CIDR = "MNIST_LAUNCH_SSH_CIDR"
AUTOSTOP_HOME = "MNIST_LAUNCH_AUTOSTOP_HOME"
AUTOSTOP_INSTALL = "MNIST_LAUNCH_AUTOSTOP_INSTALL"
AUTOSTOP_POLL = "MNIST_LAUNCH_AUTOSTOP_POLL"
# read by the watcher itself (infra/autostop.py, on the instance); `up` forwards them when set here
SHUTDOWN_CMD = "MNIST_LAUNCH_SHUTDOWN_CMD"
AUTOSTOP_IGNORE_SSH = "MNIST_LAUNCH_AUTOSTOP_IGNORE_SSH"
EC2_CONSISTENCY_S = "MNIST_LAUNCH_EC2_CONSISTENCY_S"
IAM_CONSISTENCY_S = "MNIST_LAUNCH_IAM_CONSISTENCY_S"
AWS_MAX_ATTEMPTS = "MNIST_LAUNCH_AWS_MAX_ATTEMPTS"
AWS_RETRY_CAP_S = "MNIST_LAUNCH_AWS_RETRY_CAP_S"
IMDS_POLL = "MNIST_LAUNCH_IMDS_POLL"
RENDEZVOUS_ADDRESS = "MNIST_LAUNCH_RENDEZVOUS_ADDRESS"

# What an unset or empty variable means ("" = nothing: the caller's own fallback applies).
DEFAULTS: dict[str, str] = {
    DEBUG: "0",
    HOME: "~/.mnist-launch",
    DATA: "",
    DATA_MIRRORS: "",
    STEP_DELAY: "0",
    SSH_ENDPOINT: "",
    SSH_CIDR: "",
    AUTOSTOP_HOME: "~/.mnist-launch",
    AUTOSTOP_INSTALL: "1",
    AUTOSTOP_POLL: "30",
    SHUTDOWN_CMD: "",
    AUTOSTOP_IGNORE_SSH: "0",
    EC2_CONSISTENCY_S: "120",
    IAM_CONSISTENCY_S: "300",
    AWS_MAX_ATTEMPTS: "10",
    AWS_RETRY_CAP_S: "5",
    IMDS_POLL: "2",
    RENDEZVOUS_ADDRESS: "",
}
# the watcher's own settings: passed on to it by `up` (tests replace its shutdown, let it ignore their SSH)
AUTOSTOP_FORWARDED = (SHUTDOWN_CMD, AUTOSTOP_IGNORE_SSH)


def raw(name: str) -> Optional[str]:
    """The variable as set, or None when unset or empty (an empty value means the default everywhere)."""
    if name not in DEFAULTS:
        raise KeyError(f"{name} is not a setting: add it to core/settings.py and docs/settings.md")
    return os.environ.get(name) or None


def _get(name: str) -> str:
    return raw(name) or DEFAULTS[name]


def _seconds(name: str, error: type[LaunchError], fix: str) -> float:
    text = _get(name).strip() or DEFAULTS[name]
    try:
        value = float(text)
    except ValueError:
        raise error(f"{name}={raw(name)!r}: {fix}") from None
    return value


def debug() -> bool:
    """``MNIST_LAUNCH_DEBUG=1``: unexpected errors and user errors show their traceback."""
    return _get(DEBUG) == "1"


def launch_home() -> str:
    """The launcher's local state folder (not expanded, not created: infra/home.py does both)."""
    return _get(HOME)


def data_dir() -> Optional[str]:
    """Where `train` looks for MNIST when neither --data-dir nor data.dir says."""
    return raw(DATA)


def data_mirrors() -> Optional[list[str]]:
    """Where a missing MNIST file is downloaded from when data.mirrors does not say: URLs separated by commas
    or spaces, tried in order (None: torchvision's mirrors)."""
    text = raw(DATA_MIRRORS)
    if text is None:
        return None
    from core.config.checks import check_mirror

    urls = [u for u in text.replace(",", " ").split() if u]
    try:
        return [check_mirror(u) for u in urls] or None
    except ValueError as err:
        raise ConfigError(f"{DATA_MIRRORS}: {err} — fix or unset it") from None


def step_delay() -> float:
    """Seconds slept after each training step (0 when unset): it lets a test interrupt a short run
    at a known point on any machine, however fast, instead of racing it."""
    text = (raw(STEP_DELAY) or "").strip()
    if not text:
        return 0.0
    try:
        delay = float(text)
    except ValueError:
        raise RunError(f"{STEP_DELAY}={text!r} is not a number of seconds — unset it or give e.g. 0.2") from None
    return max(delay, 0.0)


def ssh_endpoint() -> Optional[str]:
    """``[user@]host:port`` to connect to instead of the instance's own address."""
    return raw(SSH_ENDPOINT)


def rendezvous_address() -> Optional[str]:
    """Where a multi-node run's nodes reach rank 0 instead of its private address (a tunnel, tests)."""
    return raw(RENDEZVOUS_ADDRESS)


def ssh_cidr() -> Optional[str]:
    """The SSH source range when --ssh-cidr / launch.ssh_cidr is not given."""
    return raw(SSH_CIDR)


def autostop_home() -> str:
    """Where the autostop watcher lives on the instance."""
    return _get(AUTOSTOP_HOME)


def autostop_install() -> bool:
    """False with ``MNIST_LAUNCH_AUTOSTOP_INSTALL=0``: `up` leaves the watcher out."""
    return _get(AUTOSTOP_INSTALL) != "0"


def autostop_poll() -> float:
    """Seconds between the watcher's checks."""
    return _seconds(AUTOSTOP_POLL, ConfigError, "expected a number of seconds — fix or unset it")


def autostop_forwarded_env() -> dict[str, str]:
    """The watcher's own variables that are set here, to be set for it on the instance."""
    return {name: value for name in AUTOSTOP_FORWARDED if (value := raw(name))}


def aws_seconds(name: str) -> float:
    """One of the AWS retry durations (EC2_CONSISTENCY_S, IAM_CONSISTENCY_S, AWS_RETRY_CAP_S), >= 0."""
    value = _seconds(name, AWSError, "expected a number of seconds — fix or unset it")
    if value < 0:
        raise AWSError(f"{name}={raw(name)!r}: expected a number of seconds >= 0 — fix or unset it")
    return value


def aws_max_attempts() -> int:
    """botocore's attempts per request (the first one included) before a throttle is an error."""
    return max(1, int(aws_seconds(AWS_MAX_ATTEMPTS)))


def imds_poll() -> float:
    """Seconds between the agent's checks of the instance metadata service (0: off)."""
    return _seconds(IMDS_POLL, RunError, "expected a number of seconds (0: off) — fix or unset it")
