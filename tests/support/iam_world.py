"""IAM as AWS enforces it, for the tests that run against moto: the strict IAM world.

moto's access control (``INITIAL_NO_AUTH_ACTION_COUNT``, moto/core/authorization.py) checks every
request once its count of unchecked requests is used up: the signature must be a moto IAM
identity's, and that identity's policies must allow the action on the resource. moto reads the
setting at import, but its checks read ``settings.INITIAL_NO_AUTH_ACTION_COUNT`` on every request, and
its own ``enable_iam_authentication()`` (moto.core) sets it to 0 and resets the count at run time.
That covers ``mock_aws`` and the ``ThreadedMotoServer`` alike: the threaded server runs in this process
(a separate ``moto_server`` process would take ``INITIAL_NO_AUTH_ACTION_COUNT`` in its environment, or a
POST of the number to its ``/moto-api/reset-auth``).

The world holds three identities, made while checks are still off:
  - ``admin``: everything (the test itself: creating buckets, looking at what the agent uploaded);
  - ``laptop``: exactly docs/laptop-policy.json (the launcher's CLI);
  - the instance: the credentials of the role `up` created, assumed as EC2 would (through moto's STS
    backend: the role trusts ec2.amazonaws.com, not a user, and moto's trust check cannot read a
    Service principal), written to a credentials file the "instance" sshd sessions use.

What moto checks and what it cannot (so the tests check only the former):
  - actions, for every service; S3 resources (bucket and key ARNs; but a DeleteObjects against the
    bucket's ARN, where AWS checks each key: the agent deletes key by key);
    IAM role and instance-profile ARNs (moto passes "*" for a role that does not exist yet and for
    instance profiles; ``_iam_resource`` below names them as AWS does);
  - NOT condition keys: moto evaluates only StringEquals on keys a request supplies (sts:ExternalId),
    so ``s3:prefix`` (ListBucket), ``aws:ResourceTag/...`` and ``iam:PassedToService`` are treated as met;
  - NOT EC2 or SSM resource ARNs (moto passes "*"), and NOT iam:PassRole (RunInstances is not checked
    for it).

Switch: ``MNIST_LAUNCH_TEST_IAM=off`` runs the remote e2e tests (tests/integration/test_remote_train.py) with moto's
fake keys and no checks, as before; anything else (the default) runs them in this world.

    world = IAMWorld.start(policy=laptop_policy(BUCKET))
    ...
    world.write_role_credentials("mnist-launch-mnist-us-east-1", path)
    world.stop()
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from tests.support import ROOT

LAPTOP_POLICY = ROOT / "docs" / "laptop-policy.json"
BUCKET_PLACEHOLDER = "YOUR-BUCKET"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
ACCOUNT = "123456789012"  # moto's default account


def enabled() -> bool:
    """Whether the remote e2e tests run in the strict IAM world (``MNIST_LAUNCH_TEST_IAM=off`` turns it off)."""
    return os.environ.get("MNIST_LAUNCH_TEST_IAM", "strict").lower() not in ("off", "0", "no", "false")


def laptop_policy(bucket: str) -> dict:
    """docs/laptop-policy.json with the store's bucket filled in."""
    return json.loads(LAPTOP_POLICY.read_text().replace(BUCKET_PLACEHOLDER, bucket))


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str
    session_token: Optional[str] = None

    def env(self) -> dict[str, str]:
        """The AWS_* variables that make boto3 sign as this identity (nothing else in the chain)."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key}
        if self.session_token:
            env["AWS_SESSION_TOKEN"] = self.session_token
        return env

    def credentials_file(self) -> str:
        lines = ["[default]", f"aws_access_key_id = {self.access_key_id}",
                 f"aws_secret_access_key = {self.secret_access_key}"]
        if self.session_token:
            lines.append(f"aws_session_token = {self.session_token}")
        return "\n".join(lines) + "\n"


def _iam_resource(self: Any) -> str:
    """The ARN AWS authorizes an IAM call against: the role or instance profile it names, existing or not."""
    data = self.data
    partition = "aws"
    if "InstanceProfileName" in data:
        return f"arn:{partition}:iam::{self.current_account}:instance-profile/{data['InstanceProfileName'][0]}"
    if "RoleName" in data:
        return f"arn:{partition}:iam::{self.current_account}:role/{data['RoleName'][0]}"
    return "*"


@dataclass
class IAMWorld:
    admin: Keys
    laptop: Keys
    allowed: list[tuple[str, str, str]] = field(default_factory=list)  # (caller ARN, action, resource) moto let through
    _undo: list = field(default_factory=list)

    def actions_of(self, caller: str) -> set[str]:
        """The actions moto allowed to callers whose ARN contains ``caller`` (e.g. ':user/mnist-launch-test-laptop')."""
        return {action for who, action, _ in self.allowed if caller in who}

    @classmethod
    def start(cls, policy: dict, endpoint: Optional[str] = None) -> "IAMWorld":
        """Create the admin and the laptop user (policy ``policy``) unchecked, then turn moto's checks on.
        ``endpoint``: the moto server's URL (None: in-process ``mock_aws``, already active)."""
        import boto3
        from moto.core import enable_iam_authentication
        from moto.iam.responses import IamResponse

        kw: dict[str, Any] = dict(region_name="us-east-1", aws_access_key_id="testing",
                                  aws_secret_access_key="testing", aws_session_token="testing")
        if endpoint:
            kw["endpoint_url"] = endpoint
        iam = boto3.client("iam", **kw)

        def user(name: str, doc: dict) -> Keys:
            iam.create_user(UserName=name)
            iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(doc))
            k = iam.create_access_key(UserName=name)["AccessKey"]
            return Keys(k["AccessKeyId"], k["SecretAccessKey"])

        # moto's backends live as long as the test process, and a parallel worker runs many tests: names of
        # this world's own, so an earlier test's users (same process, another server) never collide
        tag = secrets.token_hex(3)
        world = cls(user(f"mnist-launch-test-admin-{tag}", ADMIN_POLICY),
                    user(f"mnist-launch-test-laptop-{tag}", policy))
        checks = enable_iam_authentication()
        checks.__enter__()
        world._undo.append(lambda: checks.__exit__(None, None, None))
        from moto.iam.access_control import IAMRequestBase

        check = IAMRequestBase.check_action_permitted

        def recorded(self: Any, resource: str) -> None:
            check(self, resource)  # raises when denied
            world.allowed.append((self._access_key.arn, self._action, resource))

        IAMRequestBase.check_action_permitted = recorded  # type: ignore[method-assign]
        world._undo.append(lambda: setattr(IAMRequestBase, "check_action_permitted", check))
        original = IamResponse.__dict__.get("_determine_resource")
        IamResponse._determine_resource = _iam_resource  # type: ignore[method-assign]
        world._undo.append(lambda: setattr(IamResponse, "_determine_resource", original))
        return world

    def assume_role(self, role_name: str, session: str = "i-instance") -> Keys:
        """The role's temporary credentials, as EC2 hands them to an instance (1 hour, like IMDS's)."""
        from moto.sts.models import sts_backends

        role = sts_backends[ACCOUNT]["aws"].assume_role(
            region_name="us-east-1", role_session_name=session, role_arn=f"arn:aws:iam::{ACCOUNT}:role/{role_name}",
            policy=None, duration=3600, external_id=None)
        return Keys(role.access_key_id, role.secret_access_key, role.session_token)

    def write_role_credentials(self, role_name: str, path: Path, owner: Any = None) -> Keys:
        """Put the role's credentials where the "instance" finds them (0600, never the real ~/.aws); ``owner``
        (a tests.support.strict_instance.LoginUser made for the session) gets the folder and file."""
        keys = self.assume_role(role_name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys.credentials_file())
        if owner is not None and owner.created:
            os.chown(tmp, owner.uid, owner.gid)
            os.chown(path.parent, owner.uid, owner.gid)
        os.replace(tmp, path)
        return keys

    def stop(self) -> None:
        while self._undo:
            self._undo.pop()()


def instance_aws_env(credentials: Path) -> str:
    """sshd SetEnv words that give the "instance" sessions only the role's credentials file: no keys in the
    environment, no config or credentials from the real home."""
    return (f"AWS_SHARED_CREDENTIALS_FILE={credentials} AWS_CONFIG_FILE={credentials.parent / 'no-config'}")
