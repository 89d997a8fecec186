"""The local IoT rules engine: topic filters, Basic Ingest, the rule's SELECT, its actions."""

from __future__ import annotations

import base64
import json

import pytest

from iotpipe.aws import Aws
from iotpipe.errors import UsageError
from iotpipe.local.rules import (
    Message,
    RuleEngine,
    RuleQuery,
    split_basic_ingest,
    substitute,
    topic_matches,
)

RULE_SQL = (
    "SELECT *, topic(3) AS device_id, timestamp() AS received_at FROM 'dt/sensors/+/telemetry'"
)


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("dt/sensors/+/telemetry", "dt/sensors/dev-1/telemetry", True),
        ("dt/sensors/+/telemetry", "dt/sensors/dev-1/status", False),
        ("dt/sensors/+/telemetry", "dt/sensors/a/b/telemetry", False),
        ("dt/sensors/+/telemetry", "dt/other/dev-1/telemetry", False),
        ("dt/sensors/#", "dt/sensors/dev-1/telemetry", True),
        ("dt/sensors/#", "dt/sensors", True),
        ("dt/+/+/telemetry", "dt/sensors/dev-1/telemetry", True),
        ("#", "dt/sensors/dev-1/telemetry", True),
        ("#", "$aws/things/dev-1/shadow/update", False),
        ("dt/sensors/dev-1/telemetry", "dt/sensors/dev-1/telemetry", True),
        ("dt/sensors/+", "dt/sensors/dev-1/telemetry", False),
    ],
)
def test_topic_filters_match_like_mqtt(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_basic_ingest_prefix_names_the_rule_and_is_stripped() -> None:
    assert split_basic_ingest("$aws/rules/demo_telemetry/dt/sensors/d1/telemetry") == (
        "demo_telemetry",
        "dt/sensors/d1/telemetry",
    )
    assert split_basic_ingest("dt/sensors/d1/telemetry") == (None, "dt/sensors/d1/telemetry")


def _message(payload: bytes, topic: str = "dt/sensors/dev-7/telemetry") -> Message:
    return Message(topic, payload, "dev-7", 1_700_000_000_123)


def test_select_adds_device_id_and_received_at_to_the_device_json() -> None:
    query = RuleQuery.parse(RULE_SQL, "r")
    out = json.loads(query.select(_message(b'{"ts": 1700000000000, "metrics": {"t": 21.5}}')))
    assert out == {
        "ts": 1700000000000,
        "metrics": {"t": 21.5},
        "device_id": "dev-7",
        "received_at": 1_700_000_000_123,
    }


def test_select_keeps_the_devices_number_literals() -> None:
    query = RuleQuery.parse(RULE_SQL, "r")
    out = query.select(_message(b'{"metrics": {"t": 1e999}}'))
    assert out.startswith(b'{"metrics": {"t": 1e999}}'[:-1])
    assert json.loads(out)["device_id"] == "dev-7"


def test_a_payload_that_is_not_a_json_object_passes_through_unchanged() -> None:
    query = RuleQuery.parse(RULE_SQL, "r")
    for payload in (b"{not json", b"[1, 2]", b'{"t": NaN}', b"\xff\xfe"):
        assert query.select(_message(payload)) == payload


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM 'a/b' WHERE temperature > 50",
        "SELECT temperature FROM 'a/b'",
        "SELECT *, principal() AS p FROM 'a/b'",
        "SELECT *, topic(3) FROM 'a/b'",
        "DELETE FROM 'a/b'",
    ],
)
def test_unsupported_sql_is_refused_by_name(sql: str) -> None:
    with pytest.raises(UsageError, match="locally"):
        RuleQuery.parse(sql, "r")


def test_substitution_templates() -> None:
    message = _message(b"{}")
    assert substitute("${topic(3)}", message, "r") == "dev-7"
    assert substitute("iot-errors/${timestamp()}", message, "r") == "iot-errors/1700000000123"
    assert substitute("${topic()}", message, "r") == "dt/sensors/dev-7/telemetry"
    with pytest.raises(UsageError, match="not supported"):
        substitute("${get(*, 'x')}", message, "r")


@pytest.fixture
def aws(endpoint: str) -> Aws:
    return Aws(endpoint_url=endpoint, region="us-east-1")


def _create_rule(aws: Aws, stream: str, bucket: str) -> None:
    aws.call(
        "iot",
        "create_topic_rule",
        resource="rule",
        ruleName="demo_telemetry",
        topicRulePayload={
            "sql": RULE_SQL,
            "awsIotSqlVersion": "2016-03-23",
            "ruleDisabled": False,
            "actions": [
                {
                    "kinesis": {
                        "roleArn": "arn:aws:iam::123456789012:role/r",
                        "streamName": stream,
                        "partitionKey": "${topic(3)}",
                    }
                }
            ],
            "errorAction": {
                "s3": {
                    "roleArn": "arn:aws:iam::123456789012:role/r",
                    "bucketName": bucket,
                    "key": "iot-errors/${timestamp()}-${newuuid()}",
                }
            },
        },
    )


def test_rule_read_back_from_the_emulator_puts_into_kinesis_with_the_partition_key(
    aws: Aws,
) -> None:
    aws.call("kinesis", "create_stream", resource="s", StreamName="readings", ShardCount=1)
    aws.call("s3", "create_bucket", resource="b", Bucket="archive")
    _create_rule(aws, "readings", "archive")
    engine = RuleEngine.from_emulator(aws)

    direct = engine.publish("dt/sensors/dev-1/telemetry", b'{"ts": 1, "metrics": {"t": 1.0}}')
    ingest = engine.publish(
        "$aws/rules/demo_telemetry/dt/sensors/dev-2/telemetry", b'{"ts": 2, "metrics": {}}'
    )
    other = engine.publish("dt/sensors/dev-3/status", b"{}")
    wrong_rule = engine.publish("$aws/rules/no_such_rule/dt/sensors/dev-4/telemetry", b"{}")

    assert direct.rules == ["demo_telemetry"] and direct.delivered == 1
    assert ingest.rules == ["demo_telemetry"] and ingest.delivered == 1
    assert other.rules == [] and wrong_rule.rules == []
    shard = aws.call("kinesis", "list_shards", resource="s", StreamName="readings")["Shards"][0]
    iterator = aws.call(
        "kinesis",
        "get_shard_iterator",
        resource="s",
        StreamName="readings",
        ShardId=shard["ShardId"],
        ShardIteratorType="TRIM_HORIZON",
    )["ShardIterator"]
    records = aws.call("kinesis", "get_records", resource="s", ShardIterator=iterator)["Records"]
    assert [r["PartitionKey"] for r in records] == ["dev-1", "dev-2"]
    second = json.loads(records[1]["Data"])
    assert second["device_id"] == "dev-2" and second["ts"] == 2
    assert isinstance(second["received_at"], int)


def test_failed_delivery_goes_to_the_error_action_with_the_original_payload(aws: Aws) -> None:
    aws.call("s3", "create_bucket", resource="b", Bucket="archive")
    _create_rule(aws, "missing-stream", "archive")
    engine = RuleEngine.from_emulator(aws)

    result = engine.publish("dt/sensors/dev-1/telemetry", b'{"ts": 1}', client_id="dev-1")

    assert result.failed == 1 and engine.stats["error_action"] == 1
    listed = aws.call("s3", "list_objects_v2", resource="b", Bucket="archive", Prefix="iot-errors/")
    assert len(listed["Contents"]) == 1
    body = aws.call(
        "s3", "get_object", resource="b", Bucket="archive", Key=listed["Contents"][0]["Key"]
    )["Body"].read()
    report = json.loads(body)
    assert report["ruleName"] == "demo_telemetry"
    assert report["clientId"] == "dev-1"
    assert base64.b64decode(report["base64OriginalPayload"]) == b'{"ts": 1}'
    assert report["failures"][0]["failedAction"] == "KinesisAction"
    assert report["failures"][0]["failedResource"] == "missing-stream"
