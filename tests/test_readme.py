"""The README's commands exist and work: its code blocks are parsed and run against the emulator."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from iotpipe.cli import run

README = Path(__file__).resolve().parent.parent / "README.md"
# Long-running or interactive commands tested on their own (test_demo.py, test_local_*.py).
NOT_RUN_HERE = {"demo", "local"}


def readme_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            if line.startswith("iotpipe "):
                commands.append(shlex.split(line, comments=True)[1:])
    return commands


def needs_confirmation(argv: list[str]) -> bool:
    if argv[0] == "devices":
        return argv[1] in ("register", "revoke") or "--desired" in argv
    return argv[0] in ("up", "down") or (argv[0] == "reshard" and "--target" in argv)


def test_the_readme_lists_commands() -> None:
    assert len(readme_commands()) >= 20


@pytest.mark.parametrize("argv", readme_commands(), ids=lambda argv: " ".join(argv)[:60])
def test_every_readme_command_and_option_exists(argv: list[str], capsys) -> None:
    # click rejects an unknown command or option while parsing, before it acts on --help.
    assert run([*argv, "--help"]) == 0, capsys.readouterr().err


def test_an_unknown_option_fails_the_parse_check(capsys) -> None:
    assert run(["up", "--no-such-option", "--help"]) == 2
    assert run(["devices", "enrol", "--help"]) == 2


def test_the_readme_walkthrough_runs_against_the_emulator(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleet.csv").write_text("name,site\nplant-1,north\nplant-2,south\n")
    config = tmp_path / "iotpipe.toml"
    results = {}
    for argv in readme_commands():
        if argv[0] in NOT_RUN_HERE:
            continue
        if argv[0] == "init":
            argv = [*argv, "--force"]
        # There is no terminal to answer the confirmation on.
        if needs_confirmation(argv) and "--yes" not in argv:
            argv = [*argv, "--yes"]
        result = cli(*argv, config=config)
        results[" ".join(argv)] = result
        allowed = (0, 1) if argv[0] == "status" else (0,)
        assert result.exit_code in allowed, (argv, result)
        assert "Traceback" not in result.stdout + result.stderr
    assert any(key.startswith("up") for key in results)
    assert any(key.startswith("down --delete-data") for key in results)
