"""What an EC2 instance costs an hour (infra/prices.py's ``Rate``): a spot instance at its zone's current
spot price (DescribeSpotPriceHistory, Linux/UNIX, that type in that zone, the price in effect now, with
its timestamp), an on-demand one at the list price; plus its public IPv4 address and its volumes.

A price must never stop `up`, `status` or `down`: when AWS has no history for the type in the zone, or
refuses the call (an identity without ec2:DescribeSpotPriceHistory), or fails otherwise, a spot
instance gets the on-demand figure and the rate says why (``Rate.note``). One lookup per type and
zone for the life of this object: every node of a cluster shares one.

    pricing = Pricing(Clients.create("us-east-1"))
    pricing.rate("g4dn.xlarge", "us-east-1a", spot=True, ipv4=True, volume_gb=100).total_usd
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Optional

from botocore.exceptions import BotoCoreError, ClientError

from infra.aws.clients import Clients, Regional
from infra.aws.errors import ACCESS_ERRORS, error_code, one_line
from infra.prices import IPV4_USD_PER_HOUR, Rate, hourly_price, on_demand_rate

PRODUCT = "Linux/UNIX"  # the images we launch; "(Amazon VPC)" was EC2-Classic's twin, gone since 2023


class Pricing(Regional):
    """Rates of one region's instances; spot prices looked up once per (type, zone)."""

    def __init__(self, clients: Clients, log: Callable[[str], None] = lambda _msg: None, poll_s: float = 3.0) -> None:
        super().__init__(clients, log, poll_s)
        self._spot: dict[tuple[str, str], tuple[Optional[float], Optional[str], str]] = {}

    def spot_price(self, instance_type: str, zone: str) -> tuple[Optional[float], Optional[str], str]:
        """(USD per hour, its timestamp in ISO 8601, '') — or (None, None, why there is none, with a hint)."""
        if (instance_type, zone) not in self._spot:
            self._spot[(instance_type, zone)] = self._look_up(instance_type, zone)
        return self._spot[(instance_type, zone)]

    def _look_up(self, instance_type: str, zone: str) -> tuple[Optional[float], Optional[str], str]:
        now = datetime.now(timezone.utc)
        try:
            # a start time of now: AWS answers with the last change before it, the price in effect now
            history = self.clients.ec2.describe_spot_price_history(
                InstanceTypes=[instance_type], ProductDescriptions=[PRODUCT], StartTime=now, EndTime=now,
                Filters=[{"Name": "availability-zone", "Values": [zone]}])["SpotPriceHistory"]
        except ClientError as err:
            code = error_code(err)
            if code in ACCESS_ERRORS:
                return None, None, (f"DescribeSpotPriceHistory was refused ({code}) — grant "
                                    "ec2:DescribeSpotPriceHistory (docs/laptop-policy.json) to see the spot price")
            return None, None, f"the spot price lookup failed ({code}: {one_line(str(err))})"
        except BotoCoreError as err:
            return None, None, f"the spot price lookup failed ({one_line(str(err))})"
        ours = [h for h in history if h.get("AvailabilityZone") == zone and h.get("InstanceType") == instance_type]
        if not ours:
            return None, None, f"AWS has no spot price history for {instance_type} in {zone}"
        newest = max(ours, key=lambda h: h["Timestamp"])
        stamp = newest["Timestamp"]
        when = stamp.astimezone(timezone.utc).isoformat() if isinstance(stamp, datetime) else str(stamp)
        return float(newest["SpotPrice"]), when, ""

    def rate(self, instance_type: str, zone: Optional[str], spot: bool, ipv4: bool, volume_gb: int) -> Rate:
        """One instance's rate; a spot one without a spot price gets the on-demand figure, and says why."""
        if not spot:
            return on_demand_rate(instance_type, ipv4, volume_gb)
        if zone is None:
            usd, stamp, why = None, None, "its availability zone is not known yet"
        else:
            usd, stamp, why = self.spot_price(instance_type, zone)
        if usd is None:
            bound = "unknown" if hourly_price(instance_type) is None else "an upper bound"
            return on_demand_rate(instance_type, ipv4, volume_gb, market="spot",
                                  note=f"{why}: showing the on-demand list price ({bound})")
        return Rate(usd, "spot", f"spot price in {zone} at {stamp}", IPV4_USD_PER_HOUR if ipv4 else 0.0,
                    volume_gb, spot_time=stamp)
