"""Local Firehose delivery: prefix expansion, buffering, GZIP objects named as AWS names them."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from iotpipe.aws import Aws
from iotpipe.errors import UsageError
from iotpipe.local.firehose import LocalDelivery, expand_prefix
from tests.support import create_archive_delivery_stream

PREFIX = "readings/dt=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
ERROR_PREFIX = "firehose-errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/"
AT = datetime(2024, 3, 9, 7, 5, 59, tzinfo=UTC)


def test_prefix_expressions_use_the_arrival_time_in_utc() -> None:
    assert expand_prefix(PREFIX, AT) == "readings/dt=2024-03-09/hour=07/"
    assert (
        expand_prefix(ERROR_PREFIX, AT, error_output_type="format-conversion-failed")
        == "firehose-errors/format-conversion-failed/dt=2024-03-09/"
    )
    random_part = expand_prefix("x/!{firehose:random-string}/", AT)
    assert re.fullmatch(r"x/[A-Za-z0-9]{11}/", random_part)


def test_a_prefix_without_expressions_gets_the_default_time_path() -> None:
    assert expand_prefix("raw/", AT) == "raw/2024/03/09/07/"


def test_invalid_expressions_are_refused() -> None:
    with pytest.raises(UsageError, match="error output prefix"):
        expand_prefix(ERROR_PREFIX, AT)
    with pytest.raises(UsageError, match="not supported"):
        expand_prefix("x/!{partitionKeyFromQuery:device}/", AT)


@pytest.fixture
def aws(endpoint: str) -> Aws:
    return Aws(endpoint_url=endpoint, region="us-east-1")


@pytest.fixture
def delivery_stream(aws: Aws) -> str:
    return create_archive_delivery_stream(aws, PREFIX, ERROR_PREFIX)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(AT.timestamp())


@pytest.fixture
def delivery(aws: Aws, delivery_stream: str, clock: Clock) -> Iterator[LocalDelivery]:
    local = LocalDelivery.from_emulator(aws, delivery_stream, clock=clock)
    uninstall = local.install()
    yield local
    uninstall()


def _objects(aws: Aws, prefix: str = "") -> list[str]:
    listed = aws.call("s3", "list_objects_v2", resource="b", Bucket="archive", Prefix=prefix)
    return [o["Key"] for o in listed.get("Contents", [])]


def test_delivery_config_is_read_back_from_the_emulator(delivery: LocalDelivery) -> None:
    config = delivery.config
    assert config.bucket == "archive"
    assert config.prefix == PREFIX
    assert config.buffer_bytes == 1024 * 1024 and config.buffer_seconds == 60
    assert config.compression == "GZIP"


def test_records_put_through_the_emulator_are_buffered_then_written_as_one_gzip_object(
    aws: Aws, delivery: LocalDelivery, delivery_stream: str, clock: Clock
) -> None:
    for batch in range(3):
        response = aws.call(
            "firehose",
            "put_record_batch",
            resource="f",
            DeliveryStreamName=delivery_stream,
            Records=[{"Data": f'{{"n": {batch * 10 + i}}}\n'.encode()} for i in range(10)],
        )
        assert response["FailedPutCount"] == 0 and len(response["RequestResponses"]) == 10
    assert _objects(aws) == [] and delivery.buffered == 30
    assert delivery.flush_if_due() is None

    clock.now += 61
    key = delivery.flush_if_due()

    assert _objects(aws) == [key]
    assert re.fullmatch(
        r"readings/dt=2024-03-09/hour=07/test-archive-1-2024-03-09-07-05-59-"
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.gz",
        key,
    )
    body = aws.call("s3", "get_object", resource="b", Bucket="archive", Key=key)["Body"].read()
    lines = gzip.decompress(body).decode().splitlines()
    assert [int(line.split(": ")[1].rstrip("}")) for line in lines] == list(range(30))
    assert delivery.records_delivered == 30


def test_a_full_buffer_is_written_at_once(
    aws: Aws, delivery: LocalDelivery, delivery_stream: str
) -> None:
    record = {"Data": b"x" * 200_000 + b"\n"}
    for _ in range(6):
        aws.call(
            "firehose",
            "put_record_batch",
            resource="f",
            DeliveryStreamName=delivery_stream,
            Records=[record],
        )
    assert len(_objects(aws, "readings/")) == 1
    assert delivery.buffered == 0


def test_without_the_local_delivery_the_emulator_keeps_its_own_behaviour(
    aws: Aws, delivery_stream: str
) -> None:
    aws.call(
        "firehose",
        "put_record",
        resource="f",
        DeliveryStreamName=delivery_stream,
        Record={"Data": b"raw\n"},
    )
    assert any("!{timestamp" in key for key in _objects(aws))
