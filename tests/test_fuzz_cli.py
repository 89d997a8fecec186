"""Hypothesis-generated command-line input: whole command lines, thing names, CSV files, SQL.

Whatever arrives, the CLI answers with an exit code and a message: never a traceback, and bad
input (exit 2) makes no AWS call.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.cli import app, run
from tests.conftest import SECRETS

# A fixed seed and no example database: CI runs the same examples every time.
FUZZ = settings(
    max_examples=80,
    derandomize=True,
    database=None,
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


# Command lines from the app's own command tree ---------------------------------------------------
# Left out, and why: `local serve` runs until Ctrl-C; `demo` brings a whole pipeline up on an
# emulator of its own (tests/test_demo.py runs it).
NOT_FUZZED = {("local", "serve"), ("demo",)}
# Never generated: --yes (without it and without a terminal, a command that would change AWS
# refuses, so the fuzz changes nothing and stays fast), and help, which only prints.
NOT_GENERATED = {"--yes", "-y", "--help", "-h"}


def _leaf_commands() -> list[tuple[tuple[str, ...], Any]]:
    leaves = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in sorted(subcommands.items()):
                walk(sub, (*path, name))
        elif path not in NOT_FUZZED:
            leaves.append((path, command))

    walk(typer.main.get_command(app), ())
    return leaves


LEAVES = _leaf_commands()
# What a user might type as a value: names, SQL, markup and emoji codes, odd characters, and
# "-" (read stdin).
words = st.one_of(
    st.sampled_from(["", " ", "-", "sensor-1", "a:b", ":x:", "[bold]x[/b]", "SELECT 1", "é"]),
    st.text(max_size=12),
)


def _paths(tmp: Path) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [str(tmp / "fleet.csv"), str(tmp / "q.sql"), str(tmp), "devices", "missing.csv", ""]
    )


def _value(param: Any, tmp: Path) -> st.SearchStrategy[str]:
    """A value for `param`: four times in five of its type (choices, numbers in and out of
    range, paths), else anything at all."""
    descriptor = param.type_descriptor
    typed: st.SearchStrategy[str]
    if descriptor.choices:
        typed = st.sampled_from([str(getattr(c, "value", c)) for c in descriptor.choices])
    elif descriptor.is_path:
        typed = _paths(tmp)
    elif param.bare_type() in ("int", "float"):
        bounds = [b for b in (param.min, param.max) if b is not None]
        edges = [str(b + d) for b in bounds for d in (-1, 0, 1)]
        typed = st.one_of(st.integers(-3, 3_000).map(str), st.sampled_from(edges or ["0"]))
        if param.bare_type() == "float":
            typed = st.one_of(typed, st.sampled_from(["0.5", "1e3", "nan", "inf"]))
    else:
        typed = words
    return st.integers(0, 4).flatmap(lambda n: typed if n else words)


def _option_tokens(param: Any, tmp: Path) -> st.SearchStrategy[list[str]]:
    name = st.sampled_from([o for o in param.opts if o not in NOT_GENERATED])
    if param.is_flag or param.count:
        return name.map(lambda n: [n])
    return st.tuples(name, _value(param, tmp)).map(list)


# Global options: usually ones that work, now and then one of every wrong kind (never a real
# AWS host: an endpoint is the emulator, or a URL that fails at once). Given after the fixed
# --config and --endpoint-url, they win.
GLOBALS: dict[str, st.SearchStrategy[str]] = {
    "--output": st.sampled_from(["table", "json", "csv", "yaml"]),
    "--region": st.sampled_from(["us-east-1", "eu-west-1", "mars-north-1", "us east", ""]),
    "--endpoint-url": st.sampled_from(["notaurl", "http://127.0.0.1:1", "ftp://x", "http://"]),
    "--config": st.sampled_from(["missing.toml", "bad.toml", "zz.toml", "."]),
    "--profile": st.sampled_from(["no-such-profile", ""]),
}
GLOBAL_WEIGHTS = ["--output"] * 4 + ["--region"] * 2 + ["--endpoint-url", "--config", "--profile"]


@st.composite
def command_lines(draw: st.DrawFn, tmp: Path) -> list[str]:
    path, command = draw(st.sampled_from(LEAVES))
    tokens: list[str] = list(path)
    options = [
        p
        for p in command.params
        if p.param_type_name == "option" and not set(p.opts) <= NOT_GENERATED
    ]
    for param in draw(st.lists(st.sampled_from(options), max_size=3)) if options else []:
        tokens += draw(_option_tokens(param, tmp))
    for param in [p for p in command.params if p.param_type_name == "argument"]:
        # Mostly given (a missing one is a usage error); a list argument sometimes gets two.
        count = draw(st.sampled_from([0, 1, 1, 1, 2] if param.nargs == -1 else [0, 1, 1, 1, 1]))
        tokens += [draw(_value(param, tmp)) for _ in range(count)]
    for option in draw(st.lists(st.sampled_from(GLOBAL_WEIGHTS), max_size=2)):
        tokens += [option, draw(GLOBALS[option])]
    if draw(st.booleans()):
        tokens.append("-v")
    if draw(st.integers(0, 9)) == 0:  # now and then, something that is no option at all
        tokens.insert(draw(st.integers(0, len(tokens))), draw(st.sampled_from(["--bogus", "-z"])))
    return tokens


@pytest.fixture
def fuzz_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own (init, register write there) and stdin that is not a
    terminal (a confirmation refuses, `-` reads nothing)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    (tmp_path / "fleet.csv").write_text("name,site\nsensor-1,north\n")
    (tmp_path / "q.sql").write_text("SELECT 1")
    (tmp_path / "bad.toml").write_text("[stack\n")
    (tmp_path / "zz.toml").write_text('[stack]\nname = "test"\nregion = "zz-north-1"\n')
    return tmp_path


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_every_command_line_gets_an_exit_code_and_no_traceback(
    capsys: pytest.CaptureFixture[str], endpoint: str, fuzz_dir: Path, data: st.DataObject
) -> None:
    config = fuzz_dir / "iotpipe.toml"
    config.write_text('[stack]\nname = "test"\n')  # `init --force` may have replaced it
    tokens = data.draw(command_lines(fuzz_dir), label="command line")
    capsys.readouterr()
    # The fixed config and endpoint first: a generated global option after them wins.
    code = run(["--config", str(config), "--endpoint-url", endpoint, *tokens])
    captured = capsys.readouterr()
    printed = captured.out + captured.err
    assert code in (0, 1, 2), (tokens, code, printed)
    assert "Traceback" not in printed, (tokens, printed)
    for secret in SECRETS:
        assert secret not in printed, tokens
