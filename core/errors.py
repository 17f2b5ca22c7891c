"""User-facing failures: one exception hierarchy, one line each.

Every failure a user can fix raises a ``LaunchError`` subclass whose message says what is
wrong and what to do; the CLI prints ``error: <message>`` and exits non-zero. Anything else is
a bug and only shows a traceback with ``MNIST_LAUNCH_DEBUG=1`` (``core.settings.debug()``).

    raise ConfigError("configs/x.yaml: train.lr: must be > 0 (got -1)")
"""


class LaunchError(Exception):
    """A failure the user can fix; ``str(err)`` is the whole message."""

    exit_code = 1
    # lines shown just above the `error:` line, when the user's own code failed: the frames of their file (a
    # model class), never the launcher's or the trainer's
    detail = ""


class ConfigError(LaunchError):
    """A config file, ``--set`` override or flag is invalid."""

    exit_code = 2


class DataError(LaunchError):
    """MNIST files are missing, truncated or not IDX."""


class RunError(LaunchError):
    """A run cannot be found, started, resumed or cancelled."""


class AWSError(LaunchError):
    """An AWS call failed in a way the user can act on (credentials, quota, capacity, access)."""


class SSHError(LaunchError):
    """The instance cannot be reached or refuses us (auth, host key, network)."""


class SyncError(LaunchError):
    """Mirroring the workdir to a host failed there (no python3, a path that is not a directory, permissions)."""


class SetupError(LaunchError):
    """Building a run's Python environment on a host failed (no interpreter, pip install)."""


__all__ = ["AWSError", "ConfigError", "DataError", "LaunchError", "RunError", "SSHError", "SetupError", "SyncError"]
