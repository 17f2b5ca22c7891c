"""`down`: terminate (or stop) a cluster, delete what mnist-launch created for it, forget its host
keys and cache, then look again and name anything left. Asks first through the CLI's ``confirm``.

    down("mnist", None, yes=True)
"""

from __future__ import annotations

from typing import Optional

from rich.console import Console

from core.errors import AWSError, ConfigError, LaunchError
from infra import home
from infra.aws import AWSProvider, Clients, InstanceInfo, aws_errors
from infra.aws.instances import NOT_TERMINATED
from launcher.cluster.costs import price_notes, spent_line
from launcher.cluster.output import Confirm, err_console, phase
from launcher.cluster.settings import check_name, default_region


def _forget_host_keys(instance_ids: list[str]) -> None:
    kh = home.known_hosts_path()
    if not kh.is_file() or not instance_ids:
        return
    keep = [line for line in kh.read_text().splitlines() if line.split(" ", 1)[0] not in instance_ids]
    kh.write_text("".join(f"{line}\n" for line in keep))


def _cost_lines(provider: AWSProvider, name: str, insts: list[InstanceInfo]) -> list[str]:
    """What cluster ``name`` cost since its instances were launched (every node), and why a spot price is
    missing: read before they go, as the lines `down` prints last."""
    if not insts:
        return []
    rates = provider.rates(insts)
    return [spent_line(name, insts, rates), *(f"note: {n}" for n in price_notes(list(rates.values())))]


def down(name: Optional[str], region: Optional[str], yes: bool, stop: bool = False, all_: bool = False,
         poll_s: float = 3.0, console: Optional[Console] = None, confirm: Optional[Confirm] = None) -> list[str]:
    """``confirm``: asked unless ``yes``; None (no terminal to ask on) refuses without --yes."""
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
            if confirm is None:
                raise ConfigError(f"down: {verb} {', '.join(names)} in {region}? pass --yes to confirm")
            if not confirm(f"{verb} {', '.join(names)} in {region} and delete what mnist-launch created for it?",
                           False):
                raise LaunchError("cancelled — nothing was changed")
        done: list[str] = []
        for n in names:
            insts = provider.find_instances(n, states=NOT_TERMINATED)
            spent = _cost_lines(provider, n, insts)
            with phase(console, f"{'stopping' if stop else 'removing'} {n}"):
                if stop:
                    done += [f"stopped instance {i.id}" for i in provider.stop(n)]
                else:
                    ids = [i.id for i in insts]
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
                                    "placement group, role, instance profile, key pair)")
            done += spent
    for item in done:
        console.print(f"  {item}")
    if not done:
        console.print(f"nothing to {verb}: no cluster '{name}' in {region}" if name else "nothing to do")
    return done
