"""What an instance costs an hour, in parts, for `up`, `status` and `down`: the instance (the zone's
current spot price for a spot instance, looked up by the provider, infra/aws/spotprice.py; else the
on-demand list price below), its public IPv4 address, and its root volume.

The on-demand table: region us-east-1, Linux, USD per hour, as listed by AWS in mid-2025 (p4d/p5 after
AWS's June 2025 price cut). APPROXIMATE: other regions cost more or less, and AWS changes prices; the
real bill is the truth. A type not listed has no price (None).

    hourly_price("g4dn.xlarge")  # -> 0.526
    Rate(0.526, "on-demand", "on-demand list price", ipv4_usd=IPV4_USD_PER_HOUR, volume_gb=100).total_usd  # 0.542
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

PRICES_REGION = "us-east-1"
PRICES_DATE = "2025-07"

ON_DEMAND_USD_PER_HOUR: dict[str, float] = {
    # g4dn: NVIDIA T4 (16 GB)
    "g4dn.xlarge": 0.526,
    "g4dn.2xlarge": 0.752,
    "g4dn.4xlarge": 1.204,
    "g4dn.8xlarge": 2.176,
    "g4dn.12xlarge": 3.912,
    "g4dn.16xlarge": 4.352,
    "g4dn.metal": 7.824,
    # g5: NVIDIA A10G (24 GB)
    "g5.xlarge": 1.006,
    "g5.2xlarge": 1.212,
    "g5.4xlarge": 1.624,
    "g5.8xlarge": 2.448,
    "g5.12xlarge": 5.672,
    "g5.16xlarge": 4.096,
    "g5.24xlarge": 8.144,
    "g5.48xlarge": 16.288,
    # g6: NVIDIA L4 (24 GB)
    "g6.xlarge": 0.805,
    "g6.2xlarge": 0.978,
    "g6.4xlarge": 1.323,
    "g6.8xlarge": 2.014,
    "g6.12xlarge": 4.602,
    "g6.16xlarge": 3.397,
    "g6.24xlarge": 6.675,
    "g6.48xlarge": 13.350,
    # p3: NVIDIA V100 (16 GB)
    "p3.2xlarge": 3.06,
    "p3.8xlarge": 12.24,
    "p3.16xlarge": 24.48,
    # p4d: 8x NVIDIA A100 (40 GB)
    "p4d.24xlarge": 21.96,
    # p5: 8x NVIDIA H100 (80 GB)
    "p5.48xlarge": 55.04,
}


# every public IPv4 address, in use or not, since 1 February 2024 (AWS's VPC pricing)
IPV4_USD_PER_HOUR = 0.005
# gp3 storage in us-east-1, per GB-month (its 3000 IOPS and 125 MB/s baseline are free)
GP3_USD_PER_GB_MONTH = 0.08
# AWS prorates a GB-month by the hour over a month of 730 hours
HOURS_PER_MONTH = 730


def volume_hourly(size_gb: int) -> float:
    """A gp3 volume's USD per hour: its GB-month price prorated over 730 hours."""
    return GP3_USD_PER_GB_MONTH * max(size_gb, 0) / HOURS_PER_MONTH


@dataclass(frozen=True)
class Rate:
    """What one instance costs an hour, in parts (USD). An estimate: the bill is the truth."""

    instance_usd: Optional[float]  # the instance itself: its zone's spot price, or the on-demand list price
    market: str  # "spot" or "on-demand": how it is billed
    source: str  # where ``instance_usd`` comes from, said to the user ("spot price in us-east-1a at ...")
    ipv4_usd: float = 0.0  # its public IPv4 address, if it has one
    volume_gb: int = 0  # its EBS volumes (gp3)
    note: Optional[str] = None  # what the estimate lacks and why (a spot instance at the on-demand figure), what to do
    spot_time: Optional[str] = None  # the spot price's timestamp (ISO 8601), when it is one

    @property
    def volume_usd(self) -> float:
        return volume_hourly(self.volume_gb)

    @property
    def total_usd(self) -> Optional[float]:
        """Instance + IPv4 + volume; None when the instance's own price is unknown."""
        return None if self.instance_usd is None else self.instance_usd + self.ipv4_usd + self.volume_usd

    def cost(self, seconds: float) -> Optional[float]:
        """What ``seconds`` at this rate cost, everything included; None when the instance's price is unknown."""
        total = self.total_usd
        return None if total is None else round(total * max(seconds, 0.0) / 3600.0, 4)

    def parts(self) -> str:
        """'$0.526 on-demand + IPv4 $0.005 + 100 GB gp3 $0.011', for a line that shows the total."""
        inst = "price unknown" if self.instance_usd is None else f"${usd(self.instance_usd)} {self.market}"
        return (f"{inst} + IPv4 ${self.ipv4_usd:.3f}" if self.ipv4_usd else inst) \
            + f" + {self.volume_gb} GB gp3 ${self.volume_usd:.3f}"


def usd(amount: float) -> str:
    """A price as AWS lists it: at least 3 decimals, at most 6 (spot prices have up to 6), no trailing zeros."""
    text = f"{amount:.6f}".rstrip("0")
    return text + "0" * max(0, 3 - len(text.partition(".")[2]))


def on_demand_rate(instance_type: str, ipv4: bool = True, volume_gb: int = 0, note: Optional[str] = None,
                   market: str = "on-demand") -> Rate:
    """The rate from the on-demand list price (``note``: why a spot instance gets it)."""
    return Rate(hourly_price(instance_type), market, f"on-demand list price ({PRICES_REGION}, {PRICES_DATE})",
                IPV4_USD_PER_HOUR if ipv4 else 0.0, volume_gb, note)


def total_line(rates: list[Rate]) -> str:
    """'~$0.542/h' for one instance, '~2 x $0.542/h = $1.084/h' for several; '' when a price is unknown."""
    totals = [r.total_usd for r in rates]
    if not totals or any(t is None for t in totals):
        return ""
    known = [t for t in totals if t is not None]
    if len(known) == 1:
        return f"~${known[0]:.3f}/h"
    if len(set(round(t, 6) for t in known)) == 1:
        return f"~{len(known)} x ${known[0]:.3f}/h = ${sum(known):.3f}/h"
    return f"~${sum(known):.3f}/h for {len(known)} instances"


def hourly_price(instance_type: str) -> Optional[float]:
    """Approximate on-demand USD/hour in us-east-1, or None for a type not in the table."""
    return ON_DEMAND_USD_PER_HOUR.get(instance_type)

