"""What an instance costs, against moto in-process: a spot instance at its zone's spot price as EC2 holds it
(DescribeSpotPriceHistory), the on-demand figure with a reason where there is none, the public IPv4 address
and the gp3 volume on top, and what a cluster of several nodes cost since launch."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto import mock_aws
from rich.console import Console

from infra.aws import AWSProvider, Clients, ClusterSpec
from infra.home import ensure_default_key
from infra.prices import (
    GP3_USD_PER_GB_MONTH,
    HOURS_PER_MONTH,
    IPV4_USD_PER_HOUR,
    Rate,
    hourly_price,
    usd,
    volume_hourly,
)
from infra.provider import InstanceInfo
from infra.ssh import public_key_of
from launcher.cluster.costs import price_text, spent, spent_line
from launcher.cluster.provision import print_plan
from tests.support.aws_helpers import CIDR, fake_aws_env, install_recorder, ubuntu_ami

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch, tmp_path):
    fake_aws_env(monkeypatch, tmp_path / "home")
    with mock_aws():
        yield


def spot_spec(**kw) -> ClusterSpec:
    return ClusterSpec(name="spotty", region=REGION, public_key=public_key_of(ensure_default_key()), ssh_cidr=CIDR,
                       instance_type="g4dn.xlarge", disk_gb=120, ami=ubuntu_ami(), spot=True, **kw)


def held_by_ec2(instance_type: str, zone: str) -> list[dict]:
    """What EC2 (here moto) holds as the spot price history of ``instance_type`` in ``zone``."""
    return boto3.client("ec2", region_name=REGION).describe_spot_price_history(
        InstanceTypes=[instance_type], Filters=[{"Name": "availability-zone", "Values": [zone]}])["SpotPriceHistory"]


def test_a_spot_instance_costs_its_zones_spot_price_plus_ipv4_and_volume(aws, monkeypatch):
    provider = AWSProvider(Clients.create(REGION), poll_s=0.01)
    inst = provider.ensure(spot_spec()).instance
    [held] = held_by_ec2(inst.instance_type, inst.az)
    rec = install_recorder(monkeypatch)
    fresh = AWSProvider(Clients.create(REGION))
    rate = fresh.rates([inst, inst])[inst.id]
    assert (rate.market, rate.instance_usd, rate.note) == ("spot", float(held["SpotPrice"]), None)
    assert rate.spot_time == held["Timestamp"].astimezone(timezone.utc).isoformat()
    assert rate.source == f"spot price in {inst.az} at {rate.spot_time}"
    assert (rate.ipv4_usd, rate.volume_gb) == (IPV4_USD_PER_HOUR, 120)  # a public address; the disk `up` asked for
    assert rate.total_usd == pytest.approx(float(held["SpotPrice"]) + 0.005 + 0.08 * 120 / 730)
    # the price in effect now, of Linux/UNIX in the instance's zone; asked once for two nodes of one type and zone
    [call] = [c.params for c in rec.calls if c.operation == "DescribeSpotPriceHistory"]
    assert (call["InstanceTypes"], call["ProductDescriptions"]) == (["g4dn.xlarge"], ["Linux/UNIX"])
    assert call["Filters"] == [{"Name": "availability-zone", "Values": [inst.az]}]
    assert call["StartTime"] == call["EndTime"]
    # the plan (`up --dry-run --spot`) shows the same, for the zone it would try first
    plan = fresh.plan(replace(spot_spec(), name="other"))
    [first] = held_by_ec2("g4dn.xlarge", "us-east-1a")
    assert plan.rate is not None and plan.hourly_usd == plan.rate.instance_usd == float(first["SpotPrice"])
    shown = io.StringIO()
    print_plan(plan, Console(file=shown, width=300))
    when = first["Timestamp"].astimezone(timezone.utc).isoformat()
    assert (f"~${plan.rate.total_usd:.3f}/h (${usd(float(first['SpotPrice']))} spot + IPv4 $0.005 + 120 GB gp3 "
            f"$0.013; spot price in us-east-1a at {when})") in shown.getvalue()


def test_no_spot_history_for_the_type_in_the_zone_falls_back_to_on_demand_and_says_so(aws):
    zone = "us-east-1e"  # moto, like EC2, offers no g4dn in this zone, so it holds no spot price for one
    assert held_by_ec2("g4dn.xlarge", zone) == []
    rate = AWSProvider(Clients.create(REGION)).pricing.rate("g4dn.xlarge", zone, spot=True, ipv4=True, volume_gb=50)
    assert (rate.market, rate.instance_usd, rate.spot_time) == ("spot", hourly_price("g4dn.xlarge"), None)
    assert rate.note == ("AWS has no spot price history for g4dn.xlarge in us-east-1e: showing the on-demand list "
                         "price (an upper bound)")
    on_demand = AWSProvider(Clients.create(REGION)).pricing.rate("g4dn.xlarge", zone, spot=False, ipv4=False,
                                                                 volume_gb=50)
    assert (on_demand.market, on_demand.instance_usd, on_demand.ipv4_usd, on_demand.note) == (
        "on-demand", hourly_price("g4dn.xlarge"), 0.0, None)


def test_a_stopped_instance_costs_only_its_volume(aws):
    provider = AWSProvider(Clients.create(REGION), poll_s=0.01)
    inst = provider.ensure(replace(spot_spec(), spot=False)).instance
    [stopped] = provider.stop("spotty")
    rate = provider.rates([stopped])[stopped.id]
    assert (rate.instance_usd, rate.ipv4_usd, rate.volume_gb) == (0.0, 0.0, 120) and stopped.id == inst.id
    assert rate.total_usd == pytest.approx(volume_hourly(120))


def test_the_volume_is_its_gb_month_price_prorated_over_730_hours():
    assert (GP3_USD_PER_GB_MONTH, HOURS_PER_MONTH, IPV4_USD_PER_HOUR) == (0.08, 730, 0.005)
    assert volume_hourly(730) == pytest.approx(0.08) and volume_hourly(0) == 0.0
    rate = Rate(0.5, "on-demand", "list", ipv4_usd=0.005, volume_gb=730)
    assert rate.total_usd == pytest.approx(0.585) and rate.cost(7200) == pytest.approx(1.17)
    assert price_text([rate, rate]) == "~2 x $0.585/h = $1.170/h (each $0.500 on-demand + IPv4 $0.005 + 730 GB gp3 " \
                                       "$0.080; list)"
    assert Rate(None, "on-demand", "list").cost(3600) is None


def node(id_: str, rank: int, hours: float, now: datetime, state: str = "running") -> InstanceInfo:
    return InstanceInfo(id=id_, name="pair", region=REGION, instance_type="g4dn.12xlarge", state=state, spot=True,
                        launch_time=now - timedelta(hours=hours), public_ip="198.51.100.1", az="us-east-1a",
                        image_id="ami-1", key_name=None, user="ubuntu", node=rank)


def test_down_sums_every_nodes_hours_times_its_rate():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    insts = [node("i-0", 0, 2.0, now), node("i-1", 1, 1.5, now)]
    spot = Rate(1.25, "spot", "spot price in us-east-1a at 2025-12-31T23:00:00+00:00", 0.005, 100)
    rates = {"i-0": spot, "i-1": spot}
    per_hour = 1.25 + 0.005 + 0.08 * 100 / 730
    assert spent(insts, rates, now) == pytest.approx(3.5 * per_hour, abs=1e-3)
    line = spent_line("pair", insts, rates, now)
    assert line == (f"cost of pair: ~${3.5 * per_hour:.2f} in all for 2 nodes (an estimate: 3.50 instance-hours "
                    "since launch x ~$1.266/h ($1.250 spot + IPv4 $0.005 + 100 GB gp3 $0.011; spot price in "
                    "us-east-1a at 2025-12-31T23:00:00+00:00); the bill is the truth)")
    unknown = {"i-0": spot, "i-1": Rate(None, "on-demand", "list")}
    assert spent_line("pair", insts, unknown, now).startswith("cost of pair: unknown for 2 nodes")
