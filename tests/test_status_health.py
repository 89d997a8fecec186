"""`iotpipe status` health: alarms, iterator age, DLQ depth, archive delivery, subscriptions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from iotpipe.aws import add_client_hook

STACK = "test"
STREAM = "test-readings"
BUCKET = "test-archive-123456789012-us-east-1"
DLQ = "test-processor-dlq"
# One of the stack's own alarms: status reads the stack's alarms by name.
PROBE_ALARM = "test-readings-iterator-age"


def client(endpoint: str, service: str):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def checks_of(result) -> dict[str, dict]:
    return {check["name"]: check for check in result.json["health"]}


@pytest.fixture
def healthy_pipeline(cli, endpoint: str) -> None:
    """`up`, then what a working pipeline shows: alarms OK, a fresh delivery, a reading consumer."""
    assert cli("up", "--yes").exit_code == 0
    cloudwatch = client(endpoint, "cloudwatch")
    # The stack's alarms start without data; a working pipeline has them OK.
    for alarm in cloudwatch.describe_alarms(AlarmNamePrefix=f"{STACK}-")["MetricAlarms"]:
        cloudwatch.set_alarm_state(
            AlarmName=alarm["AlarmName"], StateValue="OK", StateReason="test: healthy"
        )
    client(endpoint, "sqs").create_queue(QueueName=DLQ)
    now = datetime.now(UTC)
    client(endpoint, "s3").put_object(
        Bucket=BUCKET, Key=f"readings/dt={now:%Y-%m-%d}/hour={now:%H}/batch-1.gz", Body=b"x"
    )
    cloudwatch.put_metric_data(
        Namespace="AWS/Kinesis",
        MetricData=[
            {
                "MetricName": "GetRecords.IteratorAgeMilliseconds",
                "Dimensions": [{"Name": "StreamName", "Value": STREAM}],
                "Timestamp": now - timedelta(minutes=2),
                "Value": 1_200,
            }
        ],
    )


def test_healthy_pipeline_exits_0(cli, healthy_pipeline) -> None:
    result = cli("status", "--output", "json")

    assert result.exit_code == 0, result
    assert result.json["healthy"] is True
    checks = checks_of(result)
    assert set(checks) == {
        "alarms",
        "iterator age",
        "dead-letter queue",
        "archive delivery",
        "alert subscriptions",
    }
    assert checks["alarms"]["state"] == "ok"
    assert checks["iterator age"] == {
        "name": "iterator age",
        "state": "ok",
        "detail": "max 1 s over the last 15 min (limit 300 s)",
        "value": 1.2,
    }
    assert checks["dead-letter queue"]["value"] == 0
    assert checks["archive delivery"]["state"] == "ok"

    table = cli("status")
    assert table.exit_code == 0
    assert "Health" in table.stdout and "healthy" in table.stdout


def test_an_alarm_in_alarm_is_unhealthy(cli, endpoint: str, healthy_pipeline) -> None:
    client(endpoint, "cloudwatch").set_alarm_state(
        AlarmName=PROBE_ALARM, StateValue="ALARM", StateReason="test: lagging"
    )

    result = cli("status", "--output", "json")

    assert result.exit_code == 1
    assert result.json["healthy"] is False
    alarms = checks_of(result)["alarms"]
    assert alarms["state"] == "unhealthy"
    assert PROBE_ALARM in alarms["detail"]


def test_a_neighbour_stacks_alarm_is_not_this_stacks(cli, endpoint: str, healthy_pipeline) -> None:
    # "test-dev" shares the prefix "test-"; its alarm in ALARM says nothing about "test".
    cloudwatch = client(endpoint, "cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="test-dev-readings-iterator-age",
        Namespace="AWS/Kinesis",
        MetricName="GetRecords.IteratorAgeMilliseconds",
        Dimensions=[{"Name": "StreamName", "Value": "test-dev-readings"}],
        Statistic="Maximum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=300_000,
        ComparisonOperator="GreaterThanThreshold",
    )
    cloudwatch.set_alarm_state(
        AlarmName="test-dev-readings-iterator-age", StateValue="ALARM", StateReason="test"
    )

    alarms = checks_of(cli("status", "--output", "json"))["alarms"]

    assert alarms["state"] == "ok", alarms
    assert "test-dev" not in alarms["detail"]


def test_a_message_in_the_dlq_is_unhealthy(cli, endpoint: str, healthy_pipeline) -> None:
    sqs = client(endpoint, "sqs")
    queue_url = sqs.get_queue_url(QueueName=DLQ)["QueueUrl"]
    sqs.send_message(QueueUrl=queue_url, MessageBody='{"KinesisBatchInfo": {}}')

    result = cli("status", "--output", "json")

    assert result.exit_code == 1
    dlq = checks_of(result)["dead-letter queue"]
    assert (dlq["state"], dlq["value"]) == ("unhealthy", 1)


def test_stream_lag_over_the_limit_is_unhealthy(cli, endpoint: str, healthy_pipeline) -> None:
    client(endpoint, "cloudwatch").put_metric_data(
        Namespace="AWS/Kinesis",
        MetricData=[
            {
                "MetricName": "GetRecords.IteratorAgeMilliseconds",
                "Dimensions": [{"Name": "StreamName", "Value": STREAM}],
                "Timestamp": datetime.now(UTC) - timedelta(minutes=1),
                "Value": 900_000,
            }
        ],
    )

    result = cli("status", "--output", "json")

    assert result.exit_code == 1
    age = checks_of(result)["iterator age"]
    assert (age["state"], age["value"]) == ("unhealthy", 900.0)


def test_a_stale_archive_is_unhealthy(cli, endpoint: str, healthy_pipeline) -> None:
    s3 = client(endpoint, "s3")
    for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="readings/")["Contents"]:
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    # Deliveries of last week only: traffic that stopped, not a stack without traffic yet.
    old = datetime.now(UTC) - timedelta(days=7)
    s3.put_object(Bucket=BUCKET, Key=f"readings/dt={old:%Y-%m-%d}/hour=00/batch-0.gz", Body=b"x")

    result = cli("status", "--output", "json")

    assert result.exit_code == 1
    assert checks_of(result)["archive delivery"]["state"] == "unhealthy"


def test_nothing_deployed_reports_every_check_missing(cli) -> None:
    result = cli("status", "--output", "json")

    assert result.exit_code == 1
    states = {name: check["state"] for name, check in checks_of(result).items()}
    assert states == {
        "alarms": "missing",
        "iterator age": "missing",
        "dead-letter queue": "missing",
        "archive delivery": "missing",
        "alert subscriptions": "missing",
    }


@pytest.fixture
def unconfirmed_emails() -> Iterator[None]:
    """Answer ListSubscriptionsByTopic as AWS does before the recipient confirms: moto confirms
    every email subscription at once, AWS lists it as PendingConfirmation until the link is
    followed."""

    def pending(parsed: dict[str, Any], **_: Any) -> None:
        for subscription in parsed.get("Subscriptions", []):
            if subscription["Protocol"] == "email":
                subscription["SubscriptionArn"] = "PendingConfirmation"

    def attach(service: str, client: Any) -> None:
        if service == "sns":
            client.meta.events.register("after-call.sns.ListSubscriptionsByTopic", pending)

    remove = add_client_hook(attach)
    yield
    remove()


def test_alert_emails_pending_or_absent_are_unhealthy(
    cli, endpoint: str, tmp_path, unconfirmed_emails
) -> None:
    config = tmp_path / "alerts.toml"
    config.write_text('[stack]\nname = "test"\n[alerts]\nemails = ["ops@example.com"]\n')
    assert cli("up", "--yes", config=config).exit_code == 0
    sns = client(endpoint, "sns")
    topic = f"arn:aws:sns:us-east-1:123456789012:{STACK}-alerts"
    if not sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]:
        sns.subscribe(TopicArn=topic, Protocol="email", Endpoint="ops@example.com")

    result = cli("status", "--output", "json", config=config)

    assert result.exit_code == 1
    subscriptions = checks_of(result)["alert subscriptions"]
    assert subscriptions["state"] == "unhealthy"
    assert "awaiting confirmation (check the inbox): ops@example.com" in subscriptions["detail"]

    for subscription in sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]:
        sns.unsubscribe(SubscriptionArn=subscription["SubscriptionArn"])
    absent = checks_of(cli("status", "--output", "json", config=config))["alert subscriptions"]
    assert "not subscribed: ops@example.com" in absent["detail"]
