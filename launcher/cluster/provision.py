"""`up`: find, start or create the cluster's instances (``launch.nodes`` of them, in one zone), wait until
a real SSH command runs on each (all at once, launcher/cluster/ready.py), then install the autostop watcher
on each. Rolls back what it created when an instance never gets ready.

    wait running -> EC2 status checks -> SSH banner -> `true` over SSH -> autostop watcher   (every node)

    up(UpRequest(launch=LaunchConfig(instance="g4dn.xlarge", ssh_cidr="203.0.113.7/32")))
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from core import settings
from core.config import LaunchConfig
from core.errors import LaunchError
from infra import home
from infra.autostop_setup import install_autostop
from infra.aws import (
    AWSProvider,
    Clients,
    ClusterSpec,
    InstanceInfo,
    Plan,
    Step,
    aws_errors,
    caller_cidr,
    missing_ranks,
    validate_cidr,
)
from infra.prices import on_demand_rate
from infra.ssh import SSHHost, endpoint_for, public_key_of
from launcher.cluster.costs import price_notes, price_text
from launcher.cluster.output import Confirm, err_console
from launcher.cluster.ready import wait_all_ready
from launcher.cluster.settings import (
    autostop_home,
    check_name,
    default_region,
    identity_for,
    parse_duration,
)


@dataclass
class UpRequest:
    launch: LaunchConfig
    store: Optional[str] = None
    explicit_type: bool = True
    dry_run: bool = False
    yes: bool = False
    force: bool = False
    status_checks: bool = True
    poll_s: float = 3.0
    avoid_az: Optional[str] = None  # the AZ a lost instance was in: a replacement tries the others first
    # asked (with the plan shown) before anything is created, unless ``yes``; None: nobody to ask, go ahead
    confirm: Optional[Confirm] = None


@dataclass
class UpResult:
    instance: Optional[InstanceInfo]  # node 0; None for a dry run
    plan: Optional[Plan] = None
    steps: list[Step] = field(default_factory=list)
    instances: list[InstanceInfo] = field(default_factory=list)  # every node, by rank (none for a dry run)


def print_plan(plan: Plan, console: Console) -> None:
    market = "spot" if plan.spot else "on-demand"
    rates = [plan.rate] * plan.nodes if plan.rate else []
    console.print(f"plan for {plan.region}: {plan.instance_type} {market}, image {plan.image_id or '?'} "
                  f"(user {plan.user}), {price_text(rates)}")
    for note in price_notes(rates):
        console.print(f"[yellow]note:[/] {note}")
    for step in plan.steps:
        console.print(f"  {step}")


def up(req: UpRequest, console: Optional[Console] = None) -> UpResult:
    console = console or err_console()
    launch = req.launch
    name = check_name(launch.name)
    region = default_region(launch.region)
    timeout_s = parse_duration(launch.timeout, "--timeout") or 900.0
    autostop_s = parse_duration(launch.autostop, "--autostop")
    cidr = validate_cidr(launch.ssh_cidr or settings.ssh_cidr() or caller_cidr())
    # a cluster made with --identity keeps using that key when the flag is left out later
    identity = launch.identity or home.read_cluster_cache(name).get("identity")
    key = identity_for(identity, create=not req.dry_run)
    spec = ClusterSpec(
        name=name, region=region, public_key=public_key_of(key) if key else "", ssh_cidr=cidr,
        instance_type=launch.instance if req.explicit_type else None, spot=launch.spot,
        disk_gb=launch.disk_gb, ami=launch.ami, ami_parameter=launch.ami_parameter,
        store=req.store if (req.store or "").startswith("s3://") else None,
        autostop="off" if autostop_s is None else launch.autostop, autostop_terminate=launch.autostop_terminate,
        avoid_az=req.avoid_az, nodes=launch.nodes,
    )
    if autostop_s is None:
        warn_autostop_off(spec.type_or_default, console, launch.nodes, launch.disk_gb)
    provider = AWSProvider(Clients.create(region), log=lambda m: console.print(f"  {m}"), poll_s=req.poll_s)
    with aws_errors():
        if req.dry_run:
            plan = provider.plan(spec)
            print_plan(plan, console)
            console.print("dry run: nothing was changed")
            return UpResult(None, plan)
        assert key is not None  # identity_for(create=True) makes one when there is none
        everything = provider.find_instances()
        existing = [i for i in everything if i.name == name]
        new_nodes = len(missing_ranks(launch.nodes, existing))  # what this `up` creates
        if new_nodes and not req.force:
            check_max_instances(everything, new_nodes, launch, name, region)
        if new_nodes and not req.yes and req.confirm is not None:
            plan = provider.plan(spec)
            print_plan(plan, console)
            if not req.confirm("create these resources?", True):
                raise LaunchError("cancelled — nothing was created")
        outcome = provider.ensure(spec, found=existing)
        for step in outcome.steps:
            console.print(f"  {step}")
        try:
            insts = wait_all_ready(provider, outcome.instances, key, timeout_s, req.status_checks, console,
                                   req.poll_s)
        except BaseException:
            if outcome.created:
                console.print("[red]✗[/] not ready: rolling back what this run created")
                provider.rollback(outcome.created)
            raise
    inst = insts[0]
    home.write_cluster_cache(name, {"region": region, "instance_id": inst.id,
                                    "identity": str(Path(identity).expanduser().resolve()) if identity else None})
    if len(insts) == 1:
        setup_autostop(inst, key, autostop_s, launch, console)
    else:
        with ThreadPoolExecutor(max_workers=min(16, len(insts))) as pool:
            list(pool.map(lambda i: setup_autostop(i, key, autostop_s, launch, console), insts))
    with aws_errors():
        rates = list(provider.rates(insts).values())
    for note in price_notes(rates):
        console.print(f"[yellow]note:[/] {note}")
    if len(insts) == 1:
        console.print(f"[bold]{name}[/] is up: {inst.id} {inst.instance_type} in {inst.az}, "
                      f"ssh {endpoint_for(inst.public_ip, inst.user, node=inst.node)}, {price_text(rates)}"
                      f" — `mnist-launch ssh {name}`, `mnist-launch down {name}`")
    else:
        console.print(f"[bold]{name}[/] is up: {len(insts)} nodes, {inst.instance_type} in {inst.az}"
                      + (f", placement group {inst.placement_group}" if inst.placement_group else "")
                      + f"; node 0 {inst.id}, ssh {endpoint_for(inst.public_ip, inst.user, node=inst.node)}, "
                      + f"{price_text(rates)} — `mnist-launch status`, `mnist-launch down {name}`")
    return UpResult(inst, None, outcome.steps, insts)


def check_max_instances(everything: list[InstanceInfo], new_nodes: int, launch: LaunchConfig, name: str,
                        region: str) -> None:
    """Refuse in one line an `up` that would make more than ``launch.max_instances`` instances run in the region
    (every node counts; --force goes beyond)."""
    live = len([i for i in everything if i.state in ("pending", "running")])
    if live + new_nodes <= launch.max_instances:
        return
    if new_nodes == 1:
        raise LaunchError(f"{live} mnist-launch instances already run in {region} "
                          f"(max_instances={launch.max_instances}) — `mnist-launch down NAME` one, or pass --force")
    raise LaunchError(f"{new_nodes} new nodes for '{name}' would make {live + new_nodes} mnist-launch instances run in "
                      f"{region} ({live} already do; max_instances={launch.max_instances}) — lower --nodes, "
                      "raise launch.max_instances, `mnist-launch down NAME` one, or pass --force")


def warn_autostop_off(instance_type: str, console: Console, nodes: int = 1, disk_gb: int = 100) -> None:
    """The day's cost of an instance left running: on-demand (spot's upper bound), its IPv4 address and volume."""
    price = on_demand_rate(instance_type, ipv4=True, volume_gb=disk_gb).total_usd
    what = f"{nodes} x {instance_type}" if nodes > 1 else instance_type
    cost = (f"~${price * 24 * nodes:.2f} per day ({what} on-demand, its IPv4 address and {disk_gb} GB gp3)"
            if price is not None else f"{what} by the hour")
    console.print(f"[yellow]warning:[/] --autostop off: the instance runs until you stop it — "
                  f"an idle one costs {cost}; `mnist-launch down` when done")


def setup_autostop(inst: InstanceInfo, key: Path, autostop_s: Optional[float], launch: LaunchConfig,
                   console: Console) -> Optional[str]:
    """Install (or, for 'off', remove) the idle watcher on the instance; a failure is one warning line."""
    again = f"run `mnist-launch up --name {inst.name}` again"
    if not settings.autostop_install():  # tests whose "instance" is this very machine
        console.print(f"[yellow]warning:[/] autostop watcher not installed on {inst.id} "
                      f"({settings.AUTOSTOP_INSTALL}=0)")
        return None
    env = settings.autostop_forwarded_env()  # tests replace its shutdown and let it ignore their SSH sessions
    jobs = sorted({"~/mnist-launch/jobs", f"{launch.remote_dir.rstrip('/')}/jobs"})
    try:
        poll = settings.autostop_poll()
        with SSHHost(endpoint_for(inst.public_ip, inst.user, node=inst.node), key, alias=inst.id) as host:
            how = install_autostop(host, autostop_s, remote_home_dir=autostop_home(), jobs_dirs=jobs, env=env,
                                   poll_s=poll)
    except (LaunchError, OSError, ValueError) as err:  # SSHError is a LaunchError: infra/ssh.py maps paramiko's
        console.print(f"[yellow]warning:[/] the autostop watcher could not be installed on {inst.id} ({err}) — "
                      f"it will NOT stop itself when idle; {again}")
        return None
    if how == "off":
        console.print(f"  autostop off on {inst.id}")
    else:
        action = "terminates" if launch.autostop_terminate or launch.spot else "stops"
        console.print(f"  autostop: {inst.id} {action} itself after {launch.autostop} idle (watcher: {how})")
    return how
