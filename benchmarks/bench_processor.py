"""Processor benchmark: API calls per sink, the device state's billed units, and handler CPU time
per reading.

10,000 readings from 200 devices, in Kinesis batches of 500 (each batch holds every device). The
sinks are stub clients that accept everything and count calls; the device-state stub runs the
PartiQL statements the processor sends against a dict, as DynamoDB would (a conditional UPDATE
writes only an existing item whose stored ts is not newer, an INSERT only a new item) and meters
them as DynamoDB bills them: each write statement, also one whose condition fails, costs
ceil(item / 1 KB) write units. So the CPU figure is the handler's own work: decoding,
validation, routing, request building, logs and metrics.

The state sink before (read, then write: one strongly consistent BatchGetItem per 100 devices of a
batch, one read unit per device, then one BatchWriteItem per 25 devices whose newest reading is not
older than the stored one) is computed from the same batches: that design measured exactly this
minimum. After: one BatchExecuteStatement of conditional UPDATEs per 25 devices, plus one of
INSERTs for a chunk whose devices have no state yet.

Targets: calls equal the minimum AWS allows; at least 20x fewer than one call per reading;
at most 50 us of CPU per reading.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "lambda_src"))
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "benchmark",
        "AWS_SECRET_ACCESS_KEY": "benchmark",
        "AWS_DEFAULT_REGION": "us-east-1",
        "STACK_NAME": "bench",
        "DEVICE_STATE_TABLE": "bench-device-state",
        "DEVICE_STATE_TTL_DAYS": "30",
        "TIMESERIES_DATABASE": "bench",
        "TIMESERIES_TABLE": "readings",
        "TIMESERIES_MEMORY_RETENTION_HOURS": "24",
        "ARCHIVE_DELIVERY_STREAM": "bench-archive",
        "ARCHIVE_BUCKET": "bench-archive-bucket",
        "QUARANTINE_PREFIX": "quarantine/",
        "POWERTOOLS_SERVICE_NAME": "iotpipe-processor",
        "POWERTOOLS_METRICS_NAMESPACE": "iotpipe",
        "LOG_LEVEL": "INFO",
    }
)

from processor import clients, handler  # noqa: E402

READINGS = 10_000
DEVICES = 200
BATCH = 500
SINKS = ("dynamodb", "timestream-write", "firehose", "s3")
DYNAMODB_CALLS = ("BatchExecuteStatement",)
WRITE_UNIT_BYTES = 1024
STATEMENTS_PER_CALL = 25


def item_bytes(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (numbers and strings as text)."""
    return sum(len(name) + len(json.dumps(value)) for name, value in item.items())


class StubClient:
    """Accepts every request (benchmark only), counts calls, and meters the state's units."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls
        self.state: dict[str, dict[str, Any]] = {}
        # CPU seconds the stub spends playing DynamoDB: not the handler's, so not counted.
        self.own_seconds = 0.0

    def batch_execute_statement(self, Statements: list[dict[str, Any]]) -> dict[str, Any]:
        started = time.process_time()
        self.calls["dynamodb"] += 1
        self.calls["BatchExecuteStatement"] += 1
        answer = {"Responses": [self._statement(s) for s in Statements]}
        self.own_seconds += time.process_time() - started
        return answer

    def _statement(self, request: dict[str, Any]) -> dict[str, Any]:
        statement, values = request["Statement"], request["Parameters"]
        if statement.startswith("INSERT"):
            item = dict(zip(re.findall(r"'([a-z_]+)': \?", statement), values, strict=True))
            stored = self.state.get(item["device_id"]["S"])
            self.calls["write units"] += math.ceil(item_bytes(stored or item) / WRITE_UNIT_BYTES)
            if stored is not None:
                return {"Error": {"Code": "DuplicateItem"}}
            self.state[item["device_id"]["S"]] = item
            return {}
        names = re.findall(r'SET "([a-z_]+)" = \?', statement)
        device, ts = values[len(names)]["S"], int(values[len(names) + 1]["N"])
        stored = self.state.get(device)
        new = {"device_id": values[len(names)], **dict(zip(names, values, strict=False))}
        # A failed condition is billed too: the larger of the stored and the written item.
        larger = max(item_bytes(new), item_bytes(stored or {}))
        self.calls["write units"] += math.ceil(larger / WRITE_UNIT_BYTES)
        if stored is None or int(stored["ts"]["N"]) > ts:
            error: dict[str, Any] = {"Code": "ConditionalCheckFailed"}
            if stored is not None:
                error["Item"] = stored
            return {"Error": error}
        self.state[device] = new
        return {}

    def write_records(self, Records: list[Any], **_: Any) -> dict[str, Any]:
        self.calls["timestream-write"] += 1
        return {"RecordsIngested": {"Total": len(Records)}}

    def put_record_batch(self, Records: list[Any], **_: Any) -> dict[str, Any]:
        self.calls["firehose"] += 1
        return {"FailedPutCount": 0, "RequestResponses": [{"RecordId": "x"} for _ in Records]}

    def put_object(self, **_: Any) -> dict[str, Any]:
        self.calls["s3"] += 1
        return {}


class Context:
    aws_request_id = "benchmark"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def make_batches(offset_ms: int = 0) -> list[dict[str, Any]]:
    """The benchmark's batches; `offset_ms` later for a second pass of newer readings."""
    now = int(time.time() * 1000) - 2 * READINGS * 10 + offset_ms
    batches = []
    for start in range(0, READINGS, BATCH):
        records = []
        for n in range(start, start + BATCH):
            body = {
                "ts": now - 600_000 + n * 10,
                "seq": n // DEVICES,
                "metrics": {"temperature": 20 + n % 7 * 0.5, "humidity": 40.25, "battery": 3.7},
                "device_id": f"sensor-{n % DEVICES:04d}",
                "received_at": now - 600_000 + n * 10 + 120,
            }
            sequence = str(49_590_338_271_490_256_608_559_692_538_361_571_095_921_575_989_136 + n)
            records.append(
                {
                    "kinesis": {
                        "kinesisSchemaVersion": "1.0",
                        "partitionKey": body["device_id"],
                        "sequenceNumber": sequence,
                        "data": base64.b64encode(json.dumps(body).encode()).decode(),
                        "approximateArrivalTimestamp": (now - 1_000) / 1000,
                    },
                    "eventSource": "aws:kinesis",
                    "eventID": f"shardId-000000000000:{sequence}",
                }
            )
        batches.append({"Records": records})
    return batches


def minimum_calls(batches: list[dict[str, Any]]) -> dict[str, int]:
    """The fewest calls AWS's per-call limits allow, computed from the data alone: for the state,
    one call per 25 devices of a batch, and one more for a chunk with devices seen first."""
    minimum: Counter[str] = Counter()
    known: set[str] = set()
    for event in batches:
        bodies = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
        devices = list(dict.fromkeys(b["device_id"] for b in bodies))
        for start in range(0, len(devices), STATEMENTS_PER_CALL):
            chunk = devices[start : start + STATEMENTS_PER_CALL]
            calls = 1 + (not known.issuperset(chunk))
            minimum["BatchExecuteStatement"] += calls
            minimum["dynamodb"] += calls
            known.update(chunk)
        points = {(b["device_id"], b["ts"]) for b in bodies}
        archive_bytes = sum(len(json.dumps(b)) for b in bodies)
        minimum["timestream-write"] += math.ceil(len(points) / 100)
        firehose_records = math.ceil(archive_bytes / (1000 * 1024))
        minimum["firehose"] += max(
            math.ceil(firehose_records / 500), math.ceil(archive_bytes / (4 * 1024 * 1024))
        )
    minimum["s3"] = 0  # no invalid readings, so no quarantine object
    return dict(minimum)


def read_then_write(batches: list[dict[str, Any]]) -> dict[str, int]:
    """The state sink before: its calls (the minimum it measured) and billed units."""
    before: Counter[str] = Counter()
    stored_ts: dict[str, int] = {}
    for event in batches:
        bodies = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
        newest: dict[str, int] = {}
        for b in bodies:
            newest[b["device_id"]] = max(b["ts"], newest.get(b["device_id"], b["ts"]))
        newer = [d for d, ts in newest.items() if ts >= stored_ts.get(d, ts)]
        stored_ts.update((d, newest[d]) for d in newer)
        before["calls"] += math.ceil(len(newest) / 100) + math.ceil(len(newer) / 25)
        # A strongly consistent read of an item up to 4 KB is one read unit (also of a key that
        # has no item); each written item of up to 1 KB one write unit.
        before["read units"] += len(newest)
        before["write units"] += len(newer)
    return dict(before)


def run(batches: list[dict[str, Any]], calls: Counter[str]) -> tuple[float, list[Any]]:
    clients.CLIENTS.clear()
    stub = StubClient(calls)
    for service in SINKS:
        clients.CLIENTS[service] = stub
    responses = []
    sink = io.StringIO()  # logs and EMF lines: produced (and paid for), not shown
    with contextlib.redirect_stdout(sink):
        handler.logger.registered_handler.stream = sink
        started = time.process_time()
        for event in batches:
            responses.append(handler.lambda_handler(event, Context()))
        cpu = time.process_time() - started - stub.own_seconds
    handler.logger.registered_handler.stream = sys.stdout
    return cpu, responses


def main() -> None:
    batches = make_batches()
    run(batches[:2], Counter())  # warm-up: imports, regex compilation, first-call paths
    calls: Counter[str] = Counter()
    cpu_runs = []
    for _ in range(5):
        calls.clear()
        cpu, responses = run(batches, calls)
        cpu_runs.append(cpu)
    assert all(r == {"batchItemFailures": []} for r in responses)
    minimum = minimum_calls(batches)
    # The same batches newest first, as a backlog replayed after the live readings: after the
    # first batch every device's state is newer, so every later write is refused by its condition
    # (and billed; before, only the reads were).
    replay: Counter[str] = Counter()
    run(batches[::-1], replay)
    replay_minimum = minimum_calls(batches[::-1])
    # Steady state: every device already has a state (the batches again, after a first pass).
    steady: Counter[str] = Counter()
    steady_batches = [*batches, *make_batches(offset_ms=READINGS * 10)]
    run(steady_batches, steady)
    steady_after = {k: steady[k] - calls[k] for k in ("BatchExecuteStatement", "write units")}

    print(f"readings: {READINGS}, devices: {DEVICES}, batch size: {BATCH}")
    print(f"{'sink':18} {'calls':>7} {'minimum':>8} {'one-per-reading':>16} {'fewer':>7}")
    one_per_reading = {"dynamodb": READINGS, "timestream-write": READINGS, "firehose": READINGS}
    for service in SINKS:
        naive = one_per_reading.get(service, 0)
        ratio = f"{naive / calls[service]:.0f}x" if calls[service] else "-"
        print(f"{service:18} {calls[service]:>7} {minimum[service]:>8} {naive:>16} {ratio:>7}")
    total, naive_total = sum(calls[s] for s in SINKS), sum(one_per_reading.values())
    print(
        f"{'total':18} {total:>7} {sum(minimum[s] for s in SINKS):>8} {naive_total:>16} "
        f"{naive_total / total:>6.0f}x"
    )
    before, replay_before = read_then_write(batches), read_then_write(batches[::-1])
    steady_before = read_then_write(steady_batches)
    steady_before = {k: steady_before[k] - before[k] for k in before}
    print(f"device state per {READINGS:,} readings: calls, billed read units, billed write units")
    rows = [
        ("fresh table, before (read, then write)", before),
        ("fresh table, after (conditional writes)", after_units(calls)),
        ("every device known, before", steady_before),
        ("every device known, after", after_units(steady_after)),
        ("replayed newest first, before", replay_before),
        ("replayed newest first, after", after_units(replay)),
    ]
    for label, figures in rows:
        print(
            f"  {label:42} {figures['calls']:>6} calls {figures.get('read units', 0):>7,} RRU "
            f"{figures['write units']:>7,} WRU  ${on_demand_dollars(figures):.5f} on demand"
        )
    assert calls["BatchExecuteStatement"] == minimum["BatchExecuteStatement"]
    best = min(cpu_runs)
    calls_minimal = all(calls[s] == minimum[s] for s in SINKS + DYNAMODB_CALLS) and all(
        replay[s] == replay_minimum[s] for s in SINKS + DYNAMODB_CALLS
    )
    print(
        f"handler CPU per reading (sinks stubbed): {best / READINGS * 1e6:.1f} us "
        f"(best of {len(cpu_runs)}; median {sorted(cpu_runs)[2] / READINGS * 1e6:.1f} us)"
    )
    print(
        "targets: calls == minimum: "
        + ("yes" if calls_minimal else "NO")
        + f"; >= 20x fewer: {'yes' if naive_total >= 20 * total else 'NO'}"
        + f"; <= 50 us/reading: {'yes' if best / READINGS * 1e6 <= 50 else 'NO'}"
    )


def after_units(counted: dict[str, int]) -> dict[str, int]:
    return {
        "calls": counted["BatchExecuteStatement"],
        "read units": 0,
        "write units": counted["write units"],
    }


def on_demand_dollars(figures: dict[str, int]) -> float:
    """On-demand list price of the units (us-east-1: $0.625 per million writes, $0.125 reads)."""
    return figures["write units"] * 0.625e-6 + figures.get("read units", 0) * 0.125e-6


if __name__ == "__main__":
    main()
