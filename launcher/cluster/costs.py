"""How `up`, `status` and `down` say what a cluster costs: an hourly total with its parts (the instance at
its spot or on-demand price, the public IPv4 address, the gp3 volume; infra/prices.py), a note where a
spot instance shows the on-demand figure, and what a cluster cost since it was launched. Estimates, and
said to be: the bill is the truth.

    price_text([rate])    # '~$0.542/h ($0.526 on-demand + IPv4 $0.005 + 100 GB gp3 $0.011; on-demand list ...)'
    spent_line("mnist", insts, rates)
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from infra.prices import Rate, total_line
from infra.provider import InstanceInfo


def price_text(rates: list[Rate]) -> str:
    """The hourly total of ``rates`` (one per node) with one node's parts and where its price comes from."""
    if not rates:
        return "price unknown"
    head = rates[0]
    return (f"{total_line(rates) or 'price unknown'} ({'each ' if len(rates) > 1 else ''}{head.parts()}; "
            f"{head.source})")


def price_notes(rates: list[Rate]) -> list[str]:
    """Each distinct thing the estimates lack (a spot price, a volume size), once."""
    return list(dict.fromkeys(r.note for r in rates if r.note))


def spent(insts: list[InstanceInfo], rates: dict[str, Rate], now: Optional[datetime] = None) -> Optional[float]:
    """USD the instances cost since each was launched (hours up x its whole rate), summed; None if one is unknown."""
    now = now or datetime.now(timezone.utc)
    costs = [rates[i.id].cost(i.uptime_seconds(now)) if i.id in rates else None for i in insts]
    return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)


def spent_line(name: str, insts: list[InstanceInfo], rates: dict[str, Rate], now: Optional[datetime] = None) -> str:
    """'cost of mnist: ~$0.27 in all (an estimate: 0.50 instance-hours x ~$0.542/h ...)' for `down`."""
    now = now or datetime.now(timezone.utc)
    total = spent(insts, rates, now)
    hours = sum(i.uptime_seconds(now) for i in insts) / 3600.0
    nodes = f" for {len(insts)} nodes" if len(insts) > 1 else ""
    if total is None:
        return f"cost of {name}: unknown{nodes} — {hours:.2f} instance-hours of a type without a list price"
    running = [rates[i.id] for i in insts if i.state in ("pending", "running") and i.id in rates]
    per_hour = f" x {price_text(running[:1])}" if running else ""  # one node's rate: the hours are every node's
    return (f"cost of {name}: ~${total:.2f} in all{nodes} (an estimate: {hours:.2f} instance-hours since launch"
            f"{per_hour}; the bill is the truth)")
