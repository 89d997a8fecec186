"""Processor benchmark: API calls per sink and handler CPU time per reading.

10,000 readings from 200 devices, in Kinesis batches of 500 (each batch holds every device). The
sinks are stub clients that accept everything and count calls, so the CPU figure is the handler's
own work: decoding, validation, routing, request building, logs and metrics.

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


class StubClient:
    """Accepts every request (benchmark only) and counts calls and items."""

    def __init__(self, calls: Counter[str]) -> None:
        self.calls = calls

    def batch_write_item(self, RequestItems: dict[str, list[Any]]) -> dict[str, Any]:
        self.calls["dynamodb"] += 1
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
    for event in batches:
        bodies = [json.loads(base64.b64decode(r["kinesis"]["data"])) for r in event["Records"]]
        devices = {b["device_id"] for b in bodies}
        points = {(b["device_id"], b["ts"]) for b in bodies}
        archive_bytes = sum(len(json.dumps(b)) for b in bodies)
        minimum["dynamodb"] += math.ceil(len(devices) / 25)
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

    print(f"readings: {READINGS}, devices: {DEVICES}, batch size: {BATCH}")
    print(f"{'sink':18} {'calls':>7} {'minimum':>8} {'one-per-reading':>16} {'fewer':>7}")
    one_per_reading = {"dynamodb": READINGS, "timestream-write": READINGS, "firehose": READINGS}
    for service in SINKS:
        naive = one_per_reading.get(service, 0)
        ratio = f"{naive / calls[service]:.0f}x" if calls[service] else "-"
        print(f"{service:18} {calls[service]:>7} {minimum[service]:>8} {naive:>16} {ratio:>7}")
    total, naive_total = sum(calls.values()), sum(one_per_reading.values())
    print(
        f"{'total':18} {total:>7} {sum(minimum.values()):>8} {naive_total:>16} "
        f"{naive_total / total:>6.0f}x"
    )
    best = min(cpu_runs)
    print(
        f"handler CPU per reading (sinks stubbed): {best / READINGS * 1e6:.1f} us "
        f"(best of {len(cpu_runs)}; median {sorted(cpu_runs)[2] / READINGS * 1e6:.1f} us)"
    )
    print(
        "targets: calls == minimum: "
        + ("yes" if all(calls[s] == minimum[s] for s in SINKS) else "NO")
        + f"; >= 20x fewer: {'yes' if naive_total >= 20 * total else 'NO'}"
        + f"; <= 50 us/reading: {'yes' if best / READINGS * 1e6 <= 50 else 'NO'}"
    )


if __name__ == "__main__":
    main()
