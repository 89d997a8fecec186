"""The four sinks, each written in the fewest calls AWS allows, each retrying its own failures.

Every sink turns readings into work items (one DynamoDB item per device, one Timestream record per
device and timestamp, one Firehose record per ~1,000 KiB of lines, one quarantine object), sends
them in calls as large as the API takes, and retries the part AWS did not accept. Each item knows
the batch positions of the readings it carries, so what finally fails maps back to Kinesis records.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import botocore.exceptions

from processor import clients
from processor.contract import ARCHIVE_COLUMNS
from processor.retry import Budget, error_code, is_retryable
from processor.settings import Settings
from processor.validate import Reading

DYNAMODB_BATCH_ITEMS = 25
TIMESTREAM_BATCH_RECORDS = 100
FIREHOSE_BATCH_RECORDS = 500
FIREHOSE_BATCH_BYTES = 4 * 1024 * 1024
FIREHOSE_RECORD_BYTES = 1000 * 1024
MEASURE_NAME = "metrics"
# Rejections Timestream may lift on its own; every other reason is a property of the record.
RETRYABLE_REJECTION_WORDS = ("throttl", "internal", "try again", "temporar")
# A record outside the store's time range (RejectedRecord.Reason: "Records with timestamps that
# lie outside the retention duration of the memory store", AWS Timestream API reference,
# API_RejectedRecord.html) is late for the time series, not invalid. The exact wording of the
# reason is not documented: matched on both phrasings seen ("time range", "retention").
LATE_REJECTION_WORDS = ("time range", "retention")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


@dataclass(slots=True)
class Item:
    """One unit of a sink's request, and the batch positions of the readings it carries."""

    members: list[int]
    payload: Any
    key: Any = None
    version: int = 0


@dataclass
class SinkReport:
    sink: str
    calls: int = 0
    written: int = 0  # readings that landed (a superseded reading counts with its successor)
    # Device state only: readings not written because the stored state is newer (in `written`).
    skipped_older: int = 0
    # Time series only: readings older than the store accepts, not sent (or refused as such).
    # Not failed and not quarantined: the other sinks have them.
    late: int = 0
    late_refused: int = 0  # those of `late` that were sent and refused by the store
    failed: set[int] = field(default_factory=set)  # positions to report to Lambda
    rejected: dict[int, str] = field(default_factory=dict)  # positions to quarantine, with why
    errors: Counter[str] = field(default_factory=Counter)


def deliver(
    items: list[Item],
    chunks: Callable[[list[Item]], Iterator[list[Item]]],
    send: Callable[[list[Item]], list[Item]],
    budget: Budget,
    report: SinkReport,
) -> None:
    """Send items chunk by chunk; retry what `send` hands back, and whole chunks on throttling.

    What is still unsent when attempts or time run out, or fails for good, lands in
    `report.failed`; nothing is dropped.
    """
    pending = items
    attempt = 0
    while pending:
        again: list[Item] = []
        for chunk in chunks(pending):
            if not budget.has_time():
                report.errors["TimeBudgetExhausted"] += 1
                _fail(report, chunk)
                continue
            again.extend(send_once(send, chunk, report))
        if again and not budget.backoff(attempt):
            _fail(report, again)
            break
        pending = again
        attempt += 1
    settled = report.failed | report.rejected.keys()
    report.written = sum(
        1 for item in items for position in item.members if position not in settled
    )


def send_once(
    send: Callable[[list[Item]], list[Item]], chunk: list[Item], report: SinkReport
) -> list[Item]:
    """One call of `send`: what it hands back to send again; on a retryable error the whole
    chunk, on any other none (the chunk has failed)."""
    report.calls += 1
    try:
        return send(chunk)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        report.errors[error_code(exc)] += 1
        if is_retryable(exc):
            return list(chunk)
        _fail(report, chunk)
        return []


def _fail(report: SinkReport, items: Sequence[Item]) -> None:
    for item in items:
        report.failed.update(item.members)


def fixed_chunks(size: int) -> Callable[[list[Item]], Iterator[list[Item]]]:
    def chunks(items: list[Item]) -> Iterator[list[Item]]:
        for start in range(0, len(items), size):
            yield items[start : start + size]

    return chunks


def _latest_key(reading: Reading) -> tuple[int, int, int, int, int]:
    # Newest by device time, then sequence, then arrival; position (in the batch, then in a
    # batched message) breaks exact ties.
    seq = -1 if reading.seq is None else reading.seq
    return (reading.ts, seq, reading.received_at, reading.index, reading.part)


# --- device state ---------------------------------------------------------------------------

# BatchStatementError codes (DynamoDB API reference) that may clear on a retry; every other code
# but the two the sink acts on (ConditionalCheckFailed, DuplicateItem) fails its statement.
RETRYABLE_STATEMENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceeded",
        "ThrottlingError",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflict",
    }
)
# The state item's attributes besides the key, in statement order; `seq` is optional.
STATE_ATTRIBUTES = ("ts", "received_at", "metrics", "expires_at", "updated_at", "seq")


def write_device_state(
    readings: list[Reading], settings: Settings, budget: Budget, now_ms: int
) -> SinkReport:
    """Each device's newest reading of the batch, unless the stored state is newer.

    One PartiQL UPDATE per device, conditioned on the stored `ts` being at most the reading's,
    25 to a BatchExecuteStatement: DynamoDB itself keeps an older reading from overwriting a
    newer one, so no read comes first. An UPDATE never creates an item: a device with no state
    yet fails its condition without an existing item and gets an INSERT in a second call of the
    same round. See docs/PROCESSOR.md.
    """
    report = SinkReport("device_state")
    newest: dict[str, Reading] = {}
    members: dict[str, list[int]] = {}
    for reading in readings:
        members.setdefault(reading.device_id, []).append(reading.index)
        current = newest.get(reading.device_id)
        if current is None or _latest_key(reading) > _latest_key(current):
            newest[reading.device_id] = reading
    table = settings.device_state_table
    dynamodb = clients.client("dynamodb")
    expiry_seconds = settings.device_state_ttl_days * 86_400
    items = [
        Item(
            members=members[device_id],
            payload=_state_item(reading, expiry_seconds, now_ms),
            key=device_id,
        )
        for device_id, reading in newest.items()
    ]
    # Devices found to have no state item (their next statement is an INSERT), and devices
    # whose stored state is newer.
    absent: set[str] = set()
    newer: set[str] = set()

    def run(chunk: list[Item]) -> list[tuple[Item, dict[str, Any]]]:
        statements = [
            _insert_statement(table, item.payload)
            if item.key in absent
            else _update_statement(table, item.payload)
            for item in chunk
        ]
        response = dynamodb.batch_execute_statement(Statements=statements)
        # One response per statement, in the order of the statements.
        return list(zip(chunk, response["Responses"], strict=True))

    def send(chunk: list[Item]) -> list[Item]:
        again: list[Item] = []
        inserts: list[Item] = []
        for item, result in run(chunk):
            error = result.get("Error")
            if not error:
                continue
            code = str(error.get("Code", ""))
            if code == "ConditionalCheckFailed" and "Item" in error:
                # The stored state is newer: the readings are covered by it.
                newer.add(item.key)
            elif code == "ConditionalCheckFailed" and item.key not in absent:
                absent.add(item.key)
                inserts.append(item)
            elif code == "DuplicateItem":
                # Created since (an earlier INSERT whose answer was lost): update it instead.
                absent.discard(item.key)
                again.append(item)
            elif code in RETRYABLE_STATEMENT_CODES:
                report.errors[code] += 1
                again.append(item)
            else:
                report.errors[code or "StatementFailed"] += 1
                _fail(report, [item])
        if inserts:
            # First states go in the same round: a second call, not a retry.
            again.extend(send_once(send, inserts, report))
        return again

    deliver(items, fixed_chunks(DYNAMODB_BATCH_ITEMS), send, budget, report)
    # Every reading of a device whose write succeeded or found a newer state is covered.
    report.written = sum(
        len(positions) for positions in members.values() if report.failed.isdisjoint(positions)
    )
    report.skipped_older = sum(
        len(members[device]) for device in newer if report.failed.isdisjoint(members[device])
    )
    return report


def _update_statement(table: str, item: dict[str, Any]) -> dict[str, Any]:
    """UPDATE of every state attribute, only where the stored `ts` is not newer (ties are
    written: a redelivered reading rewrites the same item)."""
    present = [name for name in STATE_ATTRIBUTES if name in item]
    changes = [f'SET "{name}" = ?' for name in present]
    changes += [f'REMOVE "{name}"' for name in STATE_ATTRIBUTES if name not in item]
    return {
        "Statement": f'UPDATE "{table}" {" ".join(changes)} WHERE "device_id" = ? AND "ts" <= ?',
        "Parameters": [item[name] for name in present] + [item["device_id"], item["ts"]],
        # The stored item comes back when the condition fails: newer state, or no state at all.
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def _insert_statement(table: str, item: dict[str, Any]) -> dict[str, Any]:
    """INSERT of a device's first state; fails with DuplicateItem if one exists by now."""
    names = ["device_id", *(name for name in STATE_ATTRIBUTES if name in item)]
    pairs = ", ".join(f"'{name}': ?" for name in names)
    return {
        "Statement": f'INSERT INTO "{table}" VALUE {{{pairs}}}',
        "Parameters": [item[name] for name in names],
    }


def _state_item(reading: Reading, expiry_seconds: int, now_ms: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "device_id": {"S": reading.device_id},
        "ts": {"N": str(reading.ts)},
        "received_at": {"N": str(reading.received_at)},
        "metrics": {"M": {name: {"N": repr(v)} for name, v in reading.metrics.items()}},
        "expires_at": {"N": str(reading.ts // 1000 + expiry_seconds)},
        "updated_at": {"N": str(now_ms)},
    }
    if reading.seq is not None:
        item["seq"] = {"N": str(reading.seq)}
    return item


# --- time series ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimeSeriesWindow:
    """The oldest timestamp Timestream takes now: the memory store's retention or, with
    magnetic-store writes on, the magnetic store's ("If you enable magnetic store writes, ensure
    that the timestamp for incoming data is not earlier than data retention configured for the
    magnetic store", Timestream developer guide, data-ingest.html)."""

    oldest_ms: int

    @classmethod
    def at(cls, now_ms: int, settings: Settings) -> TimeSeriesWindow:
        if settings.timeseries_magnetic_writes and settings.timeseries_magnetic_retention_days:
            return cls(now_ms - settings.timeseries_magnetic_retention_days * DAY_MS)
        return cls(now_ms - settings.timeseries_memory_retention_hours * HOUR_MS)


def write_time_series(
    readings: list[Reading], settings: Settings, budget: Budget, now_ms: int
) -> SinkReport:
    """Multi-measure records, 100 per WriteRecords; Version = received_at makes redelivery an
    idempotent upsert. Two readings of one device at one instant would be rejected as a conflict
    within the request, so the later arrival is kept (the same upsert Timestream would apply).
    Readings older than the store takes are not sent: counted as `late`, not failed."""
    report = SinkReport("time_series")
    oldest_ms = TimeSeriesWindow.at(now_ms, settings).oldest_ms
    winners: dict[tuple[str, int], Reading] = {}
    members: dict[tuple[str, int], list[int]] = {}
    for reading in readings:
        if reading.ts < oldest_ms:
            report.late += 1
            continue
        key = (reading.device_id, reading.ts)
        members.setdefault(key, []).append(reading.index)
        current = winners.get(key)
        if current is None or (reading.received_at, reading.index, reading.part) > (
            current.received_at,
            current.index,
            current.part,
        ):
            winners[key] = reading
    items = [
        Item(members=members[key], payload=_time_series_record(r), version=r.received_at)
        for key, r in winners.items()
    ]
    if not items:
        return report
    timestream = clients.client("timestream-write")

    def send(chunk: list[Item]) -> list[Item]:
        try:
            timestream.write_records(
                DatabaseName=settings.timeseries_database,
                TableName=settings.timeseries_table,
                Records=[item.payload for item in chunk],
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "RejectedRecordsException":
                raise
            # The records not listed were ingested.
            return _triage_rejections(chunk, exc.response.get("RejectedRecords", []), report)
        return []

    deliver(items, fixed_chunks(TIMESTREAM_BATCH_RECORDS), send, budget, report)
    report.written -= report.late_refused
    return report


def _triage_rejections(
    chunk: list[Item], rejections: list[dict[str, Any]], report: SinkReport
) -> list[Item]:
    again: list[Item] = []
    for rejection in rejections:
        item = chunk[int(rejection["RecordIndex"])]
        reason = str(rejection.get("Reason", "rejected"))
        existing = rejection.get("ExistingVersion")
        if existing is not None and int(existing) >= item.version:
            # This reading (or a newer version of the point) is already stored: a redelivery.
            report.errors["AlreadyStored"] += 1
            continue
        lowered = reason.lower()
        if any(word in lowered for word in RETRYABLE_REJECTION_WORDS):
            report.errors["RetryableRejection"] += 1
            again.append(item)
            continue
        if "outside" in lowered and any(word in lowered for word in LATE_REJECTION_WORDS):
            # Older than the table takes (its retention changed, or magnetic writes are off).
            report.errors["LateRejection"] += 1
            report.late += len(item.members)
            report.late_refused += len(item.members)
            continue
        report.errors["RejectedRecord"] += 1
        for position in item.members:
            report.rejected[position] = f"time-series store rejected the reading: {reason}"
    return again


def _time_series_record(reading: Reading) -> dict[str, Any]:
    return {
        "Dimensions": [{"Name": "device_id", "Value": reading.device_id}],
        "MeasureName": MEASURE_NAME,
        "MeasureValueType": "MULTI",
        "MeasureValues": [
            {"Name": name, "Value": repr(value), "Type": "DOUBLE"}
            for name, value in reading.metrics.items()
        ],
        "Time": str(reading.ts),
        "TimeUnit": "MILLISECONDS",
        "Version": reading.received_at,
    }


# --- archive --------------------------------------------------------------------------------


def write_archive(readings: list[Reading], settings: Settings, budget: Budget) -> SinkReport:
    """Newline-delimited JSON lines packed into Firehose records of up to 1,000 KiB (Firehose
    bills each record rounded up to 5 KB, so one line per record would cost ~30x more), at most
    500 records and 4 MiB per PutRecordBatch."""
    report = SinkReport("archive")
    items: list[Item] = []
    lines: list[bytes] = []
    positions: list[int] = []
    size = 0
    for reading in readings:
        line = archive_line(reading)
        if size + len(line) > FIREHOSE_RECORD_BYTES and lines:
            items.append(Item(members=positions, payload=b"".join(lines)))
            lines, positions, size = [], [], 0
        lines.append(line)
        positions.append(reading.index)
        size += len(line)
    if lines:
        items.append(Item(members=positions, payload=b"".join(lines)))
    stream = settings.archive_delivery_stream
    firehose = clients.client("firehose")

    def send(chunk: list[Item]) -> list[Item]:
        response = firehose.put_record_batch(
            DeliveryStreamName=stream, Records=[{"Data": item.payload} for item in chunk]
        )
        if not response.get("FailedPutCount"):
            return []
        again = []
        for item, result in zip(chunk, response["RequestResponses"], strict=True):
            if result.get("ErrorCode"):
                report.errors[str(result["ErrorCode"])] += 1
                again.append(item)
        return again

    deliver(items, _firehose_chunks, send, budget, report)
    return report


def archive_line(reading: Reading) -> bytes:
    """One reading as the archive keeps it: every field, unknown ones under "extra"."""
    line = {name: getattr(reading, name) for name, _ in ARCHIVE_COLUMNS}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def _firehose_chunks(items: list[Item]) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    size = 0
    for item in items:
        if chunk and (
            len(chunk) == FIREHOSE_BATCH_RECORDS or size + len(item.payload) > FIREHOSE_BATCH_BYTES
        ):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item.payload)
    if chunk:
        yield chunk


# --- quarantine -----------------------------------------------------------------------------


def write_quarantine(
    lines: dict[int, bytes], key: str, settings: Settings, budget: Budget
) -> SinkReport:
    """All of the invocation's invalid readings in one S3 object (JSON lines)."""
    report = SinkReport("quarantine")
    if not lines:
        return report
    item = Item(members=list(lines), payload=b"".join(lines.values()))
    s3 = clients.client("s3")

    def send(chunk: list[Item]) -> list[Item]:
        s3.put_object(
            Bucket=settings.archive_bucket,
            Key=key,
            Body=chunk[0].payload,
            ContentType="application/x-ndjson",
        )
        return []

    deliver([item], fixed_chunks(1), send, budget, report)
    return report
