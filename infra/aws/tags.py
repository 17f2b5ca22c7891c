"""The tags on everything mnist-launch creates: a cluster is always found again from AWS alone.

    tags("mnist", {TAG_USER: "ubuntu"})  # -> [{"Key": "mnist-launch:managed", "Value": "true"}, ...]
"""

from __future__ import annotations

from typing import Any, Optional

TAG_MANAGED = "mnist-launch:managed"
TAG_CLUSTER = "mnist-launch:cluster"
TAG_USER = "mnist-launch:user"  # the login user of the image, so `ssh` needs no local state
TAG_AUTOSTOP = "mnist-launch:autostop"  # the idle limit the watcher on the instance enforces ('30m', 'off')
TAG_AUTOSTOP_ACTION = "mnist-launch:autostop-action"  # what its OS shutdown does: 'stop' or 'terminate'
TAG_NODE = "mnist-launch:node"  # an instance's rank in its cluster, 0..nodes-1 (none: 0, a cluster of one)
MANAGED = {"Key": TAG_MANAGED, "Value": "true"}


def tags(cluster: str, extra: Optional[dict[str, str]] = None) -> list[dict[str, str]]:
    t = {TAG_MANAGED: "true", TAG_CLUSTER: cluster, **(extra or {})}
    return [{"Key": k, "Value": v} for k, v in t.items()]


def is_managed(resource: dict[str, Any]) -> bool:
    """Whether a described resource carries our managed tag (only those are ours to delete)."""
    return MANAGED in resource.get("Tags", [])
