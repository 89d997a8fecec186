"""The stack's configuration: a pydantic model read from TOML, and the sizing derived from it.

Every field has a default that is right for 500,000 readings a day in us-east-1. Every derived
number (shards, batch sizes, buffers) is computed in `Sizing`, and nowhere else.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from iotpipe.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("iotpipe.toml")

# Kinesis per-shard write limits (AWS quotas): 1 MiB/s and 1,000 records/s.
SHARD_BYTES_PER_SECOND = 1024 * 1024
SHARD_RECORDS_PER_SECOND = 1000
SECONDS_PER_DAY = 86_400

# The retention values CloudWatch Logs accepts (PutRetentionPolicy, retentionInDays): any other
# number is refused with InvalidParameterException when the log group is configured.
# https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutRetentionPolicy.html
LogRetentionDays = Literal[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
]  # fmt: skip

# S3 lifecycle minimums ("Transitioning objects using Amazon S3 Lifecycle", Constraints):
# objects stay 30 days in S3 Standard before a transition to Standard-IA or One Zone-IA, and a
# rule may not move them on to a Glacier class less than 30 days after the Standard-IA transition
# (Standard-IA bills 30 days at least).
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-transition-general-considerations.html
IA_MINIMUM_DAYS = 30
IA_MINIMUM_STORAGE_DAYS = 30

# Default service quotas past which a deployment would be refused or throttled; they can be
# raised, so exceeding them is a warning. Kinesis: 20,000 shards per account in us-east-1,
# us-west-2 and eu-west-1, "1,000 or 6,000" elsewhere (Kinesis Data Streams quotas and limits,
# https://docs.aws.amazon.com/streams/latest/dev/service-sizes-and-limits.html). Lambda: 1,000
# concurrent executions per Region (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html).
KINESIS_SHARD_QUOTA_LARGE_REGIONS = ("us-east-1", "us-west-2", "eu-west-1")
KINESIS_SHARD_QUOTA_LARGE = 20_000
KINESIS_SHARD_QUOTA_OTHER = 1_000
LAMBDA_CONCURRENCY_QUOTA = 1_000

# S3 general purpose bucket naming rules.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# Account ids are always 12 digits: a stand-in gives the bucket name its real length.
_ACCOUNT_STAND_IN = "123456789012"

# Each string pattern's rule in words: a config error says the rule, never the regex.
_PATTERN_RULES: dict[str, str] = {}


def _matching(pattern: str, rule: str, **field: Any) -> Any:
    """`Field(pattern=...)` whose mismatch is explained as `rule`."""
    _PATTERN_RULES[pattern] = rule
    return Field(pattern=pattern, **field)


StackName = Annotated[
    str,
    _matching(
        r"^[a-z][a-z0-9-]{1,22}[a-z0-9]$",
        "3-24 characters: lowercase letters, digits and hyphens, starting with a letter and "
        "ending with a letter or digit",
        description="it prefixes every resource name, including the S3 bucket, so it must be "
        "DNS-safe",
    ),
]


def bucket_name_problem(name: str) -> str | None:
    """Why S3 would refuse `name` as a general purpose bucket name, or None."""
    if not 3 <= len(name) <= 63:
        return f"is {len(name)} characters long; S3 allows 3 to 63"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", name):
        return (
            "may hold only lowercase letters, digits, dots and hyphens, and must begin and end "
            "with a letter or digit"
        )
    if ".." in name:
        return "must not contain two adjacent periods"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "must not be formatted as an IP address"
    for prefix in BUCKET_RESERVED_PREFIXES:
        if name.startswith(prefix):
            return f"must not start with {prefix!r} (reserved by S3)"
    for suffix in BUCKET_RESERVED_SUFFIXES:
        if name.endswith(suffix):
            return f"must not end with {suffix!r} (reserved by S3)"
    return None


@functools.cache
def _aws_partitions() -> tuple[tuple[re.Pattern[str], frozenset[str]], ...]:
    """Each AWS partition's region-name pattern and known regions, from botocore's own data
    (partitions.json: what boto3 resolves endpoints with); a file read, no boto3 import."""
    text = resources.files("botocore").joinpath("data/partitions.json").read_text("utf-8")
    return tuple(
        (
            re.compile(partition["regionRegex"]),
            # "aws-global" and its kin name global endpoints, not regions a stack can live in.
            frozenset(r for r in partition["regions"] if not r.startswith("aws")),
        )
        for partition in json.loads(text)["partitions"]
    )


def region_problem(region: str) -> str | None:
    """Why `region` is not an AWS region code, or None.

    A region botocore lists is one; so is a name its partition's pattern accepts (a region newer
    than the installed botocore): boto3 addresses both. Anything else would fail on the first
    AWS call, or be sent to a host that does not exist.
    """
    partitions = _aws_partitions()
    if any(region in known or pattern.fullmatch(region) for pattern, known in partitions):
        return None
    known = sorted(set().union(*(regions for _, regions in partitions)))
    close = difflib.get_close_matches(region, known, n=1, cutoff=0.85)
    suggestion = f"did you mean {close[0]}? " if close else ""
    return (
        f"{region!r} is not an AWS region: {suggestion}a region is written like us-east-1 or "
        "eu-west-1 (area, direction, number)"
    )


class _Section(BaseModel):
    # Unknown keys are a typo far more often than a feature: reject them by name. Strict: a
    # string is never quietly read as a number or a boolean ("30" is not 30, "false" not False).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class StackSection(_Section):
    name: StackName = "iotpipe"
    region: str = "us-east-1"
    app: str = _matching(
        r"^[a-z0-9_-]{1,32}$",
        "1-32 characters: lowercase letters, digits, underscores and hyphens",
        default="sensors",
        description="the <app> segment of device topics: dt/<app>/<thing>/telemetry",
    )

    @field_validator("region")
    @classmethod
    def _an_aws_region(cls, region: str) -> str:
        problem = region_problem(region)
        if problem:
            raise ValueError(problem)
        return region


# AWS IoT Core's largest message (its service quotas): a batched message must fit.
IOT_MESSAGE_BYTES = 128 * 1024


class VolumeSection(_Section):
    readings_per_day: int = Field(500_000, ge=1, le=100_000_000_000)
    devices: int = Field(1_000, ge=1, le=10_000_000)
    bytes_per_reading: int = Field(300, ge=16, le=IOT_MESSAGE_BYTES)
    peak_factor: float = Field(
        10.0, ge=1.0, le=1_000.0, description="peak-to-average ratio of the ingest rate"
    )
    # 1: each reading is sent as it is taken. More: devices send their readings in batches
    # ({"readings": [...]}, see docs/PROCESSOR.md), which divides the IoT rule, rule action and
    # Kinesis record charges, at the price of a reading waiting for its message to fill.
    readings_per_message: int = Field(
        1, ge=1, le=IOT_MESSAGE_BYTES // 16, description="readings a device sends in one message"
    )

    @model_validator(mode="after")
    def _a_message_fits_iot_core(self) -> VolumeSection:
        size = self.readings_per_message * self.bytes_per_reading
        if size > IOT_MESSAGE_BYTES:
            most = IOT_MESSAGE_BYTES // self.bytes_per_reading
            raise ValueError(
                f"readings_per_message ({self.readings_per_message}) x bytes_per_reading "
                f"({self.bytes_per_reading}) is {size:,} bytes, over AWS IoT Core's "
                f"{IOT_MESSAGE_BYTES:,}-byte message limit; send at most {most} readings a message"
            )
        return self


class StreamSection(_Section):
    mode: Literal["provisioned", "on_demand"] = "provisioned"
    shards: int | None = Field(
        None, ge=1, le=10_000, description="fixed shard count; default derived from volume"
    )
    headroom: float = Field(
        0.25, ge=0.0, le=10.0, description="spare capacity kept above the peak, as a fraction"
    )
    retention_hours: int = Field(24, ge=24, le=8_760)

    @field_validator("shards")
    @classmethod
    def _no_shards_on_demand(cls, shards: int | None, info: ValidationInfo) -> int | None:
        # An on-demand stream has no shard count to set (CreateStream takes ShardCount only in
        # PROVISIONED mode): a fixed count would be silently ignored.
        if shards is not None and info.data.get("mode") == "on_demand":
            raise ValueError(
                'a fixed shard count applies only to mode = "provisioned"; remove shards or set '
                'mode = "provisioned"'
            )
        return shards


# The counts the processor can publish as CloudWatch custom metrics (lambda_src/processor/
# handler.py); each one published is billed as a metric-month.
ProcessorMetric = Literal[
    "ReadingsReceived",
    "ReadingsValid",
    "ReadingsQuarantined",
    "ReadingsFailed",
    "DeviceStateWritten",
    "DeviceStateSkippedOlder",
    "ArchiveWritten",
    "TimeSeriesWritten",
    "Retries",
    "BatchAgeMs",
]


class ProcessorSection(_Section):
    architecture: Literal["arm64", "x86_64"] = "arm64"
    memory_mb: int = Field(256, ge=128, le=10_240)
    timeout_seconds: int = Field(60, ge=3, le=900)
    batch_size: int = Field(500, ge=1, le=10_000)
    batching_window_seconds: int = Field(5, ge=0, le=300)
    parallelization_factor: int = Field(1, ge=1, le=10)
    starting_position: Literal["TRIM_HORIZON", "LATEST"] = "TRIM_HORIZON"
    bisect_on_error: bool = True
    maximum_retry_attempts: int = Field(5, ge=-1, le=10_000)
    maximum_record_age_seconds: int = Field(
        21_600, description="-1 for no limit, else 60..604800 (AWS's bounds)"
    )
    log_retention_days: LogRetentionDays = 14
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    powertools_layer_version: int = Field(
        # The latest version Powertools lists ("Lambda Layer", docs.powertools.aws.dev/lambda/
        # python/latest/getting-started/install/); `up` checks it exists in the region.
        27,
        ge=1,
        description="version of AWS's public Powertools for AWS Lambda (Python) layer",
    )
    # None by default: the dashboard and the alarms watch AWS's own metrics, and every
    # invocation's log line carries all the counts (CloudWatch Logs Insights can chart them).
    custom_metrics: list[ProcessorMetric] = Field(
        [],
        description="the processor's counts to publish as CloudWatch custom metrics, "
        "each billed monthly",
    )

    @field_validator("custom_metrics")
    @classmethod
    def _each_metric_once(cls, names: list[str]) -> list[str]:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; list each metric once")
        return names

    @model_validator(mode="after")
    def _record_age_in_bounds(self) -> ProcessorSection:
        age = self.maximum_record_age_seconds
        if age != -1 and not 60 <= age <= 604_800:
            raise ValueError(
                "maximum_record_age_seconds must be -1 (no limit) or between 60 and 604800"
            )
        return self


# A device-state item is the reading plus its key, timestamps and attribute names: about this
# many bytes more (also the price file's dynamodb.item_overhead_bytes). DynamoDB meters a write
# per 1 KB of item.
STATE_ITEM_OVERHEAD_BYTES = 100
STATE_WRITE_UNIT_BYTES = 1024
# Provisioned capacity per table and dimension: DynamoDB's default table quota (40,000 units);
# target utilisation as Application Auto Scaling takes it for DynamoDB (20-90 percent).
STATE_CAPACITY_QUOTA = 40_000
_CAPACITY_FIELDS = (
    "min_write_capacity",
    "max_write_capacity",
    "min_read_capacity",
    "max_read_capacity",
)


class DeviceStateSection(_Section):
    ttl_days: int = Field(30, ge=1, le=3_650)
    point_in_time_recovery: bool = False
    # Provisioned with auto scaling: the state is written at a steady few units a second around
    # the clock, where provisioned capacity at 70% utilisation costs about 40% of on-demand.
    capacity: Literal["provisioned", "on_demand"] = "provisioned"
    min_write_capacity: int | None = Field(
        None, ge=1, le=STATE_CAPACITY_QUOTA, description="default derived from [volume]"
    )
    max_write_capacity: int | None = Field(
        None, ge=1, le=STATE_CAPACITY_QUOTA, description="default derived from [volume]"
    )
    min_read_capacity: int | None = Field(
        None, ge=1, le=STATE_CAPACITY_QUOTA, description="default derived from [volume]"
    )
    max_read_capacity: int | None = Field(
        None, ge=1, le=STATE_CAPACITY_QUOTA, description="default derived from [volume]"
    )
    target_utilization: int = Field(
        70,
        ge=20,
        le=90,
        description="percent of the provisioned capacity auto scaling keeps in use",
    )

    @model_validator(mode="after")
    def _capacity_settings_fit_the_mode(self) -> DeviceStateSection:
        given = [name for name in _CAPACITY_FIELDS if getattr(self, name) is not None]
        if self.capacity == "on_demand" and given:
            raise ValueError(
                f'{", ".join(given)}: only with capacity = "provisioned" (an on-demand '
                'table has no capacity to set); remove it or set capacity = "provisioned"'
            )
        for kind in ("write", "read"):
            low = getattr(self, f"min_{kind}_capacity")
            high = getattr(self, f"max_{kind}_capacity")
            if low is not None and high is not None and low > high:
                raise ValueError(
                    f"min_{kind}_capacity ({low}) is more than max_{kind}_capacity ({high}); "
                    f"auto scaling keeps the capacity between the two: make min <= max"
                )
        return self


class TimeseriesSection(_Section):
    # Off by default: Timestream for LiveAnalytics is closed to new AWS customers, and the archive
    # (S3 + Athena) already keeps every reading. Accounts that have it turn it on.
    enabled: bool = False
    memory_retention_hours: int = Field(24, ge=1, le=8_766)
    magnetic_retention_days: int = Field(365, ge=1, le=73_000)


class ArchiveSection(_Section):
    format: Literal["gzip", "parquet"] = "gzip"
    buffer_mb: int = Field(64, ge=1, le=128)
    buffer_seconds: int = Field(900, ge=0, le=900)
    # Readings move to S3 Standard-IA, then to S3 Glacier Instant Retrieval (which Athena still
    # reads in place, unlike Glacier Flexible Retrieval).
    transition_to_ia_days: int = Field(30, le=36_500)
    transition_to_glacier_days: int = Field(90, le=36_500)
    quarantine_expire_days: int = Field(30, ge=1, le=36_500)
    athena_results_expire_days: int = Field(7, ge=1, le=36_500)
    # The archive is versioned: an overwritten or deleted object is kept this long.
    noncurrent_version_expire_days: int = Field(30, ge=1, le=36_500)
    log_retention_days: LogRetentionDays = 14

    @field_validator("transition_to_ia_days")
    @classmethod
    def _ia_minimum(cls, days: int) -> int:
        if days < IA_MINIMUM_DAYS:
            raise ValueError(
                f"S3 moves objects to STANDARD_IA only after at least {IA_MINIMUM_DAYS} days in "
                f"S3 Standard (S3 refuses a lifecycle rule with {days}); use "
                f"{IA_MINIMUM_DAYS} or more"
            )
        return days

    @field_validator("transition_to_glacier_days")
    @classmethod
    def _glacier_after_ia(cls, days: int, info: ValidationInfo) -> int:
        ia = info.data.get("transition_to_ia_days")
        if ia is not None and days < ia + IA_MINIMUM_STORAGE_DAYS:
            raise ValueError(
                f"the move to GLACIER_IR must come at least {IA_MINIMUM_STORAGE_DAYS} days after "
                f"the move to STANDARD_IA (transition_to_ia_days = {ia}): STANDARD_IA bills "
                f"{IA_MINIMUM_STORAGE_DAYS} days at least and S3 refuses an earlier transition; "
                f"use {ia + IA_MINIMUM_STORAGE_DAYS} or more"
            )
        return days

    def transitions(self) -> list[tuple[int, str]]:
        """The readings' lifecycle transitions: (days after creation, S3 storage class)."""
        return [
            (self.transition_to_ia_days, "STANDARD_IA"),
            (self.transition_to_glacier_days, "GLACIER_IR"),
        ]

    @model_validator(mode="after")
    def _parquet_buffer(self) -> ArchiveSection:
        # Firehose refuses a Parquet-converting stream with a buffer below 64 MiB.
        if self.format == "parquet" and self.buffer_mb < 64:
            raise ValueError('buffer_mb must be at least 64 when format = "parquet"')
        return self


class CatalogSection(_Section):
    # Weekly: partition projection finds new partitions without the catalog, so the crawler only
    # tracks the archive's schema, which changes when devices send new fields, not every day.
    crawler_schedule: str = _matching(
        r"^cron\(.+\)$",
        "a schedule in Glue's form cron(minutes hours day-of-month month day-of-week year), "
        "e.g. cron(0 3 * * ? *)",
        default="cron(0 3 ? * SUN *)",
    )
    bytes_scanned_cutoff_mb: int = Field(
        1_024, ge=10, description="Athena cancels any query that scans more than this"
    )


class IotSection(_Section):
    basic_ingest: bool = Field(
        True, description="devices publish to $aws/rules/<rule>/...: no IoT messaging charge"
    )


class AlertsSection(_Section):
    emails: list[
        Annotated[
            str,
            _matching(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", "an email address such as ops@example.com"),
        ]
    ] = []
    iterator_age_seconds: int = Field(300, ge=1)
    archive_freshness_seconds: int = Field(1_800, ge=60)


class Config(_Section):
    stack: StackSection = StackSection()
    volume: VolumeSection = VolumeSection()
    stream: StreamSection = StreamSection()
    processor: ProcessorSection = ProcessorSection()
    device_state: DeviceStateSection = DeviceStateSection()
    timeseries: TimeseriesSection = TimeseriesSection()
    archive: ArchiveSection = ArchiveSection()
    catalog: CatalogSection = CatalogSection()
    iot: IotSection = IotSection()
    alerts: AlertsSection = AlertsSection()

    @model_validator(mode="after")
    def _freshness_alarm_beyond_the_buffer(self) -> Config:
        # Firehose holds readings up to buffer_seconds before it writes them: an alarm on a
        # shorter freshness would be in alarm all the time.
        freshness, buffer = self.alerts.archive_freshness_seconds, self.archive.buffer_seconds
        if freshness <= buffer:
            raise ValueError(
                f"alerts.archive_freshness_seconds ({freshness}) must be more than "
                f"archive.buffer_seconds ({buffer}): Firehose holds readings that long before "
                "it writes them, so the archive-freshness alarm would always fire"
            )
        return self

    @model_validator(mode="after")
    def _bucket_name_allowed(self) -> Config:
        # The archive bucket is named <stack>-archive-<account>-<region> (see iotpipe.naming).
        bucket = f"{self.stack.name}-archive-{_ACCOUNT_STAND_IN}-{self.stack.region}"
        problem = bucket_name_problem(bucket)
        if problem:
            raise ValueError(
                f"stack.name: the archive bucket name {bucket!r} (with your account id) {problem}; "
                "choose another stack name"
            )
        return self

    @property
    def sizing(self) -> Sizing:
        return Sizing.of(self)

    def quota_warnings(self) -> list[str]:
        """Settings past AWS's default quotas: allowed (quotas can be raised), but said."""
        warnings = []
        sizing, region = self.sizing, self.stack.region
        if self.stream.mode == "provisioned":
            quota = (
                KINESIS_SHARD_QUOTA_LARGE
                if region in KINESIS_SHARD_QUOTA_LARGE_REGIONS
                else KINESIS_SHARD_QUOTA_OTHER
            )
            if sizing.shards > quota:
                warnings.append(
                    f"stream.shards: {sizing.shards} shards is more than Kinesis's default quota "
                    f"of {quota:,} shards per account in {region}; request an increase in "
                    "Service Quotas before `up`, or CreateStream is refused"
                )
            # The event source mapping runs one invocation per shard and parallelization factor.
            concurrency = sizing.shards * self.processor.parallelization_factor
            if concurrency > LAMBDA_CONCURRENCY_QUOTA:
                warnings.append(
                    f"processor.parallelization_factor: {sizing.shards} shards x "
                    f"{self.processor.parallelization_factor} is {concurrency:,} concurrent "
                    f"invocations, more than Lambda's default {LAMBDA_CONCURRENCY_QUOTA:,} per "
                    f"Region; request an increase, or the processor is throttled and lags"
                )
        return warnings


class Sizing(BaseModel):
    """Numbers derived from the config; the only place they are computed."""

    model_config = ConfigDict(frozen=True)

    average_readings_per_second: float
    peak_readings_per_second: float
    peak_bytes_per_second: float
    shards_for_records: int
    shards_for_bytes: int
    shards: int
    lambda_batch_size: int
    lambda_batching_window_seconds: int
    expected_batches_per_day: float
    archive_mb_per_day: float
    # The processor writes each device's newest reading of a batch: one write per distinct device.
    state_writes_per_second: float
    # Provisioned device-state capacity, units per second: auto scaling keeps each between its
    # minimum and maximum; a dimension whose minimum equals its maximum is fixed (not scaled).
    state_min_write_capacity: int
    state_max_write_capacity: int
    state_min_read_capacity: int
    state_max_read_capacity: int

    @classmethod
    def of(cls, config: Config) -> Sizing:
        volume, stream = config.volume, config.stream
        average = volume.readings_per_day / SECONDS_PER_DAY
        peak = average * volume.peak_factor
        peak_bytes = peak * volume.bytes_per_reading
        spare = 1.0 + stream.headroom
        # One Kinesis record per device message: several readings with device-side batching.
        records_per_day = volume.readings_per_day / volume.readings_per_message
        peak_records = peak / volume.readings_per_message
        for_records = math.ceil(peak_records * spare / SHARD_RECORDS_PER_SECOND)
        for_bytes = math.ceil(peak_bytes * spare / SHARD_BYTES_PER_SECOND)
        shards = stream.shards or max(1, for_records, for_bytes)
        processor = config.processor
        # A batch never waits for more records than one window of average traffic per shard brings.
        per_shard_per_window = (
            records_per_day / SECONDS_PER_DAY / shards * max(processor.batching_window_seconds, 1)
        )
        batches = max(
            records_per_day / processor.batch_size,
            SECONDS_PER_DAY / max(processor.batching_window_seconds, 1) * shards
            if per_shard_per_window < processor.batch_size
            else 0,
        )
        per_batch = volume.readings_per_day / batches
        writes = (
            batches
            / SECONDS_PER_DAY
            * distinct_devices_per_batch(per_batch, volume.devices / shards)
        )
        return cls(
            average_readings_per_second=round(average, 3),
            peak_readings_per_second=round(peak, 3),
            peak_bytes_per_second=round(peak_bytes, 1),
            shards_for_records=for_records,
            shards_for_bytes=for_bytes,
            shards=shards,
            lambda_batch_size=processor.batch_size,
            lambda_batching_window_seconds=processor.batching_window_seconds,
            expected_batches_per_day=round(batches, 1),
            archive_mb_per_day=round(volume.readings_per_day * volume.bytes_per_reading / 1e6, 1),
            state_writes_per_second=round(writes, 3),
            **_state_capacity(config, writes, writes * volume.peak_factor),
        )


def distinct_devices_per_batch(readings_per_batch: float, devices_per_shard: float) -> float:
    """Expected distinct devices among n readings from d equally busy devices: d(1-(1-1/d)^n)."""
    if devices_per_shard <= 1:
        return min(readings_per_batch, 1.0)
    expected = -devices_per_shard * math.expm1(
        readings_per_batch * math.log1p(-1 / devices_per_shard)
    )
    return min(readings_per_batch, expected)


def capacity_range(
    given_min: int | None, given_max: int | None, average: float, peak: float, target: float
) -> tuple[int, int]:
    """(minimum, maximum) units: by default the average and the peak load at the target
    utilisation; a bound given in the config wins, and the other follows it."""
    low = given_min or max(1, math.ceil(average / target))
    high = given_max or max(1, math.ceil(peak / target))
    if given_min is None:
        low = min(low, high)
    if given_max is None:
        high = max(high, low)
    return min(low, STATE_CAPACITY_QUOTA), min(high, STATE_CAPACITY_QUOTA)


def _state_capacity(config: Config, average: float, peak: float) -> dict[str, int]:
    """The device-state table's capacity ranges for the processor's load of `average` and
    `peak` writes a second, each of ceil(item / 1 KB) units. The processor reads nothing (its
    writes are conditioned on the stored timestamp): reads are a person's (`devices show`,
    `simulate`), one unit unless the config says more."""
    state = config.device_state
    item = config.volume.bytes_per_reading + STATE_ITEM_OVERHEAD_BYTES
    write_units = math.ceil(item / STATE_WRITE_UNIT_BYTES)
    target = state.target_utilization / 100
    writes = capacity_range(
        state.min_write_capacity,
        state.max_write_capacity,
        average * write_units,
        peak * write_units,
        target,
    )
    reads = capacity_range(state.min_read_capacity, state.max_read_capacity, 0, 0, target)
    return {
        "state_min_write_capacity": writes[0],
        "state_max_write_capacity": writes[1],
        "state_min_read_capacity": reads[0],
        "state_max_read_capacity": reads[1],
    }


def example_config_text() -> str:
    return resources.files("iotpipe").joinpath("config.example.toml").read_text(encoding="utf-8")


_SCALAR_TYPES = frozenset({"int_type", "float_type", "bool_type"})


def parse_config(data: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            reason = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                reason = "unknown key (check its spelling and section)"
            elif err["type"] == "string_pattern_mismatch":
                rule = _PATTERN_RULES.get(err["ctx"]["pattern"], "in the documented form")
                reason = f"must be {rule} (got {err['input']!r})"
            elif err["type"] in _SCALAR_TYPES and isinstance(err.get("input"), str):
                # Strict mode: "30" stays a string. Say how TOML writes the value instead.
                reason += f" (got the string {err['input']!r}: write numbers and booleans "
                reason += "without quotes)"
            # A rule across sections names its fields itself.
            problems.append(f"{field}: {reason}" if field else reason.removeprefix("Value error, "))
        raise ConfigError(
            f"{source} is invalid:\n  " + "\n  ".join(problems),
            hint="fix the fields above; `iotpipe init` writes a documented example",
        ) from None


def load_config(path: Path) -> Config:
    """Read and validate the TOML config. A missing file means all defaults only when asked for."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found",
            hint="run `iotpipe init` to write one, or pass --config PATH",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))
