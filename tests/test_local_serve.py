"""`iotpipe local serve`: other commands reach the emulator, and its data plane processes what
`simulate` publishes, through the real processor, into the sinks."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import boto3
import pytest

from iotpipe.cli import run
from iotpipe.config import parse_config
from iotpipe.local.serve import LocalServer


@pytest.fixture
def server(endpoint: str):
    # The server's emulator shares the in-process emulator state: `endpoint` emptied it.
    events: list[str] = []
    stop = threading.Event()
    with LocalServer(
        parse_config({"stack": {"name": "test"}}), port=0, on_event=events.append
    ) as s:
        thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
        thread.start()
        yield s, events
        stop.set()
        thread.join(timeout=10)


def _cli(*args: str, config: Path, endpoint: str) -> int:
    return run([*args, "--config", str(config), "--endpoint-url", endpoint])


def _up_register_simulate(url: str, tmp_path: Path, capsys) -> None:
    config = tmp_path / "iotpipe.toml"
    config.write_text('[stack]\nname = "test"\n')
    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    devices = tmp_path / "devices"
    register = ("devices", "register", "--count", "3", "--prefix", "s-", "--out-dir", str(devices))
    assert _cli(*register, "--yes", config=config, endpoint=url) == 0
    simulate = ("simulate", "--devices-dir", str(devices), "--readings", "30")
    assert _cli(*simulate, config=config, endpoint=url) == 0, capsys.readouterr().err


def _device_state(local: LocalServer, events: list[str]) -> None:
    url = local.endpoint_url
    table = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    deadline = time.monotonic() + 60
    items: list = []
    while time.monotonic() < deadline:
        items = table.scan(TableName="test-device-state")["Items"]
        if len(items) == 3:
            break
        time.sleep(0.5)
    log = local.plane.function_log.getvalue()[-4000:] if local.plane else ""
    assert sorted(i["device_id"]["S"] for i in items) == ["s-0001", "s-0002", "s-0003"], (
        events,
        log,
    )


def test_serve_runs_the_pipeline_for_commands_pointed_at_it(server, tmp_path, capsys) -> None:
    local, events = server
    _up_register_simulate(local.endpoint_url, tmp_path, capsys)
    _device_state(local, events)
    assert any("data plane running" in e for e in events)


def test_readings_sent_before_the_data_plane_starts_are_processed(
    endpoint: str, tmp_path, capsys
) -> None:
    events: list[str] = []
    stop = threading.Event()
    with LocalServer(
        parse_config({"stack": {"name": "test"}}), port=0, on_event=events.append
    ) as local:
        # Everything happens before the server has looked for the stack.
        _up_register_simulate(local.endpoint_url, tmp_path, capsys)
        thread = threading.Thread(target=local.run, args=(stop,), daemon=True)
        thread.start()
        try:
            _device_state(local, events)
        finally:
            stop.set()
            thread.join(timeout=10)
