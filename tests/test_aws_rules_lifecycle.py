"""The emulator's AWS rules for deletions that last, backups after create, TTL and resharding."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

ACCOUNT = "123456789012"


def _client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error["Message"]


def test_a_deleted_stream_stays_deleting_and_keeps_its_name(endpoint, aws_clock) -> None:
    kinesis = _client(endpoint, "kinesis")
    kinesis.create_stream(StreamName="s", ShardCount=1)
    kinesis.delete_stream(StreamName="s")

    summary = kinesis.describe_stream_summary(StreamName="s")["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "DELETING"
    with pytest.raises(ClientError) as refused:
        kinesis.create_stream(StreamName="s", ShardCount=1)
    assert _error(refused) == (
        "ResourceInUseException",
        f"Stream s under account {ACCOUNT} already exists.",
    )
    with pytest.raises(ClientError) as changing:
        kinesis.add_tags_to_stream(StreamName="s", Tags={"a": "b"})
    assert "not ACTIVE, instead in state DELETING" in _error(changing)[1]

    aws_clock.advance(60)
    with pytest.raises(ClientError) as gone:
        kinesis.describe_stream_summary(StreamName="s")
    assert _error(gone)[0] == "ResourceNotFoundException"
    kinesis.create_stream(StreamName="s", ShardCount=1)


def test_a_deleted_table_stays_deleting_and_keeps_its_name(endpoint, aws_clock) -> None:
    dynamodb = _client(endpoint, "dynamodb")
    table = {
        "TableName": "t",
        "AttributeDefinitions": [{"AttributeName": "k", "AttributeType": "S"}],
        "KeySchema": [{"AttributeName": "k", "KeyType": "HASH"}],
        "BillingMode": "PAY_PER_REQUEST",
    }
    dynamodb.create_table(**table)
    deleted = dynamodb.delete_table(TableName="t")

    assert deleted["TableDescription"]["TableStatus"] == "DELETING"
    assert dynamodb.describe_table(TableName="t")["Table"]["TableStatus"] == "DELETING"
    with pytest.raises(ClientError) as refused:
        dynamodb.create_table(**table)
    assert _error(refused) == ("ResourceInUseException", "Table already exists: t")
    with pytest.raises(ClientError) as changing:
        dynamodb.update_table(TableName="t", BillingMode="PROVISIONED")
    assert _error(changing) == (
        "ResourceInUseException",
        "Attempt to change a resource which is still in use: Table is being deleted: t",
    )

    aws_clock.advance(30)
    assert dynamodb.list_tables()["TableNames"] == []
    dynamodb.create_table(**table)


def test_a_deleted_delivery_stream_stays_deleting_and_keeps_its_name(endpoint, aws_clock) -> None:
    firehose = _client(endpoint, "firehose")
    _client(endpoint, "s3").create_bucket(Bucket="lifecycle-bucket")
    stream = {
        "DeliveryStreamName": "f",
        "ExtendedS3DestinationConfiguration": {
            "RoleARN": f"arn:aws:iam::{ACCOUNT}:role/r",
            "BucketARN": "arn:aws:s3:::lifecycle-bucket",
        },
    }
    firehose.create_delivery_stream(**stream)
    firehose.delete_delivery_stream(DeliveryStreamName="f")

    described = firehose.describe_delivery_stream(DeliveryStreamName="f")
    assert described["DeliveryStreamDescription"]["DeliveryStreamStatus"] == "DELETING"
    with pytest.raises(ClientError) as refused:
        firehose.create_delivery_stream(**stream)
    assert _error(refused) == (
        "ResourceInUseException",
        f"Firehose f under accountId {ACCOUNT} already exists",
    )

    aws_clock.advance(300)
    assert firehose.list_delivery_streams()["DeliveryStreamNames"] == []
    firehose.create_delivery_stream(**stream)


def test_a_deleted_queue_name_is_refused_for_60_seconds(endpoint, aws_clock) -> None:
    sqs = _client(endpoint, "sqs")
    sqs.delete_queue(QueueUrl=sqs.create_queue(QueueName="q")["QueueUrl"])

    with pytest.raises(ClientError) as refused:
        sqs.create_queue(QueueName="q")
    assert _error(refused)[0] == "AWS.SimpleQueueService.QueueDeletedRecently"

    aws_clock.advance(61)
    sqs.create_queue(QueueName="q")


def _table(endpoint: str) -> None:
    _client(endpoint, "dynamodb").create_table(
        TableName="t",
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )


def test_point_in_time_recovery_is_refused_right_after_create(endpoint, aws_clock) -> None:
    _table(endpoint)
    dynamodb = _client(endpoint, "dynamodb")
    spec = {"PointInTimeRecoveryEnabled": True}

    def backups() -> str:
        described = dynamodb.describe_continuous_backups(TableName="t")
        return described["ContinuousBackupsDescription"]["ContinuousBackupsStatus"]

    assert backups() == "DISABLED"
    with pytest.raises(ClientError) as refused:
        dynamodb.update_continuous_backups(TableName="t", PointInTimeRecoverySpecification=spec)
    assert _error(refused) == (
        "ContinuousBackupsUnavailableException",
        "Backups are being enabled for the table: t. Please retry later",
    )

    aws_clock.advance(30)
    assert backups() == "ENABLED"
    dynamodb.update_continuous_backups(TableName="t", PointInTimeRecoverySpecification=spec)


def test_a_second_ttl_change_within_an_hour_is_refused(endpoint, aws_clock) -> None:
    _table(endpoint)
    dynamodb = _client(endpoint, "dynamodb")

    def ttl(enabled: bool) -> None:
        dynamodb.update_time_to_live(
            TableName="t", TimeToLiveSpecification={"AttributeName": "x", "Enabled": enabled}
        )

    ttl(True)
    aws_clock.advance(3_000)
    with pytest.raises(ClientError) as refused:
        ttl(False)
    assert _error(refused) == (
        "ValidationException",
        "Time to live has been modified multiple times within a fixed interval",
    )

    aws_clock.advance(700)
    ttl(False)


def test_update_shard_count_is_held_to_double_and_half(endpoint) -> None:
    kinesis = _client(endpoint, "kinesis")
    kinesis.create_stream(StreamName="s", ShardCount=2)

    def scale(target: int) -> None:
        kinesis.update_shard_count(
            StreamName="s", TargetShardCount=target, ScalingType="UNIFORM_SCALING"
        )

    with pytest.raises(ClientError) as up:
        scale(5)
    assert _error(up) == (
        "LimitExceededException",
        "UpdateShardCount cannot scale up over double your current open shard count. "
        "Current open shard count: 2, Target shard count: 5",
    )
    scale(4)
    with pytest.raises(ClientError) as down:
        scale(1)
    assert "cannot scale down below half" in _error(down)[1]
    scale(2)


def test_update_shard_count_ten_times_a_day_at_most(endpoint, aws_clock) -> None:
    kinesis = _client(endpoint, "kinesis")
    kinesis.create_stream(StreamName="s", ShardCount=1)

    def scale(target: int) -> None:
        kinesis.update_shard_count(
            StreamName="s", TargetShardCount=target, ScalingType="UNIFORM_SCALING"
        )

    for target in [2, 1] * 5:
        scale(target)
    with pytest.raises(ClientError) as refused:
        scale(2)
    assert _error(refused)[0] == "LimitExceededException"

    aws_clock.advance(86_400)
    scale(2)
