"""IAM propagation: the texts AWS sends while a new role propagates are retried; denials are not.

The emulator refuses each service's first attempts with a role that was just created or changed,
in that service's own words (iotpipe/local/aws_rules/iam.py), so a fresh `up` meets what it meets
on a new AWS account.

The retry policy runs on a clock of its own here: time passes only when it waits, so its
deadlines count its attempts' waits and never how long the emulator took to answer (which
parallel test workers slow down), and no test sleeps for real.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from iotpipe.aws import IAM_PROPAGATION, Aws, RetryPolicy, use_clock
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


class PolicyClock:
    """Seconds that pass only when the policy sleeps, in each thread apart: a thread's deadline
    counts its own waits, not those of the steps running beside it."""

    def __init__(self) -> None:
        self._thread = threading.local()
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> float:
        return getattr(self._thread, "now", 0.0)

    def sleep(self, seconds: float) -> None:
        self._thread.now = self.now() + seconds
        with self._lock:
            self.slept.append(seconds)


@pytest.fixture
def clock() -> PolicyClock:
    return PolicyClock()


@pytest.fixture
def aws(endpoint: str, clock: PolicyClock) -> Aws:
    # AWS's own timings (two minutes for a role to propagate), none of it spent waiting.
    policy = RetryPolicy().on_clock(clock.now, clock.sleep)
    return Aws(region="us-east-1", endpoint_url=endpoint, policy=policy)


LAMBDA_REFUSAL = "The role defined for the function cannot be assumed by Lambda."


def test_a_propagating_role_is_waited_for_on_the_policy_clock(aws, clock, faults) -> None:
    faults.fail(
        "lambda", "ListFunctions", "InvalidParameterValueException", LAMBDA_REFUSAL, times=5
    )
    aws.call("lambda", "list_functions", resource="fn", retry_on=IAM_PROPAGATION)
    assert aws.retries["lambda:list_functions"] == 5
    assert len(clock.slept) == 5
    assert clock.now() == pytest.approx(sum(clock.slept))


def test_a_role_that_never_propagates_is_retried_for_the_whole_deadline(aws, clock, faults):
    faults.fail(
        "lambda", "ListFunctions", "InvalidParameterValueException", LAMBDA_REFUSAL, times=None
    )
    with pytest.raises(AwsError) as caught:
        aws.call("lambda", "list_functions", resource="fn", retry_on=IAM_PROPAGATION)
    assert "cannot be assumed by Lambda" in str(caught.value)
    policy = aws.policy
    # Two minutes of the policy's waits (the last one may end past the deadline), and so more
    # attempts than the eight a throttled call gets: the first waits are short.
    assert policy.transient_deadline_seconds <= clock.now()
    assert clock.now() < policy.transient_deadline_seconds + policy.max_wait_seconds
    attempts = faults.calls.count(("lambda", "ListFunctions"))
    assert attempts == len(clock.slept) + 1 > policy.max_attempts


def test_a_wait_times_out_on_the_policy_clock(aws, clock) -> None:
    checks: list[None] = []
    with pytest.raises(AwsError) as caught:
        aws.wait_for(
            lambda: checks.append(None), resource="fn", what="for Active", timeout_seconds=30
        )
    assert "timed out after 30 s waiting for Active" in str(caught.value)
    assert 30 <= clock.now() < 30 + 10
    assert len(checks) == len(clock.slept) + 1


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


@pytest.fixture
def on_policy_clock(clock: PolicyClock) -> Iterator[PolicyClock]:
    """The commands' retry policy on the policy clock (the emulator's clock follows its sleeps)."""
    remove = use_clock(clock.now, clock.sleep)
    yield clock
    remove()


def test_up_on_a_fresh_account_retries_through_role_propagation(
    cli, faults, on_policy_clock
) -> None:
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    attempts = Counter(faults.calls)
    for consumer in CONSUMERS:
        # Refused REFUSALS_AFTER_CHANGE times by the emulator, then accepted.
        assert attempts[consumer] >= REFUSALS_AFTER_CHANGE + 1, (consumer, attempts[consumer])
    # Each refusal was waited out on the policy clock, not in real time.
    assert len(on_policy_clock.slept) >= len(CONSUMERS) * REFUSALS_AFTER_CHANGE
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
