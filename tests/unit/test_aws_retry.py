"""infra/aws/errors.py retry: what it waits out, for how long, and the one line when the deadline passes."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from core.errors import AWSError
from infra.aws.errors import IAM_DEADLINE_ENV, NEW_GROUP, NEW_PROFILE, retry


def refusal(code: str, message: str = "", op: str = "RunInstances") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, op)


def flaky(*errors: ClientError):
    """A call that raises ``errors`` in turn, then answers "ok"; ``calls`` counts the tries."""
    left = list(errors)

    def call():
        call.calls += 1
        if left:
            raise left.pop(0)
        return "ok"

    call.calls = 0
    return call


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("MNIST_LAUNCH_AWS_RETRY_CAP_S", "0.02")


def test_a_transient_refusal_is_waited_out_and_said_once():
    lines: list[str] = []
    call = flaky(refusal("InvalidGroup.NotFound"), refusal("InvalidGroup.NotFound"))
    assert retry(call, NEW_GROUP, what="AuthorizeSecurityGroupIngress sg-1", log=lines.append) == "ok"
    assert call.calls == 3
    assert lines == ["AuthorizeSecurityGroupIngress sg-1: AWS does not see the new security group yet "
                     "(InvalidGroup.NotFound); retrying for up to 120s"]


def test_any_other_error_is_raised_at_once():
    call = flaky(refusal("InvalidGroup.Duplicate"))
    with pytest.raises(ClientError, match="InvalidGroup.Duplicate"):
        retry(call, NEW_GROUP, what="x")
    assert call.calls == 1
    # the same code with another message is another error: InvalidParameterValue is only transient for the profile
    call = flaky(refusal("InvalidParameterValue", "Value (x) for parameter groupId is invalid."))
    with pytest.raises(ClientError):
        retry(call, NEW_PROFILE, what="x")
    assert call.calls == 1


def test_a_refusal_past_its_deadline_is_one_line(monkeypatch):
    monkeypatch.setenv(IAM_DEADLINE_ENV, "0.2")
    call = flaky(*[refusal("InvalidParameterValue", "Invalid IAM Instance Profile name")] * 1000)
    with pytest.raises(AWSError) as err:
        retry(call, NEW_PROFILE, what="RunInstances in us-east-1a")
    assert str(err.value) == (
        "RunInstances in us-east-1a: AWS still answered InvalidParameterValue for the new instance profile "
        "after 0.2s — "
        "AWS is slower than usual to see new resources; run the command again (what this call created is rolled "
        f"back), or raise {IAM_DEADLINE_ENV}")
    assert 2 < call.calls < 1000


def test_a_bad_deadline_setting_is_one_line(monkeypatch):
    monkeypatch.setenv(IAM_DEADLINE_ENV, "soon")
    with pytest.raises(AWSError, match=rf"^{IAM_DEADLINE_ENV}='soon': expected a number of seconds — fix or unset it$"):
        retry(flaky(refusal("InvalidParameterValue", "Invalid IAM Instance Profile name")), NEW_PROFILE, what="x")
