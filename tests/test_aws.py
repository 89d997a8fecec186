"""The one retry policy: what is retried, what fails fast, and how failures are named."""

from __future__ import annotations

import pytest

from iotpipe.aws import IAM_PROPAGATION, Aws, RetryPolicy, add_sleep_hook, is_mutating
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


def test_a_policy_on_its_own_clock_reads_it_and_still_tells_the_sleep_hooks() -> None:
    """A test's clock moves only when the policy sleeps on it; the emulator's clock, which
    follows the sleep hooks, moves with it as with real sleeps."""
    now = [100.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    told: list[float] = []
    remove = add_sleep_hook(told.append)
    try:
        policy = RetryPolicy().on_clock(lambda: now[0], sleep).scaled(0.5)
        policy.sleep(0.01)
    finally:
        remove()
    assert policy.clock() == pytest.approx(100.01)
    assert told == [0.01]


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


# Pagination: every page through botocore's pagination model, each under the retry policy.


def test_paginate_lists_more_than_a_thousand_s3_keys(aws) -> None:
    # S3 answers at most 1,000 keys a page and pages with ContinuationToken/NextContinuationToken.
    from concurrent.futures import ThreadPoolExecutor

    aws.call("s3", "create_bucket", resource="bucket", Bucket="many-keys")
    keys = [f"k/{i:05d}" for i in range(1_050)]
    client = aws.client("s3")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: client.put_object(Bucket="many-keys", Key=k, Body=b""), keys))
    listed = [
        item["Key"]
        for item in aws.paginate(
            "s3", "list_objects_v2", resource="bucket", key="Contents", Bucket="many-keys"
        )
    ]
    assert listed == keys
    assert aws.calls["s3:ListObjectsV2"] == 2


def test_paginate_follows_iam_markers(aws) -> None:
    # IAM pages with Marker and IsTruncated; ListRoles was never in a hand-written token table.
    trust = '{"Version":"2012-10-17","Statement":[]}'
    names = [f"role-{i}" for i in range(5)]
    for name in names:
        aws.call("iam", "create_role", resource=name, RoleName=name, AssumeRolePolicyDocument=trust)
    roles = list(aws.paginate("iam", "list_roles", resource="roles", key="Roles", MaxItems=2))
    assert sorted(r["RoleName"] for r in roles) == names
    assert aws.calls["iam:ListRoles"] == 3


def test_each_page_is_fetched_under_the_retry_policy(aws, faults) -> None:
    aws.call("s3", "create_bucket", resource="bucket", Bucket="paged")
    for i in range(3):
        aws.call("s3", "put_object", resource="bucket", Bucket="paged", Key=f"k{i}", Body=b"")
    faults.fail("s3", "ListObjectsV2", "SlowDown", "slow down", status=503, times=2)
    listed = list(
        aws.paginate(
            "s3", "list_objects_v2", resource="bucket", key="Contents", Bucket="paged", MaxKeys=1
        )
    )
    assert [item["Key"] for item in listed] == ["k0", "k1", "k2"]
    assert aws.retries["s3:list_objects_v2"] == 2


def test_list_shards_sends_the_stream_on_the_first_page_only(aws) -> None:
    # AWS refuses StreamName and ExclusiveStartShardId together with NextToken (ListShards API
    # reference); moto insists on them, so AWS's side is played by botocore's Stubber, which
    # checks each page's parameters exactly.
    from botocore.stub import Stubber

    shard = {"ShardId": "shardId-0", "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": "1"}}
    shard |= {"SequenceNumberRange": {"StartingSequenceNumber": "1"}}
    with Stubber(aws.client("kinesis")) as stub:
        first = {"StreamName": "s", "MaxResults": 1}
        stub.add_response("list_shards", {"Shards": [shard], "NextToken": "t1"}, first)
        stub.add_response("list_shards", {"Shards": [shard]}, {"NextToken": "t1", "MaxResults": 1})
        shards = list(
            aws.paginate("kinesis", "list_shards", resource="s", StreamName="s", MaxResults=1)
        )
        stub.assert_no_pending_responses()
    assert len(shards) == 2


def test_an_operation_with_several_result_keys_needs_one_named(aws) -> None:
    with pytest.raises(TypeError, match="Contents"):
        list(aws.paginate("s3", "list_objects_v2", resource="bucket", Bucket="b"))


def test_paginate_follows_several_tokens_and_keys_and_a_missing_code(aws) -> None:
    # ListObjectVersions pages with KeyMarker and VersionIdMarker together.
    aws.call("s3", "create_bucket", resource="bucket", Bucket="versioned")
    aws.call(
        "s3",
        "put_bucket_versioning",
        resource="bucket",
        Bucket="versioned",
        VersioningConfiguration={"Status": "Enabled"},
    )
    for i in range(3):
        for _ in range(2):
            aws.call("s3", "put_object", resource="b", Bucket="versioned", Key=f"k{i}", Body=b"")
    aws.call("s3", "delete_object", resource="bucket", Bucket="versioned", Key="k0")
    items = list(
        aws.paginate(
            "s3",
            "list_object_versions",
            resource="bucket",
            key=("Versions", "DeleteMarkers"),
            Bucket="versioned",
            MaxKeys=2,
        )
    )
    assert len(items) == 7
    assert aws.calls["s3:ListObjectVersions"] >= 3
    gone = aws.paginate(
        "s3",
        "list_object_versions",
        resource="bucket",
        key="Versions",
        missing=("NoSuchBucket",),
        Bucket="no-such-bucket",
    )
    assert list(gone) == []


def test_a_transient_gets_its_attempts_even_when_calls_outlast_the_deadline(endpoint, faults):
    # A shortened policy shortens sleeps, not the calls' own time: the deadline alone would end
    # the retries of a slow emulator (or a slow network) before the role had a chance.
    policy = RetryPolicy(
        base_seconds=0.001, max_wait_seconds=0.001, max_attempts=4, transient_deadline_seconds=0
    )
    aws = Aws(region="us-east-1", endpoint_url=endpoint, policy=policy)
    message = "AWS IoT (iot.amazonaws.com) is unable to assume role (sts:AssumeRole) on resource: x"
    faults.fail("iot", "ListTopicRules", "InvalidRequestException", message, times=3)
    aws.call("iot", "list_topic_rules", resource="iot.rule r", retry_on=IAM_PROPAGATION)
    assert aws.retries["iot:list_topic_rules"] == 3
