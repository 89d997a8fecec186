"""Fault storms: 30% of AWS calls answered with throttling or 5xx (seeded), and nothing is lost.

Every day-2 command and the processor must succeed through the storm by the one retry policy.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from tests.faults import Rule
from tests.processor_events import (
    LambdaContext,
    failed_sequence_numbers,
    intercept_fixture,  # noqa: F401 (fixture)
    kinesis_record,
    message,
    now_ms,
    read_sinks,
    sinks_fixture,  # noqa: F401 (fixture)
)
from tests.support import client
from tests.test_query import athena, aws_pages, seed_results  # noqa: F401 (fixtures)

from processor import handler  # isort: skip

STORM = 0.3


@pytest.fixture
def stack_up(cli) -> None:
    assert cli("up", "--yes").exit_code == 0


def test_devices_register_through_a_storm(cli, faults, stack_up, endpoint, tmp_path: Path):
    faults.throttle(STORM)
    out = tmp_path / "devices"
    result = cli(
        "devices", "register", "--count", "12", "--prefix", "storm-", "--out-dir", str(out), "--yes"
    )
    assert result.exit_code == 0, result
    assert faults.injected > 0
    iot = client(endpoint, "iot")
    for n in range(1, 13):
        name = f"storm-{n:04d}"
        principals = iot.list_thing_principals(thingName=name)["principals"]
        assert len(principals) == 1, name
        certificate_id = principals[0].rsplit("/", 1)[1]
        described = iot.describe_certificate(certificateId=certificate_id)
        assert described["certificateDescription"]["status"] == "ACTIVE"
        assert (out / name / "private.pem.key").stat().st_mode & 0o777 == 0o600
    things = iot.list_things()["things"]
    assert len([t for t in things if t["thingName"].startswith("storm-")]) == 12


def test_reshard_through_a_storm(cli, faults, stack_up, endpoint) -> None:
    faults.throttle(STORM)
    result = cli("reshard", "--target", "4", "--yes")
    assert result.exit_code == 0, result
    assert faults.injected > 0
    summary = client(endpoint, "kinesis").describe_stream_summary(StreamName="test-readings")
    assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 4


def test_query_through_a_storm(cli, faults, endpoint, athena, aws_pages) -> None:  # noqa: F811
    rows = [[f"d{i}", str(i / 10), str(i)] for i in range(2500)]
    seed_results(endpoint, rows)
    faults.throttle(STORM)
    result = cli("query", "SELECT device_id, temperature, seq FROM readings", "-o", "json")
    assert result.exit_code == 0, result
    assert faults.injected > 0
    assert [r["device_id"] for r in result.json["rows"]] == [r[0] for r in rows]


def test_up_through_server_errors(cli, faults, endpoint) -> None:
    for code in ("InternalFailure", "ServiceUnavailable"):
        faults.rules.append(
            Rule(match=lambda s, o: True, code=code, status=503, probability=STORM / 2)
        )
    result = cli("up", "--yes")
    assert result.exit_code == 0, result
    assert faults.injected > 0
    faults.rules.clear()
    faults.calls.clear()
    assert cli("up", "--yes").exit_code == 0
    assert faults.mutating_calls == []


def test_processor_loses_nothing_through_a_storm_and_redelivery_is_harmless(
    intercept,
    faults,
    sinks,
) -> None:
    """Batches are retried as Lambda does (from the lowest failed sequence number) until done."""
    rng = random.Random(42)
    faults.throttle(STORM)
    devices = [f"dev-{n}" for n in range(15)]
    base = now_ms() - 600_000
    sent: list[dict] = []
    invalid = 0
    for batch_number in range(12):
        records = []
        for i in range(40):
            if rng.random() < 0.05:
                records.append(kinesis_record(b'{"ts": "never", "metrics": {}}', "bad"))
                invalid += 1
                continue
            body = message(
                rng.choice(devices),
                ts=base + rng.randrange(0, 500_000),
                seq=batch_number * 100 + i,
                metrics={"temperature": round(rng.uniform(-10, 40), 2), "battery": 90.0},
            )
            sent.append(body)
            records.append(kinesis_record(body))
        pending = records
        for _attempt in range(100):
            response = handler.lambda_handler({"Records": pending}, LambdaContext())
            failed = failed_sequence_numbers(json.loads(json.dumps(response)))
            if not failed:
                break
            lowest = min(int(s) for s in failed)
            pending = [r for r in pending if int(r["kinesis"]["sequenceNumber"]) >= lowest]
        else:
            pytest.fail(f"batch {batch_number} never succeeded")
    assert faults.injected > 0
    faults.rules.clear()

    contents = read_sinks(sinks)
    keys = {(m["device_id"], m["ts"], m["received_at"]) for m in sent}
    archived = {(a["device_id"], a["ts"], a["received_at"]) for a in contents.archive}
    assert archived == keys, "every valid reading is archived (at least once)"
    assert len(contents.quarantine) >= invalid
    assert {q["reason"] for q in contents.quarantine}
    latest: dict[str, int] = {}
    for m in sent:
        latest[m["device_id"]] = max(latest.get(m["device_id"], 0), m["ts"])
    assert {d: int(item["ts"]) for d, item in contents.state.items()} == latest
    # Redelivered points are identical (same time, dimensions, version, values): AWS upserts
    # them into one point. moto appends, so group and compare.
    by_point: dict[tuple, list[str]] = defaultdict(list)
    for point in contents.points:
        key = (point["Dimensions"][0]["Value"], int(point["Time"]))
        by_point[key].append(json.dumps(point, sort_keys=True))
    assert set(by_point) == {(d, ts) for d, ts, _ in keys}
    assert all(len(set(copies)) == 1 for copies in by_point.values())
