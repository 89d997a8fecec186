"""Decode a Kinesis record into its readings, or say precisely why they are invalid.

A record's data is the device message plus `device_id` and `received_at`, added by the IoT rule
(`SELECT *, topic(3) AS device_id, timestamp() AS received_at`). Who published is taken from the
record's partition key, which the rule's Kinesis action sets to `${topic(3)}`: the device policy
lets a device publish only to its own topic, while the message body is whatever it chose to send.

A message is one reading (`ts`, `seq`, `metrics` at its top) or, sent by a device that batches,
several: `{"readings": [{"ts": ..., "seq": ..., "metrics": {...}}, ...]}`. Each reading of a batch
is validated on its own: the valid ones go on, and the record is quarantined for the others.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# AWS IoT thing names; the rule takes the device id from the topic, so this is who published.
DEVICE_ID = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
# Names Timestream keeps for itself or for our dimension; a measure may not take them.
RESERVED_METRIC_NAMES = frozenset({"device_id", "time", "measure_name", "measure_value"})
RESERVED_METRIC_PREFIXES = ("ts_", "measure_value::")
MAX_METRICS = 100
# AWS IoT Core's maximum message size: anything larger did not come through the rule.
MAX_RECORD_BYTES = 128 * 1024
# A plausible reading time: not before 2000-01-01T00:00:00Z (a device clock that never synced
# starts at 1970), and at most 15 minutes ahead of now (device clock skew; also Timestream's
# "future ingestion period", so a plausible reading is never refused by it for being early).
PLAUSIBLE_SINCE_MS = 946_684_800_000
FUTURE_TOLERANCE_MS = 15 * 60 * 1000
# DynamoDB numbers: magnitude within [1e-130, 1e126); other finite doubles would fail the write.
DYNAMODB_MAX = 1e126
DYNAMODB_MIN = 1e-130
KNOWN_FIELDS = frozenset({"device_id", "ts", "seq", "received_at", "metrics"})
# A batched message: its readings, and the fields of one reading (the rest is the reading's extra).
READINGS_FIELD = "readings"
READING_FIELDS = frozenset({"ts", "seq", "metrics"})
# Set by the IoT rule for the whole message: never a reading's own.
MESSAGE_FIELDS = frozenset({"device_id", "received_at"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(slots=True)
class Reading:
    index: int  # position in the Kinesis batch
    device_id: str
    ts: int  # epoch ms
    seq: int | None
    received_at: int  # epoch ms, from the IoT rule
    metrics: dict[str, float]
    extra: dict[str, Any] | None  # unknown top-level fields of the device message
    part: int = 0  # position in a batched message (0 for a single reading)


class Invalid(Exception):
    """A reading that cannot be accepted; the message is the quarantine reason."""


@dataclass(frozen=True, slots=True)
class Window:
    """The plausible reading times now: since PLAUSIBLE_SINCE_MS, at most a little ahead.

    Every sink but the time series accepts any plausible reading; the time-series store's own,
    narrower window is applied by its sink (see sinks.TimeSeriesWindow)."""

    oldest_ms: int
    newest_ms: int

    @classmethod
    def at(cls, now_ms: int) -> Window:
        return cls(oldest_ms=PLAUSIBLE_SINCE_MS, newest_ms=now_ms + FUTURE_TOLERANCE_MS)


def decode(index: int, record: dict[str, Any], window: Window) -> tuple[list[Reading], list[str]]:
    """The valid readings of a Lambda Kinesis event record, and why each other one is invalid
    (`readings[i]: reason`); raises Invalid when nothing of the record can be read."""
    kinesis = record.get("kinesis")
    if not isinstance(kinesis, dict) or not isinstance(kinesis.get("data"), str):
        raise Invalid("not a Kinesis event record (no kinesis.data)")
    try:
        data = base64.b64decode(kinesis["data"], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("data is not valid base64") from None
    if len(data) > MAX_RECORD_BYTES:
        raise Invalid(f"record is {len(data)} bytes, over the {MAX_RECORD_BYTES}-byte limit")
    try:
        message = _DECODER.decode(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise Invalid("data is not UTF-8 text") from None
    except ValueError as exc:
        raise Invalid(f"data is not JSON ({exc})") from None
    except RecursionError:
        raise Invalid("data is JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise Invalid(f"data is {_json_type(message)}, not a JSON object")
    if READINGS_FIELD not in message:
        extra = {k: v for k, v in message.items() if k not in KNOWN_FIELDS}
        reading = Reading(
            index=index,
            device_id=_publisher(message.get("device_id"), kinesis.get("partitionKey")),
            ts=_timestamp(message.get("ts"), window),
            seq=_seq(message.get("seq")),
            received_at=_received_at(message.get("received_at")),
            metrics=_metrics(message.get("metrics")),
            extra=extra or None,
        )
        return [reading], []
    return _batch(index, message, kinesis.get("partitionKey"), window)


def _batch(
    index: int, message: dict[str, Any], partition_key: Any, window: Window
) -> tuple[list[Reading], list[str]]:
    """The readings of a batched message; the message's own fields apply to all of them."""
    device_id = _publisher(message.get("device_id"), partition_key)
    received_at = _received_at(message.get("received_at"))
    mixed = sorted(READING_FIELDS & message.keys())
    if mixed:
        raise Invalid(
            f"a message with readings may not have {', '.join(mixed)} of its own: send one "
            "reading (ts, metrics) or a list of them (readings), not both"
        )
    entries = message[READINGS_FIELD]
    if not isinstance(entries, list):
        raise Invalid(f"readings is {_json_type(entries)}, expected an array of readings")
    if not entries:
        raise Invalid("readings is empty")
    shared = {k: v for k, v in message.items() if k not in MESSAGE_FIELDS and k != READINGS_FIELD}
    readings: list[Reading] = []
    problems: list[str] = []
    for part, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise Invalid(f"is {_json_type(entry)}, expected an object")
            claimed = sorted(MESSAGE_FIELDS & entry.keys())
            if claimed:
                raise Invalid(f"has {', '.join(claimed)}, which the IoT rule sets per message")
            extra = {**shared, **{k: v for k, v in entry.items() if k not in READING_FIELDS}}
            readings.append(
                Reading(
                    index=index,
                    device_id=device_id,
                    ts=_timestamp(entry.get("ts"), window),
                    seq=_seq(entry.get("seq")),
                    received_at=received_at,
                    metrics=_metrics(entry.get("metrics")),
                    extra=extra or None,
                    part=part,
                )
            )
        except Invalid as exc:
            problems.append(f"readings[{part}]: {exc}")
    return readings, problems


def _no_constant(name: str) -> Any:
    raise Invalid(f"data contains {name}, which JSON does not allow")


def _finite_float(text: str) -> float:
    # A literal such as 1e999 parses as infinity, which JSON (and the archive) cannot carry.
    number = float(text)
    if not math.isfinite(number):
        raise Invalid(f"data contains the number {_show(text)}, beyond a double's range")
    return number


# One decoder for every record (json.loads with hooks would build a new one each call).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite_float)


def _device_id(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"device_id is {_missing_or_type(value)}, expected a thing name")
    if not DEVICE_ID.fullmatch(value):
        raise Invalid(f"device_id {_show(value)} does not match [a-zA-Z0-9:_-]{{1,128}}")
    return value


def _publisher(claimed: Any, partition_key: Any) -> str:
    """The publishing device: the partition key, which must agree with the data's device_id.

    The rule adds `topic(3) AS device_id` to the device's own fields; a message that brings a
    `device_id` of its own must not decide whose state it writes, whichever of the two the rule's
    output keeps. A disagreement is a device speaking for another: quarantined, never written."""
    device_id = _device_id(claimed)
    if not isinstance(partition_key, str) or not DEVICE_ID.fullmatch(partition_key):
        raise Invalid(
            f"partition key {_show(partition_key)} is not a thing name (the IoT rule sets it to "
            "the topic's device id)"
        )
    if device_id != partition_key:
        raise Invalid(
            f"device_id {_show(device_id)} in the message is not the publishing device "
            f"{partition_key!r} (the topic's device id): a device may only report for itself"
        )
    return partition_key


def _timestamp(value: Any, window: Window) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        ts = value
    elif isinstance(value, str):
        ts = _iso8601_ms(value)
    else:
        raise Invalid(
            f"ts is {_missing_or_type(value)}, expected epoch milliseconds (integer) "
            "or an ISO-8601 string"
        )
    if ts < window.oldest_ms:
        hint = (
            " (epoch seconds? ts must be milliseconds)"
            if window.oldest_ms <= ts * 1000 <= window.newest_ms
            else ""
        )
        raise Invalid(
            f"ts {_iso(ts)} is before {_iso(window.oldest_ms)}, not a plausible reading time{hint}"
        )
    if ts > window.newest_ms:
        raise Invalid(f"ts {_iso(ts)} is more than 15 minutes in the future")
    return ts


def _iso8601_ms(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Invalid(f"ts {_show(text)} is not an ISO-8601 timestamp") from None
    if moment.tzinfo is None:
        raise Invalid(f"ts {_show(text)} has no UTC offset (add 'Z' or '+00:00')")
    return (moment - _EPOCH) // _MS


def _seq(value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"seq is {_show(value)}, expected an integer >= 0")
    # DynamoDB numbers carry 38 digits.
    if value >= 10**38:
        raise Invalid("seq has more than 38 digits")
    return value


def _received_at(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(
            f"received_at is {_missing_or_type(value)}, expected epoch ms set by the IoT rule"
        )
    return value


def _metrics(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise Invalid(f"metrics is {_missing_or_type(value)}, expected an object")
    if not value:
        raise Invalid("metrics is empty")
    if len(value) > MAX_METRICS:
        raise Invalid(f"metrics has {len(value)} entries, more than {MAX_METRICS}")
    metrics: dict[str, float] = {}
    for name, raw in value.items():
        if not METRIC_NAME.fullmatch(name):
            raise Invalid(f"metric name {_show(name)} does not match {METRIC_NAME.pattern}")
        lowered = name.lower()
        if lowered in RESERVED_METRIC_NAMES or lowered.startswith(RESERVED_METRIC_PREFIXES):
            raise Invalid(f"metric name {name!r} is reserved")
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise Invalid(f"metric {name!r} is {_json_type(raw)}, expected a number")
        try:
            number = float(raw)
        except OverflowError:
            raise Invalid(f"metric {name!r} is out of range") from None
        if not math.isfinite(number):
            raise Invalid(f"metric {name!r} is not a finite number")
        magnitude = abs(number)
        if magnitude >= DYNAMODB_MAX or 0 < magnitude < DYNAMODB_MIN:
            raise Invalid(f"metric {name!r} is out of range (1e-130 <= |x| < 1e126, or 0)")
        metrics[name] = number
    return metrics


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _missing_or_type(value: Any) -> str:
    return "missing or null" if value is None else _json_type(value)


def _show(value: Any) -> str:
    """A short rendering of a bad value for a reason (the raw record is kept beside it)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _iso(ts_ms: int) -> str:
    try:
        return (_EPOCH + ts_ms * _MS).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except OverflowError:
        return str(ts_ms)
