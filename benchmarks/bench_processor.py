"""Processor benchmark: API calls per sink and handler CPU time per reading.

10,000 readings from 200 devices, in Kinesis batches of 500 (each batch holds every device). The
sinks are stub clients that accept everything and count calls (the device-state stub remembers
each device's ts, to answer the state reads), so the CPU figure is the handler's own work:
decoding, validation, routing, request building, logs and metrics. The device-state minimum
includes the reads: one BatchGetItem per 100 devices of a batch, then one BatchWriteItem per 25
devices whose newest reading is not older than the stored one.

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
DYNAMODB_CALLS = ("BatchGetItem", "BatchWriteItem")


class StubClient:
    """Accepts every request (benchmark only) and counts calls and items."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls
        self.stored_ts: dict[str, str] = {}

    def batch_get_item(self, RequestItems: dict[str, dict[str, Any]]) -> dict[str, Any]:
        self.calls["dynamodb"] += 1
        self.calls["BatchGetItem"] += 1
        ((table, request),) = RequestItems.items()
        found = []
        for key in request["Keys"]:
            ts = self.stored_ts.get(key["device_id"]["S"])
            if ts is not None:
                found.append({"device_id": key["device_id"], "ts": {"N": ts}})
        return {"Responses": {table: found}, "UnprocessedKeys": {}}

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
        self.calls["dynamodb"] += 1
        self.calls["BatchWriteItem"] += 1
        for requests in RequestItems.values():
            for request in requests:
                item = request["PutRequest"]["Item"]
                self.stored_ts[item["device_id"]["S"]] = item["ts"]["N"]
        return {"UnprocessedItems": {}}

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


def make_batches() -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
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
    """The fewest calls AWS's per-call limits allow, computed from the data alone."""
    minimum: Counter[str] = Counter()
    stored_ts: dict[str, int] = {}
    for event in batches:
        bodies = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
        newest: dict[str, int] = {}
        for b in bodies:
            newest[b["device_id"]] = max(b["ts"], newest.get(b["device_id"], b["ts"]))
        newer = [d for d, ts in newest.items() if ts >= stored_ts.get(d, ts)]
        stored_ts.update((d, newest[d]) for d in newer)
        points = {(b["device_id"], b["ts"]) for b in bodies}
        archive_bytes = sum(len(json.dumps(b)) for b in bodies)
        minimum["BatchGetItem"] += math.ceil(len(newest) / 100)
        minimum["BatchWriteItem"] += math.ceil(len(newer) / 25)
        minimum["dynamodb"] += math.ceil(len(newest) / 100) + math.ceil(len(newer) / 25)
        minimum["timestream-write"] += math.ceil(len(points) / 100)
        firehose_records = math.ceil(archive_bytes / (1000 * 1024))
        minimum["firehose"] += max(
            math.ceil(firehose_records / 500), math.ceil(archive_bytes / (4 * 1024 * 1024))
        )
    minimum["s3"] = 0  # no invalid readings, so no quarantine object
    return dict(minimum)


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
        cpu = time.process_time() - started
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
    # first batch every device's state is newer, so only the reads remain.
    replay: Counter[str] = Counter()
    run(batches[::-1], replay)
    replay_minimum = minimum_calls(batches[::-1])

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
    print(
        f"  device state: {calls['BatchGetItem']} BatchGetItem (minimum "
        f"{minimum['BatchGetItem']}) + {calls['BatchWriteItem']} BatchWriteItem (minimum "
        f"{minimum['BatchWriteItem']})"
    )
    print(
        f"  batches replayed newest first: {replay['BatchGetItem']} BatchGetItem (minimum "
        f"{replay_minimum['BatchGetItem']}) + {replay['BatchWriteItem']} BatchWriteItem (minimum "
        f"{replay_minimum['BatchWriteItem']})"
    )
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


if __name__ == "__main__":
    main()
