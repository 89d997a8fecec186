"""Lambda entry point: decode -> validate -> route -> write in batches -> partial batch response.

Powertools' BatchProcessor calls a handler once per record; our sinks are written in batches
across records (25 devices per BatchExecuteStatement, 100 records per WriteRecords, many readings
per Firehose record), so the handler builds the same `batchItemFailures` response itself.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse

from processor.retry import Budget
from processor.settings import Settings
from processor.sinks import (
    SinkReport,
    write_archive,
    write_device_state,
    write_quarantine,
    write_time_series,
)
from processor.validate import Invalid, Reading, Window, decode

logger = Logger()
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "iotpipe"))

SINK_METRICS = {
    "device_state": "DeviceStateWritten",
    "time_series": "TimeSeriesWritten",
    "archive": "ArchiveWritten",
}


def lambda_handler(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    try:
        return _handle(event, context)
    finally:
        # Only the metrics PROCESSOR_METRICS lists were added: with none, nothing is published
        # (and nothing billed).
        if metrics.metric_set:
            metrics.flush_metrics()


def _handle(event: dict[str, Any], context: Any) -> PartialItemFailureResponse:
    settings = Settings.from_environment()
    budget = Budget.from_context(context)
    now_ms = int(time.time() * 1000)
    request_id = getattr(context, "aws_request_id", None) or uuid.uuid4().hex
    logger.append_keys(request_id=request_id)
    records: list[dict[str, Any]] = event.get("Records") or []

    readings, invalid = _validate(records, now_ms)
    reports = _route(readings, settings, budget, now_ms)

    to_quarantine = dict(invalid)
    for report in reports:
        to_quarantine.update(report.rejected)
    lines = {pos: quarantine_line(records[pos], why, now_ms) for pos, why in to_quarantine.items()}
    quarantine = write_quarantine(
        lines, _quarantine_key(settings, now_ms, request_id), settings, budget
    )
    reports.append(quarantine)

    failed = set().union(*(report.failed for report in reports))
    quarantined = len(to_quarantine.keys() - failed)
    _record_metrics(
        records, readings, quarantined, failed, reports, budget, now_ms, settings.custom_metrics
    )
    _log_summary(records, readings, quarantined, failed, reports, budget)
    return {
        "batchItemFailures": [
            {"itemIdentifier": _sequence_number(records[position])} for position in sorted(failed)
        ]
    }


def _validate(records: list[dict[str, Any]], now_ms: int) -> tuple[list[Reading], dict[int, str]]:
    window = Window.at(now_ms)
    readings: list[Reading] = []
    invalid: dict[int, str] = {}
    for position, record in enumerate(records):
        try:
            valid, problems = decode(position, record, window)
        except Invalid as exc:
            valid, problems = [], [str(exc)]
        readings.extend(valid)
        if problems:
            # A batched message's valid readings go on; the record is quarantined for the rest.
            invalid[position] = "; ".join(problems)
            # Reasons may quote parts of a payload: kept out of INFO logs.
            logger.debug(
                "invalid reading",
                sequence_number=_sequence_number(record),
                reason=invalid[position],
            )
    return readings, invalid


def _route(
    readings: list[Reading], settings: Settings, budget: Budget, now_ms: int
) -> list[SinkReport]:
    if not readings:
        return []
    reports = [write_device_state(readings, settings, budget, now_ms)]
    if settings.timeseries_enabled:
        reports.append(write_time_series(readings, settings, budget, now_ms))
    reports.append(write_archive(readings, settings, budget))
    return reports


def quarantine_line(record: dict[str, Any], reason: str, now_ms: int) -> bytes:
    kinesis = record.get("kinesis") if isinstance(record.get("kinesis"), dict) else {}
    raw = kinesis.get("data")
    if not isinstance(raw, str):
        # Not a Kinesis record at all: keep the whole of it instead.
        raw = base64.b64encode(json.dumps(record, default=str).encode()).decode()
    line = {
        "reason": reason,
        "sequence_number": _sequence_number(record),
        "partition_key": str(kinesis.get("partitionKey", "")),
        "event_id": str(record.get("eventID", "")),
        "approximate_arrival": _arrival_seconds(record),
        "raw": raw,
        "quarantined_at": now_ms,
    }
    return (json.dumps(line, separators=(",", ":")) + "\n").encode()


def _quarantine_key(settings: Settings, now_ms: int, request_id: str) -> str:
    day = datetime.fromtimestamp(now_ms / 1000, UTC).strftime("%Y-%m-%d")
    return f"{settings.quarantine_prefix}dt={day}/{now_ms}-{request_id}.jsonl"


def _sequence_number(record: dict[str, Any]) -> str:
    # An empty identifier makes Lambda retry the whole batch: the safe answer for a record that
    # carries no sequence number (Lambda never delivers one).
    kinesis = record.get("kinesis")
    return str(kinesis.get("sequenceNumber", "")) if isinstance(kinesis, dict) else ""


def _arrival_seconds(record: dict[str, Any]) -> float | None:
    kinesis = record.get("kinesis")
    value = kinesis.get("approximateArrivalTimestamp") if isinstance(kinesis, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _record_metrics(
    records: list[dict[str, Any]],
    readings: list[Reading],
    quarantined: int,
    failed: set[int],
    reports: list[SinkReport],
    budget: Budget,
    now_ms: int,
    chosen: frozenset[str] | None,
) -> None:
    """Each custom metric `chosen` lists (None: every one); each is billed monthly."""

    def add(name: str, value: float, unit: MetricUnit = MetricUnit.Count) -> None:
        if chosen is None or name in chosen:
            metrics.add_metric(name=name, unit=unit, value=value)

    add("ReadingsReceived", len(records))
    add("ReadingsValid", len(readings))
    add("ReadingsQuarantined", quarantined)
    add("ReadingsFailed", len(failed))
    for report in reports:
        if report.sink in SINK_METRICS:
            add(SINK_METRICS[report.sink], report.written)
        if report.sink == "device_state":
            # Part of DeviceStateWritten: readings whose device already holds a newer state.
            add("DeviceStateSkippedOlder", report.skipped_older)
    add("Retries", budget.retries)
    arrivals = [a for a in map(_arrival_seconds, records) if a is not None]
    if arrivals:
        add("BatchAgeMs", max(0, now_ms - int(min(arrivals) * 1000)), MetricUnit.Milliseconds)


def _log_summary(
    records: list[dict[str, Any]],
    readings: list[Reading],
    quarantined: int,
    failed: set[int],
    reports: list[SinkReport],
    budget: Budget,
) -> None:
    summary: dict[str, Any] = {
        "records": len(records),
        "valid": len(readings),
        "quarantined": quarantined,
        "failed": len(failed),
        "retries": budget.retries,
        "calls": {report.sink: report.calls for report in reports},
        "errors": {report.sink: dict(report.errors) for report in reports if report.errors},
        "device_state_skipped_older": sum(report.skipped_older for report in reports),
        # Older than the time-series store takes: in the archive and device state only.
        "time_series_late": sum(report.late for report in reports),
    }
    if failed:
        first = _sequence_number(records[min(failed)])
        logger.warning("batch partially failed", **summary, first_failed_sequence_number=first)
    else:
        logger.info("batch processed", **summary)
