"""EC2 placement groups for moto, which has none (moto 5.2: CreatePlacementGroup is "not implemented"), and
the instance profile of every instance a launch of several makes.

A multi-node cluster lives in a cluster placement group, and `down` looks for one on every cluster, so every
test that reaches EC2 needs what AWS does here: Create/Describe/DeletePlacementGroups (tags on create,
``tag:KEY``/``group-name``/``strategy`` filters, AWS's error codes for an unknown, duplicate or in-use
group) and RunInstances with ``Placement.GroupName`` (refused for an unknown group; the instances describe
their group back; and each instance of one launch gets the instance profile, where moto gives it to the first
only). The operations are methods of moto's EC2 responses, so moto's IAM access control checks
them like any other (``ec2:CreatePlacementGroup`` ...), in-process and in the ThreadedMotoServer alike. The
groups live on moto's per-region EC2 backend, so a new ``mock_aws`` starts without any.

    install()   # once per process (tests/conftest.py does it)
"""

from __future__ import annotations

import itertools
from typing import Any

_ids = itertools.count(1)


def _groups(backend: Any) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = backend.__dict__.setdefault("mnist_launch_placement_groups", {})
    return groups


def _error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)


def _unknown(name: str) -> Exception:
    return _error("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")


def _members(backend: Any, name: str) -> list[Any]:
    """The instances not terminated that sit in group ``name``."""
    return [i for r in backend.reservations.values() for i in r.instances
            if i.placement.group_name == name and i.state != "terminated"]


def install() -> None:
    try:
        from moto.ec2.responses import EC2Response
    except ImportError:
        return
    if getattr(EC2Response, "_mnist_launch_placement_groups", False):
        return
    from moto.core.responses import ActionResult

    def create_placement_group(self: Any) -> Any:
        name = self._get_param("GroupName")
        strategy = self._get_param("Strategy") or "cluster"
        tags = self._parse_tag_specification("placement-group").get("placement-group", {})
        self.error_on_dryrun()
        groups = _groups(self.ec2_backend)
        if name in groups:
            raise _error("InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists.")
        gid = f"pg-{next(_ids):017x}"
        groups[name] = {"GroupName": name, "GroupId": gid, "Strategy": strategy, "State": "available",
                        "GroupArn": f"arn:aws:ec2:{self.region}:{self.current_account}:placement-group/{name}",
                        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        return ActionResult({"PlacementGroup": groups[name]})

    def describe_placement_groups(self: Any) -> Any:
        names = self._get_param("GroupNames", [])
        filters = self._filters_from_querystring()
        groups = _groups(self.ec2_backend)
        for name in names:
            if name not in groups:
                raise _unknown(name)
        found = [g for g in groups.values() if not names or g["GroupName"] in names]
        for key, values in filters.items():
            if key.startswith("tag:"):
                found = [g for g in found
                         if any(t["Key"] == key[4:] and t["Value"] in values for t in g["Tags"])]
            elif key in ("group-name", "strategy", "state"):
                field = {"group-name": "GroupName", "strategy": "Strategy", "state": "State"}[key]
                found = [g for g in found if g[field] in values]
        return ActionResult({"PlacementGroups": found})

    def delete_placement_group(self: Any) -> Any:
        name = self._get_param("GroupName")
        self.error_on_dryrun()
        groups = _groups(self.ec2_backend)
        if name not in groups:
            raise _unknown(name)
        if _members(self.ec2_backend, name):
            raise _error("InvalidPlacementGroup.InUse", f"The placement group '{name}' is in use and may not be "
                                                        "deleted.")
        del groups[name]
        return ActionResult({})

    real_run = EC2Response.run_instances

    def run_instances(self: Any) -> Any:
        name = self._get_param("Placement.GroupName")
        if name and name not in _groups(self.ec2_backend):
            raise _unknown(name)
        result = real_run(self)
        insts = result.result.instances
        if name:
            for inst in insts:
                inst.placement.group_name = name
        # moto gives the instance profile to the first instance of a launch only; AWS gives it to each
        profile = {"iam_instance_profile_name": self._get_param("IamInstanceProfile.Name"),
                   "iam_instance_profile_arn": self._get_param("IamInstanceProfile.Arn")}
        if any(profile.values()):
            for inst in insts[1:]:
                if inst.id not in self.ec2_backend.iam_instance_profile_associations:
                    self.ec2_backend.associate_iam_instance_profile(instance_id=inst.id, **profile)
        return result

    EC2Response.create_placement_group = create_placement_group
    EC2Response.describe_placement_groups = describe_placement_groups
    EC2Response.delete_placement_group = delete_placement_group
    EC2Response.run_instances = run_instances
    EC2Response._mnist_launch_placement_groups = True
