"""`up`: find, start or create the cluster's instance, wait until a real SSH command runs there,
then install the autostop watcher. Rolls back what it created when the instance never gets ready.

    wait running -> EC2 status checks -> SSH banner -> `true` over SSH -> autostop watcher

    up(UpRequest(launch=LaunchConfig(instance="g4dn.xlarge", ssh_cidr="203.0.113.7/32")))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from core import settings
from core.config import LaunchConfig
from core.errors import AWSError, LaunchError, SSHError
from infra import home
from infra.autostop_setup import install_autostop
from infra.aws import (
    AWSProvider,
    Backoff,
    Clients,
    ClusterSpec,
    InstanceInfo,
    Plan,
    Step,
    aws_errors,
    caller_cidr,
    validate_cidr,
)
from infra.prices import PRICES_DATE, PRICES_REGION, hourly_price
from infra.ssh import HostKeyChangedError, KeyRefusedError, SSHHost, endpoint_for, public_key_of, wait_for_banner
from launcher.cluster.output import Confirm, err_console, phase
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
    instance: Optional[InstanceInfo]
    plan: Optional[Plan] = None
    steps: list[Step] = field(default_factory=list)


def wait_until_ready(provider: AWSProvider, inst: InstanceInfo, key: Path, timeout_s: float,
                     status_checks: bool, console: Console, poll_s: float) -> InstanceInfo:
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    with phase(console, f"instance {inst.id} running") as tick:
        inst = provider.wait_state(inst.id, "running", left(), tick=lambda i: tick(i.state))
    if status_checks:
        backoff = Backoff(poll_s)
        with phase(console, "status checks") as tick:
            while not provider.status_checks_ok(inst.id):
                if time.monotonic() > deadline:
                    raise AWSError(f"{inst.id} status checks not ok after {timeout_s:.0f}s — "
                                   "check the EC2 console or raise --timeout")
                tick("")
                backoff.sleep()
    ep = endpoint_for(inst.public_ip, inst.user)
    backoff = Backoff(poll_s)
    with phase(console, f"SSH banner from {ep.host}:{ep.port}") as tick:
        while not wait_for_banner(ep.host, ep.port, timeout_s=min(5.0, left())):
            if time.monotonic() > deadline:
                raise SSHError(f"no SSH answer from {ep.host}:{ep.port} after {timeout_s:.0f}s — "
                               "check --ssh-cidr is your address, or raise --timeout")
            tick("")
            backoff.sleep()
    backoff = Backoff(poll_s)
    with phase(console, f"SSH login as {ep.user}") as tick:
        while True:
            try:
                with SSHHost(ep, key, alias=inst.id) as host:
                    res = host.run(["true"], timeout=30)
                if res.returncode == 0:
                    break
                last = f"`true` exited {res.returncode}"
            except (HostKeyChangedError, KeyRefusedError):
                raise  # will not fix itself
            except SSHError as err:
                last = str(err)
            if time.monotonic() > deadline:
                raise SSHError(f"SSH login to {ep} kept failing for {timeout_s:.0f}s ({last}) — "
                               "raise --timeout or check the image")
            tick("")
            backoff.sleep()
    return inst


def print_plan(plan: Plan, console: Console) -> None:
    market = "spot" if plan.spot else "on-demand"
    price = f"${plan.hourly_usd:.3f}/h" if plan.hourly_usd is not None else "price unknown"
    console.print(f"plan for {plan.region}: {plan.instance_type} {market}, image {plan.image_id or '?'} "
                  f"(user {plan.user}), ~{price} on-demand ({PRICES_REGION} list prices, {PRICES_DATE})")
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
        avoid_az=req.avoid_az,
    )
    if autostop_s is None:
        warn_autostop_off(spec.type_or_default, console)
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
        if not existing and not req.force:
            live = [i for i in everything if i.state in ("pending", "running")]
            if len(live) >= launch.max_instances:
                raise LaunchError(
                    f"{len(live)} mnist-launch instances already run in {region} "
                    f"(max_instances={launch.max_instances}) — "
                    "`mnist-launch down NAME` one, or pass --force"
                )
        if not existing and not req.yes and req.confirm is not None:
            plan = provider.plan(spec)
            print_plan(plan, console)
            if not req.confirm("create these resources?", True):
                raise LaunchError("cancelled — nothing was created")
        outcome = provider.ensure(spec, found=existing)
        for step in outcome.steps:
            console.print(f"  {step}")
        try:
            inst = wait_until_ready(provider, outcome.instance, key, timeout_s, req.status_checks, console, req.poll_s)
        except BaseException:
            if outcome.created:
                console.print("[red]✗[/] not ready: rolling back what this run created")
                provider.rollback(outcome.created)
            raise
    home.write_cluster_cache(name, {"region": region, "instance_id": inst.id,
                                    "identity": str(Path(identity).expanduser().resolve()) if identity else None})
    setup_autostop(inst, key, autostop_s, launch, console)
    price = hourly_price(inst.instance_type)
    console.print(f"[bold]{name}[/] is up: {inst.id} {inst.instance_type} in {inst.az}, "
                  f"ssh {endpoint_for(inst.public_ip, inst.user)}"
                  + (f", ~${price:.3f}/h" if price is not None else "")
                  + f" — `mnist-launch ssh {name}`, `mnist-launch down {name}`")
    return UpResult(inst, None, outcome.steps)


def warn_autostop_off(instance_type: str, console: Console) -> None:
    price = hourly_price(instance_type)
    cost = (f"~${price * 24:.2f} per day ({instance_type} on-demand)" if price is not None
            else f"{instance_type} by the hour")
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
        with SSHHost(endpoint_for(inst.public_ip, inst.user), key, alias=inst.id) as host:
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
