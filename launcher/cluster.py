"""The cluster lifecycle behind `up`, `status`, `down` and `ssh`: settings in, rich phases out.

Knows the order of things (find or create, wait running -> status checks -> SSH banner -> a real
command, roll back on failure), not how AWS or SSH work: that is infra/aws.py and infra/ssh.py.

    up(UpRequest(launch=LaunchConfig(instance="g4dn.xlarge"), ssh_cidr="203.0.113.7/32"))
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Optional

from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from core import settings
from core.config import LaunchConfig, check_location, format_error, read_yaml
from core.errors import AWSError, ConfigError, LaunchError, SSHError
from infra import home
from infra.aws import (
    DEFAULT_REGION,
    AWSProvider,
    Backoff,
    Clients,
    ClusterSpec,
    InstanceInfo,
    Plan,
    aws_errors,
    caller_cidr,
    key_pair_name,
    validate_cidr,
)
from infra.prices import PRICES_DATE, PRICES_REGION, cost_so_far, hourly_price
from infra.ssh import HostKeyChangedError, KeyRefusedError, SSHHost, endpoint_for, public_key_of, wait_for_banner

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


def err_console() -> Console:
    # progress and notes go to stderr, so `status --json` output stays machine-readable
    return Console(stderr=True, highlight=False, soft_wrap=True)


def out_console() -> Console:
    console = Console(highlight=False, soft_wrap=True)
    # piped into grep or a file: never fold instance ids to fit an imaginary 80 columns
    return console if console.is_terminal else Console(highlight=False, soft_wrap=True, width=200)


def parse_duration(text: str, what: str) -> Optional[float]:
    """'90s' / '15m' / '2h' / '600' -> seconds; 'off' -> None."""
    t = str(text).strip().lower()
    if t in ("off", "none", "0"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh]?)", t)
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a duration such as 90s, 30m or 2h (or 'off')")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ConfigError(f"--name {name!r}: use 1-31 lowercase letters, digits and dashes, starting with a letter or digit")
    return name


def default_region(region: Optional[str], name: Optional[str] = None) -> str:
    """--region, else the cluster's cached region, else the boto3 chain's, else us-east-1."""
    import boto3

    session = boto3.Session()
    if region:
        # botocore's own endpoint data: no network call; a typo is caught before any request
        known = set(session.get_available_regions("ec2")) | set(session.get_available_regions("ec2", "aws-cn")) \
            | set(session.get_available_regions("ec2", "aws-us-gov"))
        if known and region not in known:
            raise ConfigError(f"--region {region!r}: not an EC2 region — use one such as us-east-1 or eu-west-1")
        return region
    if name and home.read_cluster_cache(name).get("region"):
        return home.read_cluster_cache(name)["region"]
    return session.region_name or DEFAULT_REGION


# ---------------------------------------------------------------------------------------------
# settings: a config's launch: section, then flags


def launch_settings(config_path: Optional[str], flags: dict) -> tuple[LaunchConfig, Optional[str], bool]:
    """(launch settings, store, instance type given explicitly) from a config file and flags."""
    data: dict = {}
    store = None
    where = "flags"
    if config_path:
        raw = read_yaml(config_path)
        if not isinstance(raw, dict):
            raise ConfigError(f"{config_path}: expected a mapping with a launch: section")
        data = dict(raw.get("launch") or {})
        store = raw.get("store")
        where = config_path
    given = {k: v for k, v in flags.items() if v is not None and k != "store"}
    explicit_type = "instance" in given or "instance" in data
    try:
        launch = LaunchConfig.model_validate({**data, **given})
    except ValidationError as err:
        # a bad flag is named as typed (--name 'x y': ...), a bad key of the file by the file and key
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in given and field != "env" and first["type"] == "value_error":
            msg = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--{field.replace('_', '-')} {given[field]!r}: {msg} — fix it and run again") from None
        raise ConfigError(f"{where}: {format_error(err)} — fix it and run again") from None
    store = flags.get("store") or store
    if store is not None:
        check_location(str(store), "--store" if flags.get("store") else f"{where}: store")
    return launch, store, explicit_type


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


@dataclass
class UpResult:
    instance: Optional[InstanceInfo]
    plan: Optional[Plan] = None
    steps: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# phases


@contextmanager
def phase(console: Console, label: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time while waiting, then one ✓ line with the total."""
    start = time.monotonic()
    with console.status(f"{label}…") as status:
        def tick(detail: str = "") -> None:
            status.update(f"{label}… {time.monotonic() - start:.0f}s {detail}".rstrip())

        yield tick
    console.print(f"[green]✓[/] {label} ({time.monotonic() - start:.0f}s)")


def identity_for(launch_identity: Optional[str], create: bool) -> Optional[Path]:
    if launch_identity:
        path = Path(launch_identity).expanduser()
        if not path.is_file():
            raise ConfigError(f"--identity {launch_identity}: no such file — pass a private key (its .pub is read if present)")
        return path
    if create:
        return home.ensure_default_key()
    path = home.default_key_path()
    return path if path.exists() else None


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
                    raise AWSError(f"{inst.id} status checks not ok after {timeout_s:.0f}s — check the EC2 console or raise --timeout")
                tick()
                backoff.sleep()
    ep = endpoint_for(inst.public_ip, inst.user)
    backoff = Backoff(poll_s)
    with phase(console, f"SSH banner from {ep.host}:{ep.port}") as tick:
        while not wait_for_banner(ep.host, ep.port, timeout_s=min(5.0, left())):
            if time.monotonic() > deadline:
                raise SSHError(f"no SSH answer from {ep.host}:{ep.port} after {timeout_s:.0f}s — check --ssh-cidr is your address, or raise --timeout")
            tick()
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
                raise SSHError(f"SSH login to {ep} kept failing for {timeout_s:.0f}s ({last}) — raise --timeout or check the image")
            tick()
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
        disk_gb=launch.disk_gb, ami=launch.ami, ami_parameter=launch.ami_parameter, store=req.store if (req.store or "").startswith("s3://") else None,
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
        everything = provider.find_instances()
        existing = [i for i in everything if i.name == name]
        if not existing and not req.force:
            live = [i for i in everything if i.state in ("pending", "running")]
            if len(live) >= launch.max_instances:
                raise LaunchError(
                    f"{len(live)} mnist-launch instances already run in {region} (max_instances={launch.max_instances}) — "
                    "`mnist-launch down NAME` one, or pass --force"
                )
        if not existing and not req.yes and sys.stdin.isatty():
            plan = provider.plan(spec)
            print_plan(plan, console)
            import typer

            if not typer.confirm("create these resources?", default=True):
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
    console.print(f"[bold]{name}[/] is up: {inst.id} {inst.instance_type} in {inst.az}, ssh {endpoint_for(inst.public_ip, inst.user)}"
                  + (f", ~${price:.3f}/h" if price is not None else "")
                  + f" — `mnist-launch ssh {name}`, `mnist-launch down {name}`")
    return UpResult(inst, None, outcome.steps)


def warn_autostop_off(instance_type: str, console: Console) -> None:
    price = hourly_price(instance_type)
    cost = f"~${price * 24:.2f} per day ({instance_type} on-demand)" if price is not None else f"{instance_type} by the hour"
    console.print(f"[yellow]warning:[/] --autostop off: the instance runs until you stop it — an idle one costs {cost}; "
                  "`mnist-launch down` when done")


def autostop_home() -> str:
    return settings.autostop_home()  # where the watcher lives on the instance; tests point it into a temporary folder


def setup_autostop(inst: InstanceInfo, key: Path, autostop_s: Optional[float], launch: LaunchConfig,
                   console: Console) -> Optional[str]:
    """Install (or, for 'off', remove) the idle watcher on the instance; a failure is one warning line."""
    import paramiko

    from infra.autostop_setup import install_autostop

    again = f"run `mnist-launch up --name {inst.name}` again"
    if not settings.autostop_install():  # tests whose "instance" is this very machine
        console.print(f"[yellow]warning:[/] autostop watcher not installed on {inst.id} ({settings.AUTOSTOP_INSTALL}=0)")
        return None
    env = settings.autostop_forwarded_env()  # tests replace its shutdown and let it ignore their SSH sessions
    jobs = sorted({"~/mnist-launch/jobs", f"{launch.remote_dir.rstrip('/')}/jobs"})
    try:
        poll = settings.autostop_poll()
        with SSHHost(endpoint_for(inst.public_ip, inst.user), key, alias=inst.id) as host:
            how = install_autostop(host, autostop_s, remote_home_dir=autostop_home(), jobs_dirs=jobs, env=env, poll_s=poll)
    except (LaunchError, OSError, EOFError, ValueError, paramiko.SSHException) as err:
        console.print(f"[yellow]warning:[/] the autostop watcher could not be installed on {inst.id} ({err}) — "
                      f"it will NOT stop itself when idle; {again}")
        return None
    if how == "off":
        console.print(f"  autostop off on {inst.id}")
    else:
        action = "terminates" if launch.autostop_terminate or launch.spot else "stops"
        console.print(f"  autostop: {inst.id} {action} itself after {launch.autostop} idle (watcher: {how})")
    return how


# ---------------------------------------------------------------------------------------------
# status


def status_rows(regions: list[str], now: Optional[datetime] = None, jobs: bool = True) -> list[dict]:
    now = now or datetime.now(timezone.utc)
    rows = []
    for region in regions:
        with aws_errors():
            for inst in AWSProvider(Clients.create(region)).find_instances():
                up_s = inst.uptime_seconds(now)
                rows.append({
                    "name": inst.name, "id": inst.id, "region": region, "type": inst.instance_type,
                    "state": inst.state, "market": "spot" if inst.spot else "on-demand",
                    "uptime_s": round(up_s), "hourly_usd": hourly_price(inst.instance_type),
                    # spot is billed at the spot price: the on-demand figure is an upper bound
                    "cost_usd": cost_so_far(inst.instance_type, up_s), "public_ip": inst.public_ip,
                    "user": inst.user, "autostop": inst.autostop, "autostop_action": inst.autostop_action,
                    "launch_time": inst.launch_time.isoformat() if inst.launch_time else None,
                    "jobs": inst if jobs and inst.state == "running" else None,
                })
    # one SSH command per running instance, all at once: an unreachable one costs its timeout, not more
    asked = [r for r in rows if r["jobs"] is not None]
    for r in rows:
        r["idle_s"], r["autostop_watcher"] = None, None
    if asked:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(asked))) as pool:
            for r, (found, watcher) in zip(asked, pool.map(lambda r: instance_activity(r["jobs"]), asked)):
                r["jobs"] = found
                r["idle_s"] = None if watcher is None else watcher.get("idle_seconds")
                r["autostop_watcher"] = None if watcher is None else "stale" if watcher.get("stale") else "running"
    return rows


STATE_MARK = "--mnist-launch-autostop-state--"


def instance_activity(inst: InstanceInfo) -> tuple[Optional[list[str]], Optional[dict]]:
    """(run ids whose agent is alive, the autostop watcher's state) on ``inst`` in one SSH command;
    None for what cannot be asked (unreachable, no watcher)."""
    from infra.autostop_setup import STATE_FILE
    from launcher.remote import jobs_command

    dirs = {"~/mnist-launch", *home.remote_dirs_of(inst.id)}
    state = f"{autostop_home().rstrip('/')}/{STATE_FILE}"
    state = '"$HOME"/' + shlex.quote(state[2:]) if state.startswith("~/") else shlex.quote(state)
    try:
        with cluster_host(inst, inst.name, None) as host:
            host.connect_timeout = 5.0
            res = host.exec("; ".join(jobs_command(d) for d in sorted(dirs))
                            + f"; echo {STATE_MARK}; date +%s; cat {state} 2>/dev/null; true", timeout=15)
    except LaunchError:
        return None, None
    if res.returncode != 0:
        return None, None
    return parse_activity(res.stdout)


def parse_activity(stdout: str) -> tuple[list[str], Optional[dict]]:
    """The answer of instance_activity's command: run ids, then the mark, the host's clock and the
    watcher's state JSON. A state not rewritten for several polls is a dead watcher: no idle time."""
    jobs_out, _, rest = stdout.partition(STATE_MARK)
    clock, _, state_out = rest.strip().partition("\n")
    try:
        watcher = json.loads(state_out) if state_out.strip() else None
        if not isinstance(watcher, dict):
            watcher = None
        elif float(clock) - float(watcher.get("updated_at", 0)) > 3 * float(watcher.get("poll_s", 30)) + 60:
            watcher = {**watcher, "idle_seconds": None, "stale": True}
    except (ValueError, TypeError):
        watcher = None
    return sorted(set(jobs_out.split())), watcher


def active_jobs(inst: InstanceInfo) -> Optional[list[str]]:
    """Run ids whose agent is alive on ``inst`` (one SSH command); None when it cannot be asked."""
    return instance_activity(inst)[0]


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _autostop_cell(row: dict) -> str:
    setting = row.get("autostop") or "?"
    if setting == "off" or not row.get("autostop_action"):
        return setting
    return f"{setting}, {row['autostop_action']}"


def _idle_cell(row: dict) -> str:
    if row.get("autostop_watcher") == "stale":
        return "watcher not running — run `up` again"
    if row["state"] == "running" and row.get("autostop") not in (None, "off") and row.get("autostop_watcher") is None \
            and row.get("jobs") is not None:
        return "no watcher — run `up` again"
    return "-" if row.get("idle_s") is None else _hms(row["idle_s"])


def status(regions: list[str], as_json: bool) -> list[dict]:
    regions = [default_region(r) for r in regions] or [default_region(None)]
    rows = status_rows(regions)
    out = out_console()
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    if not rows:
        out.print(f"no mnist-launch instances in {', '.join(regions)}")
        return rows
    table = Table("name", "id", "region", "type", "state", "market", "uptime", "$/h", "cost so far", "jobs",
                  "autostop", "idle")
    for r in rows:
        table.add_row(r["name"], r["id"], r["region"], r["type"], r["state"], r["market"], _hms(r["uptime_s"]),
                      "?" if r["hourly_usd"] is None else f"{r['hourly_usd']:.3f}",
                      "?" if r["cost_usd"] is None else f"{r['cost_usd']:.2f}",
                      "-" if r["state"] != "running" else "?" if r["jobs"] is None else ", ".join(r["jobs"]) or "idle",
                      _autostop_cell(r), _idle_cell(r))
    out.print(table)
    out.print(f"prices: approximate on-demand list prices ({PRICES_REGION}, {PRICES_DATE}); spot costs less")
    for line in orphan_warnings(rows):
        err_console().print(f"[yellow]warning[/]: {line}")
    return rows


WARN_IDLE_S = 30 * 60  # an instance idle this long is worth a line in `status`
WARN_AGE_S = 12 * 3600  # and one up this long, busy or not


def orphan_warnings(rows: list[dict], idle_s: float = WARN_IDLE_S, age_s: float = WARN_AGE_S) -> list[str]:
    """One line per running instance that looks forgotten: idle, very old, or with autostop off."""
    out = []
    for r in rows:
        if r.get("state") != "running":
            continue
        why = []
        if (r.get("idle_s") or 0) >= idle_s:
            why.append(f"idle {_hms(r['idle_s'])}")
        if (r.get("uptime_s") or 0) >= age_s:
            why.append(f"up {_hms(r['uptime_s'])}")
        if (r.get("autostop") or "").lower() == "off":
            why.append("autostop off")
        if why:
            cost = f", ~${r['cost_usd']:.2f} so far" if r.get("cost_usd") is not None else ""
            out.append(f"{r['name']} ({r['id']}) {', '.join(why)}{cost} — `mnist-launch down {r['name']}` if you are done")
    return out


# ---------------------------------------------------------------------------------------------
# down


def _forget_host_keys(instance_ids: list[str]) -> None:
    kh = home.known_hosts_path()
    if not kh.is_file() or not instance_ids:
        return
    keep = [line for line in kh.read_text().splitlines() if line.split(" ", 1)[0] not in instance_ids]
    kh.write_text("".join(f"{line}\n" for line in keep))


def down(name: Optional[str], region: Optional[str], yes: bool, stop: bool = False, all_: bool = False,
         poll_s: float = 3.0, console: Optional[Console] = None) -> list[str]:
    console = console or err_console()
    if not name and not all_:
        raise ConfigError("down: name a cluster (mnist-launch down NAME) or pass --all")
    region = default_region(region, name)
    provider = AWSProvider(Clients.create(region), log=lambda m: console.print(f"  {m}"), poll_s=poll_s)
    with aws_errors():
        names = sorted({i.name for i in provider.find_instances()}) if all_ else [check_name(name or "")]
        if all_ and not names:
            console.print(f"no mnist-launch clusters in {region}")
            return []
        verb = "stop" if stop else "terminate"
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(f"down: {verb} {', '.join(names)} in {region}? pass --yes to confirm")
            import typer

            if not typer.confirm(f"{verb} {', '.join(names)} in {region} and delete what mnist-launch created for it?"):
                raise LaunchError("cancelled — nothing was changed")
        done: list[str] = []
        for n in names:
            with phase(console, f"{'stopping' if stop else 'removing'} {n}"):
                if stop:
                    done += [f"stopped instance {i.id}" for i in provider.stop(n)]
                else:
                    ids = [i.id for i in provider.find_instances(n, states=["pending", "running", "stopping", "stopped", "shutting-down"])]
                    removed = provider.remove(n)
                    done += removed
                    _forget_host_keys(ids)
                    home.drop_cluster_cache(n)
                    left = provider.leftovers(n)  # verified, not assumed
                    if left:
                        raise AWSError(f"down {n}: still there after removal: {', '.join(left)} — run `mnist-launch "
                                       f"down {n} --yes` again; if it stays, delete it in the EC2/IAM console")
                    if removed:
                        done.append(f"verified: nothing of {n} remains (instances, volumes, security group, "
                                    "role, instance profile, key pair)")
    for item in done:
        console.print(f"  {item}")
    if not done:
        console.print(f"nothing to {verb}: no cluster '{name}' in {region}" if name else "nothing to do")
    return done


# ---------------------------------------------------------------------------------------------
# ssh


class NoInstanceError(LaunchError):
    """No running instance under a cluster name (`train` then brings one up)."""


def running_instance(name: str, region: Optional[str]) -> InstanceInfo:
    """The cluster's running instance, or one line saying how to get one."""
    region = default_region(region, name)
    provider = AWSProvider(Clients.create(region))
    with aws_errors():
        running = [i for i in provider.find_instances(check_name(name)) if i.state == "running"]
    if not running:
        raise NoInstanceError(f"no running instance for cluster '{name}' in {region} — `mnist-launch up --name {name}` first")
    return running[0]


def grant_run_access(inst: InstanceInfo, name: str, store: Optional[str], data: Optional[str]) -> Optional[str]:
    """Before a run starts on ``inst``: its role covers ``store`` (write under runs/) and ``data`` (read),
    updated if not, refused in one line if it has no role of ours. A line to print when it changed."""
    provider = AWSProvider(Clients.create(inst.region))
    with aws_errors():
        step = provider.store_access(name, inst, store, data)
    return None if step is None else str(step).strip()


def login_key(inst: InstanceInfo, name: str, identity: Optional[str]) -> Path:
    """The private key that logs in to ``inst``: --identity, the one the cluster was made with, or ours."""
    cached = home.read_cluster_cache(name).get("identity")
    key = identity_for(identity or cached, create=False)
    if key is None or (not identity and not cached and inst.key_name != key_pair_name(public_key_of(key))):
        raise SSHError(f"{inst.id} was created with key pair {inst.key_name}, which is not ours — pass its private key with --identity")
    return key


def cluster_host(inst: InstanceInfo, name: str, identity: Optional[str]) -> SSHHost:
    """An SSHHost for the cluster's instance, its host key pinned under the instance id."""
    return SSHHost(endpoint_for(inst.public_ip, inst.user), login_key(inst, name, identity), alias=inst.id)


def ssh_argv(name: str, region: Optional[str], identity: Optional[str], command: list[str]) -> list[str]:
    """The system ssh command line for a cluster, with its host key pinned (TOFU on first use)."""
    inst = running_instance(name, region)
    key = login_key(inst, name, identity)
    ep = endpoint_for(inst.public_ip, inst.user)
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


# the only variables the ssh child sees: what a terminal session needs, nothing that holds a secret
SSH_ENV_KEPT = ("PATH", "HOME", "USER", "LOGNAME", "TERM", "LANG", "LC_ALL", "LC_CTYPE", "COLORTERM", "TMPDIR")


def ssh_env(environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment of the ssh child: SSH_ENV_KEPT from ours, so no credential (AWS_*, tokens) and no
    agent socket (SSH_AUTH_SOCK) is in reach of ssh or of anything it might start."""
    source = dict(os.environ) if environ is None else environ
    return {k: source[k] for k in SSH_ENV_KEPT if k in source}


def ssh(name: str, region: Optional[str], identity: Optional[str], command: list[str]) -> int:
    return subprocess.run(ssh_argv(name, region, identity, command), env=ssh_env()).returncode
