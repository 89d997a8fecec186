"""Device-side batching: a message may carry several readings ({"readings": [...]}). The processor
takes either shape, the simulator sends either, and `cost` shows what batching saves."""

from __future__ import annotations

import base64
import gzip
import json
import time
from datetime import date
from pathlib import Path

import boto3
import pytest

from iotpipe.cli import run
from iotpipe.config import Config, parse_config
from iotpipe.cost import cost_report, load_prices
from iotpipe.errors import ConfigError
from iotpipe.local.serve import LocalServer
from iotpipe.simulate import Device, simulate
from tests.processor_events import (  # noqa: F401  (fixtures: sinks, intercept)
    LambdaContext,
    failed_sequence_numbers,
    intercept_fixture,
    kinesis_event,
    kinesis_record,
    message,
    now_ms,
    read_sinks,
    sinks_fixture,
)

from processor import handler  # isort: skip


def batched(device_id: str, *readings: dict, **extra) -> dict:
    """A batched device message as the IoT rule forwards it (plus device_id and received_at)."""
    return {"readings": list(readings), **extra, "device_id": device_id, "received_at": now_ms()}


def sequence(record: dict) -> str:
    return record["kinesis"]["sequenceNumber"]


# --- The processor takes either shape -------------------------------------------------------


def test_every_reading_of_a_batched_message_reaches_every_sink(intercept, sinks) -> None:
    now = now_ms()
    readings = [
        {"ts": now - 3_000, "seq": 1, "metrics": {"t": 20.5}},
        {"ts": now - 2_000, "seq": 2, "metrics": {"t": 21.0}, "note": "door open"},
        {"ts": now - 1_000, "seq": 3, "metrics": {"t": 21.5}},
    ]
    event = kinesis_event(batched("pump-1", *readings, firmware="2.0"), message("valve-2"))

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    # The device state holds the newest reading of the message.
    assert found.state["pump-1"]["ts"] == now - 1_000
    assert found.state["pump-1"]["seq"] == 3
    assert sorted(found.state) == ["pump-1", "valve-2"]
    # The archive has one line per reading, each with the message's own fields.
    lines = sorted(
        (line for line in found.archive if line["device_id"] == "pump-1"), key=lambda x: x["ts"]
    )
    assert [line["ts"] for line in lines] == [now - 3_000, now - 2_000, now - 1_000]
    assert lines[0]["extra"] == {"firmware": "2.0"}
    assert lines[1]["extra"] == {"firmware": "2.0", "note": "door open"}
    assert {line["received_at"] for line in lines} == {event_received_at(event, 0)}
    # One time-series point per reading.
    assert len([p for p in found.points if p["Dimensions"][0]["Value"] == "pump-1"]) == 3
    assert found.quarantine == []


def event_received_at(event: dict, position: int) -> int:
    return json.loads(base64.b64decode(event["Records"][position]["kinesis"]["data"]))[
        "received_at"
    ]


def test_the_valid_readings_of_a_message_go_on_and_the_record_is_quarantined_for_the_rest(
    intercept, sinks
) -> None:
    now = now_ms()
    body = batched(
        "pump-1",
        {"ts": now - 2_000, "metrics": {"t": 20.0}},
        {"ts": now - 1_500, "metrics": {}},
        {"ts": now - 1_000, "metrics": {"t": 21.0}, "device_id": "pump-9"},
        "not a reading",
    )
    event = kinesis_event(body)

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert [line["ts"] for line in found.archive] == [now - 2_000]
    assert found.state["pump-1"]["ts"] == now - 2_000
    (line,) = found.quarantine
    assert line["sequence_number"] == sequence(event["Records"][0])
    # The raw message is kept whole, and the reason names each refused reading.
    assert json.loads(base64.b64decode(line["raw"]))["readings"][1] == {
        "ts": now - 1_500,
        "metrics": {},
    }
    assert "readings[1]: metrics is empty" in line["reason"]
    assert "readings[2]: has device_id, which the IoT rule sets per message" in line["reason"]
    assert "readings[3]: is a string, expected an object" in line["reason"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"readings": []}, "readings is empty"),
        ({"readings": {"ts": 1}}, "readings is an object, expected an array of readings"),
        (
            {"readings": [{"metrics": {"t": 1.0}}], "ts": 1},
            "a message with readings may not have ts of its own",
        ),
    ],
)
def test_a_batched_message_that_cannot_be_read_is_quarantined_whole(
    intercept, sinks, body, reason
) -> None:
    event = kinesis_event({**body, "device_id": "pump-1", "received_at": now_ms()})

    response = handler.lambda_handler(event, LambdaContext())

    assert response == {"batchItemFailures": []}
    found = read_sinks(sinks)
    assert found.state == {} and found.archive == []
    assert reason in found.quarantine[0]["reason"]


def test_a_batched_message_still_speaks_only_for_its_publisher(intercept, sinks) -> None:
    body = batched("victim", {"ts": now_ms() - 1_000, "metrics": {"t": 99.0}})
    event = {"Records": [kinesis_record(json.dumps(body).encode(), partition_key="attacker")]}

    handler.lambda_handler(event, LambdaContext())

    found = read_sinks(sinks)
    assert found.state == {}
    assert "is not the publishing device 'attacker'" in found.quarantine[0]["reason"]


def test_a_failed_write_reports_the_whole_message_for_redelivery(intercept, faults, sinks) -> None:
    faults.fail("firehose", "PutRecordBatch", "AccessDeniedException", times=None)
    now = now_ms()
    event = kinesis_event(
        batched(
            "pump-1",
            {"ts": now - 2_000, "metrics": {"t": 1.0}},
            {"ts": now - 1_000, "metrics": {"t": 2.0}},
        )
    )

    response = handler.lambda_handler(event, LambdaContext())

    assert failed_sequence_numbers(response) == {sequence(event["Records"][0])}


# --- The simulator sends either shape -------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict | bytes]] = []

    def publish(self, thing: str, topic: str, payload: bytes) -> None:
        try:
            self.sent.append((thing, json.loads(payload)))
        except ValueError:
            self.sent.append((thing, payload))

    def close(self) -> None:
        return None


def devices(*names: str) -> list[Device]:
    return [
        Device(n, n, f"dt/sensors/{n}/telemetry", "localhost", 8883, Path("c"), Path("k"))
        for n in names
    ]


def test_the_simulator_sends_each_devices_readings_in_messages_of_n() -> None:
    recorder = Recorder()

    result = simulate(devices("a", "b"), recorder, readings=23, readings_per_message=5)

    # 12 readings of a in 5 + 5 + 2, 11 of b in 5 + 5 + 1: every reading sent, none twice.
    assert (result.sent, result.messages) == (23, 6)
    sizes = {thing: [len(m["readings"]) for t, m in recorder.sent if t == thing] for thing in "ab"}
    assert sizes == {"a": [5, 5, 2], "b": [5, 5, 1]}
    seqs = [r["seq"] for t, m in recorder.sent if t == "a" for r in m["readings"]]
    assert seqs == list(range(1, 13))
    assert result.to_dict()["messages"] == 6


def test_the_simulator_sends_one_reading_a_message_by_default() -> None:
    recorder = Recorder()

    result = simulate(devices("a"), recorder, readings=3)

    assert (result.sent, result.messages) == (3, 3)
    assert all("readings" not in m and "metrics" in m for _, m in recorder.sent)


def test_batched_messages_go_through_the_whole_local_pipeline(
    local_server: LocalServer, tmp_path: Path, capsys
) -> None:
    url = local_server.endpoint_url

    def cli(*args: str) -> int:
        return run([*args, "--config", str(config), "--endpoint-url", url])

    config = tmp_path / "iotpipe.toml"
    config.write_text(
        '[stack]\nname = "test"\n[volume]\nreadings_per_message = 10\n'
        "[archive]\nbuffer_seconds = 0\n"  # delivered at once: the archive can be read
    )
    assert cli("up", "--yes") == 0
    registered = tmp_path / "devices"
    register = (
        "devices",
        "register",
        "--count",
        "2",
        "--prefix",
        "s-",
        "--out-dir",
        str(registered),
    )
    assert cli(*register, "--yes") == 0
    capsys.readouterr()

    # The config's readings_per_message is the simulator's default.
    assert cli("simulate", "--devices-dir", str(registered), "--readings", "40") == 0

    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "sent 40 readings in 4 messages" in said, said
    assert "device state shows the newest reading of 2 of 2 device(s)" in said, said
    aws = {"endpoint_url": url, "region_name": "us-east-1"}
    s3 = boto3.client("s3", **aws)
    bucket = next(b["Name"] for b in s3.list_buckets()["Buckets"] if "archive" in b["Name"])
    assert s3.list_objects_v2(Bucket=bucket, Prefix="quarantine/").get("KeyCount", 0) == 0
    deadline = time.monotonic() + 20
    lines: list[dict] = []
    while time.monotonic() < deadline and len(lines) < 40:
        listing = s3.list_objects_v2(Bucket=bucket, Prefix="readings/").get("Contents", [])
        lines = [
            json.loads(line)
            for o in listing
            for line in gzip.decompress(
                s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            ).splitlines()
            if line
        ]
        time.sleep(0.2)
    assert len(lines) == 40, "every reading of every message is archived"


# --- cost -----------------------------------------------------------------------------------


def test_cost_shows_what_batching_saves_and_prices_it_when_on() -> None:
    prices, today = load_prices(), date(2025, 7, 1)
    off = cost_report(Config(), prices, today)
    saving = next(s for s in off.savings if s.optimisation == "device-side batching")
    # 17 readings of 300 bytes fill one 5 KB IoT message: rules, actions and Kinesis PUT units
    # are charged per message, so 1/17 of them.
    assert (saving.in_use, saving.optimised, saving.naive) == (False, 17, 1)
    assert "17 readings a message" in saving.why
    per_million = 0.15 + 0.15 + 0.014  # rule, action, PUT payload unit
    messages = 500_000 * 30.4
    assert saving.monthly_saving == pytest.approx(
        messages * (1 - 1 / 17) / 1e6 * per_million, abs=0.01
    )
    on = cost_report(Config.model_validate({"volume": {"readings_per_message": 17}}), prices, today)
    assert on.configured.total == pytest.approx(off.configured.total - saving.monthly_saving)
    rules = next(i for i in on.configured.items if i.item == "rules triggered")
    assert rules.quantity == pytest.approx(messages / 17)
    assert next(s for s in on.savings if s.optimisation == "device-side batching").in_use


def test_a_message_larger_than_iot_core_takes_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"volume: readings_per_message \(500\)"):
        parse_config({"volume": {"readings_per_message": 500, "bytes_per_reading": 300}})
