"""Test fixtures: a real moto server on loopback, a clean account per test, and the CLI runner."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Credentials and region for the emulator; never real ones. Shorten every retry sleep.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "tEsT-sEcReT-kEy-never-printed",
        "AWS_SESSION_TOKEN": "tEsT-sEsSiOn-ToKeN-never-printed",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IOTPIPE_RETRY_SCALE": "0.01",
        "COLUMNS": "200",
    }
)
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)

from iotpipe.cli import run  # noqa: E402
from iotpipe.local import aws_rules  # noqa: E402
from iotpipe.local.aws_rules import Clock  # noqa: E402
from iotpipe.local.emulator import Emulator  # noqa: E402
from tests import permission_audit  # noqa: E402
from tests.faults import Faults  # noqa: E402

SECRETS = (
    os.environ["AWS_SECRET_ACCESS_KEY"],
    os.environ["AWS_SESSION_TOKEN"],
    "PRIVATE KEY",
)


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """One moto server over HTTP on loopback for the test session (per xdist worker)."""
    with Emulator() as server:
        yield server


@pytest.fixture
def endpoint(emulator: Emulator) -> str:
    """A fresh, empty emulated account for each test; the URL to send AWS calls to."""
    emulator.reset()
    return emulator.endpoint_url


@pytest.fixture
def local_server(endpoint: str) -> Iterator[Any]:
    """`iotpipe local serve`'s server for stack "test", running on its own thread. Its emulator
    shares the in-process emulator state: `endpoint` emptied it."""
    from iotpipe.config import parse_config
    from iotpipe.local.serve import LocalServer

    stop = threading.Event()
    with LocalServer(parse_config({"stack": {"name": "test"}}), port=0, on_event=print) as s:
        thread = threading.Thread(target=s.run, args=(stop,), daemon=True)
        thread.start()
        yield s
        stop.set()
        thread.join(timeout=10)


@pytest.fixture
def aws_clock(endpoint: str) -> Clock:
    """The emulator's clock for AWS's time-based rules: `advance(seconds)` jumps it forward."""
    return aws_rules.clock


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "iotpipe.toml"
    path.write_text('[stack]\nname = "test"\n')
    return path


@pytest.fixture
def processor_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small fixed processor package for `up` to deploy, independent of the handler's code."""
    from iotpipe import packaging

    package = tmp_path / "src" / "processor"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "handler.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    monkeypatch.setattr(packaging, "PROCESSOR_SOURCE", package)
    return package


@pytest.fixture
def faults() -> Iterator[Faults]:
    injector = Faults(seed=1234)
    remove = injector.install()
    yield injector
    remove()


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self):
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"CliResult(exit={self.exit_code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], endpoint: str, config_file: Path):
    """Run `iotpipe ARGS...` in-process against the emulator with the test's config."""

    def invoke(*args: str, config: Path | None = None, endpoint_url: str | None = endpoint):
        argv = [*args, "--config", str(config or config_file)]
        if endpoint_url:
            argv += ["--endpoint-url", endpoint_url]
        capsys.readouterr()
        with permission_audit.recording() as actions:
            code = run(argv)
        command = permission_audit.command_path(args)
        permission_audit.record(command, actions)
        # Every call a command makes is allowed by each job's policy that includes the command.
        denied = permission_audit.not_allowed(command, actions, config or config_file)
        assert not denied, f"`iotpipe {command}` calls what iam-policy does not grant: {denied}"
        captured = capsys.readouterr()
        # No command may ever print a secret: credentials or key material.
        for secret in SECRETS:
            assert secret not in captured.out + captured.err, f"{secret!r} printed by {args}"
        return CliResult(code, captured.out, captured.err)

    return invoke


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand its calls to the controller
        workeroutput["iotpipe_calls"] = permission_audit.dump()
        return
    log = os.environ.get("IOTPIPE_CALL_LOG")
    if log:
        Path(log).write_text(permission_audit.dump())
    if permission_audit.whole_suite(session.config) and exitstatus == 0:
        # The second direction of the IAM proof needs every command's calls, so it runs once
        # the whole suite has: an action a job grants that none of its commands called fails it.
        config = Path(str(session.config.rootpath)) / "iotpipe" / "config.example.toml"
        figures, problems = permission_audit.audit(config)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("-", "IAM policies against the calls of the suite")
            for line in [*figures, *problems]:
                reporter.write_line(line)
        if problems:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_testnodedown(node: object, error: object) -> None:
    output = getattr(node, "workeroutput", {})
    if "iotpipe_calls" in output:
        permission_audit.load(output["iotpipe_calls"])
