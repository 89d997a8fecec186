"""Hypothesis-generated command-line input: thing names, CSV files, SQL files.

Whatever arrives, the CLI answers with an exit code and a message: never a traceback, and bad
input (exit 2) makes no AWS call.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
# A leading "-" reads as an option, as with any command-line tool (`--` ends the options).
names = st.one_of(
    st.from_regex(r"[a-zA-Z0-9:_-]{1,20}", fullmatch=True),
    st.text(min_size=1, max_size=140),
).filter(lambda s: not s.startswith("-"))


def _no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr, result
    assert result.exit_code in (0, 1, 2), result


@FUZZ
@given(st.lists(names, min_size=1, max_size=4))
def test_thing_names(cli, faults, tmp_path: Path, things: list[str]) -> None:
    faults.calls.clear()
    result = cli("devices", "register", *things, "--out-dir", str(tmp_path / "d"), "--yes")
    _no_traceback(result)
    bad = [t for t in things if not THING_NAME.fullmatch(t)] or len(set(things)) < len(things)
    if bad:
        assert result.exit_code == 2, result
        assert faults.calls == []
    else:
        # Valid names reach AWS; this emulated account has no stack, so it says to run `up`.
        assert result.exit_code == 1
        assert "iotpipe up" in result.stderr


@FUZZ
@given(st.binary(max_size=300))
def test_csv_files(cli, faults, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fleet.csv"
    path.write_bytes(content)
    faults.calls.clear()
    result = cli("devices", "register", "--from-csv", str(path), "--yes")
    _no_traceback(result)
    if result.exit_code == 2:
        assert faults.calls == []
        assert "fleet.csv" in result.stderr


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_sql_files(cli, faults, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "q.sql"
    path.write_bytes(content)
    faults.calls.clear()
    result = cli("query", "-f", str(path))
    _no_traceback(result)
    if result.exit_code == 2:
        assert faults.calls == []
