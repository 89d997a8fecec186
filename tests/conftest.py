"""Test fixtures: a real moto server on loopback, a clean account per test, and the CLI runner."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Credentials and region for the emulator; never real ones. Shorten every retry sleep.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "IOTPIPE_RETRY_SCALE": "0.002",
        "COLUMNS": "200",
    }
)
for _var in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
    os.environ.pop(_var, None)

from moto.server import ThreadedMotoServer  # noqa: E402

from iotpipe.cli import run  # noqa: E402
from tests.faults import Faults  # noqa: E402


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def endpoint(moto_server: str) -> Iterator[str]:
    """A fresh, empty emulated account for each test."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    urllib.request.urlopen(request).read()
    yield moto_server


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "iotpipe.toml"
    path.write_text('[stack]\nname = "test"\n')
    return path


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
        code = run(argv)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
