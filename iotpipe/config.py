"""The stack's configuration: a pydantic model read from TOML, and the sizing derived from it.

Every field has a default that is right for 500,000 readings a day in us-east-1. Every derived
number (shards, batch sizes, buffers) is computed in `Sizing`, and nowhere else.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from iotpipe.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("iotpipe.toml")

# Kinesis per-shard write limits (AWS quotas): 1 MiB/s and 1,000 records/s.
SHARD_BYTES_PER_SECOND = 1024 * 1024
SHARD_RECORDS_PER_SECOND = 1000
SECONDS_PER_DAY = 86_400

StackName = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9-]{1,22}[a-z0-9]$",
        description="lowercase letters, digits and hyphens, 3-24 characters; it prefixes every "
        "resource name, including the S3 bucket, so it must be DNS-safe",
    ),
]


class _Section(BaseModel):
    # Unknown keys are a typo far more often than a feature: reject them by name.
    model_config = ConfigDict(extra="forbid", frozen=True)


class StackSection(_Section):
    name: StackName = "iotpipe"
    region: str = Field("us-east-1", pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
    app: str = Field(
        "sensors",
        pattern=r"^[a-z0-9_-]{1,32}$",
        description="the <app> segment of device topics: dt/<app>/<thing>/telemetry",
    )


class VolumeSection(_Section):
    readings_per_day: int = Field(500_000, ge=1, le=100_000_000_000)
    devices: int = Field(1_000, ge=1, le=10_000_000)
    bytes_per_reading: int = Field(300, ge=16, le=128 * 1024)
    peak_factor: float = Field(
        10.0, ge=1.0, le=1_000.0, description="peak-to-average ratio of the ingest rate"
    )


class StreamSection(_Section):
    mode: Literal["provisioned", "on_demand"] = "provisioned"
    shards: int | None = Field(
        None, ge=1, le=10_000, description="fixed shard count; default derived from volume"
    )
    headroom: float = Field(
        0.25, ge=0.0, le=10.0, description="spare capacity kept above the peak, as a fraction"
    )
    retention_hours: int = Field(24, ge=24, le=8_760)


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
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365] = 14
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    powertools_layer_version: int = Field(
        7, ge=1, description="version of AWS's public Powertools for AWS Lambda (Python) layer"
    )

    @model_validator(mode="after")
    def _record_age_in_bounds(self) -> ProcessorSection:
        age = self.maximum_record_age_seconds
        if age != -1 and not 60 <= age <= 604_800:
            raise ValueError(
                "maximum_record_age_seconds must be -1 (no limit) or between 60 and 604800"
            )
        return self


class DeviceStateSection(_Section):
    ttl_days: int = Field(30, ge=1, le=3_650)
    point_in_time_recovery: bool = False


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
    transition_to_ia_days: int = Field(30, ge=30, le=36_500)
    transition_to_glacier_days: int = Field(90, ge=31, le=36_500)
    quarantine_expire_days: int = Field(30, ge=1, le=36_500)
    athena_results_expire_days: int = Field(7, ge=1, le=36_500)
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365] = 14

    @model_validator(mode="after")
    def _glacier_after_ia(self) -> ArchiveSection:
        if self.transition_to_glacier_days <= self.transition_to_ia_days:
            raise ValueError("transition_to_glacier_days must be later than transition_to_ia_days")
        return self

    @model_validator(mode="after")
    def _parquet_buffer(self) -> ArchiveSection:
        # Firehose refuses a Parquet-converting stream with a buffer below 64 MiB.
        if self.format == "parquet" and self.buffer_mb < 64:
            raise ValueError('buffer_mb must be at least 64 when format = "parquet"')
        return self


class CatalogSection(_Section):
    crawler_schedule: str = Field("cron(0 3 * * ? *)", pattern=r"^cron\(.+\)$")
    bytes_scanned_cutoff_mb: int = Field(
        1_024, ge=10, description="Athena cancels any query that scans more than this"
    )


class IotSection(_Section):
    basic_ingest: bool = Field(
        True, description="devices publish to $aws/rules/<rule>/...: no IoT messaging charge"
    )


class AlertsSection(_Section):
    emails: list[Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]] = []
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

    @property
    def sizing(self) -> Sizing:
        return Sizing.of(self)


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

    @classmethod
    def of(cls, config: Config) -> Sizing:
        volume, stream = config.volume, config.stream
        average = volume.readings_per_day / SECONDS_PER_DAY
        peak = average * volume.peak_factor
        peak_bytes = peak * volume.bytes_per_reading
        spare = 1.0 + stream.headroom
        for_records = math.ceil(peak * spare / SHARD_RECORDS_PER_SECOND)
        for_bytes = math.ceil(peak_bytes * spare / SHARD_BYTES_PER_SECOND)
        shards = stream.shards or max(1, for_records, for_bytes)
        processor = config.processor
        # A batch never waits for more records than one window of average traffic per shard brings.
        per_shard_per_window = average / shards * max(processor.batching_window_seconds, 1)
        batches = max(
            volume.readings_per_day / processor.batch_size,
            SECONDS_PER_DAY / max(processor.batching_window_seconds, 1) * shards
            if per_shard_per_window < processor.batch_size
            else 0,
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
        )


def example_config_text() -> str:
    return resources.files("iotpipe").joinpath("config.example.toml").read_text(encoding="utf-8")


def parse_config(data: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(part) for part in err["loc"])
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = "unknown key (check its spelling and section)"
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
