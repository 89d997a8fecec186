"""The whole pipeline end to end on the embedded emulator: up, devices, readings, query, summary.

Every step runs the project's real code against the emulator (the reconciler for `up`, device
registration, the processor from lambda_src/); the local data plane stands in only for what the
emulator cannot run (the IoT rule, the Kinesis->Lambda mapping, Firehose's delivery, Athena).
"""

from __future__ import annotations

import contextlib
import gzip
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotpipe.errors import AwsError, UsageError
from iotpipe.local.environ import scoped_environ

DEMO_STACK = "demo"
DEMO_REGION = "us-east-1"
# Credentials the emulator accepts; never real ones (the demo never reaches AWS).
EMULATOR_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_SESSION_TOKEN": "demo",
}
MALFORMED_EVERY = 97

Progress = Callable[[str], None]


def require_local_extra() -> None:
    """The demo needs the `local` extra; say how to install it rather than fail on an import."""
    missing = []
    for module in ("moto", "duckdb", "sqlglot", "aws_lambda_powertools"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(
            f"the local emulator needs packages that are not installed: {', '.join(missing)}",
            hint="pip install 'iotpipe[local]'  (or `make demo`, which sets everything up)",
        )


@contextlib.contextmanager
def emulator_credentials() -> Iterator[None]:
    """Point the AWS SDK at the emulator's credentials for the duration, whatever the user has."""
    values = {**EMULATOR_CREDENTIALS, "AWS_DEFAULT_REGION": DEMO_REGION}
    with scoped_environ(values, unset=("AWS_PROFILE", "AWS_ENDPOINT_URL")):
        yield


def demo_config() -> Any:
    from iotpipe.config import parse_config

    return parse_config(
        {
            "stack": {"name": DEMO_STACK, "region": DEMO_REGION},
            # Two shards: the mapping reads them shard by shard, as Lambda does.
            "stream": {"shards": 2},
            # The emulator has Timestream, so the demo rehearses every sink.
            "timeseries": {"enabled": True},
        },
        source="the demo config",
    )


@dataclass
class DemoSummary:
    devices: int = 0
    sent: int = 0
    malformed_sent: int = 0
    archived: int = 0
    archive_objects: int = 0
    device_state_items: int = 0
    timeseries_records: int | None = None
    quarantined: int = 0
    rule_errors: int = 0
    discarded_to_dlq: int = 0
    up_changes: int = 0
    seconds: float = 0.0
    pipeline_seconds: float = 0.0
    query_columns: list[str] = field(default_factory=list)
    query_rows: list[list[Any]] = field(default_factory=list)
    query_sql: str = ""
    query_engine: str = ""
    invocations: int = 0

    @property
    def lost(self) -> int:
        # The IoT rule's error action keeps the payload, so those are accounted for too.
        return self.sent - self.archived - self.quarantined - self.rule_errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "sent": self.sent,
            "malformed_sent": self.malformed_sent,
            "stored": {
                "archive_lines": self.archived,
                "archive_objects": self.archive_objects,
                "device_state_items": self.device_state_items,
                "timeseries_records": self.timeseries_records,
            },
            "quarantined": self.quarantined,
            "rejected_by_iot_rule": self.rule_errors,
            "discarded_to_dlq": self.discarded_to_dlq,
            "lost": self.lost,
            "lambda_invocations": self.invocations,
            "seconds": round(self.seconds, 2),
            "pipeline_seconds": round(self.pipeline_seconds, 2),
            "query": {
                "engine": self.query_engine,
                "sql": self.query_sql,
                "columns": self.query_columns,
                "rows": self.query_rows,
            },
        }


def demo_query(day: str) -> str:
    return (
        "SELECT device_id, count(*) AS readings, "
        "round(avg(element_at(metrics, 'temperature')), 2) AS avg_temperature_c, "
        "round(avg(element_at(metrics, 'humidity')), 1) AS avg_humidity_pct, "
        "round(min(element_at(metrics, 'battery')), 3) AS min_battery_v "
        f"FROM readings WHERE dt >= '{day}' "
        "GROUP BY device_id ORDER BY readings DESC, device_id LIMIT 10"
    )


def run_demo(*, devices: int, readings: int, progress: Progress) -> DemoSummary:
    """Run the demo; the caller prints the summary."""
    require_local_extra()
    if devices < 1 or readings < 1:
        raise UsageError("--devices and --readings must be at least 1")
    with emulator_credentials(), tempfile.TemporaryDirectory(prefix="iotpipe-demo-") as tmp:
        return _run(Path(tmp), devices=devices, readings=readings, progress=progress)


def _run(workdir: Path, *, devices: int, readings: int, progress: Progress) -> DemoSummary:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.devices import Fleet, RegisterOptions, numbered_names, specs_from_names
    from iotpipe.engine.reconcile import execute, plan_up
    from iotpipe.local.emulator import Emulator
    from iotpipe.local.plane import LocalDataPlane
    from iotpipe.local.sql import LocalSql
    from iotpipe.simulate import ReadingGenerator
    from iotpipe.stack import build_resources

    started = time.monotonic()
    summary = DemoSummary(devices=devices)
    config = demo_config()
    with Emulator() as emulator:
        progress(f"emulator listening on {emulator.endpoint_url}")
        aws = Aws(endpoint_url=emulator.endpoint_url, region=DEMO_REGION)
        ctx = StackContext(config, aws)
        names = ctx.names

        plan = plan_up(aws, build_resources(ctx), ctx.stack)
        progress(f"up: creating {len(plan.changes)} resources of stack {ctx.stack!r}")
        execute(aws, plan)
        summary.up_changes = len(plan.changes)

        fleet = Fleet(aws, names, basic_ingest=config.iot.basic_ingest)
        things = numbered_names("sensor-", devices)
        progress(f"registering {devices} devices")
        registered = fleet.register_many(
            specs_from_names(things, {}), RegisterOptions(out_dir=workdir / "devices")
        )
        failed = [r for r in registered if r.status == "failed"]
        if failed:
            raise AwsError(failed[0].error or "registration failed", resource=failed[0].name)

        plane = LocalDataPlane(aws, names).start()
        try:
            pipeline_started = time.monotonic()
            generator = ReadingGenerator(
                things,
                start_ms=int(time.time() * 1000) - readings // devices * 60_000,
                malformed_every=MALFORMED_EVERY,
            )
            progress(f"publishing {readings:,} readings through the IoT rule")
            for reading in generator.readings(readings):
                plane.publish(fleet.topic(reading.thing), reading.payload, client_id=reading.thing)
                summary.sent += 1
                summary.malformed_sent += reading.malformed is not None
            progress("draining: Kinesis -> processor -> DynamoDB / Timestream / Firehose -> S3")
            plane.drain()
            summary.pipeline_seconds = time.monotonic() - pipeline_started
        finally:
            plane.close()
        summary.invocations = plane.poller.stats["invocations"]
        summary.discarded_to_dlq = plane.poller.stats["records_discarded"]
        summary.rule_errors = plane.rules.stats["error_action"]

        _count_sinks(aws, names, config, summary)

        day = datetime.now(UTC).strftime("%Y-%m-%d")
        summary.query_sql = demo_query(
            min(day, datetime.fromtimestamp(generator.start_ms / 1000, UTC).strftime("%Y-%m-%d"))
        )
        progress("querying the archive with Athena SQL (local engine)")
        engine = LocalSql.from_emulator(aws, names.glue_database, names.glue_table, workdir / "sql")
        result = engine.run(summary.query_sql)
        summary.query_engine = result.engine
        summary.query_columns = result.columns
        summary.query_rows = result.rows
    summary.seconds = time.monotonic() - started
    return summary


def _lines(body: bytes, key: str) -> int:
    data = gzip.decompress(body) if key.endswith(".gz") else body
    return sum(1 for line in data.splitlines() if line.strip())


def _count_lines(aws: Any, bucket: str, prefix: str) -> tuple[int, int]:
    objects = lines = 0
    for item in aws.paginate(
        "s3",
        "list_objects_v2",
        resource=f"bucket {bucket}",
        key="Contents",
        Bucket=bucket,
        Prefix=prefix,
    ):
        body = aws.call(
            "s3", "get_object", resource=f"bucket {bucket}", Bucket=bucket, Key=item["Key"]
        )["Body"].read()
        objects += 1
        lines += _lines(body, item["Key"])
    return objects, lines


def _count_sinks(aws: Any, names: Any, config: Any, summary: DemoSummary) -> None:
    bucket = names.archive_bucket
    summary.archive_objects, summary.archived = _count_lines(aws, bucket, names.archive_prefix)
    _, summary.quarantined = _count_lines(aws, bucket, names.quarantine_prefix)
    summary.device_state_items = aws.call(
        "dynamodb",
        "scan",
        resource=names.device_state_table,
        TableName=names.device_state_table,
        Select="COUNT",
    )["Count"]
    if config.timeseries.enabled:
        summary.timeseries_records = _timeseries_records(aws, names)


def _timeseries_records(aws: Any, names: Any) -> int | None:
    # The emulator answers Timestream queries with canned results; count what it stored instead.
    from moto.timestreamwrite.models import timestreamwrite_backends

    backend = timestreamwrite_backends[aws.account_id][aws.region]
    database = backend.databases.get(names.timeseries_database)
    table = database.tables.get(names.timeseries_table) if database else None
    return len(table.records) if table is not None else None
