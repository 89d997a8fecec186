"""Sink failures injected as AWS answers them: every reading ends written, quarantined or reported.

Throttling and hard errors come from tests/faults.py; partial successes (UnprocessedItems,
FailedPutCount, RejectedRecords) from the Interceptor, which lets the emulator write the part AWS
would accept and answers the rest exactly as AWS does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.processor_events import (  # noqa: F401  (fixtures: sinks, intercept)
    TABLE,
    LambdaContext,
    calls,
    emf_metrics,
    failed_sequence_numbers,
    intercept_fixture,
    kinesis_event,
    message,
    now_ms,
    outcomes,
    read_sinks,
    sinks_fixture,
)

from processor import handler, retry  # isort: skip


def sequences_of(event: dict, device_id: str) -> set[str]:
    return {
        r["kinesis"]["sequenceNumber"]
        for r in event["Records"]
        if r["kinesis"]["partitionKey"] == device_id
    }


# --- DynamoDB -------------------------------------------------------------------------------
# The state sink sends conditional PartiQL UPDATEs (INSERTs for new devices), 25 per
# BatchExecuteStatement; AWS reports a throttled or failed statement in its own response's Error.


def statement_device(statement: dict) -> str:
    """The device a state statement writes (the UPDATE's key, or the INSERT's first value)."""
    if statement["Statement"].startswith("UPDATE"):
        return statement["Parameters"][-2]["S"]
    return statement["Parameters"][0]["S"]


def answer_statements(fail: Callable[[str], dict | None]):
    """An answer that runs the statements `fail` lets through and answers the others with the
    error it gives, in the order of the statements, as AWS does."""

    def answer(params, forward):
        statements = params["Statements"]
        errors = [fail(statement_device(s)) for s in statements]
        passed = [s for s, error in zip(statements, errors, strict=True) if error is None]
        ran = iter(forward({"Statements": passed})["Responses"] if passed else [])
        return {
            "Responses": [
                next(ran) if error is None else {"TableName": TABLE, "Error": error}
                for error in errors
            ]
        }

    return answer


def test_device_state_throttling_is_retried(intercept, faults, sinks, capsys) -> None:
    faults.fail(
        "dynamodb", "BatchExecuteStatement", "ProvisionedThroughputExceededException", times=2
    )
    event = kinesis_event(*[message(f"d{i}") for i in range(10)])

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    # Two throttled calls, then the UPDATEs (no item yet) and the INSERTs.
    assert calls(faults, "BatchExecuteStatement") == 4
    assert outcomes(event, response, read_sinks(sinks)) == fates(written=10)
    assert emf_metrics(capsys.readouterr().out)["Retries"] == 2


def test_statements_throttled_one_by_one_are_retried(intercept, faults, sinks) -> None:
    event = kinesis_event(*[message(f"d{i:02d}") for i in range(30)])
    throttled = {f"d{i:02d}" for i in range(10, 25)}

    def once(device: str) -> dict | None:
        if device not in throttled:
            return None
        throttled.discard(device)
        return {"Code": "ProvisionedThroughputExceeded", "Message": "throughput exceeded"}

    intercept.answer("dynamodb", "BatchExecuteStatement", answer_statements(once), times=100)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert len(found.state) == 30
    assert outcomes(event, response, found) == fates(written=30)


def test_statements_that_stay_throttled_are_reported_for_their_device(
    intercept, faults, sinks
) -> None:
    now = now_ms()
    handler_call(kinesis_event(message("d3", ts=now - 1_000, metrics={"v": 1})))
    event = kinesis_event(
        *[message(f"d{i}", ts=now - 500, seq=n) for n in range(2) for i in range(5)]
    )

    def never_d3(device: str) -> dict | None:
        return {"Code": "ThrottlingError", "Message": "slow down"} if device == "d3" else None

    intercept.answer("dynamodb", "BatchExecuteStatement", answer_statements(never_d3), times=100)

    response = handler_call(event)

    assert failed_sequence_numbers(response) == sequences_of(event, "d3")
    found = read_sinks(sinks)
    assert found.state["d3"]["ts"] == now - 1_000, "not lost: reported, and redelivered later"
    assert outcomes(event, response, found) == fates(failed=2, written=8)
    # The redelivery, once the throttling is over, writes d3's newer reading.
    intercept.answers.clear()
    redelivered = kinesis_event(*[message("d3", ts=now - 500, seq=1)])
    assert handler_call(redelivered) == {"batchItemFailures": []}
    assert read_sinks(sinks).state["d3"]["ts"] == now - 500


def test_a_hard_device_state_error_fails_fast(intercept, faults, sinks) -> None:
    faults.fail("dynamodb", "BatchExecuteStatement", "ResourceNotFoundException", times=None)
    event = kinesis_event(*[message(f"d{i}") for i in range(4)], b"junk")

    response = handler_call(event)

    assert calls(faults, "BatchExecuteStatement") == 1, "not retried"
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=4, quarantined=1)


def test_a_statement_that_cannot_succeed_fails_its_device_only(intercept, faults, sinks) -> None:
    event = kinesis_event(*[message(f"d{i}") for i in range(4)])

    def invalid_d2(device: str) -> dict | None:
        return {"Code": "ValidationError", "Message": "bad"} if device == "d2" else None

    intercept.answer("dynamodb", "BatchExecuteStatement", answer_statements(invalid_d2), times=10)

    response = handler_call(event)

    assert failed_sequence_numbers(response) == sequences_of(event, "d2")
    # UPDATEs, then the INSERTs of the three others: d2 is not retried.
    assert calls(faults, "BatchExecuteStatement") == 2
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=1, written=3)


def test_a_first_state_created_meanwhile_is_updated_not_lost(intercept, faults, sinks) -> None:
    """An INSERT whose answer is lost and is sent again finds the item: DuplicateItem, and the
    reading goes in by an UPDATE."""
    now = now_ms()
    event = kinesis_event(*[message(f"d{i}", ts=now - 1_000, seq=i) for i in range(3)])

    def insert_then_answer_duplicate(params, forward):
        forward(params)
        error = {"Code": "DuplicateItem", "Message": "Duplicate primary key exists in table"}
        return {"Responses": [{"TableName": TABLE, "Error": error} for _ in params["Statements"]]}

    # The first call's UPDATEs pass through; the INSERTs that follow are answered as duplicates.
    intercept.answer("dynamodb", "BatchExecuteStatement", lambda params, forward: forward(params))
    intercept.answer("dynamodb", "BatchExecuteStatement", insert_then_answer_duplicate)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    # UPDATE (no item), INSERT (answered as duplicate), UPDATE (the tie is written).
    assert calls(faults, "BatchExecuteStatement") == 3
    found = read_sinks(sinks)
    assert {d: item["seq"] for d, item in found.state.items()} == {"d0": 0, "d1": 1, "d2": 2}
    assert outcomes(event, response, found) == fates(written=3)


def test_an_older_reading_refused_by_the_condition_stays_refused_when_retried(
    intercept, faults, sinks
) -> None:
    now = now_ms()
    handler_call(kinesis_event(*[message(f"d{i}", ts=now - 1_000) for i in range(3)]))
    faults.calls.clear()
    # The whole call is throttled once: the retry still refuses every older reading.
    faults.fail("dynamodb", "BatchExecuteStatement", "ThrottlingException", times=1)
    event = kinesis_event(*[message(f"d{i}", ts=now - 9_000) for i in range(3)])

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "BatchExecuteStatement") == 2
    found = read_sinks(sinks)
    assert all(item["ts"] == now - 1_000 for item in found.state.values())
    assert outcomes(event, response, found) == fates(written=3)


# --- Timestream -----------------------------------------------------------------------------


def test_rejected_records_are_triaged_by_reason(intercept, faults, sinks, capsys) -> None:
    event = kinesis_event(*[message(f"d{i}") for i in range(5)])
    # A property of the record (a Timestream limit); a time-range refusal is late, not invalid
    # (tests/test_processor_time.py).
    limit = "Measure value size exceeds the Timestream defined limits."

    def reject_some(params, forward):
        records = params["Records"]
        # 0: a property of the data; 1: already stored by an earlier delivery; 2: transient.
        forward({**params, "Records": [r for n, r in enumerate(records) if n not in (0, 2)]})
        return {
            "__type": "RejectedRecordsException",
            "message": "One or more records have been rejected.",
            "RejectedRecords": [
                {"RecordIndex": 0, "Reason": limit},
                {
                    "RecordIndex": 1,
                    "Reason": "A record with the same dimensions and time already exists.",
                    "ExistingVersion": records[1]["Version"],
                },
                {"RecordIndex": 2, "Reason": "Internal error, please try again."},
            ],
        }

    intercept.answer("timestream-write", "WriteRecords", reject_some)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "WriteRecords") == 2, "only the transient rejection is retried"
    found = read_sinks(sinks)
    (line,) = found.quarantine
    assert line["sequence_number"] == event["Records"][0]["kinesis"]["sequenceNumber"]
    assert line["reason"] == f"time-series store rejected the reading: {limit}"
    assert line["raw"] == event["Records"][0]["kinesis"]["data"]
    # The rejected reading is valid: its state and archive line were still written.
    assert "d0" in found.state and any(a["device_id"] == "d0" for a in found.archive)
    assert outcomes(event, response, found) == fates(quarantined=1, written=4)
    assert emf_metrics(capsys.readouterr().out)["ReadingsQuarantined"] == 1


def test_time_series_throttling_until_the_attempts_run_out(intercept, faults, sinks) -> None:
    faults.fail("timestream-write", "WriteRecords", "ThrottlingException", times=None)
    event = kinesis_event(*[message(f"d{i}") for i in range(6)])

    response = handler_call(event)

    assert calls(faults, "WriteRecords") == retry.MAX_ATTEMPTS
    found = read_sinks(sinks)
    assert outcomes(event, response, found) == fates(failed=6)
    # The other sinks were written; the redelivery will rewrite them idempotently.
    assert len(found.state) == 6 and len(found.archive) == 6


# --- Firehose -------------------------------------------------------------------------------


def test_failed_put_count_retries_only_the_failed_record(intercept, faults, sinks) -> None:
    # ~2.4 MB of lines: three Firehose records in one call.
    event = kinesis_event(*[message(f"d{i}", blob="x" * 120_000) for i in range(20)])

    def fail_the_middle(params, forward):
        records = params["Records"]
        answer = forward({**params, "Records": [records[0], records[2]]})
        ok = answer["RequestResponses"]
        failure = {"ErrorCode": "ServiceUnavailableException", "ErrorMessage": "Slow down."}
        return {
            "FailedPutCount": 1,
            "Encrypted": False,
            "RequestResponses": [ok[0], failure, ok[1]],
        }

    intercept.answer("firehose", "PutRecordBatch", fail_the_middle)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "PutRecordBatch") == 2
    found = read_sinks(sinks)
    assert len(found.archive) == 20
    assert outcomes(event, response, found) == fates(written=20)


def test_a_record_that_keeps_failing_reports_only_its_readings(intercept, faults, sinks) -> None:
    event = kinesis_event(*[message(f"d{i}", blob="x" * 120_000) for i in range(20)])
    first_record: set[str] = set()

    def fail_the_first(params, forward):
        records = params["Records"]
        if not first_record:
            first_record.add(records[0]["Data"])
        keep = [r for r in records if r["Data"] not in first_record]
        answer = forward({**params, "Records": keep}) if keep else {"RequestResponses": []}
        ok = iter(answer["RequestResponses"])
        failure = {"ErrorCode": "InternalFailure", "ErrorMessage": "injected"}
        return {
            "FailedPutCount": len(records) - len(keep),
            "RequestResponses": [
                failure if r["Data"] in first_record else next(ok) for r in records
            ],
        }

    intercept.answer("firehose", "PutRecordBatch", fail_the_first, times=100)

    response = handler_call(event)

    found = read_sinks(sinks)
    failed = failed_sequence_numbers(response)
    # The first record carried the first readings, up to 1,000 KiB of lines.
    assert failed == {r["kinesis"]["sequenceNumber"] for r in event["Records"][: len(failed)]}
    assert 0 < len(failed) < 20
    assert outcomes(event, response, found) == fates(failed=len(failed), written=20 - len(failed))


# --- Quarantine -----------------------------------------------------------------------------


def test_quarantine_throttling_is_retried(intercept, faults, sinks) -> None:
    faults.fail("s3", "PutObject", "SlowDown", status=503, times=2)
    event = kinesis_event(b"junk", message("d1"), b"[]")

    response = handler_call(event)

    assert calls(faults, "PutObject") == 3
    assert outcomes(event, response, read_sinks(sinks)) == fates(quarantined=2, written=1)


def test_an_unwritable_quarantine_reports_the_invalid_readings(intercept, faults, sinks) -> None:
    faults.fail("s3", "PutObject", "AccessDenied", status=403, times=None)
    event = kinesis_event(b"junk", message("d1"), b"[]")

    response = handler_call(event)

    sequences = [r["kinesis"]["sequenceNumber"] for r in event["Records"]]
    assert failed_sequence_numbers(response) == {sequences[0], sequences[2]}
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=2, written=1)


# --- The time budget ------------------------------------------------------------------------


def test_retries_stop_within_the_remaining_time(
    intercept, faults, sinks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retry, "BASE_SECONDS", 0.2)  # production-like backoff
    faults.throttle(1.0)
    event = kinesis_event(*[message(f"d{i}") for i in range(5)], b"junk")

    started = time.monotonic()
    response = handler_call(event, remaining_ms=600)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, "answered before the function would time out"
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=6)


# --- helpers --------------------------------------------------------------------------------


def handler_call(event: dict, remaining_ms: int = 60_000) -> dict:
    return handler.lambda_handler(event, LambdaContext(remaining_ms=remaining_ms))


def fates(*, failed: int = 0, quarantined: int = 0, written: int = 0) -> dict[str, int]:
    return {"failed": failed, "quarantined": quarantined, "written": written, "lost": 0}
