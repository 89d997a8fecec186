"""The command-line contract: global options anywhere, confirmation, exit codes, Ctrl-C, and a
clear message (never a traceback) for a bad endpoint, region or config."""

from __future__ import annotations

import _thread
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import typer

from iotpipe.aws import CONNECT_ATTEMPTS, Aws, add_client_hook, is_mutating
from iotpipe.cli import app, hoist_global_options


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


# Confirmation ----------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    """stdin as a terminal on which the user types `answer`."""

    def isatty(self) -> bool:
        return True


def test_up_refuses_without_a_terminal_unless_yes(cli, faults) -> None:
    result = cli("up")
    assert result.exit_code == 2
    assert "no terminal" in result.stderr
    assert "--yes" in result.stderr
    assert faults.mutating_calls == []


@pytest.mark.parametrize("answer", ["n\n", "no\n", "\n", ""], ids=["n", "no", "enter", "eof"])
def test_answering_anything_but_yes_cancels_with_exit_1(
    cli, faults, monkeypatch: pytest.MonkeyPatch, answer: str
) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(answer))
    result = cli("up")
    assert "Apply these changes to stack 'test'? [y/N]" in result.stderr
    assert result.exit_code == 1
    assert "cancelled: nothing was changed" in result.stderr
    assert "error" not in result.stderr  # a choice, not a failure
    assert faults.mutating_calls == []


# Ctrl-C ----------------------------------------------------------------------------------------
def _interrupt_at_mutating_call(number: int):
    """Ctrl-C as the `number`th mutating AWS call is made; returns a remover. The interrupt goes
    to the main thread, as a terminal's does, whichever thread makes the call."""
    seen = [0]
    lock = threading.Lock()

    def attach(service: str, client) -> None:
        def before_call(model, **_) -> None:
            if not is_mutating(model.name):
                return
            with lock:
                seen[0] += 1
                if seen[0] == number:
                    _thread.interrupt_main()

        client.meta.events.register("before-call", before_call)

    return add_client_hook(attach)


def test_ctrl_c_says_the_run_was_interrupted_and_a_rerun_continues_it(cli) -> None:
    remove = _interrupt_at_mutating_call(5)
    try:
        interrupted = cli("up", "--yes")
    finally:
        remove()
    assert interrupted.exit_code == 130
    assert "interrupted" in interrupted.stderr
    assert "run the same command again to continue" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    # What the message promises: the same command finishes the job.
    assert cli("up", "--yes").exit_code == 0
    summary = cli("plan").stdout.strip().splitlines()[-1]
    assert summary.endswith(" no-change"), summary  # and nothing to create or update


def test_ctrl_c_before_typer_sees_it_is_still_ours(capsys, monkeypatch) -> None:
    """typer's own entry point would turn the interrupt into a silent exit 130."""
    from iotpipe.cli import run

    def interrupted(*_, **__) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("iotpipe.app.load_config", interrupted)
    assert run(["validate"]) == 130
    assert "interrupted" in capsys.readouterr().err


# Endpoint ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url", ["notaurl", "localhost:4566", "ftp://example.com", "http://", "http://host:99999"]
)
def test_an_endpoint_that_is_not_a_url_is_a_usage_error(cli, faults, url: str) -> None:
    result = cli("plan", endpoint_url=url)
    assert result.exit_code == 2, result
    assert f"--endpoint-url {url!r}" in result.stderr
    assert faults.calls == []


def test_aws_endpoint_url_that_is_not_a_url_is_named(cli, faults, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    result = cli("status", endpoint_url=None)
    assert result.exit_code == 2
    assert "AWS_ENDPOINT_URL 'not a url'" in result.stderr
    assert faults.calls == []


class _NotAws(BaseHTTPRequestHandler):
    """A web server, not AWS: each test picks its answer."""

    status = 501
    body = b""
    content_type = "text/html"
    requests = 0

    def do_POST(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_PUT = do_POST

    def log_message(self, *_) -> None:
        return


@pytest.fixture
def web_server() -> Iterator[tuple[str, type[_NotAws]]]:
    handler = type("Handler", (_NotAws,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (501, b"<html><body><h1>Unsupported method</h1><p></body></html>", "text/html"),
        (200, b"<html><body>welcome</body></html>", "text/html"),
        (200, b"", "text/html"),
        (404, b"<html>not found</html>", "text/html"),
        (200, b"{}", "application/json"),
        (500, b"oops", "text/plain"),
    ],
    ids=["501-html", "200-html", "200-empty", "404-html", "200-json", "500-text"],
)
def test_an_http_server_that_is_not_aws_is_named_without_a_traceback(
    cli, web_server, status: int, body: bytes, content_type: str
) -> None:
    url, handler = web_server
    handler.status, handler.body, handler.content_type = status, body, content_type
    result = cli("plan", endpoint_url=url)
    assert result.exit_code == 1, result
    assert f"{url} is not an AWS endpoint" in result.stderr
    assert "--endpoint-url" in result.stderr
    assert "credentials" not in result.stderr
    assert handler.requests == 1  # not an answer that waiting would change


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_endpoint_nothing_listens_on_fails_fast_naming_it(cli, faults) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    result = cli("plan", endpoint_url=url)
    assert result.exit_code == 1
    assert f"cannot connect to {url} ({CONNECT_ATTEMPTS} attempts): Connection refused" in (
        result.stderr
    )
    assert "credentials" not in result.stderr
    assert faults.calls == [("sts", "GetCallerIdentity")] * CONNECT_ATTEMPTS
    assert CONNECT_ATTEMPTS <= 3


def test_a_connection_attempt_gives_up_after_a_few_seconds() -> None:
    """An endpoint that never answers the connect (a firewall that drops it): each attempt
    waits seconds, not botocore's 60."""
    client = Aws(endpoint_url="http://127.0.0.1:1").client("sts")
    assert client.meta.config.connect_timeout <= 5
    assert client.meta.config.retries["total_max_attempts"] == 1  # our policy retries, not both


# Region --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "region", ["mars-north-1", "us east", "us_east_1", "US-EAST-1", "us-east", ""]
)
@pytest.mark.parametrize("command", ["plan", "validate", "iam-policy"])
def test_an_unknown_region_is_a_usage_error(cli, faults, command: str, region: str) -> None:
    result = cli(command, "--region", region)
    assert result.exit_code == 2, result
    assert f"Invalid value for '--region': {region!r} is not an AWS region" in result.stderr
    assert faults.calls == []


def test_a_mistyped_region_gets_a_suggestion(cli) -> None:
    assert "did you mean us-east-1?" in cli("plan", "--region", "us-east1").stderr


def _commands_reading_the_config() -> list[list[str]]:
    """Every leaf command of the app, with its required arguments: all read the config first,
    except those that write it (init), use their own (demo) or read the devices first."""
    not_first = {("init",), ("demo",), ("simulate",)}
    arguments = {
        ("query",): ["SELECT 1"],
        ("local", "query"): ["SELECT 1"],
        ("reshard",): ["--target", "2"],
        ("devices", "register"): ["device-1"],
    }
    commands = []

    def walk(command, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, (*path, name))
        elif path not in not_first:
            required = [p for p in command.params if p.param_type_name == "argument" and p.required]
            commands.append([*path, *arguments.get(path, ["device-1"] * len(required))])

    walk(typer.main.get_command(app), ())
    return commands


@pytest.mark.parametrize("argv", _commands_reading_the_config(), ids=" ".join)
def test_a_config_region_that_is_not_an_aws_region_fails_every_command(
    cli, faults, tmp_path: Path, argv: list[str]
) -> None:
    config = tmp_path / "bad-region.toml"
    config.write_text('[stack]\nname = "test"\nregion = "zz-north-1"\n')
    result = cli(*argv, config=config)
    assert result.exit_code == 2, result
    assert f"{config} is invalid" in result.stderr
    assert "stack.region: 'zz-north-1' is not an AWS region" in result.stderr
    assert faults.calls == []


# SQL -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", ["", "   ", " ;\n"])
def test_local_query_without_sql_says_so(cli, faults, sql: str) -> None:
    result = cli("local", "query", sql)
    assert result.exit_code == 2, result
    assert "no SQL" in result.stderr
    assert faults.calls == []


# Devices -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["devices", "register", "--yes", "--", "-sensor-1"],
        ["devices", "register", "--yes", "--count", "2", "--prefix", "-s"],
    ],
    ids=["name", "prefix"],
)
def test_a_device_name_starting_with_a_hyphen_is_refused_with_the_rule(
    cli, faults, argv: list[str]
) -> None:
    result = cli(*argv)
    assert result.exit_code == 2, result
    assert "not starting with a hyphen" in result.stderr
    assert "would read as an option" in result.stderr
    assert faults.calls == []


def test_a_csv_device_name_starting_with_a_hyphen_is_refused(cli, faults, tmp_path) -> None:
    fleet = tmp_path / "fleet.csv"
    fleet.write_text("name,site\nok-1,north\n-bad,south\n")
    result = cli("devices", "register", "--from-csv", str(fleet), "--yes")
    assert result.exit_code == 2, result
    assert "'-bad'" in result.stderr
    assert "fleet.csv" in result.stderr
    assert faults.calls == []


# The process itself ------------------------------------------------------------------------------
def test_a_bug_is_reported_in_one_line_and_its_traceback_only_with_v(monkeypatch, capsys) -> None:
    from iotpipe.cli import main

    def broken(_: Path) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("iotpipe.app.load_config", broken)
    for argv, traceback_shown in ((["validate"], False), (["validate", "-v"], True)):
        monkeypatch.setattr("sys.argv", ["iotpipe", *argv])
        with pytest.raises(SystemExit) as exited:
            main()
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert "internal error: RuntimeError: boom" in err
        assert "a bug in iotpipe" in err
        assert ("Traceback" in err) is traceback_shown


def test_a_reader_that_goes_away_ends_the_run_quietly(config_file: Path) -> None:
    """`iotpipe validate -o json | head -1`: the pipe closes before iotpipe writes. (rich
    handles a broken pipe itself; the JSON document is written past it.)"""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "iotpipe", "validate", "-o", "json", "--config", str(config_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # before the interpreter has even started
    stderr = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 1
    assert stderr == ""
