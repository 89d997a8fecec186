"""What `local serve` reports about Firehose's buffer, and a delivery that fails losing nothing."""

from __future__ import annotations

import dataclasses

import pytest

from iotpipe.aws import Aws
from iotpipe.errors import AwsError
from iotpipe.local.firehose import LocalDelivery
from tests.support import create_archive_delivery_stream

START = 1_700_000_000.0


@pytest.fixture
def delivery(endpoint: str):
    aws = Aws(endpoint_url=endpoint, region="us-east-1")
    create_archive_delivery_stream(
        aws, "readings/dt=!{timestamp:yyyy-MM-dd}/", "errors/!{firehose:error-output-type}/"
    )
    now = [START]
    local = LocalDelivery.from_emulator(aws, "test-archive", clock=lambda: now[0])
    # Two Firehose records holding three readings: the processor packs lines into records.
    local.accept([b'{"n": 1}\n{"n": 2}\n', b'{"n": 3}\n'])
    return local, now


def _objects(delivery: LocalDelivery) -> list[str]:
    listed = delivery.aws.call(
        "s3", "list_objects_v2", resource="b", Bucket="archive", Prefix="readings/"
    )
    return [o["Key"] for o in listed.get("Contents", [])]


def test_buffered_readings_are_counted_by_line_and_their_delivery_time_is_known(delivery) -> None:
    local, _ = delivery

    assert local.buffered == 2 and local.buffered_lines == 3
    assert local.next_delivery_at() == START + 60
    assert local.config.destination == "s3://archive/readings/"
    assert local.config.buffering == "up to 60 s or 1 MiB"


def test_new_buffering_hints_apply_to_what_is_already_buffered(delivery) -> None:
    local, _ = delivery
    local.reconfigure(dataclasses.replace(local.config, buffer_seconds=0))

    assert local.next_delivery_at() == START
    assert local.flush_if_due() is not None
    assert local.lines_delivered == 3 and local.buffered_lines == 0
    assert local.next_delivery_at() is None


def test_a_failed_delivery_keeps_the_readings_for_the_next_attempt(faults, delivery) -> None:
    # `faults` first: its hook is on every client the delivery creates.
    local, now = delivery
    faults.fail("s3", "PutObject", "NoSuchBucket", "The bucket does not exist", status=404)
    now[0] += 61

    with pytest.raises(AwsError, match="does not exist"):
        local.flush_if_due()
    assert local.buffered_lines == 3 and _objects(local) == []
    assert local.next_delivery_at() == START + 60

    assert local.flush_if_due() is not None
    assert local.lines_delivered == 3 and len(_objects(local)) == 1
