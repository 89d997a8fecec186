"""`iotpipe local serve`: other commands reach the emulator, and its data plane processes what
`simulate` publishes, through the real processor, into the sinks; it follows the stack through
`up`, a changed config, `down` and a crash of its own loops."""

from __future__ import annotations

import json
import re
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from iotpipe.cli import run
from iotpipe.config import parse_config
from iotpipe.local.environ import scoped_environ
from iotpipe.local.serve import LocalServer, follow_config_file

# No batching window: each reading reaches the processor at the next poll.
QUICK_CONFIG = '[stack]\nname = "test"\n\n[processor]\nbatching_window_seconds = 0\n'


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


@pytest.fixture
def checked_server(endpoint: str) -> Iterator[tuple[LocalServer, list[str]]]:
    """A server whose looks (`check()`) the test makes itself, at the moments it chooses."""
    events: list[str] = []
    with LocalServer(
        parse_config({"stack": {"name": "test"}}), port=0, on_event=events.append
    ) as s:
        yield s, events


def _cli(*args: str, config: Path, endpoint: str) -> int:
    return run([*args, "--config", str(config), "--endpoint-url", endpoint])


def _until(condition: Callable[[], bool], server: LocalServer, what: str, seconds=30.0) -> None:
    """Let the server look until `condition` holds."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        server.check()
        time.sleep(0.1)


def _up_register_simulate(url: str, tmp_path: Path, capsys) -> None:
    config = tmp_path / "iotpipe.toml"
    config.write_text(QUICK_CONFIG)
    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    devices = tmp_path / "devices"
    register = ("devices", "register", "--count", "3", "--prefix", "s-", "--out-dir", str(devices))
    assert _cli(*register, "--yes", config=config, endpoint=url) == 0
    simulate = ("simulate", "--devices-dir", str(devices), "--readings", "30")
    assert _cli(*simulate, config=config, endpoint=url) == 0, capsys.readouterr().err


def _device_state(local: LocalServer, events: list[str], expected: list[str]) -> None:
    url = local.endpoint_url
    table = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    deadline = time.monotonic() + 60
    items: list = []
    while time.monotonic() < deadline:
        items = table.scan(TableName="test-device-state")["Items"]
        if len(items) == len(expected):
            break
        time.sleep(0.2)
    log = local.plane.function_log.getvalue()[-4000:] if local.plane else ""
    assert sorted(i["device_id"]["S"] for i in items) == expected, (events, log)


def _publish(url: str, device: str) -> None:
    """One reading on the device's telemetry topic, as a device publishes it."""
    iot = boto3.client("iot-data", endpoint_url=url, region_name="us-east-1")
    reading = {"ts": int(time.time() * 1000), "metrics": {"temperature": 21.5}}
    iot.publish(topic=f"dt/sensors/{device}/telemetry", qos=1, payload=json.dumps(reading))


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
            _device_state(local, events, ["s-0001", "s-0002", "s-0003"])
        finally:
            stop.set()
            thread.join(timeout=10)
    assert any("data plane running" in e for e in events)


def test_what_serve_prints_is_all_a_new_user_needs(
    cli, endpoint: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    """No config file: serve runs on the defaults; its exports and next steps, pasted into
    another shell, take a user to readings in the archive; it says they wait in Firehose's
    buffer and until when, and takes up the shorter interval a later `up` applies."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "pipeline.toml"  # not written yet
    seen: dict[str, object] = {}

    def rehearse(server: LocalServer, stop: threading.Event) -> None:
        printed = capsys.readouterr().out
        seen["printed"] = printed
        exports = {
            name: shlex.split(value)[0]
            for name, value in re.findall(r"^  export (\w+)=(.+)$", printed, re.M)
        }
        # Checked before any command runs: without it they would go to AWS.
        assert exports["AWS_ENDPOINT_URL"] == server.endpoint_url
        assert exports["AWS_DEFAULT_REGION"] == "us-east-1"
        assert exports["IOTPIPE_CONFIG"] == str(config)
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(exports)
        steps = [shlex.split(line) for line in printed.splitlines() if line.startswith("  iotpipe")]
        assert steps[0] == ["iotpipe", "init"]
        events: list[str] = []
        server.on_event = events.append
        with scoped_environ(exports):
            for step in steps:
                assert run(step[1:]) == 0, (step, capsys.readouterr())
                server.check()
            _until(
                lambda: server.plane and server.plane.delivery.buffered_lines == 100, server, "100"
            )
            server.check()
            buffered = [e for e in events if "buffered in Firehose" in e]
            assert buffered and "100 reading(s)" in buffered[-1], events
            assert re.search(r"next delivery at \d\d:\d\d:\d\d UTC \(in 1[45] min", buffered[-1])

            config.write_text(
                config.read_text().replace("buffer_seconds = 900", "buffer_seconds = 0")
            )
            assert run(["up", "--yes"]) == 0, capsys.readouterr()
            _until(lambda: any("delivered 100 reading(s)" in e for e in events), server, "delivery")
            assert any("took up what `iotpipe up` changed" in e and "0 s" in e for e in events)
            capsys.readouterr()
            counted = "SELECT count(*) AS n FROM readings"
            assert run(["local", "query", counted, "-o", "json"]) == 0
            assert json.loads(capsys.readouterr().out)["rows"] == [{"n": 100}]
        seen["events"] = events

    monkeypatch.setattr(LocalServer, "run", rehearse)

    result = cli("local", "serve", "--port", "0", config=config)

    assert result.exit_code == 0, (result, seen)
    assert "no config file" in str(seen["printed"]) and "iotpipe init" in str(seen["printed"])


def test_serve_survives_down_then_up(checked_server, tmp_path: Path) -> None:
    server, events = checked_server
    url = server.endpoint_url
    config = tmp_path / "iotpipe.toml"
    config.write_text(QUICK_CONFIG)
    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    server.check()
    assert server.plane is not None
    _publish(url, "before-down")
    _device_state(server, events, ["before-down"])

    assert _cli("down", "--yes", config=config, endpoint=url) == 0
    server.check()
    assert server.plane is None
    assert any("data plane stopped" in e for e in events), events
    assert not any("crashed" in e for e in events), events

    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    server.check()
    assert server.plane is not None, events
    _publish(url, "after-up")
    # `down` keeps the device-state table (a data store): the new reading joins the old one.
    _device_state(server, events, ["after-up", "before-down"])


def test_a_crash_of_the_data_plane_is_reported_and_it_goes_on(checked_server, tmp_path) -> None:
    server, events = checked_server
    url = server.endpoint_url
    config = tmp_path / "iotpipe.toml"
    config.write_text(QUICK_CONFIG)
    assert _cli("up", "--yes", config=config, endpoint=url) == 0
    server.check()
    plane = server.plane
    assert plane is not None
    poll = plane.poller.poll
    crashes = iter([RuntimeError("disk on fire")])

    def crash_once(**kwargs):
        for error in crashes:
            raise error
        return poll(**kwargs)

    plane.poller.poll = crash_once
    _until(lambda: plane.failure is not None, server, "the crash", seconds=5)
    server.check()

    assert any("data plane crashed: RuntimeError: disk on fire" in e for e in events), events
    _publish(url, "after-crash")
    _device_state(server, events, ["after-crash"])


def test_serve_follows_the_stack_the_config_names(endpoint: str) -> None:
    configs = [parse_config({"stack": {"name": "first"}})]
    events: list[str] = []
    with LocalServer(lambda: configs[-1], port=0, on_event=events.append) as server:
        server.check()
        configs.append(parse_config({"stack": {"name": "second"}}))
        server.check()

        assert server.config.stack.name == "second"
        assert any("stack 'second' now" in e for e in events), events
        configs.append(parse_config({"stack": {"name": "second", "region": "eu-west-1"}}))
        server.check()
        assert any("restart `iotpipe local serve`" in e for e in events), events


def test_a_second_serve_on_a_busy_port_exits_at_once(cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        results = []
        thread = threading.Thread(
            target=lambda: results.append(cli("local", "serve", "--port", str(port))), daemon=True
        )
        thread.start()
        thread.join(timeout=15)

    assert not thread.is_alive(), "local serve hung on a busy port"
    (result,) = results
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.stderr and "in use" in result.stderr
    assert "--port" in result.stderr


def test_serve_without_a_config_file_runs_on_the_defaults(tmp_path: Path) -> None:
    read = follow_config_file(tmp_path / "iotpipe.toml")
    assert read().stack.name == "iotpipe"

    (tmp_path / "iotpipe.toml").write_text('[stack]\nname = "later"\n')
    assert read().stack.name == "later"


def test_serve_refuses_an_invalid_config_file_naming_the_field(cli, tmp_path: Path) -> None:
    config = tmp_path / "iotpipe.toml"
    config.write_text('[stack]\nname = "Not Valid"\n')

    result = cli("local", "serve", "--port", "0", config=config)

    assert result.exit_code == 2
    assert "stack.name" in result.stderr
