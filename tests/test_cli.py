"""The command-line contract: global options anywhere, confirmation, exit codes."""

from __future__ import annotations

import pytest

from iotpipe.cli import hoist_global_options


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["query", "SELECT 1", "--output", "json"],
            ["--output", "json", "query", "SELECT 1"],
        ),
        (
            ["up", "--yes", "--region=eu-west-1", "-v"],
            ["--region=eu-west-1", "-v", "up", "--yes"],
        ),
        (["devices", "list", "--config", "x.toml"], ["--config", "x.toml", "devices", "list"]),
        (["query", "--", "--output"], ["query", "--", "--output"]),
    ],
)
def test_global_options_may_follow_the_subcommand(argv, expected) -> None:
    assert hoist_global_options(argv) == expected


def test_up_refuses_without_a_terminal_unless_yes(cli, faults) -> None:
    result = cli("up")
    assert result.exit_code == 1
    assert "--yes" in result.stderr
    assert faults.mutating_calls == []


def test_unknown_command_is_a_usage_error(cli) -> None:
    assert cli("frobnicate").exit_code == 2


def test_unknown_profile_is_a_usage_error(cli, faults) -> None:
    result = cli("plan", "--profile", "no-such-profile-here")
    assert result.exit_code == 2
    assert "no-such-profile-here" in result.stderr
    assert faults.calls == []


def test_aws_failure_names_the_resource_and_exits_1(cli, faults) -> None:
    faults.fail("kinesis", "CreateStream", "AccessDeniedException", "not allowed", times=None)
    result = cli("up", "--yes")
    assert result.exit_code == 1
    assert "kinesis.stream test-readings" in result.stderr
    assert "AccessDeniedException" in result.stderr
    assert "Traceback" not in result.stderr


def test_version(capsys) -> None:
    from iotpipe import __version__
    from iotpipe.cli import run

    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"iotpipe {__version__}"
