"""The cloud commands `up`, `status`, `down`, `ssh`: thin typer functions over launcher/cluster/.

Each raises LaunchError subclasses; the main CLI prints them as `error: ...` and exits non-zero.
The questions (create these resources? terminate?) are asked here, on the terminal, and passed in.
launcher/cluster/ (boto3, paramiko: about a second of CPU to import) is imported when a command runs,
so the local commands (`train --local`, `runs`, `logs`) never pay for it.

    app = typer.Typer(); register(app)
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, List, Optional

import typer

if TYPE_CHECKING:
    from launcher.cluster import Confirm


def terminal_confirm() -> Optional["Confirm"]:
    """A yes/no question on the terminal; None when stdin is none (a script or CI: nobody to ask)."""
    if not sys.stdin.isatty():
        return None
    return lambda question, default: typer.confirm(question, default=default)


def up(
    instance: Optional[str] = typer.Option(None, "--instance", help="EC2 instance type, e.g. g4dn.xlarge"),
    name: Optional[str] = typer.Option(None, "--name", help="cluster name (tag) to reuse or create [default: mnist]"),
    region: Optional[str] = typer.Option(None, "--region",
                                         help="AWS region [default: the AWS config's, else us-east-1]"),
    spot: Optional[bool] = typer.Option(None, "--spot/--on-demand", help="request a spot instance"),
    nodes: Optional[int] = typer.Option(None, "--nodes", help="instances in the cluster, in one zone (multi-node) "
                                                              "[default: 1]"),
    disk_gb: Optional[int] = typer.Option(None, "--disk-gb", help="root volume size in GB (encrypted gp3)"),
    ami: Optional[str] = typer.Option(None, "--ami", help="image id [default: the region's PyTorch Deep Learning AMI]"),
    ami_parameter: Optional[str] = typer.Option(None, "--ami-parameter",
                                                help="SSM parameter naming the default image "
                                                     "[default: the PyTorch DLAMI's]"),
    identity: Optional[str] = typer.Option(None, "--identity",
                                           help="your private key [default: one generated under MNIST_LAUNCH_HOME]"),
    ssh_cidr: Optional[str] = typer.Option(None, "--ssh-cidr", help="who may reach SSH [default: your public IP /32]"),
    autostop: Optional[str] = typer.Option(None, "--autostop",
                                           help="idle time before the instance stops itself, e.g. 30m, or off"),
    autostop_terminate: Optional[bool] = typer.Option(None, "--autostop-terminate/--autostop-stop",
                                                      help="when idle, terminate the instance instead of stopping it"),
    timeout: Optional[str] = typer.Option(None, "--timeout",
                                          help="how long to wait for the instance and SSH, e.g. 15m"),
    store: Optional[str] = typer.Option(None, "--store", help="s3://bucket/prefix the instance may read and write"),
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="take defaults from this config's launch: section"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and change nothing"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask before creating resources"),
    force: bool = typer.Option(False, "--force", help="go beyond launch.max_instances"),
    status_checks: bool = typer.Option(True, "--status-checks/--no-status-checks", help="wait for EC2 status checks"),
) -> None:
    """Provision or reuse a GPU instance (or --nodes of them): find it by its tags, start it, or create it."""
    from launcher import cluster

    launch, store_uri, explicit = cluster.launch_settings(config, dict(
        instance=instance, name=name, region=region, spot=spot, nodes=nodes, disk_gb=disk_gb, ami=ami,
        ami_parameter=ami_parameter,
        identity=identity, ssh_cidr=ssh_cidr, autostop=autostop, autostop_terminate=autostop_terminate,
        timeout=timeout, store=store,
    ))
    cluster.up(cluster.UpRequest(launch=launch, store=store_uri, explicit_type=explicit, dry_run=dry_run,
                                 yes=yes, force=force, status_checks=status_checks, confirm=terminal_confirm()))


def status(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    region: Optional[List[str]] = typer.Option(None, "--region", help="region to look in (repeatable)"),
) -> None:
    """Every instance mnist-launch created: type, state, uptime, price and cost so far."""
    from launcher import cluster

    cluster.status(list(region or []), as_json)


def down(
    name: Optional[str] = typer.Argument(None, help="the cluster to remove"),
    region: Optional[str] = typer.Option(None, "--region"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
    stop: bool = typer.Option(False, "--stop", help="stop instead of terminate (keeps the disk, costs storage)"),
    all_: bool = typer.Option(False, "--all", help="every mnist-launch cluster in the region"),
) -> None:
    """Terminate (or stop) a cluster and delete what mnist-launch created for it. Idempotent."""
    from launcher import cluster

    cluster.down(name, region, yes, stop=stop, all_=all_, confirm=terminal_confirm())


def ssh(
    name: str = typer.Argument(..., help="the cluster"),
    command: Optional[List[str]] = typer.Argument(None, help="command to run (after --); default: a shell"),
    region: Optional[str] = typer.Option(None, "--region"),
    identity: Optional[str] = typer.Option(None, "--identity", help="private key [default: the one `up` used]"),
) -> None:
    """A shell (or one command) on the instance, with the right key, user and pinned host key."""
    from launcher import cluster

    code = cluster.ssh(name, region, identity, list(command or []))
    if code:
        # SystemExit, not typer.Exit: click run with standalone_mode=False swallows Exit's code,
        # and scripts need the remote command's status
        raise SystemExit(code)


def register(app: typer.Typer) -> None:
    """Add `up`, `status`, `down` and `ssh` to the main CLI."""
    app.command("up")(up)
    app.command("status")(status)
    app.command("down")(down)
    app.command("ssh")(ssh)
