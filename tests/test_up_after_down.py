"""`up` right after `down`, and after deletions AWS has not finished: names AWS still holds.

On AWS a deleted stream, table or delivery stream stays DELETING for a while and its name stays
taken; SQS refuses a deleted queue's name for 60 s. The emulator's AWS rules do the same.
"""

from __future__ import annotations

import pytest

from iotpipe.local.aws_rules import dynamodb, firehose, kinesis
from tests.support import client

ACCOUNT = "123456789012"
BUCKET = f"test-archive-{ACCOUNT}-us-east-1"


@pytest.fixture
def slow_deletions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deletions that outlast the plan's observation, as they can on AWS (minutes, at times)."""
    for rules in (kinesis, dynamodb, firehose):
        monkeypatch.setattr(rules, "DELETE_SECONDS", 300.0)


def _converged(cli) -> None:
    again = cli("up", "--yes")
    assert again.exit_code == 0, again
    assert "nothing changed" in again.stdout


def test_up_right_after_down_with_delete_data_converges(cli, endpoint, slow_deletions) -> None:
    assert cli("up", "--yes").exit_code == 0

    down = cli("down", "--yes", "--delete-data")

    assert down.exit_code == 0, down
    # `down` waits each deletion out, and says so while it waits.
    assert "waiting for AWS to finish deleting the stream" in down.stderr
    assert "waiting for AWS to finish deleting the delivery stream" in down.stderr
    assert client(endpoint, "kinesis").list_streams()["StreamNames"] == []
    assert client(endpoint, "dynamodb").list_tables()["TableNames"] == []

    up = cli("up", "--yes")

    assert up.exit_code == 0, up
    _converged(cli)


def test_a_queue_name_refused_after_its_deletion_is_retried(cli, endpoint, faults) -> None:
    # What SQS answers for 60 s after DeleteQueue (the emulator's rule answers the same, but
    # whether `up` reaches CreateQueue inside that window depends on the machine's speed).
    faults.fail(
        "sqs",
        "CreateQueue",
        "AWS.SimpleQueueService.QueueDeletedRecently",
        "You must wait 60 seconds after deleting a queue before you can create another with the "
        "same name.",
        times=3,
    )

    up = cli("up", "--yes")

    assert up.exit_code == 0, up
    # The retry is explained, not silent.
    assert "SQS refuses a queue name for 60 s" in up.stderr
    assert faults.calls.count(("sqs", "CreateQueue")) == 4
    _converged(cli)


def test_up_right_after_plain_down_converges(cli, slow_deletions) -> None:
    assert cli("up", "--yes").exit_code == 0
    assert cli("down", "--yes").exit_code == 0

    up = cli("up", "--yes")

    assert up.exit_code == 0, up
    _converged(cli)


def test_up_waits_for_deletions_still_under_way(cli, endpoint, monkeypatch) -> None:
    # As after an interrupted `down`, or a deletion made in the console: still DELETING, and
    # for longer than the plan and the create take.
    for rules in (kinesis, dynamodb, firehose):
        monkeypatch.setattr(rules, "DELETE_SECONDS", 300.0)
    assert cli("up", "--yes").exit_code == 0
    client(endpoint, "kinesis").delete_stream(StreamName="test-readings")
    client(endpoint, "dynamodb").delete_table(TableName="test-device-state")
    client(endpoint, "firehose").delete_delivery_stream(DeliveryStreamName="test-archive")
    summary = client(endpoint, "kinesis").describe_stream_summary(StreamName="test-readings")
    assert summary["StreamDescriptionSummary"]["StreamStatus"] == "DELETING"

    plan = cli("plan", "--output", "json")
    created = {s["name"] for s in plan.json["steps"] if s["action"] == "create"}
    assert {"test-readings", "test-device-state", "test-archive"} <= created

    up = cli("up", "--yes")

    assert up.exit_code == 0, up
    assert "still deleting the previous stream of this name" in up.stderr
    assert "deleting the previous table of this name" in up.stderr
    assert "deleting the previous delivery stream of this name" in up.stderr
    stream = client(endpoint, "kinesis").describe_stream_summary(StreamName="test-readings")
    assert stream["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
    _converged(cli)


@pytest.fixture
def pitr_config(tmp_path):
    path = tmp_path / "pitr.toml"
    path.write_text('[stack]\nname = "test"\n[device_state]\npoint_in_time_recovery = true\n')
    return path


def test_point_in_time_recovery_on_a_new_table_waits_for_backups(
    cli, endpoint, faults, pitr_config
) -> None:
    # DynamoDB refuses UpdateContinuousBackups for a while after CreateTable.
    result = cli("up", "--yes", config=pitr_config)

    assert result.exit_code == 0, result
    assert "waiting for DynamoDB to finish enabling the new table's backups" in result.stderr
    # It waited for backups to be enabled instead of being refused.
    assert faults.calls.count(("dynamodb", "UpdateContinuousBackups")) == 1
    backups = client(endpoint, "dynamodb").describe_continuous_backups(
        TableName="test-device-state"
    )["ContinuousBackupsDescription"]
    assert backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"


def test_a_second_ttl_change_within_the_hour_says_when_to_retry(cli, endpoint, aws_clock) -> None:
    assert cli("up", "--yes").exit_code == 0
    aws_clock.advance(3_700)
    # Someone turns TTL off in the console: the next change is refused for an hour.
    client(endpoint, "dynamodb").update_time_to_live(
        TableName="test-device-state",
        TimeToLiveSpecification={"AttributeName": "expires_at", "Enabled": False},
    )

    deferred = cli("up", "--yes", "--output", "json")

    # Not a failure with AWS's raw text: the change is left for a later run, said plainly,
    # and nothing that needs the table is held back by it.
    assert deferred.exit_code == 0, deferred
    actions = {(s["kind"], s["name"]): s["action"] for s in deferred.json["steps"]}
    assert actions[("dynamodb.table", "test-device-state")] == "deferred"
    assert "skip" not in actions.values()
    assert "table test-device-state:" in deferred.stderr
    assert "one TTL change per table per hour" in deferred.stderr
    assert "run `iotpipe up` again in an hour" in deferred.stderr
    assert "Traceback" not in deferred.stderr

    aws_clock.advance(3_600)
    assert cli("up", "--yes").exit_code == 0
    ttl = client(endpoint, "dynamodb").describe_time_to_live(TableName="test-device-state")
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    _converged(cli)
