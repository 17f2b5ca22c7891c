"""EC2 provider: find, create, start, stop and remove one cluster's AWS resources.

One module per concern, behind the provisioning interface of infra/provider.py:

    clients.py    the boto3 clients of one region, created in one place (inject a Session in tests)
    errors.py     boto -> one AWSError line; what is transient and retried, until which deadline
    tags.py       the tags on everything created, so a cluster is found again from AWS alone
    instances.py  instances and key pairs: find, launch across AZs, wait, autostop tags, terminate
    network.py    the default VPC's subnets, the security group (SSH from the caller's /32 only; every TCP
                  port between a multi-node cluster's own nodes)
    placement.py  the cluster placement group of a multi-node cluster, where its type has one
    iam.py        the instance role and profile, scoped to the store's runs/ and the data prefixes
    images.py     the image: --ami, the Deep Learning AMI's SSM parameter or its newest by name
    provider.py   AWSProvider: plan, ensure (reuse / start / create, rolled back on failure), remove
    planning.py   what `up` would do (--dry-run), read-only
    reuse.py      an existing cluster reused, started, and made whole (its missing ranks created)
    spotprice.py  what an instance costs an hour: its zone's spot price (or the on-demand one, saying why)

Only transient errors are retried: throttling, 5xx and connection errors by botocore's "standard"
retry mode, AWS's eventual consistency (a resource this call just created, not yet seen) by
``retry`` until a deadline.

    provider = AWSProvider(Clients.create("us-east-1"))
    outcome = provider.ensure(spec)          # reuse, start or create; rolls back on failure
    provider.remove("mnist")                 # terminate and delete what it created
"""

from infra.aws.clients import DEFAULT_REGION, Clients, configured_region, known_region
from infra.aws.errors import (
    ACCESS_ERRORS,
    CAPACITY_ERRORS,
    CREDENTIAL_ERRORS,
    QUOTA_ERRORS,
    THROTTLE_ERRORS,
    Backoff,
    Transient,
    aws_errors,
    error_code,
    retry,
)
from infra.aws.iam import (
    EC2_TRUST,
    RUN_ACTIONS,
    STORE_POLICY_NAME,
    canonical_s3,
    parse_s3_uri,
    policy_grants,
    store_policy,
)
from infra.aws.images import DLAMI_NAME_PATTERN, DLAMI_OWNER, DLAMI_PARAMETER, DLAMI_USER, Image, user_for_image
from infra.aws.instances import LIVE_STATES, key_pair_name
from infra.aws.network import CHECKIP_URL, MEMBERS_RULE_DESCRIPTION, SSH_RULE_DESCRIPTION, caller_cidr, validate_cidr
from infra.aws.placement import placement_strategy
from infra.aws.provider import AWSProvider
from infra.aws.tags import TAG_AUTOSTOP, TAG_AUTOSTOP_ACTION, TAG_CLUSTER, TAG_MANAGED, TAG_NODE, TAG_USER
from infra.provider import (
    DEFAULT_INSTANCE,
    ClusterSpec,
    Created,
    InstanceInfo,
    Plan,
    Step,
    UpOutcome,
    by_rank,
    missing_ranks,
)

__all__ = [
    "ACCESS_ERRORS", "CAPACITY_ERRORS", "CHECKIP_URL", "CREDENTIAL_ERRORS", "DEFAULT_INSTANCE", "DEFAULT_REGION",
    "DLAMI_NAME_PATTERN", "DLAMI_OWNER", "DLAMI_PARAMETER", "DLAMI_USER", "EC2_TRUST", "LIVE_STATES",
    "MEMBERS_RULE_DESCRIPTION", "QUOTA_ERRORS", "RUN_ACTIONS", "SSH_RULE_DESCRIPTION", "STORE_POLICY_NAME",
    "TAG_AUTOSTOP", "TAG_AUTOSTOP_ACTION", "TAG_CLUSTER", "TAG_MANAGED", "TAG_NODE", "TAG_USER", "THROTTLE_ERRORS",
    "aws_errors", "AWSProvider", "Backoff", "by_rank", "caller_cidr", "canonical_s3", "Clients", "ClusterSpec",
    "configured_region", "Created", "error_code", "Image", "InstanceInfo", "key_pair_name", "known_region",
    "missing_ranks", "parse_s3_uri", "placement_strategy", "Plan", "policy_grants", "retry", "Step", "store_policy",
    "Transient", "UpOutcome", "user_for_image", "validate_cidr",
]
