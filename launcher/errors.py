"""The launcher's user-facing errors: the trainer's hierarchy plus cloud and transport failures.

    raise AWSError("no AWS credentials found — run `aws configure` or set AWS_PROFILE")
"""

from trainer.errors import ConfigError, DataError, LaunchError, RunError


class AWSError(LaunchError):
    """An AWS call failed in a way the user can act on (credentials, quota, capacity, access)."""


class SSHError(LaunchError):
    """The instance cannot be reached or refuses us (auth, host key, network)."""


class SyncError(LaunchError):
    """Mirroring the workdir to a host failed there (no python3, a path that is not a directory, permissions)."""


class SetupError(LaunchError):
    """Building a run's Python environment on a host failed (no interpreter, pip install)."""


__all__ = ["AWSError", "ConfigError", "DataError", "LaunchError", "RunError", "SSHError", "SetupError", "SyncError"]
