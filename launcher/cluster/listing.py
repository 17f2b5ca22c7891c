"""`status`: every instance mnist-launch created, with its price (spot where spot, IPv4 and volume
included), cost so far, active runs and the autostop watcher's idle time (one SSH command per running
instance, all at once), and one warning line per instance that looks forgotten. A multi-node cluster is
one row per node (its rank and private address), its nodes together by rank, and a line with the whole
cluster's price and cost.

    status(["us-east-1"], as_json=False)
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Optional

from rich.table import Table

from core.errors import LaunchError
from infra import home
from infra.activity import activity_command, parse_activity
from infra.autostop_setup import STATE_FILE
from infra.aws import AWSProvider, Clients, InstanceInfo, aws_errors
from infra.prices import GP3_USD_PER_GB_MONTH, HOURS_PER_MONTH, IPV4_USD_PER_HOUR, PRICES_DATE, PRICES_REGION
from launcher.cluster.access import cluster_host
from launcher.cluster.output import err_console, out_console
from launcher.cluster.settings import autostop_home, default_region

WARN_IDLE_S = 30 * 60  # an instance idle this long is worth a line in `status`
WARN_AGE_S = 12 * 3600  # and one up this long, busy or not


def status_rows(regions: list[str], now: Optional[datetime] = None, jobs: bool = True) -> list[dict[str, Any]]:
    now = now or datetime.now(timezone.utc)
    rows: list[dict[str, Any]] = []
    for region in regions:
        provider = AWSProvider(Clients.create(region))
        with aws_errors():
            insts = _clusters_together(provider.find_instances())
            rates = provider.rates(insts)
        for inst in insts:
            up_s = inst.uptime_seconds(now)
            rate = rates[inst.id]
            rows.append({
                "name": inst.name, "node": inst.node, "id": inst.id, "region": region, "az": inst.az,
                "private_ip": inst.private_ip, "type": inst.instance_type,
                "state": inst.state, "market": "spot" if inst.spot else "on-demand",
                "uptime_s": round(up_s),
                # the instance's own price (spot: its zone's now; else on-demand), and everything it costs an hour
                "hourly_usd": rate.instance_usd, "total_usd_per_h": rate.total_usd, "price_source": rate.source,
                "spot_price_time": rate.spot_time, "price_note": rate.note, "ipv4_usd_per_h": rate.ipv4_usd,
                "volume_gb": rate.volume_gb, "volume_usd_per_h": round(rate.volume_usd, 6),
                "cost_usd": rate.cost(up_s), "public_ip": inst.public_ip,
                "user": inst.user, "autostop": inst.autostop, "autostop_action": inst.autostop_action,
                "launch_time": inst.launch_time.isoformat() if inst.launch_time else None,
                "jobs": inst if jobs and inst.state == "running" else None,
            })
    # one SSH command per running instance, all at once: an unreachable one costs its timeout, not more
    asked = [r for r in rows if r["jobs"] is not None]
    for r in rows:
        r["idle_s"], r["autostop_watcher"] = None, None
    if asked:
        with ThreadPoolExecutor(max_workers=min(8, len(asked))) as pool:
            for r, (found, watcher) in zip(asked, pool.map(lambda r: instance_activity(r["jobs"]), asked)):
                r["jobs"] = found
                r["idle_s"] = None if watcher is None else watcher.get("idle_seconds")
                r["autostop_watcher"] = None if watcher is None else "stale" if watcher.get("stale") else "running"
    return rows


def _clusters_together(insts: list[InstanceInfo]) -> list[InstanceInfo]:
    """Each cluster where its first instance was listed (newest running first), its nodes together by rank."""
    first = {i.name: n for n, i in reversed(list(enumerate(insts)))}
    return sorted(insts, key=lambda i: (first[i.name], i.node))


def cluster_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per cluster of several nodes: how many run, and what the cluster costs (its nodes' rates summed)."""
    out = []
    for name in dict.fromkeys(r["name"] for r in rows):
        nodes = [r for r in rows if r["name"] == name]
        if len(nodes) < 2:
            continue
        running = [r for r in nodes if r["state"] == "running"]
        hourly = [r["total_usd_per_h"] for r in running]
        cost = [r["cost_usd"] for r in nodes]
        out.append(f"{name}: {len(running)} of {len(nodes)} nodes running"
                   + (f", ~${sum(hourly):.3f}/h" if running and None not in hourly else "")
                   + (f", ~${sum(cost):.2f} so far" if None not in cost else ""))
    return out


def instance_activity(inst: InstanceInfo) -> tuple[Optional[list[str]], Optional[dict[str, Any]]]:
    """(run ids whose agent is alive, the autostop watcher's state) on ``inst`` in one SSH command;
    None for what cannot be asked (unreachable, no watcher)."""
    dirs = {"~/mnist-launch", *home.remote_dirs_of(inst.id)}
    state = f"{autostop_home().rstrip('/')}/{STATE_FILE}"
    try:
        with cluster_host(inst, inst.name, None) as host:
            host.connect_timeout = 5.0
            res = host.exec(activity_command(dirs, state), timeout=15)
    except LaunchError:
        return None, None
    if res.returncode != 0:
        return None, None
    return parse_activity(res.stdout)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _autostop_cell(row: dict[str, Any]) -> str:
    setting = row.get("autostop") or "?"
    if setting == "off" or not row.get("autostop_action"):
        return str(setting)
    return f"{setting}, {row['autostop_action']}"


def _idle_cell(row: dict[str, Any]) -> str:
    if row.get("autostop_watcher") == "stale":
        return "watcher not running — run `up` again"
    if row["state"] == "running" and row.get("autostop") not in (None, "off") and row.get("autostop_watcher") is None \
            and row.get("jobs") is not None:
        return "no watcher — run `up` again"
    return "-" if row.get("idle_s") is None else _hms(row["idle_s"])


def status(regions: list[str], as_json: bool) -> list[dict[str, Any]]:
    regions = [default_region(r) for r in regions] or [default_region(None)]
    rows = status_rows(regions)
    out = out_console()
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    if not rows:
        out.print(f"no mnist-launch instances in {', '.join(regions)}")
        return rows
    table = Table("name", "node", "id", "region", "type", "state", "private ip", "market", "uptime", "$/h",
                  "cost so far", "jobs", "autostop", "idle")
    for r in rows:
        table.add_row(r["name"], str(r["node"]), r["id"], r["region"], r["type"], r["state"], r["private_ip"] or "-",
                      r["market"], _hms(r["uptime_s"]),
                      "?" if r["total_usd_per_h"] is None else f"{r['total_usd_per_h']:.3f}",
                      "?" if r["cost_usd"] is None else f"{r['cost_usd']:.2f}",
                      "-" if r["state"] != "running" else "?" if r["jobs"] is None else ", ".join(r["jobs"]) or "idle",
                      _autostop_cell(r), _idle_cell(r))
    out.print(table)
    for line in cluster_lines(rows):
        out.print(line)
    out.print(f"$/h: the instance (spot: its zone's current spot price; on-demand: {PRICES_REGION} list prices, "
              f"{PRICES_DATE}) + ${IPV4_USD_PER_HOUR}/h per public IPv4 address + gp3 volumes at "
              f"${GP3_USD_PER_GB_MONTH}/GB-month ({GP3_USD_PER_GB_MONTH} x GB / {HOURS_PER_MONTH} per hour); "
              "cost so far = uptime x $/h — estimates, the bill is the truth")
    for note in dict.fromkeys(f"{r['type']} in {r['az']}: {r['price_note']}" for r in rows if r["price_note"]):
        err_console().print(f"[yellow]note[/]: {note}")
    for line in orphan_warnings(rows):
        err_console().print(f"[yellow]warning[/]: {line}")
    return rows


def orphan_warnings(rows: list[dict[str, Any]], idle_s: float = WARN_IDLE_S, age_s: float = WARN_AGE_S) -> list[str]:
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
            out.append(f"{r['name']} ({r['id']}) {', '.join(why)}{cost} — "
                       f"`mnist-launch down {r['name']}` if you are done")
    return out
