"""`iotpipe demo` end to end, in-process: up, devices, readings, drain, query, accounting."""

from __future__ import annotations

import json
import sys

import pytest

from iotpipe.cli import run


@pytest.fixture
def clean_emulator(endpoint: str) -> str:
    # The demo's own emulator shares the in-process emulator state: start from an empty account.
    return endpoint


def test_demo_runs_the_pipeline_and_loses_nothing(
    clean_emulator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["demo", "--devices", "3", "--readings", "120", "--output", "json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert summary["sent"] == 120 and summary["malformed_sent"] == 1
    assert summary["lost"] == 0
    stored = summary["stored"]
    assert stored["archive_lines"] + summary["quarantined"] == 120
    assert summary["quarantined"] >= 1
    assert stored["device_state_items"] == 3
    assert stored["timeseries_records"] == stored["archive_lines"]
    assert summary["query"]["engine"].startswith("local")
    rows = summary["query"]["rows"]
    assert sorted(r[0] for r in rows) == ["sensor-0001", "sensor-0002", "sensor-0003"]
    assert sum(r[1] for r in rows) == stored["archive_lines"]
    # Progress went to stderr.
    assert "draining" in captured.err


def test_demo_prints_the_rows_and_the_summary(
    clean_emulator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["demo", "--devices", "2", "--readings", "20"])

    out = capsys.readouterr().out
    assert code == 0
    assert "sensor-0001" in out and "sensor-0002" in out
    assert "Demo summary" in out and "0 readings lost" in out


def test_demo_without_the_local_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)

    code = run(["demo"])

    err = capsys.readouterr().err
    assert code == 2
    assert "duckdb" in err and "iotpipe[local]" in err
