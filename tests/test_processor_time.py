"""Reading times and who published: a late reading reaches the archive and the device state
whatever the time-series store takes, and a device cannot write another device's state."""

from __future__ import annotations

import base64
import io
import json

import pytest

from tests.processor_events import (  # noqa: F401  (fixtures: sinks, intercept)
    LambdaContext,
    calls,
    emf_metrics,
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

HOUR_MS = 3_600_000
DAY_MS = 86_400_000


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    stream = io.StringIO()
    # The logger's handler holds the stream it was created with (stdout at import).
    monkeypatch.setattr(handler.logger.registered_handler, "stream", stream)
    return stream


def _summary(log: io.StringIO) -> dict:
    """The handler's one structured log line of the last invocation."""
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    return [line for line in lines if line["message"].startswith("batch ")][-1]


def test_a_day_old_reading_reaches_every_sink_through_the_magnetic_store(
    intercept, faults, sinks, capsys
) -> None:
    # A device back after a day offline flushes its backlog: past the 24 h memory store.
    now = now_ms()
    late = message("pump-1", ts=now - 30 * HOUR_MS, seq=1)
    later = message("pump-1", ts=now - 29 * HOUR_MS, seq=2)
    event = kinesis_event(late, later)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert found.quarantine == []
    assert found.state["pump-1"]["ts"] == now - 29 * HOUR_MS
    assert sorted(line["ts"] for line in found.archive) == [now - 30 * HOUR_MS, now - 29 * HOUR_MS]
    # The table takes magnetic-store writes: the time series gets them too.
    assert sorted(int(p["Time"]) for p in found.points) == [
        now - 30 * HOUR_MS,
        now - 29 * HOUR_MS,
    ]
    assert outcomes(event, response, found)["written"] == 2


def test_without_magnetic_writes_a_late_reading_skips_only_the_time_series(
    intercept, faults, sinks, monkeypatch, capsys, log
) -> None:
    monkeypatch.setenv("TIMESERIES_MAGNETIC_STORE_WRITES", "false")
    now = now_ms()
    event = kinesis_event(
        message("d1", ts=now - 3 * DAY_MS), message("d2", ts=now - 1_000), message("d3", ts=now)
    )

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert found.quarantine == [], "a late reading is not invalid"
    assert sorted(found.state) == ["d1", "d2", "d3"]
    assert sorted(line["device_id"] for line in found.archive) == ["d1", "d2", "d3"]
    assert sorted(p["Dimensions"][0]["Value"] for p in found.points) == ["d2", "d3"]
    assert outcomes(event, response, found, timeseries_oldest_ms=now - 24 * HOUR_MS) == {
        "failed": 0,
        "quarantined": 0,
        "written": 3,
        "lost": 0,
    }
    output = capsys.readouterr().out
    metrics = emf_metrics(output)
    assert metrics["ReadingsQuarantined"] == 0
    assert metrics["TimeSeriesWritten"] == 2
    assert metrics["ArchiveWritten"] == 3
    assert _summary(log)["time_series_late"] == 1


def test_older_than_the_magnetic_retention_is_kept_by_archive_and_state(
    intercept, faults, sinks
) -> None:
    ts = now_ms() - 400 * DAY_MS  # the table keeps 365 days
    event = kinesis_event(message("d1", ts=ts))

    response = handler.lambda_handler(event, LambdaContext())

    found = read_sinks(sinks)
    assert response == {"batchItemFailures": []}
    assert found.points == [] and calls(faults, "WriteRecords") == 0
    assert found.state["d1"]["ts"] == ts
    assert [line["ts"] for line in found.archive] == [ts]
    assert outcomes(event, response, found)["written"] == 1


def test_a_late_reading_does_not_overwrite_newer_state(intercept, faults, sinks) -> None:
    now = now_ms()
    assert handler.lambda_handler(
        kinesis_event(message("d1", ts=now - 1_000, seq=9, metrics={"v": 9})), LambdaContext()
    ) == {"batchItemFailures": []}

    backlog = kinesis_event(message("d1", ts=now - 2 * DAY_MS, seq=1, metrics={"v": 1}))
    response = handler.lambda_handler(backlog, LambdaContext())

    found = read_sinks(sinks)
    assert response == {"batchItemFailures": []}
    assert found.state["d1"]["ts"] == now - 1_000
    assert float(found.state["d1"]["metrics"]["v"]) == 9
    assert now - 2 * DAY_MS in {line["ts"] for line in found.archive}


def test_a_reading_the_store_refuses_as_too_old_is_late_not_quarantined(
    intercept, faults, sinks, capsys, log
) -> None:
    # The table's retention may be shorter than the function was told (changed since `up`).
    event = kinesis_event(message("d0"), message("d1"))
    outside = "The record timestamp is outside the time range of the memory store."

    def refuse_first(params, forward):
        forward({**params, "Records": params["Records"][1:]})
        return {
            "__type": "RejectedRecordsException",
            "message": "One or more records have been rejected. See RejectedRecords for details.",
            "RejectedRecords": [{"RecordIndex": 0, "Reason": outside}],
        }

    intercept.answer("timestream-write", "WriteRecords", refuse_first)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    assert calls(faults, "WriteRecords") == 1, "not retried"
    found = read_sinks(sinks)
    assert found.quarantine == []
    assert "d0" in found.state and any(a["device_id"] == "d0" for a in found.archive)
    first = event["Records"][0]["kinesis"]["sequenceNumber"]
    assert outcomes(event, response, found, late={first})["written"] == 2
    output = capsys.readouterr().out
    assert emf_metrics(output)["TimeSeriesWritten"] == 1
    summary = _summary(log)
    assert summary["time_series_late"] == 1
    assert summary["errors"]["time_series"] == {"LateRejection": 1}


def test_implausible_times_are_quarantined(intercept, faults, sinks) -> None:
    now = now_ms()
    cases = {
        "before-2000": (946_684_799_999, "is before 2000-01-01T00:00:00.000Z"),
        "seconds": (now // 1000, "(epoch seconds? ts must be milliseconds)"),
        "future": (now + 16 * 60_000, "more than 15 minutes in the future"),
    }
    accepted = {"year-2000": 946_684_800_000, "skewed": now + 14 * 60_000}
    event = kinesis_event(
        *[message(d, ts=ts) for d, (ts, _) in cases.items()],
        *[message(d, ts=ts) for d, ts in accepted.items()],
    )

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    reasons = {json.loads(_raw(line))["device_id"]: line["reason"] for line in found.quarantine}
    assert sorted(reasons) == sorted(cases)
    for device, (_, why) in cases.items():
        assert why in reasons[device], reasons[device]
    assert sorted(found.state) == sorted(accepted)


def _raw(line: dict) -> bytes:
    return base64.b64decode(line["raw"])


# --- identity: the topic, never the payload ---------------------------------------------------


def test_a_payload_naming_another_device_is_quarantined(intercept, faults, sinks) -> None:
    """The rule puts `topic(3)` in the partition key; the body is the device's own say."""
    now = now_ms()
    handler.lambda_handler(
        kinesis_event(message("victim", ts=now - 5_000, metrics={"v": 1})), LambdaContext()
    )
    # `attacker` publishes on its own topic a body claiming to be `victim`, with a newer ts.
    spoof = kinesis_record(
        message("victim", ts=now - 1_000, metrics={"v": 666}), partition_key="attacker"
    )
    honest = kinesis_record(message("attacker", ts=now - 1_000, metrics={"v": 2}))

    response = handler.lambda_handler({"Records": [spoof, honest]}, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert float(found.state["victim"]["metrics"]["v"]) == 1, "victim's state untouched"
    assert found.state["victim"]["ts"] == now - 5_000
    assert float(found.state["attacker"]["metrics"]["v"]) == 2
    (line,) = found.quarantine
    assert line["sequence_number"] == spoof["kinesis"]["sequenceNumber"]
    assert line["partition_key"] == "attacker"
    assert line["reason"] == (
        "device_id 'victim' in the message is not the publishing device 'attacker' "
        "(the topic's device id): a device may only report for itself"
    )
    assert not any(a["metrics"].get("v") == 666 for a in found.archive)
    assert not any(p["Dimensions"][0]["Value"] == "victim" for p in found.points[1:])


def test_a_record_without_a_thing_name_partition_key_is_quarantined(
    intercept, faults, sinks
) -> None:
    record = kinesis_record(message("d1"), partition_key="not/a/thing")

    response = handler.lambda_handler({"Records": [record]}, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert found.state == {}
    (line,) = found.quarantine
    assert line["reason"].startswith("partition key 'not/a/thing' is not a thing name")
