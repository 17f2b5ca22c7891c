"""The cluster commands `up`, `status`, `down` and `ssh`, one module each, over infra/aws and infra/ssh.

    settings.py   names, durations, region, key; a config's launch: section merged with the flags
    output.py     rich consoles, the phase spinner, the ``Confirm`` question the CLI passes in
    access.py     a cluster's running instance, its login key, its SSHHost, its role's store access
    provision.py  `up`: find / start / create (every node), wait until SSH runs a command, install autostop
    ready.py      the waits of `up`: running, status checks, SSH; one line per phase, or all nodes at once
    listing.py    `status`: instances, prices, active runs and idle time, forgotten-instance warnings
    teardown.py   `down`: terminate or stop, delete what was created, verify nothing is left, say what it cost
    costs.py      how those commands say a price: the hourly total with its parts, the cost since launch
    shell.py      `ssh`: the system ssh client with the pinned host key and a bare environment

They know the order of things, not how AWS or SSH work; they never ask on the terminal by themselves
(launcher/cloud_cli.py passes ``confirm`` in). What callers import is re-exported here.

    up(UpRequest(launch=LaunchConfig(instance="g4dn.xlarge", ssh_cidr="203.0.113.7/32")))
"""

from infra.activity import STATE_MARK, parse_activity
from launcher.cluster.access import (
    NoInstanceError,
    cluster_host,
    grant_run_access,
    login_key,
    running_instance,
    running_nodes,
)
from launcher.cluster.listing import (
    WARN_AGE_S,
    WARN_IDLE_S,
    instance_activity,
    orphan_warnings,
    status,
    status_rows,
)
from launcher.cluster.output import Confirm, err_console, out_console, phase
from launcher.cluster.provision import (
    UpRequest,
    UpResult,
    print_plan,
    setup_autostop,
    up,
    warn_autostop_off,
)
from launcher.cluster.ready import wait_all_ready, wait_until_ready
from launcher.cluster.settings import (
    NAME_RE,
    autostop_home,
    check_name,
    default_region,
    identity_for,
    launch_settings,
    parse_duration,
)
from launcher.cluster.shell import SSH_ENV_KEPT, ssh, ssh_argv, ssh_env
from launcher.cluster.teardown import down

__all__ = [
    "NAME_RE", "SSH_ENV_KEPT",
    "STATE_MARK", "WARN_AGE_S", "WARN_IDLE_S", "Confirm", "NoInstanceError", "UpRequest", "UpResult",
    "autostop_home", "check_name", "cluster_host", "default_region", "down", "err_console", "grant_run_access",
    "identity_for", "instance_activity", "launch_settings", "login_key", "orphan_warnings", "out_console",
    "parse_activity", "parse_duration", "phase", "print_plan", "running_instance", "running_nodes", "setup_autostop",
    "ssh", "ssh_argv", "ssh_env", "status", "status_rows", "up", "wait_all_ready", "wait_until_ready",
    "warn_autostop_off",
]
