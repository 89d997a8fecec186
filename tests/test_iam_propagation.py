"""IAM propagation: the texts AWS sends while a new role propagates are retried; denials are not.

The emulator refuses each service's first attempts with a role that was just created or changed,
in that service's own words (iotpipe/local/aws_rules/iam.py), so a fresh `up` meets what it meets
on a new AWS account.
"""

from __future__ import annotations

from collections import Counter

import pytest

from iotpipe.aws import IAM_PROPAGATION, Aws, RetryPolicy
from iotpipe.errors import AwsError
from iotpipe.local.aws_rules.iam import REFUSALS_AFTER_CHANGE

ROLE = "arn:aws:iam::123456789012:role/test-role"
PASS_ROLE_DENIED = (
    "User: arn:aws:sts::123456789012:assumed-role/deployer/session is not authorized to perform: "
    f"iam:PassRole on resource: {ROLE}"
)


def _retried(code: str, message: str) -> bool:
    return any(t.matches(code, message) for t in IAM_PROPAGATION)


# What AWS sends while a role propagates, each as quoted where it was met (see iotpipe/aws.py).
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "InvalidParameterValueException",
            "The role defined for the function cannot be assumed by Lambda.",
        ),
        (
            "InvalidParameterValueException",
            "The provided execution role does not have permissions to call CreateNetworkInterface "
            "on EC2",
        ),
        (
            "InvalidParameterValueException",
            "Cannot access stream arn:aws:kinesis:us-east-1:123456789012:stream/s. Please ensure "
            "the role can perform the GetRecords, GetShardIterator, DescribeStream, and "
            "ListStreams Actions on your stream in IAM.",
        ),
        (
            "InvalidArgumentException",
            f"Firehose is unable to assume role {ROLE}. Please check the role provided.",
        ),
        (
            "InvalidRequestException",
            f"AWS IoT (iot.amazonaws.com) is unable to assume role (sts:AssumeRole) on resource: "
            f"{ROLE}.  If the role was just created or updated, please try again in a few seconds.",
        ),
        (
            "InvalidRequestException",
            f"iot.amazonaws.com is unable to perform: sts:AssumeRole on resource: {ROLE}",
        ),
        (
            "InvalidInputException",
            "Service is unable to assume provided role. Please verify role's TrustPolicy.",
        ),
        (
            "InvalidInputException",
            "com.amazonaws.services.glue.model.AccessDeniedException: You need to enable AWS "
            "Security Token Service for this region. . Please verify the role's TrustPolicy.",
        ),
    ],
)
def test_the_texts_aws_sends_while_a_role_propagates_are_retried(code: str, message: str) -> None:
    assert _retried(code, message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("AccessDeniedException", PASS_ROLE_DENIED),  # Lambda, Glue, Firehose
        ("AccessDenied", PASS_ROLE_DENIED),
        ("AccessDeniedException", "User: u is not authorized to perform: glue:CreateCrawler role"),
        ("UnauthorizedException", PASS_ROLE_DENIED),  # IoT
        ("UnauthorizedException", "User is not authorized to perform: iot:ReplaceTopicRule"),
        ("InvalidArgumentException", PASS_ROLE_DENIED),
        ("InvalidParameterValueException", "The runtime parameter of python2.7 is not supported"),
    ],
)
def test_permanent_denials_are_not_retried(code: str, message: str) -> None:
    assert not _retried(code, message)


@pytest.fixture
def aws(endpoint: str) -> Aws:
    policy = RetryPolicy(base_seconds=0.001, max_wait_seconds=0.01, transient_deadline_seconds=2)
    return Aws(region="us-east-1", endpoint_url=endpoint, policy=policy)


def test_a_pass_role_denial_fails_at_the_first_attempt_with_the_fix_named(aws, faults) -> None:
    faults.fail("glue", "GetCrawlers", "AccessDeniedException", PASS_ROLE_DENIED, times=None)
    with pytest.raises(AwsError) as caught:
        aws.call("glue", "get_crawlers", resource="glue.crawler c", retry_on=IAM_PROPAGATION)
    assert faults.calls.count(("glue", "GetCrawlers")) == 1
    assert "iam:PassRole" in str(caught.value)
    assert "iam:PassRole" in (caught.value.hint or "")


def test_iot_unauthorized_fails_at_the_first_attempt(aws, faults) -> None:
    message = "User: arn:aws:iam::123456789012:user/u is not authorized to perform: iot:List"
    faults.fail("iot", "ListTopicRules", "UnauthorizedException", message, status=401, times=None)
    with pytest.raises(AwsError):
        aws.call("iot", "list_topic_rules", resource="iot.rule r", retry_on=IAM_PROPAGATION)
    assert faults.calls.count(("iot", "ListTopicRules")) == 1


# The emulator's rule, and `up` through it.

CONSUMERS = [
    ("lambda", "CreateFunction"),
    ("lambda", "CreateEventSourceMapping"),
    ("firehose", "CreateDeliveryStream"),
    ("iot", "CreateTopicRule"),
    ("glue", "CreateCrawler"),
]


def test_up_on_a_fresh_account_retries_through_role_propagation(cli, faults) -> None:
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    attempts = Counter(faults.calls)
    for consumer in CONSUMERS:
        # Refused REFUSALS_AFTER_CHANGE times by the emulator, then accepted.
        assert attempts[consumer] >= REFUSALS_AFTER_CHANGE + 1, (consumer, attempts[consumer])
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []


def test_up_fails_fast_on_a_pass_role_denial(cli, faults) -> None:
    faults.fail("glue", "CreateCrawler", "AccessDeniedException", PASS_ROLE_DENIED, times=None)
    result = cli("up", "--yes")
    assert result.exit_code == 1, result
    assert "iam:PassRole" in result.stderr
    assert "Traceback" not in result.stderr
    # Answered before the request reaches the emulator, and not retried.
    assert faults.calls.count(("glue", "CreateCrawler")) == 1
