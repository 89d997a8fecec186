"""The one retry policy: what is retried, what fails fast, and how failures are named."""

from __future__ import annotations

import pytest

from iotpipe.aws import IAM_PROPAGATION, Aws, RetryPolicy, is_mutating
from iotpipe.errors import AwsError


@pytest.fixture
def aws(endpoint: str) -> Aws:
    sleeps: list[float] = []
    policy = RetryPolicy(
        base_seconds=0.001, max_wait_seconds=0.01, transient_deadline_seconds=2, sleep=sleeps.append
    )
    instance = Aws(region="us-east-1", endpoint_url=endpoint, policy=policy)
    instance.sleeps = sleeps  # type: ignore[attr-defined]
    return instance


@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("sns", "ListTopics", "Throttling", 400),
        ("kinesis", "ListStreams", "ProvisionedThroughputExceededException", 400),
        ("kinesis", "ListStreams", "LimitExceededException", 400),
        ("dynamodb", "ListTables", "InternalServerError", 500),
        ("s3", "ListBuckets", "SlowDown", 503),
        ("cloudwatch", "ListDashboards", "Throttling", 400),
    ],
)
def test_throttling_and_server_errors_are_retried(aws, faults, service, operation, code, status):
    message = "Rate exceeded" if code == "LimitExceededException" else "slow down"
    faults.fail(service, operation, code, message, status=status, times=3)
    method = {
        "ListTopics": "list_topics",
        "ListStreams": "list_streams",
        "ListTables": "list_tables",
        "ListBuckets": "list_buckets",
        "ListDashboards": "list_dashboards",
    }[operation]
    aws.call(service, method, resource="thing")
    assert aws.retries[f"{service}:{method}"] == 3
    assert len(aws.sleeps) == 3


def test_a_quota_error_with_the_throttling_code_fails_fast(aws, faults) -> None:
    faults.fail("kinesis", "ListStreams", "LimitExceededException", "shard limit", times=None)
    with pytest.raises(AwsError) as caught:
        aws.call("kinesis", "list_streams", resource="kinesis.stream s")
    assert aws.retries["kinesis:list_streams"] == 0
    assert caught.value.code == "LimitExceededException"


def test_other_errors_fail_fast_naming_the_resource_and_quoting_aws(aws, faults) -> None:
    faults.fail("sns", "ListTopics", "AuthorizationError", "User is not authorized", times=None)
    with pytest.raises(AwsError) as caught:
        aws.call("sns", "list_topics", resource="sns.topic alerts")
    assert str(caught.value) == (
        "sns.topic alerts: list_topics failed: AuthorizationError: User is not authorized"
    )
    assert aws.sleeps == []


def test_throttling_retries_are_bounded(aws, faults) -> None:
    faults.fail("sns", "ListTopics", "Throttling", "Rate exceeded", times=None)
    with pytest.raises(AwsError):
        aws.call("sns", "list_topics", resource="x")
    assert len(aws.sleeps) == aws.policy.max_attempts - 1


def test_named_transient_errors_are_retried_only_when_the_caller_names_them(aws, faults):
    message = "The role defined for the function cannot be assumed by Lambda."
    faults.fail("lambda", "ListFunctions", "InvalidParameterValueException", message, times=2)
    with pytest.raises(AwsError):
        aws.call("lambda", "list_functions", resource="fn")
    aws.call("lambda", "list_functions", resource="fn", retry_on=IAM_PROPAGATION)
    assert aws.retries["lambda:list_functions"] == 1


def test_missing_codes_mean_absent(aws) -> None:
    found = aws.call(
        "sns",
        "get_topic_attributes",
        resource="t",
        missing=("NotFound",),
        TopicArn="arn:aws:sns:us-east-1:123456789012:none",
    )
    assert found is None


def test_backoff_has_full_jitter_within_the_cap() -> None:
    policy = RetryPolicy(base_seconds=1, max_wait_seconds=8)
    waits = [policy.backoff_seconds(attempt) for attempt in range(1, 10) for _ in range(50)]
    assert all(0 <= w <= 8 for w in waits)
    assert len({round(w, 3) for w in waits}) > 100


@pytest.mark.parametrize(
    ("operation", "mutating"),
    [
        ("CreateStream", True),
        ("PutBucketPolicy", True),
        ("TagResource", True),
        ("DescribeStreamSummary", False),
        ("GetBucketPolicy", False),
        ("ListTagsForStream", False),
        ("HeadBucket", False),
    ],
)
def test_mutating_operations_are_told_apart(operation: str, mutating: bool) -> None:
    assert is_mutating(operation) is mutating


def test_sessions_share_parsed_service_models(endpoint) -> None:
    first, second = Aws(endpoint_url=endpoint), Aws(endpoint_url=endpoint)
    loader = first.session._session.get_component("data_loader")
    assert second.session._session.get_component("data_loader") is loader
    paths = list(loader.search_paths)
    Aws(endpoint_url=endpoint)
    # boto3 adds its data directory on every session; the shared path list stays as it was.
    assert loader.search_paths == paths
    # Each Aws still counts its own calls.
    first.call("sts", "get_caller_identity", resource="test")
    assert first.calls["sts:GetCallerIdentity"] == 1
    assert second.calls["sts:GetCallerIdentity"] == 0
