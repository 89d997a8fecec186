"""`simulate`: readings are never stamped in the future, and the summary says what the pipeline
made of them where it can tell (against `local serve`, whose processor writes the device state)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import boto3
import pytest

from iotpipe.cli import run
from iotpipe.local.serve import LocalServer
from iotpipe.simulate import ReadingGenerator


@pytest.mark.parametrize(("things", "count"), [(1, 1), (1, 240), (2, 100), (7, 1000)])
def test_no_generated_reading_is_in_the_future(things: int, count: int) -> None:
    names = [f"s-{i}" for i in range(things)]
    generator = ReadingGenerator(names, malformed_every=0)

    readings = list(generator.readings(count))

    now = int(time.time() * 1000)
    stamps = [json.loads(r.payload)["ts"] for r in readings]
    assert max(stamps) <= now
    assert stamps == [r.ts for r in readings]
    # Still one reading a minute per device, ending at the present (within this test's run).
    assert now - max(stamps) < 60_000
    first = [json.loads(r.payload)["ts"] for r in readings if r.thing == names[0]]
    assert all(b - a == 60_000 for a, b in itertools.pairwise(first))
    assert generator.start_ms == min(stamps)


def test_a_start_in_the_future_is_moved_back() -> None:
    later = int(time.time() * 1000) + 3_600_000
    generator = ReadingGenerator(["a", "b"], start_ms=later)

    stamps = [json.loads(r.payload)["ts"] for r in generator.readings(10)]

    assert max(stamps) <= int(time.time() * 1000)
    assert generator.start_ms < later


def _cli(*args: str, config: Path, endpoint: str) -> int:
    return run([*args, "--config", str(config), "--endpoint-url", endpoint])


def test_simulate_against_local_serve_reports_what_the_pipeline_accepted(
    local_server: LocalServer, tmp_path: Path, capsys
) -> None:
    url = local_server.endpoint_url
    config = tmp_path / "iotpipe.toml"
    config.write_text('[stack]\nname = "test"\n')
    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    devices = tmp_path / "devices"
    register = ("devices", "register", "--count", "2", "--prefix", "s-", "--out-dir", str(devices))
    assert _cli(*register, "--yes", config=config, endpoint=url) == 0
    capsys.readouterr()

    # 100 readings from 2 devices: 50 minutes of readings, all of them in the past.
    simulate = ("simulate", "--devices-dir", str(devices), "--readings", "100")
    assert _cli(*simulate, config=config, endpoint=url) == 0
    finished = int(time.time() * 1000)

    captured = capsys.readouterr()
    said = captured.out + captured.err  # diagnostics go to stdout without a terminal
    summary = next(line for line in said.splitlines() if line.startswith("sent 100 readings"))
    assert "the IoT data plane accepted all" in summary
    assert "none stamped in the future" in summary
    assert "device state shows the newest reading of 2 of 2 device(s)" in summary, said
    aws = {"endpoint_url": url, "region_name": "us-east-1"}
    state = boto3.client("dynamodb", **aws).scan(TableName="test-device-state")["Items"]
    assert sorted(i["device_id"]["S"] for i in state) == ["s-0001", "s-0002"]
    assert all(int(i["ts"]["N"]) <= finished for i in state)
    s3 = boto3.client("s3", **aws)
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "archive" in b["Name"])
    quarantined = s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("KeyCount", 0)
    assert quarantined == 0, "no simulated reading was quarantined"
