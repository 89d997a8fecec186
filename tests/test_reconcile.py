"""The engine end to end on the emulator: up, idempotence, drift, convergence, down."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from iotpipe.aws import Aws
from iotpipe.config import parse_config
from iotpipe.context import StackContext
from iotpipe.engine.reconcile import order, plan_up
from iotpipe.stack import build_resources
from tests.support import client

ACCOUNT = "123456789012"
BUCKET = f"test-archive-{ACCOUNT}-us-east-1"


def snapshot(endpoint: str, config_text: str = '[stack]\nname = "test"\n') -> dict:
    """Every resource of the stack as the engine observes it (the state `up` converges to)."""
    import tomllib

    config = parse_config(tomllib.loads(config_text))
    aws = Aws(region="us-east-1", endpoint_url=endpoint)
    ctx = StackContext(config, aws)
    state = {}
    for r in order(build_resources(ctx)):
        observed = r.read(aws)
        # Only the managed fields: generated ids (a mapping's UUID) differ between any two runs.
        wanted = r.desired()
        state[r.key] = observed and {k: v for k, v in observed.items() if k in wanted}
    return state


def test_fresh_up_builds_the_slice_with_its_settings(cli, endpoint) -> None:
    result = cli("up", "--yes")
    assert result.exit_code == 0, result

    s3 = client(endpoint, "s3")
    encryption = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]
    assert encryption["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    ownership = s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]
    assert ownership["Rules"][0]["ObjectOwnership"] == "BucketOwnerEnforced"
    policy = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])
    deny = policy["Statement"][0]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"]}
    assert tags["iotpipe:stack"] == "test"

    kinesis = client(endpoint, "kinesis")
    stream = kinesis.describe_stream_summary(StreamName="test-readings")["StreamDescriptionSummary"]
    assert stream["OpenShardCount"] == 1
    assert stream["EncryptionType"] == "KMS"
    assert stream["KeyId"] == "alias/aws/kinesis"
    assert stream["RetentionPeriodHours"] == 24
    assert stream["StreamModeDetails"]["StreamMode"] == "PROVISIONED"

    dynamodb = client(endpoint, "dynamodb")
    table = dynamodb.describe_table(TableName="test-device-state")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PROVISIONED"
    assert table["KeySchema"] == [{"AttributeName": "device_id", "KeyType": "HASH"}]
    ttl = dynamodb.describe_time_to_live(TableName="test-device-state")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}

    sns = client(endpoint, "sns")
    topic_arn = f"arn:aws:sns:us-east-1:{ACCOUNT}:test-alerts"
    attributes = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
    # The stack's own key: CloudWatch cannot publish to a topic on alias/aws/sns.
    assert attributes["KmsMasterKeyId"] == "alias/test-alerts"


def test_second_up_makes_zero_mutating_calls_and_plan_shows_no_change(cli, faults) -> None:
    assert cli("up", "--yes").exit_code == 0
    faults.calls.clear()
    again = cli("up", "--yes", "--output", "json")
    assert again.exit_code == 0, again
    assert again.json["applied"] is False
    assert faults.mutating_calls == []
    assert faults.calls, "the second up must still observe every resource"
    plan = cli("plan", "--output", "json")
    assert set(plan.json["summary"]) == {"no-change"}


def test_up_lists_what_changes_and_counts_what_does_not(cli, config_file: Path) -> None:
    assert cli("up", "--yes").exit_code == 0
    quiet = cli("up", "--yes")
    assert quiet.exit_code == 0, quiet
    assert "no-change" in quiet.stdout  # the summary counts them
    assert "test-device-state" not in quiet.stdout  # no row per unchanged resource
    config_file.write_text('[stack]\nname = "test"\n[stream]\nretention_hours = 48\n')
    changed = cli("up", "--yes")
    assert "test-readings" in changed.stdout and "retention_hours" in changed.stdout
    assert "test-device-state" not in changed.stdout
    assert "test-device-state" in cli("up", "--yes", "-v").stdout
    assert "test-device-state" in cli("plan").stdout  # plan shows everything


def test_a_config_change_plans_and_applies_exactly_the_changed_fields(
    cli, faults, config_file: Path, endpoint
) -> None:
    assert cli("up", "--yes").exit_code == 0
    config_file.write_text(
        '[stack]\nname = "test"\n[stream]\nretention_hours = 48\n'
        "[device_state]\npoint_in_time_recovery = true\n"
    )
    plan = cli("plan", "--output", "json")
    changed = {
        (s["kind"], c["field"], json.dumps(c["old"]), json.dumps(c["new"]))
        for s in plan.json["steps"]
        for c in s["changes"]
    }
    assert changed == {
        ("kinesis.stream", "retention_hours", "24", "48"),
        ("dynamodb.table", "point_in_time_recovery", "false", "true"),
    }
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert sorted(faults.mutating_calls) == [
        ("dynamodb", "UpdateContinuousBackups"),
        ("kinesis", "IncreaseStreamRetentionPeriod"),
    ]
    summary = client(endpoint, "kinesis").describe_stream_summary(StreamName="test-readings")
    assert summary["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []


def test_drift_is_reported_by_status_and_repaired_by_up(cli, endpoint) -> None:
    assert cli("up", "--yes").exit_code == 0
    client(endpoint, "s3").delete_public_access_block(Bucket=BUCKET)
    status = cli("status", "--output", "json")
    assert status.exit_code == 1
    states = {r["name"]: r for r in status.json["resources"]}
    assert states[BUCKET]["state"] == "drifted"
    assert [d["field"] for d in states[BUCKET]["drift"]] == ["public_access_block"]
    assert cli("up", "--yes").exit_code == 0
    states = {r["name"]: r["state"] for r in cli("status", "-o", "json").json["resources"]}
    assert states[BUCKET] == "in sync"


def _mutating_calls_of_a_fresh_up(cli, faults) -> int:
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    return len(faults.mutating_calls)


def _crash_points(total: int) -> list[int]:
    """Every mutating call index when exhaustive, else a seeded sample (always first and last)."""
    points = list(range(1, total + 1))
    if os.environ.get("IOTPIPE_EXHAUSTIVE"):
        return points
    sample = random.Random(7).sample(points, k=min(6, total))
    return sorted({1, total, *sample})


@pytest.mark.exhaustive
def test_up_interrupted_at_any_mutating_call_converges(cli, faults, endpoint, emulator) -> None:
    total = _mutating_calls_of_a_fresh_up(cli, faults)
    reference = snapshot(endpoint)
    assert total > 0
    for k in _crash_points(total):
        emulator.reset()
        faults.calls.clear()
        faults._mutating_seen = 0
        faults.crash_at_mutating = k
        crashed = cli("up", "--yes")
        faults.crash_at_mutating = None
        assert crashed.exit_code == 1, f"crash at mutating call {k}: {crashed}"
        assert "InjectedCrash" in crashed.stderr
        assert cli("up", "--yes").exit_code == 0, f"re-run after crash at {k}"
        assert snapshot(endpoint) == reference, f"state differs after a crash at call {k}"
        faults.calls.clear()
        assert cli("up", "--yes").exit_code == 0
        assert faults.mutating_calls == [], f"not converged after a crash at call {k}"


def test_up_succeeds_with_30_percent_of_calls_throttled(cli, faults, endpoint) -> None:
    faults.throttle(0.3)
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    assert faults.injected > 0
    faults.rules.clear()
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []


def test_down_keeps_data_stores_unless_asked(cli, endpoint, aws_clock) -> None:
    assert cli("up", "--yes").exit_code == 0
    result = cli("down", "--yes", "--output", "json")
    assert result.exit_code == 0, result
    kept = {s["name"] for s in result.json["steps"] if s["action"] == "keep"}
    assert kept == {BUCKET, "test-device-state"} | _timeseries_names(result.json)
    assert client(endpoint, "kinesis").list_streams()["StreamNames"] == []
    assert client(endpoint, "sns").list_topics()["Topics"] == []
    client(endpoint, "s3").head_bucket(Bucket=BUCKET)

    client(endpoint, "s3").put_object(Bucket=BUCKET, Key="readings/x.json", Body=b"{}")
    gone = cli("down", "--yes", "--delete-data")
    assert gone.exit_code == 0, gone
    assert client(endpoint, "s3").list_buckets()["Buckets"] == []
    assert client(endpoint, "dynamodb").list_tables()["TableNames"] == []
    # The deprecated thing type is deleted by a later down, five minutes after its deprecation.
    aws_clock.advance(301)
    assert cli("down", "--yes").exit_code == 0
    assert cli("down", "--yes", "-o", "json").json["steps"] == []


def _timeseries_names(down_json: dict) -> set[str]:
    return {
        s["name"]
        for s in down_json["steps"]
        if s["action"] == "keep" and s["kind"].startswith("timestream")
    }


def test_up_refuses_a_resource_another_stack_owns(cli, endpoint) -> None:
    client(endpoint, "sns").create_topic(
        Name="test-alerts", Tags=[{"Key": "iotpipe:stack", "Value": "someone-else"}]
    )
    result = cli("up", "--yes")
    assert result.exit_code == 1
    assert "someone-else" in result.stderr


def test_down_keeps_what_the_stack_does_not_own(cli, endpoint) -> None:
    assert cli("up", "--yes").exit_code == 0
    # The alerts topic now carries another stack's tag; the readings stream, the stack's name
    # but no tag of any stack.
    sns, kinesis = client(endpoint, "sns"), client(endpoint, "kinesis")
    topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:test-alerts"
    sns.tag_resource(ResourceArn=topic, Tags=[{"Key": "iotpipe:stack", "Value": "someone-else"}])
    kinesis.remove_tags_from_stream(StreamName="test-readings", TagKeys=["iotpipe:stack"])

    result = cli("down", "--yes", "--delete-data")
    assert result.exit_code == 0, result
    # The teardown plan says so, one line for each.
    kept = [line for line in result.stdout.splitlines() if "not owned by stack 'test'" in line]
    assert any("sns.topic" in line and "test-alerts" in line for line in kept), result
    assert any("kinesis.stream" in line and "test-readings" in line for line in kept), result
    # Both are still there, as their owners left them; what the stack owns is gone, data too.
    assert sns.list_tags_for_resource(ResourceArn=topic)["Tags"] == [
        {"Key": "iotpipe:stack", "Value": "someone-else"}
    ]
    assert kinesis.list_streams()["StreamNames"] == ["test-readings"]
    assert client(endpoint, "dynamodb").list_tables()["TableNames"] == []
    assert client(endpoint, "s3").list_buckets()["Buckets"] == []
    assert client(endpoint, "lambda").list_functions()["Functions"] == []

    again = cli("down", "--yes", "--delete-data", "-o", "json")
    assert again.exit_code == 0, again
    kept_steps = {
        (s["kind"], s["name"]): s["note"] for s in again.json["steps"] if s["action"] == "keep"
    }
    assert kept_steps == {
        ("sns.topic", "test-alerts"): "not owned by stack 'test'",
        # Subscriptions belong to whoever owns the topic.
        ("sns.subscriptions", "test-alerts"): "not owned by stack 'test'",
        ("kinesis.stream", "test-readings"): "not owned by stack 'test'",
    }


def test_dependencies_order_the_plan(endpoint) -> None:
    config = parse_config({"stack": {"name": "test"}})
    ctx = StackContext(config, Aws(region="us-east-1", endpoint_url=endpoint))
    resources = build_resources(ctx)
    steps = plan_up(ctx.aws, resources, "test").steps
    position = {s.resource.key: i for i, s in enumerate(steps)}
    for step in steps:
        for dep in step.resource.depends_on:
            assert position[dep] < position[step.resource.key]


@pytest.mark.exhaustive
def test_down_interrupted_at_any_mutating_call_then_rerun_removes_everything(
    cli, faults, endpoint, emulator, aws_clock
) -> None:
    assert cli("up", "--yes").exit_code == 0
    faults.calls.clear()
    assert cli("down", "--yes", "--delete-data").exit_code == 0
    total = len(faults.mutating_calls)
    for k in _crash_points(total):
        emulator.reset()
        assert cli("up", "--yes").exit_code == 0
        faults._mutating_seen = 0
        faults.crash_at_mutating = k
        crashed = cli("down", "--yes", "--delete-data")
        faults.crash_at_mutating = None
        assert crashed.exit_code == 1, f"crash at mutating call {k}: {crashed}"
        assert cli("down", "--yes", "--delete-data").exit_code == 0, f"re-run after {k}"
        # A thing type is deleted five minutes after its deprecation, by a later down.
        aws_clock.advance(301)
        assert cli("down", "--yes", "--delete-data").exit_code == 0, f"last run after {k}"
        leftovers = {key: state for key, state in snapshot(endpoint).items() if state}
        assert leftovers == {}, f"left behind after a crash at call {k}"


@pytest.mark.parametrize(
    ("service", "operation", "code", "status"),
    [
        ("kinesis", "DescribeStreamSummary", "ResourceNotFoundException", 400),
        ("dynamodb", "DescribeTable", "ResourceNotFoundException", 400),
        ("sns", "GetTopicAttributes", "NotFound", 404),
        ("s3", "HeadBucket", "404", 404),
    ],
)
def test_not_found_right_after_create_is_waited_out(
    cli, faults, endpoint, service, operation, code, status
) -> None:
    # The first answer is the plan's own observation; the next ones follow the create.
    faults.fail(service, operation, code, "not yet", status=status, times=4)
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []
