"""Monthly cost of the configured pipeline, service by service: pure arithmetic, no AWS call.

Volume comes from the config (and the command's overrides), derived numbers from `Sizing`, prices
from iotpipe/data/prices-us-east-1.json. Each assumption the arithmetic needs is a named field of
`Assumptions`, so an estimate can always be traced back to a price, a quantity and a guess.

Besides the configured pipeline, the same volume is priced with the naive choice of every
optimisation (IoT messaging instead of Basic Ingest, an on-demand stream, one Firehose record and
one device-state write per reading, x86_64, an hourly crawler), and each optimisation's saving is
the difference made by that one choice alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from importlib import resources
from typing import Any, Literal, get_args

from iotpipe.config import SECONDS_PER_DAY, Config, ProcessorMetric, capacity_range
from iotpipe.errors import ConfigError

DAYS_PER_MONTH = 30.4
HOURS_PER_MONTH = 730
MINUTES_PER_MONTH = HOURS_PER_MONTH * 60
KB = 1024
GB = 1024**3
TB = 1024**4
MB = 1024**2
PRICE_FILE = "prices-us-east-1.json"
STALE_AFTER_DAYS = 180
# Firehose accepts records of up to 1,000 KiB; Timestream up to 100 records per WriteRecords.
FIREHOSE_MAX_RECORD_BYTES = 1000 * KB
TIMESTREAM_RECORDS_PER_WRITE = 100
# SNS reuses a KMS data key for up to 5 minutes per publishing principal.
SNS_DATA_KEY_REUSE_SECONDS = 300
# S3 storage is priced at steady state: once twelve months of readings are held.
STEADY_STATE_DAYS = 365
# The S3 storage classes the archive's lifecycle uses (`ArchiveSection.transitions`), with their
# price-file keys: storage, lifecycle transition into the class, and retrieval per GB read back.
S3_CLASSES: dict[str, tuple[str, str, str | None, str | None]] = {
    "STANDARD": ("S3 Standard", "standard_gb_month", None, None),
    "STANDARD_IA": (
        "S3 Standard-IA",
        "standard_ia_gb_month",
        "transition_to_standard_ia_per_thousand",
        "standard_ia_retrieval_per_gb",
    ),
    "GLACIER_IR": (
        "S3 Glacier Instant Retrieval",
        "glacier_ir_gb_month",
        "transition_to_glacier_ir_per_thousand",
        "glacier_ir_retrieval_per_gb",
    ),
}


def archive_storage_tiers(config: Config) -> list[tuple[str, int, int]]:
    """(S3 storage class, first day, day after the last) of a reading's first year, as deployed."""
    tiers, start, current = [], 0, "STANDARD"
    for days, storage_class in config.archive.transitions():
        end = min(days, STEADY_STATE_DAYS)
        if end > start:
            tiers.append((current, start, end))
        start, current = max(start, end), storage_class
    if start < STEADY_STATE_DAYS:
        tiers.append((current, start, STEADY_STATE_DAYS))
    return tiers


# Prices ----------------------------------------------------------------------------------------
# The custom metrics the processor (lambda_src/processor/handler.py) can emit, each one name under
# one dimension set, so each billed as one metric-month; "timeseries" marks the one emitted only
# with the time-series sink on. It emits those `[processor] custom_metrics` lists (none by
# default); tests run the handler and compare its EMF output with this.
PROCESSOR_METRICS: dict[str, str] = {
    name: "timeseries" if name == "TimeSeriesWritten" else "always"
    for name in get_args(ProcessorMetric)
}


def emitted_metrics(config: Config, *, every: bool = False) -> list[str]:
    """The custom metrics the processor emits for `config` (`every`: as if it listed them all)."""
    sinks = {"always", "timeseries"} if config.timeseries.enabled else {"always"}
    chosen = set(PROCESSOR_METRICS) if every else set(config.processor.custom_metrics)
    return [name for name, needs in PROCESSOR_METRICS.items() if needs in sinks and name in chosen]


@dataclass(frozen=True)
class Prices:
    region: str
    taken: date
    sources: dict[str, str]
    values: dict[str, dict[str, Any]]
    # AWS's Always Free allowances by meter ("lambda.requests": 1,000,000 a month, ...).
    always_free: dict[str, float] = field(default_factory=dict)

    def __call__(self, service: str, name: str) -> Any:
        return self.values[service][name]

    def age_days(self, today: date) -> int:
        return (today - self.taken).days

    def is_stale(self, today: date) -> bool:
        return self.age_days(today) > STALE_AFTER_DAYS


def load_prices(text: str | None = None) -> Prices:
    """The packaged price file (or `text` in the same format)."""
    if text is None:
        text = resources.files("iotpipe").joinpath("data", PRICE_FILE).read_text(encoding="utf-8")
    document = json.loads(text)
    services = document["services"]
    return Prices(
        region=document["region"],
        taken=date.fromisoformat(document["taken"]),
        sources={name: service["source"] for name, service in services.items()},
        values={name: service["prices"] for name, service in services.items()},
        always_free={
            f"{name}.{meter}": amount
            for name, service in services.items()
            for meter, amount in service.get("always_free", {}).items()
        },
    )


def tiered(quantity: float, tiers: list[list[float | None]], per: float) -> float:
    """Cost of `quantity` under volume tiers [[size or None for the rest, price per `per`], ...]."""
    cost, remaining = 0.0, quantity
    for size, price in tiers:
        step = remaining if size is None else min(remaining, size)
        cost += step / per * price
        remaining -= step
        if remaining <= 0:
            break
    return cost


def round_up(value: float, increment: int) -> int:
    return max(1, math.ceil(value / increment)) * increment


def chunked_units(items: float, item_bytes: int, per_chunk: int, unit_bytes: int) -> float:
    """Billing units for `items` sent in chunks of `per_chunk`, each chunk rounded up to a unit."""
    full = math.floor(items / per_chunk)
    rest = items - full * per_chunk
    units = full * math.ceil(per_chunk * item_bytes / unit_bytes)
    if rest > 0:
        units += math.ceil(rest * item_bytes / unit_bytes)
    return units


# Choices and assumptions -----------------------------------------------------------------------
@dataclass(frozen=True)
class Choices:
    """The design choices that change the bill; `naive()` is the one-per-reading pipeline."""

    basic_ingest: bool
    stream_mode: Literal["provisioned", "on_demand"]
    aggregated_archive_records: bool
    state_write_per_device: bool
    # The alternative to a write conditioned on the stored timestamp: read it first.
    state_read_before_write: bool
    state_capacity: Literal["provisioned", "on_demand"]
    # Readings a device sends in one message (1: each as it is taken).
    readings_per_message: int
    architecture: Literal["arm64", "x86_64"]
    crawler_runs_per_day: float
    # "chosen": the processor emits the custom metrics the config lists; "all": every one.
    custom_metrics: Literal["chosen", "all"]

    @classmethod
    def of(cls, config: Config) -> Choices:
        # The processor always aggregates archive records and writes state once per device.
        return cls(
            basic_ingest=config.iot.basic_ingest,
            stream_mode=config.stream.mode,
            aggregated_archive_records=True,
            state_write_per_device=True,
            state_read_before_write=False,
            state_capacity=config.device_state.capacity,
            readings_per_message=config.volume.readings_per_message,
            architecture=config.processor.architecture,
            crawler_runs_per_day=crawler_runs_per_day(config.catalog.crawler_schedule),
            custom_metrics="chosen",
        )

    @classmethod
    def naive(cls) -> Choices:
        return cls(
            basic_ingest=False,
            stream_mode="on_demand",
            aggregated_archive_records=False,
            state_write_per_device=False,
            state_read_before_write=False,
            state_capacity="on_demand",
            readings_per_message=1,
            architecture="x86_64",
            crawler_runs_per_day=24,
            custom_metrics="all",
        )


@dataclass(frozen=True)
class Optimisation:
    name: str
    field: str
    optimised: Any
    naive: Any
    why: str


OPTIMISATIONS: tuple[Optimisation, ...] = (
    Optimisation(
        "Basic Ingest",
        "basic_ingest",
        True,
        False,
        "devices publish to $aws/rules/...: no IoT messaging charge",
    ),
    Optimisation(
        "provisioned shards",
        "stream_mode",
        "provisioned",
        "on_demand",
        "shards sized for the peak instead of an on-demand stream",
    ),
    Optimisation(
        "aggregated Firehose records",
        "aggregated_archive_records",
        True,
        False,
        "one record per batch instead of one per reading (each rounded up to 5 KB)",
    ),
    Optimisation(
        "one state write per device per batch",
        "state_write_per_device",
        True,
        False,
        "at most one conditional write per device per batch instead of one per reading: fewer "
        "calls always, cheaper when devices repeat within a batch",
    ),
    Optimisation(
        "conditional state writes (no read first)",
        "state_read_before_write",
        False,
        True,
        "the write's condition on the stored timestamp keeps an older reading from overwriting "
        "a newer one: no strongly consistent read of each device before its write",
    ),
    Optimisation(
        "provisioned device-state capacity",
        "state_capacity",
        "provisioned",
        "on_demand",
        "a steady load costs less as capacity kept at the target utilisation by auto scaling "
        "(with its alarms) than per request",
    ),
    Optimisation(
        "device-side batching",
        "readings_per_message",
        # A message of this many readings (the config's, or as many as fill one 5 KB increment
        # of IoT metering): see `batching_readings`.
        None,
        1,
        "devices send {n} readings a message: IoT rules and actions are metered per 5 KB "
        "message and Kinesis per record, so the readings share one charge; off by default, "
        "since a reading then waits for its message to fill",
    ),
    Optimisation("arm64 processor", "architecture", "arm64", "x86_64", "Graviton GB-second price"),
    Optimisation(
        "weekly crawler",
        "crawler_runs_per_day",
        1 / 7,
        24,
        "partition projection finds new partitions; the crawler only tracks schema changes",
    ),
    Optimisation(
        "custom metrics only as chosen",
        "custom_metrics",
        "chosen",
        "all",
        "the processor emits the metrics [processor] custom_metrics lists (none by default) "
        "instead of every count: the dashboard and alarms use AWS's own metrics, and every "
        "invocation's log line has all the counts",
    ),
)


@dataclass(frozen=True)
class Assumptions:
    """What the estimate has to guess; every figure is stated in `iotpipe cost` and docs/COST.md."""

    processor_ms_per_batch: float = 50.0
    processor_ms_per_reading: float = 0.5
    gzip_compression_ratio: float = 5.0
    parquet_compression_ratio: float = 6.0
    athena_queries_per_day: int = 100
    # Queries a month over a day old enough to be in infrequent-access storage (S3 charges a
    # per-GB retrieval on top of Athena's scan).
    athena_older_day_queries_per_month: int = 4
    crawler_dpus: float = 2.0
    # None: as many alarms as `up` deploys for the config.
    alarms: int | None = None
    dashboards: int = 1
    # None: as many as the processor emits for the config (`emitted_metrics`).
    custom_metrics: int | None = None
    log_bytes_per_invocation: int = 1000

    def notes(self, config: Config) -> list[str]:
        ratio = self.compression_ratio(config)
        return [
            f"a month is {DAYS_PER_MONTH} days or {HOURS_PER_MONTH} hours; totals are at list "
            "price, with AWS's Always Free allowances (per account or organization, shared with "
            "everything else it runs) shown apart; 12-month free tiers and credits are ignored",
            "every device stays connected all month",
            f"a device sends {config.volume.readings_per_message} reading"
            f"{'s' if config.volume.readings_per_message != 1 else ''} a message (one Kinesis "
            "record)",
            "a reading is bytes_per_reading long everywhere it travels (message, Kinesis record, "
            "DynamoDB item, Timestream record, archive line)",
            f"a processor invocation lasts {self.processor_ms_per_batch:g} ms plus "
            f"{self.processor_ms_per_reading:g} ms per reading",
            f"the archive compresses {ratio:g}x ({config.archive.format}); S3 is priced at steady "
            f"state, once {STEADY_STATE_DAYS} days of readings are kept",
            f"Athena runs {self.athena_queries_per_day} queries a day, each scanning one day of "
            "the archive (at most the workgroup's per-query cutoff), the latest, still in S3 "
            f"Standard; and {self.athena_older_day_queries_per_month} a month over an older day "
            "in infrequent-access storage, which S3 charges per GB retrieved",
            "no noncurrent versions at steady state: Firehose writes every object once; only "
            "expired quarantine, error and query-result objects linger "
            f"{config.archive.noncurrent_version_expire_days} days more, a negligible amount",
            f"a crawler run uses {self.crawler_dpus:g} DPUs for the billing minimum",
            f"CloudWatch: {self.alarm_count(config)} alarms, {self.dashboards} dashboard, "
            f"{self.custom_metric_count(config)} custom metrics, "
            f"{self.log_bytes_per_invocation} bytes of "
            "log per invocation",
            "device-state writes per batch: the distinct devices expected in a batch drawn from "
            "the devices of one shard",
        ]

    def custom_metric_count(self, config: Config, choices: Choices | None = None) -> int:
        if self.custom_metrics is not None:
            return self.custom_metrics
        every = choices is not None and choices.custom_metrics == "all"
        return len(emitted_metrics(config, every=every))

    def alarm_count(self, config: Config) -> int:
        from iotpipe.resources.cloudwatch import alarm_count

        return alarm_count(config) if self.alarms is None else self.alarms

    def compression_ratio(self, config: Config) -> float:
        if config.archive.format == "parquet":
            return self.parquet_compression_ratio
        return self.gzip_compression_ratio


# The estimate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineItem:
    service: str
    item: str
    quantity: float
    unit: str
    unit_price: float
    monthly_cost: float
    note: str = ""
    # unit_price is per this many units (1, 1,000 or 1,000,000), as AWS quotes it.
    price_per: float = 1
    # What AWS meters it as, where an always-free allowance applies ("lambda.requests").
    meter: str = ""


@dataclass(frozen=True)
class Estimate:
    choices: Choices
    items: list[LineItem]
    # Negative line items: AWS's Always Free allowances that the items above would use.
    allowances: list[LineItem] = field(default_factory=list)

    @property
    def total(self) -> float:
        """At list price: what the pipeline costs in an account whose allowances are used up."""
        return round(sum(item.monthly_cost for item in self.items), 2)

    @property
    def total_after_allowances(self) -> float:
        return round(sum(item.monthly_cost for item in self.items + self.allowances), 2)

    def by_service(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for item in self.items:
            totals[item.service] = totals.get(item.service, 0.0) + item.monthly_cost
        return {service: round(cost, 2) for service, cost in totals.items()}


@dataclass(frozen=True)
class Saving:
    optimisation: str
    optimised: Any
    naive: Any
    in_use: bool
    monthly_saving: float
    why: str


@dataclass(frozen=True)
class CostReport:
    region: str
    prices_taken: date
    price_age_days: int
    prices_stale: bool
    volume: dict[str, int]
    configured: Estimate
    naive: Estimate
    savings: list[Saving]
    assumptions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        def items(line_items: list[LineItem]) -> list[dict[str, Any]]:
            return [
                {**asdict(item), "monthly_cost": round(item.monthly_cost, 4)} for item in line_items
            ]

        return {
            "region": self.region,
            "currency": "USD",
            "prices_taken": self.prices_taken.isoformat(),
            "price_age_days": self.price_age_days,
            "prices_stale": self.prices_stale,
            "volume": self.volume,
            "line_items": items(self.configured.items),
            "always_free_allowances": items(self.configured.allowances),
            "naive_line_items": items(self.naive.items),
            "savings": [asdict(saving) for saving in self.savings],
            "totals": {
                "configured": self.configured.total,
                "naive": self.naive.total,
                "saving": round(self.naive.total - self.configured.total, 2),
                "configured_after_always_free": self.configured.total_after_allowances,
                "naive_after_always_free": self.naive.total_after_allowances,
            },
            "assumptions": self.assumptions,
        }


def estimate(
    config: Config, prices: Prices, choices: Choices, assumptions: Assumptions | None = None
) -> Estimate:
    """Price one month of `config`'s volume with the given design choices."""
    a = assumptions or Assumptions()
    p = prices
    if choices.readings_per_message != config.volume.readings_per_message:
        # Another message size means other record counts, so other derived sizes too.
        volume = config.volume.model_copy(
            update={"readings_per_message": choices.readings_per_message}
        )
        config = config.model_copy(update={"volume": volume})
    volume, sizing = config.volume, config.sizing
    size = volume.bytes_per_reading
    readings = volume.readings_per_day * DAYS_PER_MONTH
    batches = sizing.expected_batches_per_day * DAYS_PER_MONTH
    per_batch = volume.readings_per_day / sizing.expected_batches_per_day
    raw_bytes_per_day = volume.readings_per_day * size
    items: list[LineItem] = []

    def add(
        service: str,
        item: str,
        qty: float,
        unit: str,
        price: float,
        per: float = 1,
        note: str = "",
        meter: str = "",
    ) -> None:
        items.append(LineItem(service, item, qty, unit, price, qty / per * price, note, per, meter))

    # IoT Core: messages, rules and actions are metered in 5 KB increments. A message carries
    # `readings_per_message` readings, and is one Kinesis record.
    iot = "IoT Core"
    messages = readings / volume.readings_per_message
    message_bytes = size * volume.readings_per_message
    metered = messages * math.ceil(message_bytes / p("iot_core", "message_bytes_increment"))
    if choices.basic_ingest:
        add(iot, "messaging (Basic Ingest)", metered, "messages", 0.0, 1, "no messaging charge")
    else:
        tiers = p("iot_core", "messages_per_million_tiers")
        cost = tiered(metered, tiers, 1e6)
        items.append(
            LineItem(iot, "messaging", metered, "messages", tiers[0][1], cost, "tiered", 1e6)
        )
    add(
        iot,
        "connectivity",
        volume.devices * MINUTES_PER_MONTH,
        "connection-minutes",
        p("iot_core", "connection_minutes_per_million"),
        1e6,
    )
    add(iot, "rules triggered", metered, "rules", p("iot_core", "rules_triggered_per_million"), 1e6)
    add(
        iot,
        "rule actions (Kinesis)",
        metered,
        "actions",
        p("iot_core", "actions_executed_per_million"),
        1e6,
    )

    # Kinesis Data Streams.
    kinesis = "Kinesis Data Streams"
    if choices.stream_mode == "provisioned":
        add(
            kinesis,
            f"shard-hours ({sizing.shards} shard{'s' if sizing.shards != 1 else ''})",
            sizing.shards * HOURS_PER_MONTH,
            "shard-hours",
            p("kinesis", "shard_hour"),
        )
        add(
            kinesis,
            "PUT payload units (25 KB)",
            messages * math.ceil(message_bytes / p("kinesis", "put_payload_unit_bytes")),
            "units",
            p("kinesis", "put_payload_units_per_million"),
            1e6,
        )
    else:
        add(
            kinesis,
            "on-demand stream-hours",
            HOURS_PER_MONTH,
            "stream-hours",
            p("kinesis", "on_demand_stream_hour"),
        )
        increment = p("kinesis", "on_demand_record_bytes_increment")
        gb = messages * round_up(message_bytes, increment) / GB
        add(kinesis, "data ingested", gb, "GB", p("kinesis", "on_demand_ingested_per_gb"))
        add(kinesis, "data retrieved", gb, "GB", p("kinesis", "on_demand_retrieved_per_gb"))

    # Lambda: one invocation per batch; duration billed per millisecond.
    ms = math.ceil(a.processor_ms_per_batch + a.processor_ms_per_reading * per_batch)
    add(
        "Lambda",
        "requests",
        batches,
        "requests",
        p("lambda", "requests_per_million"),
        1e6,
        meter="lambda.requests",
    )
    add(
        "Lambda",
        f"compute ({choices.architecture}, {config.processor.memory_mb} MB, {ms} ms/batch)",
        batches * ms / 1000 * config.processor.memory_mb / 1024,
        "GB-seconds",
        p("lambda", f"gb_second_{choices.architecture}"),
        meter="lambda.gb_seconds",
    )

    # DynamoDB: latest state per device.
    ddb = "DynamoDB"
    if choices.state_write_per_device:
        writes = sizing.state_writes_per_second * SECONDS_PER_DAY * DAYS_PER_MONTH
        what = "state writes (one per device per batch)"
    else:
        writes, what = readings, "state writes (one per reading)"
    item_bytes = size + p("dynamodb", "item_overhead_bytes")
    write_units = writes * math.ceil(item_bytes / p("dynamodb", "write_unit_bytes"))
    # The writes are conditioned on the stored timestamp; the alternative design reads it first
    # (strongly consistent, one read unit per item up to 4 KB) so an older reading never wins.
    reading = choices.state_write_per_device and choices.state_read_before_write
    read_units = writes * math.ceil(item_bytes / p("dynamodb", "read_unit_bytes")) if reading else 0
    scaled_capacities = 0
    if choices.state_capacity == "on_demand":
        add(
            ddb,
            what,
            write_units,
            "write request units",
            p("dynamodb", "write_request_units_per_million"),
            1e6,
        )
        if read_units:
            add(
                ddb,
                "state reads (stored timestamp, one per device per batch)",
                read_units,
                "read request units",
                p("dynamodb", "read_request_units_per_million"),
                1e6,
            )
    else:
        target = config.device_state.target_utilization / 100
        seconds = DAYS_PER_MONTH * SECONDS_PER_DAY
        reads = (sizing.state_min_read_capacity, sizing.state_max_read_capacity)
        if reading:
            # Reading first needs read capacity for the processor's load, scaled as writes are.
            per_second = read_units / seconds
            reads = capacity_range(None, None, per_second, per_second * volume.peak_factor, target)
        capacities = (
            (
                "write",
                write_units,
                sizing.state_min_write_capacity,
                sizing.state_max_write_capacity,
            ),
            ("read", read_units, *reads),
        )
        for kind, units, low, high in capacities:
            if low == high:
                capacity, how = float(low), f"fixed at {low}"
            else:
                # Auto scaling follows the load at the target utilisation, within its range.
                capacity = min(high, max(low, units / seconds / target))
                how = f"auto scaling {low}-{high} at {target:.0%}"
                scaled_capacities += 1
            add(
                ddb,
                f"provisioned {kind} capacity ({capacity:.3g} unit{'' if capacity == 1 else 's'}"
                f" on average, {how})",
                capacity * HOURS_PER_MONTH,
                f"{kind[0].upper()}CU-hours",
                p("dynamodb", f"{kind}_capacity_unit_hour"),
                meter=f"dynamodb.{kind}_capacity_unit_hours",
            )
    add(
        ddb,
        "storage",
        volume.devices * item_bytes / GB,
        "GB-month",
        p("dynamodb", "storage_gb_month"),
        meter="dynamodb.storage_gb_month",
    )

    # Timestream (optional sink).
    if config.timeseries.enabled:
        ts, ts_cfg = "Timestream", config.timeseries
        units = batches * chunked_units(
            per_batch, size, TIMESTREAM_RECORDS_PER_WRITE, p("timestream", "write_unit_bytes")
        )
        add(
            ts,
            "writes (1 KB units, 100 records a request)",
            units,
            "writes",
            p("timestream", "writes_per_million"),
            1e6,
        )
        day_gb = raw_bytes_per_day / GB
        add(
            ts,
            f"memory store ({ts_cfg.memory_retention_hours} h)",
            day_gb * ts_cfg.memory_retention_hours / 24 * HOURS_PER_MONTH,
            "GB-hours",
            p("timestream", "memory_store_gb_hour"),
        )
        add(
            ts,
            "magnetic store (steady state)",
            day_gb * min(STEADY_STATE_DAYS, ts_cfg.magnetic_retention_days),
            "GB-month",
            p("timestream", "magnetic_store_gb_month"),
        )

    # Firehose: every record is rounded up to 5 KB.
    increment = p("firehose", "record_bytes_increment")
    if choices.aggregated_archive_records:
        per_record = max(1, FIREHOSE_MAX_RECORD_BYTES // size)
        billed = batches * chunked_units(per_batch, size, per_record, increment) * increment
        what = "data ingested (one record per batch)"
    else:
        billed = readings * round_up(size, increment)
        what = "data ingested (one record per reading)"
    add("Firehose", what, billed / GB, "GB", p("firehose", "ingested_per_gb"))
    if config.archive.format == "parquet":
        add(
            "Firehose",
            "format conversion",
            billed / GB,
            "GB",
            p("firehose", "format_conversion_per_gb"),
        )

    # S3: the archive by the lifecycle's storage classes, at steady state.
    archive = config.archive
    day_stored_gb = raw_bytes_per_day / a.compression_ratio(config) / GB
    tiers = archive_storage_tiers(config)
    for storage_class, first, after in tiers:
        name, price, _, _ = S3_CLASSES[storage_class]
        add(
            "S3",
            f"archive in {name} ({storage_class}, {after - first} days)",
            day_stored_gb * (after - first),
            "GB-month",
            p("s3", price),
        )
    flushes_per_day = max(
        SECONDS_PER_DAY / max(archive.buffer_seconds, 1),
        raw_bytes_per_day / (archive.buffer_mb * MB),
    )
    objects = flushes_per_day * DAYS_PER_MONTH
    add(
        "S3",
        "PUT requests (Firehose objects)",
        objects,
        "requests",
        p("s3", "put_requests_per_thousand"),
        1000,
    )
    for storage_class, first, _ in tiers:
        transition = S3_CLASSES[storage_class][2]
        if first > 0 and transition:
            add(
                "S3",
                f"lifecycle transitions to {S3_CLASSES[storage_class][0]}",
                objects,
                "requests",
                p("s3", transition),
                1000,
            )
    add(
        "S3",
        "noncurrent versions (expired temporary objects)",
        0,
        "GB-month",
        0.0,
        1,
        "negligible",
    )
    # A query over an older day reads infrequent-access objects: S3 charges per GB retrieved.
    older = next(((c, f) for c, f, _ in tiers if S3_CLASSES[c][3]), None)
    scanned = min(day_stored_gb * GB, config.catalog.bytes_scanned_cutoff_mb * MB)
    scanned = max(scanned, p("athena", "minimum_mb_per_query") * MB)
    if older is not None and a.athena_older_day_queries_per_month:
        add(
            "S3",
            f"retrieval from {S3_CLASSES[older[0]][0]} "
            f"({a.athena_older_day_queries_per_month} Athena queries/month over an older day)",
            a.athena_older_day_queries_per_month * scanned / GB,
            "GB",
            p("s3", S3_CLASSES[older[0]][3]),
        )

    # Glue: crawler runs are billed per DPU-hour with a per-run minimum; the catalog holds two
    # objects (database, table: partition projection adds no partitions), far inside its free tier.
    run_hours = p("glue", "crawler_minimum_minutes") / 60
    add(
        "Glue",
        f"crawler ({choices.crawler_runs_per_day:.3g} runs/day)",
        choices.crawler_runs_per_day * DAYS_PER_MONTH * a.crawler_dpus * run_hours,
        "DPU-hours",
        p("glue", "crawler_dpu_hour"),
    )
    add("Glue", "Data Catalog (2 objects)", 2, "objects", 0.0, 1, "free below 1 million objects")

    # Athena: each query scans a day of the archive, capped by the workgroup's cutoff.
    add(
        "Athena",
        f"data scanned ({a.athena_queries_per_day} queries/day, "
        f"{a.athena_older_day_queries_per_month}/month over older days)",
        (a.athena_queries_per_day * DAYS_PER_MONTH + a.athena_older_day_queries_per_month)
        * scanned
        / TB,
        "TB",
        p("athena", "scanned_per_tb"),
    )

    # CloudWatch.
    cw = "CloudWatch"
    add(
        cw,
        "alarms",
        a.alarm_count(config),
        "alarm-months",
        p("cloudwatch", "standard_alarm_month"),
        meter="cloudwatch.alarms",
    )
    if scaled_capacities:
        from iotpipe.resources.autoscaling import ALARMS_PER_POLICY

        add(
            cw,
            f"alarms of auto scaling ({ALARMS_PER_POLICY} per scaled capacity)",
            ALARMS_PER_POLICY * scaled_capacities,
            "alarm-months",
            p("cloudwatch", "standard_alarm_month"),
            meter="cloudwatch.alarms",
        )
    add(
        cw,
        "dashboard",
        a.dashboards,
        "dashboard-months",
        p("cloudwatch", "dashboard_month"),
        meter="cloudwatch.dashboards",
    )
    add(
        cw,
        "custom metrics (processor)",
        a.custom_metric_count(config, choices),
        "metric-months",
        p("cloudwatch", "custom_metric_month"),
        meter="cloudwatch.custom_metrics",
    )
    add(
        cw,
        "log ingestion (processor)",
        batches * a.log_bytes_per_invocation / GB,
        "GB",
        p("cloudwatch", "logs_ingested_per_gb"),
        meter="cloudwatch.logs_ingested_gb",
    )

    # KMS: the alerts topic's customer managed key (CloudWatch cannot use the free AWS managed
    # one). SNS asks KMS for a data key at most every 5 minutes per publisher, two requests each
    # (SNS developer guide, "Estimating AWS KMS costs"): the most an alarm that kept notifying
    # all month would cost.
    add(
        "KMS",
        "customer managed key (alerts topic)",
        1,
        "key-months",
        p("kms", "key_month"),
        note="each of its first two yearly rotations adds the same again",
    )
    add(
        "KMS",
        "requests (SNS data keys, at most)",
        HOURS_PER_MONTH * 3600 / SNS_DATA_KEY_REUSE_SECONDS * 2,
        "requests",
        p("kms", "requests_per_10k"),
        10_000,
        meter="kms.requests",
    )

    # Negligible: alerts are rare, and the dead-letter queue stays empty while the pipeline works.
    add("SNS", "alert e-mails", 0, "notifications", 0.0, 1, "negligible")
    add("SQS", "dead-letter queue", 0, "requests", 0.0, 1, "negligible")
    return Estimate(choices, items, always_free_allowances(items, prices))


def always_free_allowances(items: list[LineItem], prices: Prices) -> list[LineItem]:
    """Credits for what AWS's Always Free allowances cover of `items`, one per metered item.

    The allowances are per account (or per organization) and shared with whatever else it runs,
    so `iotpipe cost` shows them apart from the list-price total rather than inside it.
    """
    credits = []
    # One allowance per meter, used up in the order of the items (the stack's alarms, then the
    # auto scaling ones).
    left = dict(prices.always_free)
    for item in items:
        allowance = prices.always_free.get(item.meter, 0)
        covered = min(item.quantity, left.get(item.meter, 0))
        left[item.meter] = left.get(item.meter, 0) - covered
        credit = covered / item.price_per * item.unit_price
        if credit < 0.005:  # nothing worth a cent
            continue
        credits.append(
            LineItem(
                item.service,
                f"Always Free: the first {allowance:,.0f} {item.unit}",
                covered,
                item.unit,
                item.unit_price,
                -credit,
                item.item,
                item.price_per,
                item.meter,
            )
        )
    return credits


def cost_report(
    config: Config, prices: Prices, today: date, assumptions: Assumptions | None = None
) -> CostReport:
    """The configured estimate, the naive one, and what each optimisation saves."""
    a = assumptions or Assumptions()
    chosen = Choices.of(config)
    configured = estimate(config, prices, chosen, a)
    savings = []
    for opt in OPTIMISATIONS:
        optimised = opt.optimised
        if opt.field == "readings_per_message":
            optimised = batching_readings(config, prices)
        with_opt = estimate(config, prices, replace(chosen, **{opt.field: optimised}), a)
        without = estimate(config, prices, replace(chosen, **{opt.field: opt.naive}), a)
        if opt.field == "crawler_runs_per_day":
            in_use = chosen.crawler_runs_per_day <= optimised
        elif opt.field == "readings_per_message":
            in_use = chosen.readings_per_message > 1
        else:
            in_use = getattr(chosen, opt.field) == optimised
        savings.append(
            Saving(
                optimisation=opt.name,
                optimised=optimised,
                naive=opt.naive,
                in_use=in_use,
                monthly_saving=round(without.total - with_opt.total, 2),
                why=opt.why.format(n=optimised),
            )
        )
    return CostReport(
        region=prices.region,
        prices_taken=prices.taken,
        price_age_days=prices.age_days(today),
        prices_stale=prices.is_stale(today),
        volume={
            "readings_per_day": config.volume.readings_per_day,
            "devices": config.volume.devices,
            "bytes_per_reading": config.volume.bytes_per_reading,
        },
        configured=configured,
        naive=estimate(config, prices, Choices.naive(), a),
        savings=savings,
        assumptions=a.notes(config),
    )


def batching_readings(config: Config, prices: Prices) -> int:
    """Readings a message for device-side batching: the config's, or (when it sends one a
    message) as many as fill one 5 KB increment of IoT Core's metering."""
    if config.volume.readings_per_message > 1:
        return config.volume.readings_per_message
    increment = prices("iot_core", "message_bytes_increment")
    return max(2, increment // config.volume.bytes_per_reading)


def monthly_estimate(config: Config) -> Estimate:
    """The configured pipeline's monthly estimate with the packaged prices (for `validate`)."""
    return estimate(config, load_prices(), Choices.of(config))


# Crawler schedule ------------------------------------------------------------------------------
_DAY_NAMES = {
    name: i for i, name in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"], 1)
}
_MONTH_NAMES = {
    name: i
    for i, name in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}


def _numeric(expression: str, names: dict[str, int]) -> str:
    return re.sub(r"[A-Z]{3}", lambda m: str(names[m.group()]), expression.upper())


def _count(expression: str, low: int, high: int) -> int:
    """How many values a cron field selects in [low, high] (",", "-", "/" and "*")."""
    total = 0
    for part in expression.split(","):
        base, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if base in ("*", "?"):
            start, end = low, high
        elif "-" in base:
            first, last = base.split("-", 1)
            start, end = int(first), int(last)
        else:
            start = int(base)
            end = high if step_text else start
        if not (low <= start <= end <= high) or step < 1:
            raise ValueError(part)
        total += len(range(start, end + 1, step))
    return total


def crawler_runs_per_day(schedule: str) -> float:
    """Average runs a day of an EventBridge cron(min hour day-of-month month day-of-week year)."""
    fields = schedule.strip()[len("cron(") : -1].split()
    try:
        if len(fields) != 6:
            raise ValueError(schedule)
        minutes, hours, dom, month, dow, _year = fields
        runs = _count(minutes, 0, 59) * _count(hours, 0, 23)
        if dow not in ("*", "?"):
            numeric = _numeric(dow, _DAY_NAMES)
            # "2#1" (first Monday) and "6L" (last Friday) select one day a month.
            monthly = "#" in numeric or "L" in numeric
            fraction = 1 / DAYS_PER_MONTH if monthly else _count(numeric, 1, 7) / 7
        elif dom not in ("*", "?"):
            fraction = (
                1 / DAYS_PER_MONTH
                if any(c in dom for c in "LW")
                else (_count(dom, 1, 31) / DAYS_PER_MONTH)
            )
        else:
            fraction = 1.0
        if month != "*":
            fraction *= _count(_numeric(month, _MONTH_NAMES), 1, 12) / 12
    except (ValueError, KeyError):
        raise ConfigError(
            f"catalog.crawler_schedule: cannot read the cron expression {schedule!r}",
            hint="use EventBridge's cron(minutes hours day-of-month month day-of-week year)",
        ) from None
    return runs * fraction
