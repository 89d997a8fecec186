"""`status` on a stack that has not received a reading yet: "no traffic yet", not a failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

from iotpipe.aws import Aws
from iotpipe.config import load_config
from iotpipe.context import StackContext
from iotpipe.health import UNHEALTHY, WARNING, Health

STREAM = "test-readings"


def _archive_check(result) -> dict:
    return next(c for c in result.json["health"] if c["name"] == "archive delivery")


def test_status_right_after_a_fresh_up_says_no_traffic_yet(cli) -> None:
    assert cli("up", "--yes").exit_code == 0

    result = cli("status", "--output", "json")

    assert result.exit_code == 0, result
    assert result.json["healthy"] is True
    archive = _archive_check(result)
    assert archive["state"] == WARNING
    assert archive["detail"].startswith("no traffic yet")
    table = cli("status")
    assert table.exit_code == 0
    assert "no traffic yet" in table.stdout


def test_readings_that_never_reach_the_archive_are_unhealthy_once_overdue(
    cli, endpoint: str, config_file: Path
) -> None:
    assert cli("up", "--yes").exit_code == 0
    now = datetime.now(UTC)
    boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1").put_metric_data(
        Namespace="AWS/Kinesis",
        MetricData=[
            {
                "MetricName": "IncomingRecords",
                "Dimensions": [{"Name": "StreamName", "Value": STREAM}],
                "Timestamp": now,
                "Value": 40,
                "Unit": "Count",
            }
        ],
    )
    config = load_config(config_file)
    aws = Aws(endpoint_url=endpoint)
    stack = StackContext(config, aws)
    limit = config.alerts.archive_freshness_seconds

    def archive_at(moment: datetime):
        return Health(aws, stack, now=moment).archive_delivery()

    # Within the freshness limit the readings may still be in Firehose's buffer.
    on_their_way = archive_at(now + timedelta(minutes=5))
    assert on_their_way.state == WARNING
    assert on_their_way.detail.startswith("first readings reached the stream")
    # Past it, an archive that has never received anything is a failure, not "no traffic".
    overdue = archive_at(now + timedelta(seconds=limit + 600))
    assert overdue.state == UNHEALTHY
    assert "none has ever been delivered" in overdue.detail
