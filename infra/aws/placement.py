"""The cluster placement group that keeps a multi-node cluster's instances on one network spine in one
zone (low latency, full bandwidth between them), where the instance type has one.

Which types: every current type but the burstable ones (t2, t3, t3a, t4g and the older t1), Mac
instances (mac1, mac2, ...) and the flex types (m7i-flex, c7i-flex), which AWS does not place in a
cluster placement group. A cluster of those still gets all its nodes in one zone, without a group.
A cluster of one node never gets a group: nothing to keep close.

    placement_strategy("g4dn.12xlarge")  # -> "cluster"
    name = Placements(clients).create("mnist", "cluster")
"""

from __future__ import annotations

import re
from typing import Any, Optional

from infra.aws.clients import Regional
from infra.aws.errors import NEW_PLACEMENT_GROUP, delete_when_free
from infra.aws.tags import TAG_CLUSTER, TAG_MANAGED, tags

# the families AWS does not place in a cluster placement group: burstable, Mac, flex
_NO_CLUSTER_GROUP = re.compile(r"^(t\d[a-z]*|mac\d[a-z0-9-]*|[a-z]\d+[a-z]*-flex)\.")


def placement_strategy(instance_type: str, nodes: int) -> Optional[str]:
    """"cluster" when ``nodes`` instances of ``instance_type`` get a cluster placement group, else None."""
    if nodes < 2 or _NO_CLUSTER_GROUP.match(instance_type):
        return None
    return "cluster"


def group_name(cluster: str) -> str:
    return f"mnist-launch-{cluster}"


class Placements(Regional):
    """One region's cluster placement groups of mnist-launch clusters, through ``clients.ec2``."""

    def find(self, cluster: str) -> list[dict[str, Any]]:
        """The placement groups tagged with ``cluster`` (ours: they carry the managed tag too)."""
        return list(self.clients.ec2.describe_placement_groups(Filters=[
            {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
            {"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])["PlacementGroups"])

    def create(self, cluster: str, strategy: str) -> str:
        """A new group for ``cluster``, tagged like everything else of it; its name."""
        name = group_name(cluster)
        self.clients.ec2.create_placement_group(
            GroupName=name, Strategy=strategy,
            TagSpecifications=[{"ResourceType": "placement-group", "Tags": tags(cluster)}])
        return name

    def delete(self, name: str, timeout_s: float = 300, just_created: bool = False) -> None:
        """Delete group ``name``; one already gone is fine. Its instances just terminated may hold it for a
        little while (InvalidPlacementGroup.InUse): waited out until ``timeout_s``."""
        delete_when_free(lambda: self.clients.ec2.delete_placement_group(GroupName=name), NEW_PLACEMENT_GROUP,
                         gone="InvalidPlacementGroup.Unknown", busy="InvalidPlacementGroup.InUse",
                         what=f"DeletePlacementGroup {name}", poll_s=self.poll_s, timeout_s=timeout_s,
                         just_created=just_created, log=self.log)
