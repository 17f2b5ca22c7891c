"""`ssh`: the system ssh client into a cluster's instance, with its key, user and pinned host key,
and nothing of this machine in reach of the session (no agent, no forwards, no credentials).

    code = ssh("mnist", None, None, ["nvidia-smi"])
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Optional

from infra import home
from infra.ssh import SSHHost, endpoint_for
from launcher.cluster import access

# the only variables the ssh child sees: what a terminal session needs, nothing that holds a secret
SSH_ENV_KEPT = ("PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "COLORTERM", "TMPDIR")


def ssh_argv(name: str, region: Optional[str], identity: Optional[str], command: list[str]) -> list[str]:
    """The system ssh command line for a cluster, with its host key pinned (TOFU on first use)."""
    inst = access.running_instance(name, region)
    key = access.login_key(inst, name, identity)
    ep = endpoint_for(inst.public_ip, inst.user, node=inst.node)
    with SSHHost(ep, key, alias=inst.id) as host:
        host.connect()  # pins the host key on first use, refuses a changed one
    # Nothing of this machine travels but the key's signature: no agent (-a, and no SSH_AUTH_SOCK in
    # ssh_env), no X11, no port forwards, no environment variables (SendEnv/SetEnv from a user's
    # ~/.ssh/config are not read: -F /dev/null; everything ssh needs is on this line).
    argv = ["ssh", "-F", "/dev/null", "-a", "-x", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ClearAllForwardings=yes",
            "-o", "PermitLocalCommand=no", "-o", f"UserKnownHostsFile={home.known_hosts_path()}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={inst.id}",
            "-o", "LogLevel=ERROR", "-p", str(ep.port), "--", f"{ep.user}@{ep.host}"]
    if command:
        argv.append(shlex.join(command))
    return argv


def ssh_env(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of the ssh child: SSH_ENV_KEPT from ours, so no credential (AWS_*, tokens) and no
    agent socket (SSH_AUTH_SOCK) is in reach of ssh or of anything it might start."""
    source = dict(os.environ) if environ is None else environ
    return {k: source[k] for k in SSH_ENV_KEPT if k in source}


def ssh(name: str, region: Optional[str], identity: Optional[str], command: list[str]) -> int:
    return subprocess.run(ssh_argv(name, region, identity, command), env=ssh_env()).returncode
