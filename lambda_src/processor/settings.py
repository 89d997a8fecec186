"""The processor's configuration: exactly the environment variables `iotpipe up` sets."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    stack_name: str
    device_state_table: str
    device_state_ttl_days: int
    timeseries_database: str
    timeseries_table: str
    timeseries_memory_retention_hours: int
    # Whether the table takes records older than its memory store (into the magnetic store, up to
    # the magnetic retention); set by `up` from the table it creates.
    timeseries_magnetic_writes: bool
    timeseries_magnetic_retention_days: int
    archive_delivery_stream: str
    archive_bucket: str
    quarantine_prefix: str
    # The custom metrics to emit (PROCESSOR_METRICS, comma-separated); None: every one.
    custom_metrics: frozenset[str] | None = None

    @property
    def timeseries_enabled(self) -> bool:
        # `up` sets both names to "" when [timeseries] enabled = false.
        return bool(self.timeseries_database and self.timeseries_table)

    @classmethod
    def from_environment(cls) -> Settings:
        """Read on every invocation (cheap), so a configuration change needs no cold start."""
        env = os.environ
        return cls(
            stack_name=env["STACK_NAME"],
            device_state_table=env["DEVICE_STATE_TABLE"],
            device_state_ttl_days=int(env["DEVICE_STATE_TTL_DAYS"]),
            timeseries_database=env.get("TIMESERIES_DATABASE", ""),
            timeseries_table=env.get("TIMESERIES_TABLE", ""),
            timeseries_memory_retention_hours=int(env["TIMESERIES_MEMORY_RETENTION_HOURS"]),
            # Absent (a function deployed before these existed): the memory store only, the
            # narrower window; Timestream's own answer still settles any record sent.
            timeseries_magnetic_writes=env.get("TIMESERIES_MAGNETIC_STORE_WRITES") == "true",
            timeseries_magnetic_retention_days=int(
                env.get("TIMESERIES_MAGNETIC_RETENTION_DAYS") or 0
            ),
            archive_delivery_stream=env["ARCHIVE_DELIVERY_STREAM"],
            archive_bucket=env["ARCHIVE_BUCKET"],
            quarantine_prefix=env.get("QUARANTINE_PREFIX", "quarantine/"),
            # Absent (a function deployed before it existed): every metric, as then.
            custom_metrics=None
            if "PROCESSOR_METRICS" not in env
            else frozenset(name for name in env["PROCESSOR_METRICS"].split(",") if name),
        )
