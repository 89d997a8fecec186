"""The processor's configuration: exactly the environment variables `iotpipe up` sets.

This class is the one statement of that contract: `iotpipe up` builds a `Settings` and sets
`to_environment()` on the function (iotpipe/resources/lambda_.py loads this file), and the
handler reads it back with `from_environment()`. It imports nothing of the processor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

# A variable a function deployed before it existed does not have: the value taken instead.
_REQUIRED = object()


def _env(name: str, *, absent: Any = _REQUIRED) -> Any:
    return field(metadata={"env": name, "absent": absent})


@dataclass(frozen=True, slots=True)
class Settings:
    stack_name: str = _env("STACK_NAME")
    device_state_table: str = _env("DEVICE_STATE_TABLE")
    device_state_ttl_days: int = _env("DEVICE_STATE_TTL_DAYS")
    # Both "" when [timeseries] is off (or the account cannot use Timestream).
    timeseries_database: str = _env("TIMESERIES_DATABASE", absent="")
    timeseries_table: str = _env("TIMESERIES_TABLE", absent="")
    timeseries_memory_retention_hours: int = _env("TIMESERIES_MEMORY_RETENTION_HOURS")
    # Whether the table takes records older than its memory store (into the magnetic store, up to
    # the magnetic retention); set by `up` from the table it creates. Absent: the memory store
    # only, the narrower window; Timestream's own answer still settles any record sent.
    timeseries_magnetic_writes: bool = _env("TIMESERIES_MAGNETIC_STORE_WRITES", absent=False)
    timeseries_magnetic_retention_days: int = _env("TIMESERIES_MAGNETIC_RETENTION_DAYS", absent=0)
    archive_delivery_stream: str = _env("ARCHIVE_DELIVERY_STREAM")
    archive_bucket: str = _env("ARCHIVE_BUCKET")
    quarantine_prefix: str = _env("QUARANTINE_PREFIX", absent="quarantine/")
    # The custom metrics to emit (comma-separated, in the config's order). Absent: every one, as
    # before it existed.
    custom_metrics: tuple[str, ...] | None = _env("PROCESSOR_METRICS", absent=None)

    @property
    def timeseries_enabled(self) -> bool:
        return bool(self.timeseries_database and self.timeseries_table)

    @classmethod
    def from_environment(cls) -> Settings:
        """Read on every invocation (cheap), so a configuration change needs no cold start."""
        values = {}
        for f in fields(cls):
            name, absent = f.metadata["env"], f.metadata["absent"]
            if name in os.environ:
                values[f.name] = _parse(f.type, os.environ[name])
            elif absent is _REQUIRED:
                raise KeyError(name)
            else:
                values[f.name] = absent
        return cls(**values)

    def to_environment(self) -> dict[str, str]:
        """The variables to set on the function, every one of them."""
        return {f.metadata["env"]: _format(getattr(self, f.name)) for f in fields(self)}


def _parse(kind: Any, text: str) -> Any:
    if kind == "int":
        return int(text or 0)
    if kind == "bool":
        return text == "true"
    if str(kind).startswith("tuple"):
        return tuple(name for name in text.split(",") if name)
    return text


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)
