"""Where an instance sits and who may reach it: the default VPC's subnets per AZ, and a security group
that lets SSH in from the caller's address (/32) only, and, in a multi-node cluster, every TCP port in
from the group's own members (the nodes' rendezvous and collectives) and from nobody else.

    net = Network(clients)
    group_id = net.create_group("mnist", vpc)
    net.allow_new(group_id, "203.0.113.7/32")
"""

from __future__ import annotations

import ipaddress
import urllib.request
from typing import Any, Optional

from botocore.exceptions import ClientError

from core.errors import AWSError, ConfigError
from infra.aws.clients import Regional
from infra.aws.errors import NEW_GROUP, delete_when_free, error_code, one_line, retry
from infra.aws.tags import tags
from infra.provider import Step

CHECKIP_URL = "https://checkip.amazonaws.com"
# What `up` writes on the ingress rules it adds, so that it replaces its own rule (and only its own)
# when the caller's address changes.
SSH_RULE_DESCRIPTION = "mnist-launch: ssh from the launcher"
MEMBERS_RULE_DESCRIPTION = "mnist-launch: the cluster's nodes reach each other"


def caller_cidr(url: str = CHECKIP_URL, timeout: float = 5.0) -> str:
    """This machine's public IPv4 address as a /32, looked up once from checkip.amazonaws.com."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ip = resp.read().decode().strip()
        return str(ipaddress.ip_network(f"{ipaddress.ip_address(ip)}/32"))
    except (OSError, ValueError) as err:
        raise AWSError(
            f"could not find your public IP address ({one_line(str(err))}) — pass --ssh-cidr A.B.C.D/32"
        ) from None


def validate_cidr(cidr: str) -> str:
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise ConfigError(f"--ssh-cidr {cidr!r}: not a CIDR — pass your address as A.B.C.D/32") from None
    if net.prefixlen == 0:
        raise ConfigError(f"--ssh-cidr {cidr}: refusing to open SSH to the whole internet — "
                          "pass your address as A.B.C.D/32")
    if net.version != 4:
        raise ConfigError(f"--ssh-cidr {cidr}: only IPv4 is supported — pass your address as A.B.C.D/32")
    return str(net)


def sg_name(cluster: str) -> str:
    return f"mnist-launch-{cluster}"


def _is_ssh(perm: dict[str, Any]) -> bool:
    return perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 22 and perm.get("ToPort") == 22


def has_ingress(sg: dict[str, Any], cidr: str) -> bool:
    return any(r.get("CidrIp") == cidr for perm in sg.get("IpPermissions", []) if _is_ssh(perm)
               for r in perm.get("IpRanges", []))


def has_members_rule(sg: dict[str, Any]) -> bool:
    """Whether the group lets its own members in on every TCP port."""
    return any(perm.get("IpProtocol") == "tcp" and perm.get("FromPort") == 0 and perm.get("ToPort") == 65535
               and any(p.get("GroupId") == sg["GroupId"] for p in perm.get("UserIdGroupPairs", []))
               for perm in sg.get("IpPermissions", []))


def stale_ssh_rules(sg: dict[str, Any], cidr: str) -> list[str]:
    """The sources of the tcp/22 rules `up` added for an earlier caller address (they carry our
    description), other than ``cidr``; rules anyone else added are not ours to touch."""
    return sorted({r["CidrIp"] for perm in sg.get("IpPermissions", []) if _is_ssh(perm)
                   for r in perm.get("IpRanges", [])
                   if r.get("Description") == SSH_RULE_DESCRIPTION and r.get("CidrIp") != cidr})


class Network(Regional):
    """One region's default VPC and the clusters' security groups, through ``clients.ec2``."""

    def default_vpc(self) -> str:
        vpcs = self.clients.ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise AWSError(
                f"no default VPC in {self.region} — create one "
                f"(`aws ec2 create-default-vpc --region {self.region}`) or pick another --region"
            )
        return str(vpcs[0]["VpcId"])

    def subnets_by_az(self, vpc_id: str, instance_type: str, avoid: Optional[str] = None) -> list[tuple[str, str]]:
        """(az, subnet) of the default subnets in AZs that offer the type (all of them if AWS doesn't say),
        in name order but with ``avoid`` (where a lost instance was) last."""
        ec2 = self.clients.ec2
        subnets = ec2.describe_subnets(Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "default-for-az", "Values": ["true"]},
        ])["Subnets"]
        pairs = sorted((s["AvailabilityZone"], s["SubnetId"]) for s in subnets)
        offered = {
            o["Location"]
            for o in ec2.describe_instance_type_offerings(
                LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}]
            )["InstanceTypeOfferings"]
        }
        if offered and any(az in offered for az, _ in pairs):
            pairs = [p for p in pairs if p[0] in offered]
        elif offered == set() and pairs:
            raise AWSError(f"{instance_type} is not offered in {self.region} — "
                           "pick another --instance type or --region")
        if not pairs:
            raise AWSError(f"the default VPC in {self.region} has no default subnets — "
                           "create them or pick another --region")
        return sorted(pairs, key=lambda pair: pair[0] == avoid)  # stable

    def find_group(self, cluster: str, vpc_id: Optional[str] = None) -> Optional[dict[str, Any]]:
        filters = [{"Name": "group-name", "Values": [sg_name(cluster)]}]
        if vpc_id:
            filters.append({"Name": "vpc-id", "Values": [vpc_id]})
        groups = self.clients.ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
        return groups[0] if groups else None

    def create_group(self, cluster: str, vpc_id: str) -> str:
        """A new group for ``cluster``, no rules yet (``allow_new`` adds the first). Its id."""
        return str(self.clients.ec2.create_security_group(
            GroupName=sg_name(cluster), VpcId=vpc_id,
            Description=f"mnist-launch cluster {cluster}: ssh from the launcher only",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags(cluster)}],
        )["GroupId"])

    def allow_new(self, group_id: str, cidr: str) -> None:
        """The first rule of a group made by this very call (AWS may not see the group for a while yet)."""
        retry(lambda: self.authorize_ssh(group_id, cidr), NEW_GROUP,
              what=f"AuthorizeSecurityGroupIngress {group_id}", log=self.log)

    def authorize_ssh(self, group_id: str, cidr: str) -> None:
        self.clients.ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                            "IpRanges": [{"CidrIp": cidr, "Description": SSH_RULE_DESCRIPTION}]}],
        )

    def allow_members(self, group_id: str, just_created: bool = False) -> None:
        """Every TCP port from the group's own members (a multi-node cluster's nodes), nothing from anyone else.
        ``just_created``: AWS may not see the group for a while yet. A rule already there is fine."""
        def authorize() -> None:
            self.clients.ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535,
                 "UserIdGroupPairs": [{"GroupId": group_id, "Description": MEMBERS_RULE_DESCRIPTION}]}])

        try:
            if just_created:
                retry(authorize, NEW_GROUP, what=f"AuthorizeSecurityGroupIngress {group_id}", log=self.log)
            else:
                authorize()
        except ClientError as err:
            if error_code(err) != "InvalidPermission.Duplicate":
                raise

    def update_members(self, sg: dict[str, Any], apply: bool = True) -> Optional[Step]:
        """Add the members' rule to an existing group that lacks it; None: nothing to change."""
        if has_members_rule(sg):
            return None
        if apply:
            self.allow_members(sg["GroupId"])
        return Step("security group", "update", f"{sg['GroupId']}: allow all TCP between the cluster's nodes")

    def update_ssh(self, sg: dict[str, Any], cidr: str, apply: bool = True) -> Optional[Step]:
        """Let ``cidr`` reach SSH and revoke the rule an earlier `up` added for another address (the
        caller moved: one rule, not one more per address ever used). None: nothing to change."""
        group_id = sg["GroupId"]
        have = has_ingress(sg, cidr)
        stale = stale_ssh_rules(sg, cidr)
        if have and not stale:
            return None
        if apply:
            if not have:
                self.authorize_ssh(group_id, cidr)  # first: never a moment with no rule for the caller
            if stale:
                self.clients.ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=[
                    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": c} for c in stale]}])
        what = [] if have else [f"allow tcp/22 from {cidr}"]
        what += [f"revoke the launcher's earlier rule for {', '.join(stale)}"] if stale else []
        return Step("security group", "update", f"{group_id}: {'; '.join(what)}")

    def delete_group(self, group_id: str, timeout_s: float = 300, just_created: bool = False) -> None:
        # a just-terminated instance's network interface holds the group for a little while
        delete_when_free(lambda: self.clients.ec2.delete_security_group(GroupId=group_id), NEW_GROUP,
                         gone="InvalidGroup.NotFound", busy="DependencyViolation",
                         what=f"DeleteSecurityGroup {group_id}", poll_s=self.poll_s, timeout_s=timeout_s,
                         just_created=just_created, log=self.log)
