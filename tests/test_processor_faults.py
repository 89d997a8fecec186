"""Sink failures injected as AWS answers them: every reading ends written, quarantined or reported.

Throttling and hard errors come from tests/faults.py; partial successes (UnprocessedItems,
FailedPutCount, RejectedRecords) from the Interceptor, which lets the emulator write the part AWS
would accept and answers the rest exactly as AWS does.
"""

from __future__ import annotations

import time

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


def test_device_state_throttling_is_retried(intercept, faults, sinks, capsys) -> None:
    faults.fail("dynamodb", "BatchWriteItem", "ProvisionedThroughputExceededException", times=2)
    event = kinesis_event(*[message(f"d{i}") for i in range(10)])

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "BatchWriteItem") == 3
    assert outcomes(event, response, read_sinks(sinks)) == fates(written=10)
    assert emf_metrics(capsys.readouterr().out)["Retries"] == 2


def test_unprocessed_items_are_retried(intercept, faults, sinks) -> None:
    event = kinesis_event(*[message(f"d{i:02d}") for i in range(30)])

    def accept_ten(params, forward):
        items = params["RequestItems"][TABLE]
        forward({"RequestItems": {TABLE: items[:10]}})
        return {"UnprocessedItems": {TABLE: items[10:]}}

    intercept.answer("dynamodb", "BatchWriteItem", accept_ten)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    # 25 (15 unprocessed) + 5, then the 15 again.
    assert calls(faults, "BatchWriteItem") == 3
    found = read_sinks(sinks)
    assert len(found.state) == 30
    assert outcomes(event, response, found) == fates(written=30)


def test_items_that_stay_unprocessed_are_reported_for_their_device(
    intercept, faults, sinks
) -> None:
    event = kinesis_event(*[message(f"d{i}", seq=n) for n in range(2) for i in range(5)])

    def never_d3(params, forward):
        items = params["RequestItems"][TABLE]
        stuck = [i for i in items if i["PutRequest"]["Item"]["device_id"]["S"] == "d3"]
        forward({"RequestItems": {TABLE: [i for i in items if i not in stuck]}})
        return {"UnprocessedItems": {TABLE: stuck} if stuck else {}}

    intercept.answer("dynamodb", "BatchWriteItem", never_d3, times=100)

    response = handler_call(event)

    assert failed_sequence_numbers(response) == sequences_of(event, "d3")
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=2, written=8)


def test_a_hard_device_state_error_fails_fast(intercept, faults, sinks) -> None:
    faults.fail("dynamodb", "BatchWriteItem", "ResourceNotFoundException", times=None)
    event = kinesis_event(*[message(f"d{i}") for i in range(4)], b"junk")

    response = handler_call(event)

    assert calls(faults, "BatchWriteItem") == 1, "not retried"
    assert outcomes(event, response, read_sinks(sinks)) == fates(failed=4, quarantined=1)


def test_device_state_read_throttling_is_retried(intercept, faults, sinks, capsys) -> None:
    faults.fail("dynamodb", "BatchGetItem", "ProvisionedThroughputExceededException", times=2)
    event = kinesis_event(*[message(f"d{i}") for i in range(10)])

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "BatchGetItem") == 3
    assert calls(faults, "BatchWriteItem") == 1
    assert outcomes(event, response, read_sinks(sinks)) == fates(written=10)
    assert emf_metrics(capsys.readouterr().out)["Retries"] == 2


def test_unprocessed_keys_are_read_again_and_the_newer_state_kept(intercept, faults, sinks) -> None:
    now = now_ms()
    # Stored states newer than anything the batch carries, for every device.
    handler_call(kinesis_event(*[message(f"d{i:02d}", ts=now - 1_000) for i in range(30)]))
    faults.calls.clear()
    event = kinesis_event(*[message(f"d{i:02d}", ts=now - 9_000) for i in range(30)])

    def answer_ten(params, forward):
        request = params["RequestItems"][TABLE]
        keys = request["Keys"]
        answer = forward({"RequestItems": {TABLE: {**request, "Keys": keys[:10]}}})
        return {**answer, "UnprocessedKeys": {TABLE: {**request, "Keys": keys[10:]}}}

    intercept.answer("dynamodb", "BatchGetItem", answer_ten)

    response = handler_call(event)

    assert response == {"batchItemFailures": []}
    assert calls(faults, "BatchGetItem") == 2, "30 keys in one call, then the 20 unprocessed"
    assert calls(faults, "BatchWriteItem") == 0, "no device was written back in time"
    found = read_sinks(sinks)
    assert all(item["ts"] == now - 1_000 for item in found.state.values())
    assert outcomes(event, response, found) == fates(written=30)


def test_a_device_whose_state_cannot_be_read_is_reported_not_written(
    intercept, faults, sinks
) -> None:
    now = now_ms()
    handler_call(kinesis_event(message("d3", ts=now - 1_000, metrics={"v": 1})))
    faults.calls.clear()
    event = kinesis_event(
        *[message(f"d{i}", ts=now - 9_000, seq=n) for n in range(2) for i in range(5)]
    )

    def never_d3(params, forward):
        request = params["RequestItems"][TABLE]
        stuck = [k for k in request["Keys"] if k["device_id"]["S"] == "d3"]
        rest = [k for k in request["Keys"] if k not in stuck]
        answer = forward({"RequestItems": {TABLE: {**request, "Keys": rest}}}) if rest else {}
        unprocessed = {TABLE: {**request, "Keys": stuck}} if stuck else {}
        return {"Responses": answer.get("Responses", {}), "UnprocessedKeys": unprocessed}

    intercept.answer("dynamodb", "BatchGetItem", never_d3, times=100)

    response = handler_call(event)

    assert calls(faults, "BatchGetItem") == retry.MAX_ATTEMPTS
    assert failed_sequence_numbers(response) == sequences_of(event, "d3")
    found = read_sinks(sinks)
    assert found.state["d3"]["ts"] == now - 1_000, "not overwritten blindly"
    assert float(found.state["d3"]["metrics"]["v"]) == 1
    assert outcomes(event, response, found) == fates(failed=2, written=8)


def test_a_hard_device_state_read_error_fails_fast(intercept, faults, sinks) -> None:
    faults.fail("dynamodb", "BatchGetItem", "AccessDeniedException", times=None)
    event = kinesis_event(*[message(f"d{i}") for i in range(4)], b"junk")

    response = handler_call(event)

    assert calls(faults, "BatchGetItem") == 1, "not retried"
    assert calls(faults, "BatchWriteItem") == 0
    found = read_sinks(sinks)
    assert found.state == {}
    assert outcomes(event, response, found) == fates(failed=4, quarantined=1)


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
