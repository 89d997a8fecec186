"""The stream processor against the moto server: every sink's content, quarantine, idempotence."""

from __future__ import annotations

import base64
import io
import json
import re
from datetime import UTC, datetime

from tests.processor_events import (  # noqa: F401  (fixtures: sinks, intercept)
    BUCKET,
    TABLE,
    LambdaContext,
    calls,
    emf_metrics,
    environment,
    failed_sequence_numbers,
    intercept_fixture,
    kinesis_event,
    kinesis_record,
    message,
    now_ms,
    outcomes,
    read_sinks,
    sinks_fixture,
)

from processor import handler  # isort: skip


def test_valid_readings_reach_every_sink(intercept, faults, sinks, capsys) -> None:
    now = now_ms()
    iso = datetime.fromtimestamp((now - 3_000) / 1000, UTC).isoformat().replace("+00:00", "Z")
    readings = [
        message("pump-1", ts=now - 5_000, seq=1, metrics={"temperature": 21.5, "rpm": 1200}),
        message("pump-1", ts=now - 4_000, seq=2, metrics={"temperature": 22.0, "rpm": 1210}),
        message("valve:7", ts=iso, metrics={"open": 1}, firmware="1.4.2", site={"room": 3}),
        message("meter_3", ts=now - 2_000, seq=0, metrics={"kwh": 10.25}),
    ]
    event = kinesis_event(*readings)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    # Device state: the newest reading per device, every contract field, TTL in epoch seconds.
    assert sorted(found.state) == ["meter_3", "pump-1", "valve:7"]
    pump = found.state["pump-1"]
    assert pump["ts"] == now - 4_000
    assert pump["seq"] == 2
    assert pump["received_at"] == readings[1]["received_at"]
    assert {k: float(v) for k, v in pump["metrics"].items()} == {"temperature": 22.0, "rpm": 1210.0}
    assert pump["expires_at"] == (now - 4_000) // 1000 + 30 * 86_400
    assert abs(int(pump["updated_at"]) - now) < 60_000
    assert "seq" not in found.state["valve:7"]
    assert found.state["valve:7"]["ts"] == now - 3_000
    # Time series: one multi-measure record per reading, Version = received_at.
    assert len(found.points) == 4
    point = next(p for p in found.points if p["Dimensions"][0]["Value"] == "meter_3")
    assert point == {
        "Dimensions": [{"Name": "device_id", "Value": "meter_3"}],
        "MeasureName": "metrics",
        "MeasureValueType": "MULTI",
        "MeasureValues": [{"Name": "kwh", "Value": "10.25", "Type": "DOUBLE"}],
        "Time": str(now - 2_000),
        "TimeUnit": "MILLISECONDS",
        "Version": readings[3]["received_at"],
    }
    # Archive: one line per reading with every field; unknown fields under "extra".
    assert len(found.archive) == 4
    valve = next(line for line in found.archive if line["device_id"] == "valve:7")
    assert valve == {
        "device_id": "valve:7",
        "ts": now - 3_000,
        "seq": None,
        "received_at": readings[2]["received_at"],
        "metrics": {"open": 1.0},
        "extra": {"firmware": "1.4.2", "site": {"room": 3}},
    }
    assert next(line for line in found.archive if line["device_id"] == "meter_3")["extra"] is None
    assert found.quarantine_keys == []
    # The fewest calls: one per sink for this batch, no quarantine object; the devices are new,
    # so their conditional UPDATEs find no item and a second call INSERTs their first state.
    assert calls(faults, "BatchExecuteStatement") == 2
    assert calls(faults, "BatchGetItem") + calls(faults, "BatchWriteItem") == 0
    assert calls(faults, "WriteRecords") == 1
    assert calls(faults, "PutRecordBatch") == 1
    assert calls(faults, "PutObject") == 0
    metrics = emf_metrics(capsys.readouterr().out)
    assert metrics["ReadingsReceived"] == 4
    assert metrics["ReadingsValid"] == 4
    assert metrics["ReadingsQuarantined"] == 0
    assert metrics["DeviceStateWritten"] == 4
    assert metrics["DeviceStateSkippedOlder"] == 0
    assert metrics["TimeSeriesWritten"] == 4
    assert metrics["ArchiveWritten"] == 4
    assert metrics["BatchAgeMs"] >= 0


def invalid_cases() -> list[tuple[bytes | dict, str]]:
    """Built when the test runs: the time-window cases are relative to now."""
    return [
        (b"not json at all", "data is not JSON"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"[1, 2, 3]", "data is an array, not a JSON object"),
        (b'{"ts": NaN, "metrics": {}}', "NaN"),
        (b'{"device_id": "d", "ts": 1, "metrics": {"x": 1e999}}', "beyond a double's range"),
        ({"ts": 1, "metrics": {"x": 1}, "received_at": 1}, "device_id is missing"),
        (message("bad/device"), "device_id 'bad/device' does not match"),
        (message("d" * 129), "does not match"),
        (message("d1", ts=1.5), "ts is a number, expected epoch milliseconds (integer)"),
        (message("d1", ts=True), "ts is a boolean"),
        (message("d1", ts="yesterday"), "is not an ISO-8601 timestamp"),
        (message("d1", ts="2026-01-01T00:00:00"), "has no UTC offset"),
        (message("d1", ts=946_684_799_999), "before 2000-01-01T00:00:00.000Z, not a plausible"),
        (message("d1", ts=now_ms() // 1000), "(epoch seconds? ts must be milliseconds)"),
        (message("d1", ts=now_ms() + 16 * 60_000), "more than 15 minutes in the future"),
        (message("d1", seq=-1), "seq is -1, expected an integer >= 0"),
        (message("d1", metrics={}), "metrics is empty"),
        (message("d1", metrics=[1]), "metrics is an array, expected an object"),
        (message("d1", metrics={"ok": True}), "metric 'ok' is a boolean, expected a number"),
        (message("d1", metrics={"ok": "1"}), "metric 'ok' is a string"),
        (message("d1", metrics={"1st": 1}), "metric name '1st' does not match"),
        (message("d1", metrics={"time": 1}), "metric name 'time' is reserved"),
        (message("d1", metrics={"ts_x": 1}), "metric name 'ts_x' is reserved"),
        (message("d1", metrics={"big": 1e200}), "metric 'big' is out of range"),
        (message("d1", metrics={f"m{i}": i for i in range(101)}), "101 entries, more than 100"),
        (message("d1", padding="x" * 140_000), "over the 131072-byte limit"),
    ]


def test_invalid_readings_are_quarantined_with_a_precise_reason(
    intercept, faults, sinks, capsys
) -> None:
    cases = invalid_cases()
    good = message("good-1")
    event = {"Records": [kinesis_record(data) for data, _ in cases] + [kinesis_record(good)]}
    # Lambda can hand a record whose data is not base64 only in a hand-made event; covered too.
    broken = kinesis_record(b"{}")
    broken["kinesis"]["data"] = "%%%not-base64%%%"
    event["Records"].append(broken)

    response = handler.lambda_handler(event, LambdaContext(aws_request_id="req-1"))

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert calls(faults, "PutObject") == 1, "one quarantine object per invocation"
    (key,) = found.quarantine_keys
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert re.fullmatch(rf"quarantine/dt={today}/\d+-req-1\.jsonl", key)
    by_sequence = {line["sequence_number"]: line for line in found.quarantine}
    expected = [reason for _, reason in cases] + ["data is not valid base64"]
    records = [*event["Records"][: len(cases)], broken]
    assert len(by_sequence) == len(expected)
    for record, reason in zip(records, expected, strict=True):
        line = by_sequence[record["kinesis"]["sequenceNumber"]]
        assert reason in line["reason"], (reason, line["reason"])
        assert line["raw"] == record["kinesis"]["data"]
        assert line["partition_key"] == record["kinesis"]["partitionKey"]
        assert line["event_id"] == record["eventID"]
        assert line["approximate_arrival"] == record["kinesis"]["approximateArrivalTimestamp"]
        assert abs(line["quarantined_at"] - now_ms()) < 60_000
    # The valid reading still went everywhere.
    assert list(found.state) == ["good-1"]
    assert outcomes(event, response, found) == {
        "failed": 0,
        "quarantined": len(expected),
        "written": 1,
        "lost": 0,
    }
    metrics = emf_metrics(capsys.readouterr().out)
    assert metrics["ReadingsQuarantined"] == len(expected)
    assert metrics["ReadingsValid"] == 1


def test_no_payload_in_info_logs(intercept, sinks, monkeypatch) -> None:
    stream = io.StringIO()
    # The logger's handler holds the stream it was created with (stdout at import).
    monkeypatch.setattr(handler.logger.registered_handler, "stream", stream)
    secret = "s3cr3t-payload-value"
    event = kinesis_event(
        message("d1", metrics={"x": 1}, note=secret), b'{"oops": "' + secret.encode() + b'"'
    )
    handler.lambda_handler(event, LambdaContext())
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert logs and all(secret not in json.dumps(entry) for entry in logs)
    summary = next(entry for entry in logs if entry["message"] == "batch processed")
    assert summary["level"] == "INFO"
    assert summary["records"] == 2 and summary["quarantined"] == 1


def test_device_state_keeps_the_newest_reading_per_device(intercept, faults, sinks) -> None:
    """Within a batch only each device's newest reading is written (by ts, then seq)."""
    now = now_ms()
    devices = [f"dev-{i:02d}" for i in range(30)]
    readings = []
    for offset in (3_000, 1_000, 2_000):  # arrival order is not time order
        readings += [message(d, ts=now - offset, metrics={"v": offset}) for d in devices]
    # Same instant twice: the higher seq wins.
    readings += [message("dev-00", ts=now - 1_000, seq=9, metrics={"v": 9})]
    readings += [message("dev-00", ts=now - 1_000, seq=3, metrics={"v": 3})]
    event = kinesis_event(*readings)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    state = read_sinks(sinks).state
    assert len(state) == 30
    assert all(state[d]["ts"] == now - 1_000 for d in devices)
    assert float(state["dev-00"]["metrics"]["v"]) == 9
    assert float(state["dev-01"]["metrics"]["v"]) == 1_000
    # 30 new devices: UPDATEs of 25 and 5, each followed by the INSERTs of the same devices,
    # not 92 writes.
    assert calls(faults, "BatchExecuteStatement") == 4


def test_an_older_reading_in_a_later_batch_leaves_the_newer_state(
    intercept, faults, sinks, capsys
) -> None:
    """A store-and-forward device flushes its backlog after newer readings were stored."""
    now = now_ms()
    devices = [f"dev-{i:03d}" for i in range(150)]
    first = kinesis_event(*[message(d, ts=now - 5_000, seq=5, metrics={"v": 5}) for d in devices])
    assert handler.lambda_handler(first, LambdaContext()) == {"batchItemFailures": []}
    # 150 new devices: six UPDATE calls (25 each), each followed by its INSERTs.
    assert calls(faults, "BatchExecuteStatement") == 12
    before = read_sinks(sinks).state
    faults.calls.clear()
    capsys.readouterr()

    # dev-000 replays two older readings; dev-001 sends a newer one; dev-002 repeats its ts.
    backlog = [
        message("dev-000", ts=now - 9_000, seq=1, metrics={"v": 1}),
        message("dev-000", ts=now - 8_000, seq=2, metrics={"v": 2}),
        message("dev-001", ts=now - 1_000, seq=6, metrics={"v": 6}),
        message("dev-002", ts=now - 5_000, seq=5, metrics={"v": 5}),
    ]
    second = kinesis_event(*backlog)
    refused: list[str] = []

    def record_refusals(params, forward):
        answer = forward(params)
        for statement, result in zip(params["Statements"], answer["Responses"], strict=True):
            if "Error" in result:
                assert result["Error"]["Code"] == "ConditionalCheckFailed"
                assert result["Error"]["Item"]["ts"] == {"N": str(now - 5_000)}
                refused.append(statement["Parameters"][-2]["S"])
        return answer

    intercept.answer("dynamodb", "BatchExecuteStatement", record_refusals)
    response = handler.lambda_handler(second, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert found.state["dev-000"] == before["dev-000"], "the older backlog did not overwrite"
    assert found.state["dev-001"]["ts"] == now - 1_000
    assert float(found.state["dev-001"]["metrics"]["v"]) == 6
    assert found.state["dev-002"]["ts"] == now - 5_000
    # One call; DynamoDB's condition refuses only the older reading; ties are rewritten (an
    # identical item but for updated_at).
    assert calls(faults, "BatchExecuteStatement") == 1
    assert refused == ["dev-000"]
    # The skipped readings still reach the time series and the archive: nothing is lost.
    assert outcomes(second, response, found) == {
        "failed": 0,
        "quarantined": 0,
        "written": 4,
        "lost": 0,
    }
    archived = {(a["device_id"], a["ts"]) for a in found.archive}
    assert {("dev-000", now - 9_000), ("dev-000", now - 8_000)} <= archived
    metrics = emf_metrics(capsys.readouterr().out)
    assert metrics["DeviceStateWritten"] == 4
    assert metrics["DeviceStateSkippedOlder"] == 2


def test_redelivery_creates_no_duplicate_state_or_point(intercept, faults, sinks) -> None:
    event = kinesis_event(*[message(f"d{i}", seq=i) for i in range(5)])
    handler.lambda_handler(event, LambdaContext())
    first = read_sinks(sinks)

    handler.lambda_handler(event, LambdaContext())  # Lambda retries the same batch

    second = read_sinks(sinks)
    # The stored state is as new as the redelivered readings: rewritten identically, by one
    # UPDATE call (the first run also INSERTed the new devices' state).
    assert calls(faults, "BatchExecuteStatement") == 3
    drop = "updated_at"
    assert {d: {k: v for k, v in i.items() if k != drop} for d, i in second.state.items()} == {
        d: {k: v for k, v in i.items() if k != drop} for d, i in first.state.items()
    }
    # moto appends every Timestream write; AWS upserts on (dimensions, time, measure name) and,
    # with the same Version and values, keeps one point. The redelivered records are identical.
    assert len(second.points) == 10
    assert second.points[5:] == first.points
    # The archive is at-least-once: the redelivered lines are exact duplicates.
    assert sorted(map(json.dumps, second.archive)) == sorted(map(json.dumps, first.archive * 2))


def test_time_series_disabled(intercept, faults, sinks, monkeypatch) -> None:
    monkeypatch.setenv("TIMESERIES_DATABASE", "")
    monkeypatch.setenv("TIMESERIES_TABLE", "")
    event = kinesis_event(message("d1"), message("d2"))

    response = handler.lambda_handler(event, LambdaContext())

    found = read_sinks(sinks)
    assert calls(faults, "WriteRecords") == 0
    assert found.points == []
    assert outcomes(event, response, found, timeseries=False)["written"] == 2


def test_old_reading_is_accepted_within_a_longer_retention(intercept, sinks, monkeypatch) -> None:
    # Without magnetic-store writes the memory store's retention is the time-series window.
    monkeypatch.setenv("TIMESERIES_MAGNETIC_STORE_WRITES", "false")
    monkeypatch.setenv("TIMESERIES_MEMORY_RETENTION_HOURS", "72")
    event = kinesis_event(message("d1", ts=now_ms() - 48 * 3_600_000))
    response = handler.lambda_handler(event, LambdaContext())
    found = read_sinks(sinks)
    assert len(found.points) == 1
    assert outcomes(event, response, found, timeseries_oldest_ms=0)["written"] == 1


def test_empty_event(intercept, faults, sinks) -> None:
    assert handler.lambda_handler({"Records": []}, LambdaContext()) == {"batchItemFailures": []}
    assert faults.calls == []


def test_archive_packs_lines_into_records_under_1000_kib(intercept, faults, sinks) -> None:
    """~2.4 MB of lines: three Firehose records of <= 1,000 KiB, all in one PutRecordBatch."""
    event = kinesis_event(*[message(f"d{i}", blob="x" * 120_000) for i in range(20)])
    sent: list[list[int]] = []

    def record_sizes(params, forward):
        sent.append([len(base64.b64decode(r["Data"])) for r in params["Records"]])
        return forward(params)

    intercept.answer("firehose", "PutRecordBatch", record_sizes)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    assert calls(faults, "PutRecordBatch") == 1
    (sizes,) = sent
    assert len(sizes) == 3 and all(size <= 1000 * 1024 for size in sizes)
    found = read_sinks(sinks)
    assert len(found.archive) == 20
    assert outcomes(event, response, found)["written"] == 20


def test_quarantine_bucket_is_the_archive_bucket(intercept, sinks) -> None:
    handler.lambda_handler(kinesis_event(b"garbage"), LambdaContext())
    assert read_sinks(sinks).quarantine_keys[0].startswith("quarantine/dt=")
    assert BUCKET in environment(sinks)["ARCHIVE_BUCKET"]


def test_failures_are_reported_by_sequence_number(intercept, faults, sinks) -> None:
    faults.fail("dynamodb", "BatchExecuteStatement", "AccessDeniedException", times=None)
    event = kinesis_event(message("d1"), b"junk", message("d2"))
    response = handler.lambda_handler(event, LambdaContext())
    sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert response["batchItemFailures"] == [
        {"itemIdentifier": sequences[0]},
        {"itemIdentifier": sequences[2]},
    ]
    assert failed_sequence_numbers(response) == {sequences[0], sequences[2]}


def test_the_cost_model_counts_the_custom_metrics_the_processor_emits(
    intercept, faults, sinks, capsys
) -> None:
    from iotpipe.config import parse_config
    from iotpipe.cost import PROCESSOR_METRICS, Assumptions

    now = now_ms()
    handler.lambda_handler(kinesis_event(message("pump-1", ts=now - 1_000)), LambdaContext())

    emitted = set(emf_metrics(capsys.readouterr().out))
    # The processor tests run with the time-series sink on, and without PROCESSOR_METRICS: every
    # metric, as when a config lists them all.
    assert emitted == set(PROCESSOR_METRICS)
    every = {"custom_metrics": list(PROCESSOR_METRICS)}
    config = parse_config(
        {"stack": {"name": "test"}, "timeseries": {"enabled": True}, "processor": every}
    )
    assert Assumptions().custom_metric_count(config) == len(emitted)
    off = parse_config({"stack": {"name": "test"}, "processor": every})
    assert Assumptions().custom_metric_count(off) == len(emitted) - 1
