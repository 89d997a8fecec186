"""The journey of a stack from `up` to `down`, on the target of tests/e2e/conftest.py.

On the emulator (`make test`) it runs against the moto server with the project's AWS rules and
the local data plane; on AWS (`make test-aws`) against the account. The steps AWS alone can take
are noted with their reason where the emulator cannot take them, and the journey goes on.
"""

from __future__ import annotations

import gzip
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iotpipe.naming import Names
from iotpipe.simulate import MALFORMED_KINDS, load_devices, malformed_payload
from tests.e2e import leftovers, settings
from tests.e2e.conftest import Target, count_mutating_calls, remaining, take_down

pytestmark = pytest.mark.e2e

READINGS = 30
# The alarm the drill drives into ALARM; every alarm of the stack notifies the alerts topic.
DRILL_ALARM = "processor-errors"


def names_of(target: Target) -> Names:
    account = target.client("sts").get_caller_identity()["Account"]
    return Names(stack=target.stack, app="sensors", region=target.region, account=account)


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result
    return result


# Device state, archive, quarantine ----------------------------------------------------------
def device_state(target: Target, table: str, things: list[str]) -> dict[str, int] | None:
    """Each device's stored reading time, once every device has one."""
    found = target.client("dynamodb").batch_get_item(
        RequestItems={table: {"Keys": [{"device_id": {"S": t}} for t in things]}}
    )
    items = found["Responses"].get(table, [])
    state = {i["device_id"]["S"]: int(i["ts"]["N"]) for i in items if "ts" in i}
    return state if sorted(state) == sorted(things) else None


def archive_sql(stack: str) -> str:
    # Partitions by delivery day: yesterday too, for a run across midnight UTC.
    day = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
    return (
        "SELECT device_id, count(DISTINCT seq) AS readings, max(ts) AS newest FROM readings "
        f"WHERE dt >= '{day}' AND device_id LIKE '{settings.device_prefix(stack)}%' "
        "GROUP BY device_id ORDER BY device_id"
    )


def archive(target: Target, *query: str) -> dict[str, dict[str, int]] | None:
    """Each device's archived readings (distinct sequence numbers) and newest reading time,
    once all were delivered."""
    result = ok(target.iotpipe(*query, archive_sql(target.stack), "--output", "json"))
    rows = {row["device_id"]: row for row in result.json["rows"]}
    per_device = READINGS // settings.DEVICES
    complete = len(rows) == settings.DEVICES and all(
        row["readings"] == per_device for row in rows.values()
    )
    return rows if complete else None


def objects(target: Target, bucket: str, prefix: str) -> list[bytes]:
    s3 = target.client("s3")
    bodies = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            bodies.append(gzip.decompress(body) if item["Key"].endswith(".gz") else body)
    return bodies


def quarantined(target: Target, names: Names) -> tuple[dict[str, dict[str, Any]], int]:
    """The quarantine's lines by Kinesis sequence number (Lambda may deliver one twice), and
    how many messages the IoT rule's error action kept."""
    lines = [
        json.loads(line)
        for body in objects(target, names.archive_bucket, names.quarantine_prefix)
        for line in body.splitlines()
        if line.strip()
    ]
    rule_errors = len(objects(target, names.archive_bucket, names.iot_errors_prefix))
    return {line["sequence_number"]: line for line in lines}, rule_errors


# The alarm drill ----------------------------------------------------------------------------------
def notification_accepted(target: Target, alarm: str, topic_arn: str) -> str | None:
    """The alarm history's record that CloudWatch published the ALARM notification to the
    topic, once it is there."""
    history = target.client("cloudwatch").describe_alarm_history(
        AlarmName=alarm, HistoryItemType="Action", MaxRecords=20
    )["AlarmHistoryItems"]
    for item in history:
        data = json.loads(item.get("HistoryData") or "{}")
        summary = item.get("HistorySummary", "")
        succeeded = "Successfully executed action" in summary or data.get("actionState") in (
            "Succeeded",
            "Success",
        )
        if succeeded and topic_arn in summary + json.dumps(data):
            return summary
        if topic_arn in summary and "Failed" in summary:
            pytest.fail(f"CloudWatch could not notify {topic_arn}: {summary} {data}")
    return None


def alarm_drill(target: Target, names: Names) -> None:
    alarm = f"{target.stack}-{DRILL_ALARM}"
    cloudwatch = target.client("cloudwatch")
    cloudwatch.set_alarm_state(
        AlarmName=alarm, StateValue="ALARM", StateReason="iotpipe end-to-end alarm drill"
    )
    found = cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"]
    assert [a["StateValue"] for a in found] == ["ALARM"], found
    assert found[0]["AlarmActions"] == [names.alerts_topic_arn]

    status = target.iotpipe("status", "--output", "json")
    still = cloudwatch.describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]["StateValue"]
    if still == "ALARM":  # AWS may have evaluated the alarm back to OK meanwhile
        assert status.exit_code == 1, status
        (check,) = [c for c in status.json["health"] if c["name"] == "alarms"]
        assert check["state"] == "unhealthy" and alarm in check["detail"], check

    if target.name == "emulator":
        target.note(
            "alarm notification",
            "the emulator's CloudWatch never runs alarm actions, so no ALARM notification "
            "reaches the SNS topic (docs/AWS-FIDELITY.md, Alerting); checked instead: the alarm "
            "is in ALARM, notifies the stack's topic, and `status` reports it",
        )
    else:
        accepted = target.eventually(
            lambda: notification_accepted(target, alarm, names.alerts_topic_arn),
            what=f"the alarm history of {alarm} to show the notification to the topic",
        )
        target.say(f"alarm history: {accepted}")
    cloudwatch.set_alarm_state(
        AlarmName=alarm, StateValue="OK", StateReason="iotpipe end-to-end alarm drill over"
    )


# The journey -------------------------------------------------------------------------------------
def test_journey(target: Target) -> None:
    started = time.monotonic()
    # 1. up: the whole pipeline, then the pipeline running.
    ok(target.iotpipe("up", "--yes"))
    target.start_pipeline()
    names = names_of(target)

    # 2. A few devices, named after the stack.
    prefix = settings.device_prefix(target.stack)
    fleet = ("--count", str(settings.DEVICES), "--prefix", prefix)
    registered = ok(
        target.iotpipe(
            "devices",
            "register",
            *fleet,
            "--out-dir",
            str(target.devices_dir),
            "--yes",
            "-o",
            "json",
        )
    ).json
    assert registered["summary"] == {"created": settings.DEVICES}, registered
    devices = load_devices(target.devices_dir)
    things = sorted(d.thing_name for d in devices)
    assert things == [f"{prefix}{n:04d}" for n in range(1, settings.DEVICES + 1)]

    # 3. Readings as the devices send them (MQTT/TLS on AWS, the IoT data plane on the emulator),
    # then one malformed message of each kind from the first device.
    readings = ("--readings", str(READINGS), "--output", "json")
    sent = ok(target.iotpipe("simulate", "--devices-dir", str(target.devices_dir), *readings)).json
    assert sent["sent"] == READINGS and sent["future"] == 0, sent
    first = devices[0]
    publisher = target.publisher([first])
    try:
        for seq, kind in enumerate(MALFORMED_KINDS, start=1_000):
            message = {
                "ts": int(time.time() * 1000) - 1_000,
                "seq": seq,
                "metrics": {"temperature": 20.5, "humidity": 50.0, "battery": 3.9},
            }
            publisher.publish(first.thing_name, first.topic, malformed_payload(kind, message))
    finally:
        publisher.close()

    # 4. Device state, the archive and the quarantine show them.
    target.eventually(
        lambda: device_state(target, names.device_state_table, things),
        what="a device state for every device",
    )
    if target.name == "emulator":
        target.note(
            "`iotpipe query` (Athena)",
            "the emulator stores Athena queries but executes no SQL; `iotpipe local query` ran "
            "the same SQL over the archive objects",
        )
        query = ("local", "query")
    else:
        query = ("query",)
    archived = target.eventually(
        lambda: archive(target, *query), what=f"{READINGS} readings in the archive"
    )
    state = device_state(target, names.device_state_table, things)
    assert state == {thing: row["newest"] for thing, row in archived.items()}, (state, archived)

    def all_quarantined() -> tuple[dict[str, dict[str, Any]], int] | None:
        lines, rule_errors = quarantined(target, names)
        return (lines, rule_errors) if len(lines) + rule_errors >= len(MALFORMED_KINDS) else None

    lines, rule_errors = target.eventually(
        all_quarantined, what=f"{len(MALFORMED_KINDS)} malformed messages in the quarantine"
    )
    # Only a message that is not JSON at all could stop at the IoT rule (its error action).
    assert len(lines) + rule_errors == len(MALFORMED_KINDS) and rule_errors <= 1, (
        lines,
        rule_errors,
    )
    assert {line["partition_key"] for line in lines.values()} == {first.thing_name}
    assert all(line["reason"] and line["raw"] for line in lines.values()), lines

    # 5. One alarm into ALARM, and its notification to the topic.
    alarm_drill(target, names)

    # 6. Reshard up one step, and keep it in the config.
    resharded = ok(target.iotpipe("reshard", "--target", "2", "--yes", "--output", "json"))
    assert resharded.json["applied"] is True, resharded
    target.write_config(shards=2)

    # 7. Healthy.
    status = target.iotpipe("status", "--output", "json")
    assert status.exit_code == 0 and status.json["healthy"] is True, status

    # 8. A second `up` changes nothing: not one mutating call.
    calls, stop_counting = count_mutating_calls()
    try:
        again = ok(target.iotpipe("up", "--yes", "--output", "json"))
    finally:
        stop_counting()
    assert again.json["applied"] is False, again
    assert calls == [], calls

    # 9. down --delete-data leaves nothing tagged with the stack and nothing named after it.
    target.close()
    take_down(target)
    left = remaining(target)
    assert left.empty, left.lines()
    for key in left.tagged.keys_pending_deletion:
        target.say(f"KMS key {key} of the alerts topic is pending deletion (KMS's 7-day minimum)")
    if left.tagged.ghosts and target.name == "emulator":
        target.note(
            "no tag left on a deleted Glue database or crawler",
            "moto's Glue keeps the tags of what it deleted, so its tagging API lists "
            f"{len(left.tagged.ghosts)} of them; Glue's own Get calls found each gone",
        )
    elif left.tagged.ghosts:
        target.say(f"the tagging API still lists, and Glue no longer has: {left.tagged.ghosts}")
    assert not leftovers.named(target.client, leftovers.name_pattern(target.stack))
    target.torn_down = True

    # The journey's own calls are the ones the README lists beside `iam-policy`'s jobs.
    assert target.undeclared_actions() == []
    target.say(f"journey done in {time.monotonic() - started:.0f} s")
