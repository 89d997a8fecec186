"""Small helpers shared by the test modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3

REGION = "us-east-1"


def client(endpoint: str, service: str) -> Any:
    """A plain boto3 client for the emulator, for checking what the code under test did."""
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def write_config(path: Path, stack: str = "test", **sections: dict) -> Path:
    """Write a config file: [stack] name plus the given sections' values."""
    lines = [f'[stack]\nname = "{stack}"\n']
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_full_config(path: Path, stack: str = "test", **sections: dict) -> Path:
    """`write_config` with every sink on: Timestream is off by default."""
    timeseries = {"enabled": True, **sections.pop("timeseries", {})}
    return write_config(path, stack, timeseries=timeseries, **sections)
