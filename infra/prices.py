"""On-demand hourly prices for the GPU instance types users pick, for `status` and `up --dry-run`.

Region us-east-1, Linux, on-demand, USD per hour, as listed by AWS in mid-2025 (p4d/p5 after
AWS's June 2025 price cut). APPROXIMATE: other regions cost more or less, spot costs less, and
AWS changes prices; the real bill is the truth. A type not listed has no price (None).

    hourly_price("g4dn.xlarge")  # -> 0.526
"""

from __future__ import annotations

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


def hourly_price(instance_type: str) -> Optional[float]:
    """Approximate on-demand USD/hour in us-east-1, or None for a type not in the table."""
    return ON_DEMAND_USD_PER_HOUR.get(instance_type)


def cost_so_far(instance_type: str, seconds: float) -> Optional[float]:
    price = hourly_price(instance_type)
    return None if price is None else round(price * max(seconds, 0.0) / 3600.0, 4)
