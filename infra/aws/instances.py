"""The instances themselves (and the key pairs they log in with): find, describe, launch across AZs (one
or a whole cluster's nodes at once, all or nothing), wait for a state, tag their autostop settings and
ranks, stop and terminate.

    inst = Instances(clients).find("mnist")[0]   # InstanceInfo, newest running first
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime, timezone
from functools import partial
from typing import Any, Callable, Optional

from botocore.exceptions import ClientError

from core.errors import AWSError
from infra.aws.clients import Regional
from infra.aws.errors import CAPACITY_ERRORS, NEW_INSTANCE, QUOTA_ERRORS, Backoff, Transient, error_code, retry
from infra.aws.images import DLAMI_USER, Image
from infra.aws.tags import (
    TAG_AUTOSTOP,
    TAG_AUTOSTOP_ACTION,
    TAG_CLUSTER,
    TAG_MANAGED,
    TAG_NODE,
    TAG_USER,
    is_managed,
    tags,
)
from infra.provider import ClusterSpec, InstanceInfo

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
NOT_TERMINATED = [*LIVE_STATES, "shutting-down"]  # everything `down` must wait out


def key_pair_name(public_key: str) -> str:
    """Named after the key's content: the same key is imported once per region and shared."""
    parts = public_key.split()
    blob = parts[1] if len(parts) > 1 else public_key
    return "mnist-launch-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


class Instances(Regional):
    """One region's mnist-launch instances and key pairs, through ``clients.ec2``."""

    # -- reading -------------------------------------------------------------------------------

    def to_info(self, inst: dict[str, Any]) -> InstanceInfo:
        t = {x["Key"]: x["Value"] for x in inst.get("Tags", [])}
        return InstanceInfo(
            id=inst["InstanceId"],
            name=t.get(TAG_CLUSTER, "?"),
            region=self.region,
            instance_type=inst["InstanceType"],
            state=inst["State"]["Name"],
            spot=inst.get("InstanceLifecycle") == "spot",
            launch_time=inst.get("LaunchTime"),
            public_ip=inst.get("PublicIpAddress"),
            az=inst.get("Placement", {}).get("AvailabilityZone"),
            image_id=inst.get("ImageId", ""),
            key_name=inst.get("KeyName"),
            user=t.get(TAG_USER, DLAMI_USER),
            autostop=t.get(TAG_AUTOSTOP),
            autostop_action=t.get(TAG_AUTOSTOP_ACTION),
            profile_arn=inst.get("IamInstanceProfile", {}).get("Arn"),
            private_ip=inst.get("PrivateIpAddress"),
            node=int(t[TAG_NODE]) if t.get(TAG_NODE, "").isdigit() else 0,
            placement_group=inst.get("Placement", {}).get("GroupName") or None,
        )

    def find(self, name: Optional[str] = None, states: Optional[list[str]] = None) -> list[InstanceInfo]:
        """Instances tagged by mnist-launch (optionally one cluster), newest first."""
        filters = [
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": states or LIVE_STATES},
        ]
        if name:
            filters.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [name]})
        found: list[InstanceInfo] = []
        for page in self.clients.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for res in page["Reservations"]:
                found.extend(self.to_info(i) for i in res["Instances"])
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(found, key=lambda i: (i.state == "running", i.launch_time or epoch), reverse=True)

    def describe(self, instance_id: str) -> InstanceInfo:
        # right after RunInstances, DescribeInstances may not know the id yet
        res = retry(lambda: self.clients.ec2.describe_instances(InstanceIds=[instance_id]), NEW_INSTANCE,
                    what=f"DescribeInstances {instance_id}", log=self.log)["Reservations"]
        return self.to_info(res[0]["Instances"][0])

    def status_checks_ok(self, instance_id: str) -> bool:
        st = retry(lambda: self.clients.ec2.describe_instance_status(InstanceIds=[instance_id]), NEW_INSTANCE,
                   what=f"DescribeInstanceStatus {instance_id}", log=self.log)["InstanceStatuses"]
        if not st:
            return False
        s = st[0]
        return bool(s.get("InstanceStatus", {}).get("Status") == "ok"
                    and s.get("SystemStatus", {}).get("Status") == "ok")

    def wait_state(self, instance_id: str, state: str, timeout_s: float,
                   tick: Callable[[InstanceInfo], None] = lambda _i: None) -> InstanceInfo:
        deadline = time.monotonic() + timeout_s
        backoff = Backoff(self.poll_s)
        while True:
            info = self.describe(instance_id)
            tick(info)
            if info.state == state:
                return info
            if state == "running" and info.state in ("terminated", "shutting-down", "stopped"):
                raise AWSError(f"instance {instance_id} went {info.state} while starting — "
                               "check the EC2 console, then run `up` again")
            if time.monotonic() > deadline:
                raise AWSError(f"instance {instance_id} still {info.state} after {timeout_s:.0f}s — "
                               "check the EC2 console or raise --timeout")
            backoff.sleep()

    def volumes(self, cluster: str) -> list[str]:
        """The cluster's volumes that still exist, as `down` names them."""
        vols = self.clients.ec2.describe_volumes(Filters=[
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
            {"Name": "status", "Values": ["creating", "available", "in-use"]}])["Volumes"]
        return [f"volume {v['VolumeId']} ({v['State']})" for v in vols]

    def volume_sizes(self, instance_ids: list[str]) -> dict[str, int]:
        """GB of EBS attached to each of ``instance_ids`` (one call for all; an id with none is left out)."""
        sizes: dict[str, int] = {}
        if not instance_ids:
            return sizes
        for page in self.clients.ec2.get_paginator("describe_volumes").paginate(
                Filters=[{"Name": "attachment.instance-id", "Values": instance_ids}]):
            for vol in page["Volumes"]:
                for att in vol.get("Attachments", []):
                    if att.get("InstanceId") in instance_ids:
                        sizes[att["InstanceId"]] = sizes.get(att["InstanceId"], 0) + int(vol.get("Size", 0))
        return sizes

    # -- key pairs -----------------------------------------------------------------------------

    def key_exists(self, key_name: str) -> bool:
        try:
            return bool(self.clients.ec2.describe_key_pairs(KeyNames=[key_name])["KeyPairs"])
        except ClientError as err:
            if error_code(err) == "InvalidKeyPair.NotFound":
                return False
            raise

    def key_is_ours(self, key: str) -> bool:
        try:
            kps = self.clients.ec2.describe_key_pairs(KeyNames=[key])["KeyPairs"]
        except ClientError as err:
            if error_code(err) == "InvalidKeyPair.NotFound":
                return False
            raise
        return bool(kps) and is_managed(kps[0])

    def import_key(self, cluster: str, key_name: str, public_key: str) -> None:
        self.clients.ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=public_key.encode(),
                                         TagSpecifications=[{"ResourceType": "key-pair", "Tags": tags(cluster)}])

    def cluster_keys(self, cluster: str) -> set[str]:
        """The key pairs tagged with ``cluster`` (imported by its `up`)."""
        return {kp["KeyName"] for kp in self.clients.ec2.describe_key_pairs(
            Filters=[{"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]}])["KeyPairs"]}

    def keys_in_use(self) -> set[Optional[str]]:
        """The key pairs of every mnist-launch instance not terminated: not to be deleted."""
        return {i.key_name for i in self.find(states=NOT_TERMINATED)}

    # -- launching and changing ----------------------------------------------------------------

    def run(self, spec: ClusterSpec, image: Image, key_name: str, group_id: str, profile: Optional[str],
            new: tuple[Transient, ...], subnets: list[tuple[str, str]], ranks: tuple[int, ...] = (0,),
            placement: Optional[str] = None, joining: bool = False) -> list[dict[str, Any]]:
        """One instance per rank of ``ranks``, all in the first AZ of ``subnets`` that has room for all of
        them (MinCount = MaxCount: EC2 starts all or none), in group ``placement`` if given; the new instances
        as EC2 describes them, in launch order. Tag their ranks with ``tag_ranks`` (one rank goes on at launch).
        ``new``: the refusals to wait out because this call just made the resource (key, group, profile).
        ``joining``: they join live nodes in their one zone, so no other zone is tried."""
        count = len(ranks)
        extra = {TAG_USER: image.user, TAG_AUTOSTOP: spec.autostop, TAG_AUTOSTOP_ACTION: spec.shutdown_behavior,
                 "Name": f"mnist-launch-{spec.name}"}
        if count == 1:
            extra[TAG_NODE] = str(ranks[0])
        params: dict[str, Any] = dict(
            ImageId=image.id, InstanceType=spec.type_or_default, MinCount=count, MaxCount=count,
            KeyName=key_name, SecurityGroupIds=[group_id],
            # IMDSv2 only, one hop: the agent runs on the host itself. 2 is what a container behind a
            # bridge needs to reach IMDS; nothing of ours runs in one, and 1 keeps any container out.
            MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
            BlockDeviceMappings=[{"DeviceName": image.root_device, "Ebs": {
                "VolumeSize": spec.disk_gb, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}}],
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": tags(spec.name, extra)},
                {"ResourceType": "volume", "Tags": tags(spec.name)},
            ],
            # autostop shuts the OS down; on-demand then stops (keeps the disk) unless --autostop-terminate,
            # one-time spot must terminate
            InstanceInitiatedShutdownBehavior=spec.shutdown_behavior,
        )
        if profile:
            params["IamInstanceProfile"] = {"Name": profile}
        if placement:
            params["Placement"] = {"GroupName": placement}
        if spec.spot:
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
                "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
        token = uuid.uuid4().hex[:24]
        tried: list[str] = []
        last = ""
        what = f"{count} x {spec.type_or_default}" if count > 1 else spec.type_or_default
        for az, subnet in subnets:
            try:
                # the same ClientToken on every try: a retried launch never makes a second instance
                res = retry(partial(self.clients.ec2.run_instances, **params, SubnetId=subnet,
                                    ClientToken=f"{token}-{az}"),
                            *new, what=f"RunInstances in {az}", log=self.log)
            except ClientError as err:
                code = error_code(err)
                if code in QUOTA_ERRORS:
                    raise AWSError(
                        f"{spec.type_or_default} in {self.region}: {code} (account quota) — request more at "
                        "https://console.aws.amazon.com/servicequotas/home"
                        f"?region={self.region}#!/services/ec2/quotas, "
                        "or pick a smaller --instance type" + (" or drop --spot" if spec.spot else "")
                        + (" or fewer --nodes" if count > 1 else "")
                    ) from None
                if code in CAPACITY_ERRORS:
                    tried.append(az)
                    last = code
                    self.log(f"{az}: {code}; trying the next availability zone")
                    continue
                raise
            insts: list[dict[str, Any]] = sorted(res["Instances"], key=lambda i: i.get("AmiLaunchIndex", 0))
            return insts
        if joining:
            raise AWSError(
                f"no capacity for {what} in {', '.join(tried)}, the zone of cluster '{spec.name}' ({last}) — "
                f"retry later, or `mnist-launch down {spec.name}` and `up` it again to take a zone with room")
        raise AWSError(
            f"no capacity for {what} in {self.region} (tried {', '.join(tried)}: {last}) — "
            "retry later, or pick another --instance type or --region" + ("" if spec.spot else " (or try --spot)")
            + (" or fewer --nodes" if count > 1 else "")
        )

    def tag_ranks(self, instance_ids: list[str], ranks: tuple[int, ...]) -> None:
        """Each new node's rank, in launch order (several launched at once share their launch tags)."""
        for instance_id, rank in zip(instance_ids, ranks):
            retry(partial(self.clients.ec2.create_tags, Resources=[instance_id],
                          Tags=[{"Key": TAG_NODE, "Value": str(rank)}]), NEW_INSTANCE,
                  what=f"CreateTags {instance_id}", log=self.log)

    def dry_run(self, spec: ClusterSpec, image_id: str, subnet: str, count: int = 1) -> None:
        """AWS's own DryRun: permissions, type and image are checked without launching anything."""
        try:
            self.clients.ec2.run_instances(ImageId=image_id, InstanceType=spec.type_or_default, MinCount=count,
                                           MaxCount=count, SubnetId=subnet, DryRun=True)
        except ClientError as err:
            if error_code(err) != "DryRunOperation":
                raise

    def set_autostop(self, instance_id: str, spec: ClusterSpec) -> None:
        """What an OS shutdown (the autostop watcher's) does to the instance, and the tags `status` shows."""
        # the Attribute/Value form of ModifyInstanceAttribute (moto knows only this one for this attribute)
        self.clients.ec2.modify_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior", Value=spec.shutdown_behavior)
        self.clients.ec2.create_tags(Resources=[instance_id], Tags=[
            {"Key": TAG_AUTOSTOP, "Value": spec.autostop},
            {"Key": TAG_AUTOSTOP_ACTION, "Value": spec.shutdown_behavior}])

    def start(self, instance_ids: list[str]) -> None:
        self.clients.ec2.start_instances(InstanceIds=instance_ids)

    def stop(self, instance_ids: list[str]) -> None:
        self.clients.ec2.stop_instances(InstanceIds=instance_ids)

    def terminate(self, instance_ids: list[str], just_created: bool = False) -> None:
        if just_created:  # an instance RunInstances just returned may be unknown for a while yet
            retry(partial(self.clients.ec2.terminate_instances, InstanceIds=instance_ids), NEW_INSTANCE,
                  what=f"TerminateInstances {' '.join(instance_ids)}", log=self.log)
        else:
            self.clients.ec2.terminate_instances(InstanceIds=instance_ids)
