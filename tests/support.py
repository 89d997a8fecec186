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


def create_archive_delivery_stream(aws: Any, prefix: str, error_prefix: str) -> str:
    """A bucket "archive" and a Direct PUT delivery stream "test-archive" into it, GZIP, with a
    1 MiB / 60 s buffer; `aws` is an iotpipe.aws.Aws. Returns the stream's name."""
    aws.call("s3", "create_bucket", resource="b", Bucket="archive")
    aws.call(
        "firehose",
        "create_delivery_stream",
        resource="f",
        DeliveryStreamName="test-archive",
        DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose",
            "BucketARN": "arn:aws:s3:::archive",
            "Prefix": prefix,
            "ErrorOutputPrefix": error_prefix,
            "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 60},
            "CompressionFormat": "GZIP",
        },
    )
    return "test-archive"
