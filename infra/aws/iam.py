"""The instance's AWS access: a role (and instance profile) per cluster, scoped to its store's runs/
prefix and the data prefixes its runs read; nothing else in any bucket, and no credentials copied.

    iam = IAM(clients)
    iam.store_access("mnist", inst, "s3://b/mnist", "s3://b/data")  # the role grows to cover the run
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional, Sequence, Union

from botocore.exceptions import ClientError

from core.errors import AWSError, ConfigError
from infra.aws.clients import Regional
from infra.aws.errors import NEW_ROLE, error_code, retry
from infra.aws.tags import tags
from infra.provider import Created, InstanceInfo, Step

STORE_POLICY_NAME = "mnist-launch-store"
RUN_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/some/prefix/' -> ('bucket', 'some/prefix')."""
    bad = f"store {uri!r}: expected s3://bucket/prefix — e.g. --store s3://my-bucket/mnist"
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ConfigError(bad)
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ConfigError(bad)
    return bucket, prefix.strip("/")


def canonical_s3(uri: str) -> str:
    """'s3://bucket/some/prefix/' -> 's3://bucket/some/prefix' (one spelling per prefix)."""
    bucket, prefix = parse_s3_uri(uri)
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _arn(bucket: str, *parts: str) -> str:
    return "arn:aws:s3:::" + "/".join([bucket, *(p for p in parts if p)])


def store_policy(stores: Union[str, Sequence[str]], data: Sequence[str] = ()) -> dict[str, Any]:
    """The instance role's only permissions: read, write and delete under each store's ``runs/`` (the
    agent's uploads, checkpoint pruning, restore) and read each data prefix (`train --data-dir s3://...`),
    listing limited to those prefixes. Nothing else in any bucket: not the store's other keys, not
    its data prefix for writing.

        store_policy("s3://b/mnist", ["s3://b/mnist/data"])
    """
    stores = [stores] if isinstance(stores, str) else list(stores)
    runs = sorted({(b, "/".join(x for x in (p, "runs") if x)) for b, p in map(parse_s3_uri, stores)})
    reads = sorted({parse_s3_uri(d) for d in data})
    statements: list[dict[str, Any]] = []
    if runs:
        statements.append({"Sid": "RunsReadWrite", "Effect": "Allow", "Action": RUN_ACTIONS,
                           "Resource": [_arn(b, p, "*") for b, p in runs]})
    if reads:
        statements.append({"Sid": "DataRead", "Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": [_arn(b, p, "*") for b, p in reads]})
    for i, bucket in enumerate(sorted({b for b, _ in runs + reads})):
        prefixes = sorted({p for b, p in runs + reads if b == bucket})
        listing: dict[str, Any] = {"Sid": f"List{i}", "Effect": "Allow", "Action": ["s3:ListBucket"],
                                   "Resource": _arn(bucket)}
        if "" not in prefixes:  # a data prefix of a whole bucket lists all of it
            listing["Condition"] = {"StringLike": {"s3:prefix": [x for p in prefixes for x in (p, f"{p}/*")]}}
        statements.append(listing)
    return {"Version": "2012-10-17", "Statement": statements}


def policy_grants(doc: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(stores, data prefixes) a ``store_policy`` document grants, as ``canonical_s3`` URIs; a document
    of another shape grants nothing (it is rewritten)."""
    stores: set[str] = set()
    data: set[str] = set()
    for st in doc.get("Statement", []):
        res = st.get("Resource", [])
        for arn in [res] if isinstance(res, str) else res:
            if not (isinstance(arn, str) and arn.startswith("arn:aws:s3:::") and arn.endswith("/*")):
                continue
            path = arn[len("arn:aws:s3:::"):-2]
            if st.get("Sid") == "RunsReadWrite" and path.endswith("/runs"):
                stores.add("s3://" + path[: -len("/runs")])
            elif st.get("Sid") == "DataRead":
                data.add("s3://" + path)
    return stores, data


def role_name(cluster: str, region: str) -> str:
    # IAM is global: the region keeps two clusters of the same name apart
    return f"mnist-launch-{cluster}-{region}"[:64]


class IAM(Regional):
    """The clusters' roles and instance profiles (one of each per cluster and region, same name)."""

    def role_name(self, cluster: str) -> str:
        return role_name(cluster, self.region)

    @staticmethod
    def get(fn: Callable[..., Any], **kwargs: Any) -> Optional[dict[str, Any]]:
        """An IAM Get* call's answer; None for NoSuchEntity."""
        try:
            answer: dict[str, Any] = fn(**kwargs)
            return answer
        except ClientError as err:
            if error_code(err) == "NoSuchEntity":
                return None
            raise

    def profile_exists(self, cluster: str) -> bool:
        return self.get(self.clients.iam.get_instance_profile, InstanceProfileName=self.role_name(cluster)) is not None

    def ensure_profile(self, cluster: str, store: str, created: list[Created]) -> tuple[str, Step, bool]:
        """The cluster's role, its policy (``store`` only: a reused role's instance is gone) and its
        instance profile, each made if missing and noted in ``created``. (profile name, step, whether
        the profile is new: RunInstances may refuse it for a while)."""
        iam = self.clients.iam
        profile = self.role_name(cluster)
        policy = json.dumps(store_policy(store))
        if self.get(iam.get_role, RoleName=profile) is None:
            iam.create_role(RoleName=profile, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                            Description=f"mnist-launch cluster {cluster}: its store prefix only",
                            Tags=tags(cluster))
            created.append(Created("role", profile))
        retry(lambda: iam.put_role_policy(RoleName=profile, PolicyName=STORE_POLICY_NAME, PolicyDocument=policy),
              NEW_ROLE, what=f"PutRolePolicy {profile}", log=self.log)
        if self.get(iam.get_instance_profile, InstanceProfileName=profile) is not None:
            return profile, Step("instance profile", "reuse", profile), False
        iam.create_instance_profile(InstanceProfileName=profile, Tags=tags(cluster))
        created.append(Created("instance-profile", profile))
        retry(lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile),
              NEW_ROLE, what=f"AddRoleToInstanceProfile {profile}", log=self.log)
        return profile, Step("instance profile", "create", f"{profile}: read/write {store}/runs/ only"), True

    def role_grants(self, role: str) -> Optional[tuple[set[str], set[str]]]:
        """(stores, data prefixes) the role's store policy grants; None when the role has no such policy."""
        doc = self.get(self.clients.iam.get_role_policy, RoleName=role, PolicyName=STORE_POLICY_NAME)
        if doc is None:
            return None
        body = doc["PolicyDocument"]
        return policy_grants(json.loads(body) if isinstance(body, str) else body)

    def grants_cover(self, role: str, store: Optional[str], data: Optional[str] = None) -> bool:
        grants = self.role_grants(role)
        if grants is None:
            return False
        return (not store or canonical_s3(store) in grants[0]) and (not data or canonical_s3(data) in grants[1])

    def check_profile(self, name: str, inst: InstanceInfo, what: str) -> None:
        """Refuse in one line when the instance has no instance profile of ours: nothing it runs could reach
        ``what``."""
        role = self.role_name(name)
        if not (inst.profile_arn or "").endswith(f":instance-profile/{role}"):
            raise AWSError(
                f"cluster '{name}' ({inst.id}) has no instance role of ours (it was brought up without --store), so a "
                f"run there could not reach {what} — `mnist-launch down {name}`, then `up --store s3://...` "
                "(or train elsewhere with --name)")

    def store_access(self, name: str, inst: InstanceInfo, store: Optional[str],
                     data: Optional[str] = None) -> Optional[Step]:
        """Make the instance's role cover what a run needs before it starts: read/write/delete under
        ``store``/runs/ and read under ``data`` (an s3:// prefix). The role's policy grows to the union of
        what the cluster's runs were given (a run on another store may still be uploading); a cluster
        without a role of ours is refused in one line. Returns the step taken, None when nothing changed."""
        if not store and not data:
            return None
        self.check_profile(name, inst, " and ".join(x for x in (store, data) if x))
        role = self.role_name(name)
        grants = self.role_grants(role) or (set(), set())
        want_s = {canonical_s3(store)} if store else set()
        want_d = {canonical_s3(data)} if data else set()
        if want_s <= grants[0] and want_d <= grants[1]:
            return None
        self.clients.iam.put_role_policy(RoleName=role, PolicyName=STORE_POLICY_NAME, PolicyDocument=json.dumps(
            store_policy(sorted(grants[0] | want_s), sorted(grants[1] | want_d))))
        added = ([f"read/write {s}/runs/" for s in sorted(want_s - grants[0])]
                 + [f"read {d}/" for d in sorted(want_d - grants[1])])
        return Step("instance profile", "update", f"{role}: add {', '.join(added)}")

    def delete_profile(self, name: str) -> list[str]:
        """Delete instance profile and role ``name`` (the role's inline policies first); what was deleted."""
        iam = self.clients.iam
        removed = []
        prof = self.get(iam.get_instance_profile, InstanceProfileName=name)
        if prof is not None:
            for role in prof["InstanceProfile"].get("Roles", []):
                iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=name)
            removed.append(f"instance profile {name}")
        if self.get(iam.get_role, RoleName=name) is not None:
            for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
                iam.delete_role_policy(RoleName=name, PolicyName=policy)
            iam.delete_role(RoleName=name)
            removed.append(f"role {name}")
        return removed

    def leftovers(self, cluster: str) -> list[str]:
        """The cluster's instance profile and role, where they still exist."""
        iam, role = self.clients.iam, self.role_name(cluster)
        left = []
        if self.get(iam.get_instance_profile, InstanceProfileName=role) is not None:
            left.append(f"instance profile {role}")
        if self.get(iam.get_role, RoleName=role) is not None:
            left.append(f"role {role}")
        return left
