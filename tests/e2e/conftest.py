"""The target of the end-to-end journey, and the throwaway stack it runs on.

The `target` fixture is the embedded emulator (the moto server of tests/conftest.py, with the
AWS-rules module, and the project's local data plane for what moto cannot run) unless
`make test-aws` chose a real AWS account (tests/e2e/aws.py checks the opt-in, credentials and
region, prints the plan and its cost, asks, and then runs this suite with IOTPIPE_E2E_TARGET=aws).
The journey calls only the target's vocabulary, so it is written once.

Each step only AWS can do is recorded with its reason (`Target.note`) and the journey goes on:
the note is a warning (pytest's warnings summary lists it, from xdist workers too) and a property
of the test's report (junit XML).
Teardown always runs, also after a failure or Ctrl-C: the fixture's finalizer takes the stack
down (`down --delete-data`) and fails loudly, naming `make test-aws-clean`, if anything is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest

from iotpipe.aws import add_client_hook, is_mutating
from iotpipe.errors import INTERRUPTED_EXIT_CODE
from tests import permission_audit
from tests.e2e import leftovers, settings

EMULATOR_REGION = "us-east-1"
# The report property that carries each note (junit XML shows it).
NOTE_PROPERTY = "e2e note"
# Where the IAM action is not the tests' usual mapping (tests/permission_audit.py) of a call.
_IAM_ACTIONS = {("s3", "ListBuckets"): "s3:ListAllMyBuckets"}
_IAM_PREFIXES = {"resourcegroupstaggingapi": "tag"}


def iam_action(service: str, operation: str) -> str:
    if (service, operation) in _IAM_ACTIONS:
        return _IAM_ACTIONS[service, operation]
    if service in _IAM_PREFIXES:
        return f"{_IAM_PREFIXES[service]}:{operation}"
    return permission_audit.iam_action(service, operation)


class StepNotRunAsOnAws(UserWarning):
    """A journey step the target cannot take as AWS would: pytest's warnings summary lists each
    with its reason (also from xdist workers, as `make test` runs)."""


class CliResult:
    # As tests/conftest.py has it: that module cannot be imported here, since it replaces the
    # credentials with the emulator's as it loads, and the AWS target runs without it.
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.exit_code = code
        self.stdout = stdout
        self.stderr = stderr

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"CliResult(exit={self.exit_code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Target:
    """Where the journey runs; the emulator and AWS differ only behind these methods."""

    name = ""
    # How long the pipeline may take to show what was sent, and how often to look.
    patience_seconds = 0.0
    poll_seconds = 0.0

    def __init__(self, stack: str, region: str, workdir: Path) -> None:
        self.stack = stack
        self.region = region
        self.workdir = workdir
        self.config_path = workdir / f"{stack}.toml"
        self.devices_dir = workdir / "devices"
        self.actions: set[str] = set()
        # Set once the journey itself has taken the stack down and found nothing left.
        self.torn_down = False
        self._clients: dict[str, Any] = {}
        self._record_property: Callable[[str, object], None] = lambda name, value: None
        self.write_config()

    # Configuration -----------------------------------------------------------------------
    def write_config(self, *, shards: int = 1) -> None:
        text = settings.config_text(
            self.stack, self.region, emulator=self.name == "emulator", shards=shards
        )
        self.config_path.write_text(text)

    # Commands ----------------------------------------------------------------------------
    def iotpipe(self, *args: str) -> CliResult:
        """Run `iotpipe ARGS` in-process against the target with the stack's config."""
        result = self._invoke(*args)
        if result.exit_code == INTERRUPTED_EXIT_CODE:
            # The command caught Ctrl-C and said so: stop the journey; teardown still runs.
            raise KeyboardInterrupt
        return result

    def _invoke(self, *args: str) -> CliResult:
        raise NotImplementedError

    # The test's own look at AWS ----------------------------------------------------------
    def client(self, service: str) -> Any:
        """A boto3 client for checking what the commands did; its calls' IAM actions are kept."""
        found = self._clients.get(service)
        if found is None:
            found = self._new_client(service)

            def before_call(model: Any, **_: Any) -> None:
                self.actions.add(iam_action(service, model.name))

            found.meta.events.register("before-call", before_call)
            self._clients[service] = found
        return found

    def _new_client(self, service: str) -> Any:
        raise NotImplementedError

    def undeclared_actions(self) -> list[str]:
        """The journey's own calls that neither a job of `iam-policy` (deploy, operate) nor
        JOURNEY_ACTIONS grants: the README would understate what a run needs."""
        text = self.config_path.read_text()
        jobs = set().union(
            *(
                permission_audit.granted(self.config_path, text, job)
                for job in ("deploy", "operate")
            )
        )
        return sorted(self.actions - jobs - set(settings.JOURNEY_ACTIONS))

    # The data plane ----------------------------------------------------------------------
    def start_pipeline(self) -> None:
        """After `up`: make the pipeline process what devices publish (AWS does it itself)."""

    def publisher(self, devices: list[Any]) -> Any:
        """How devices reach the target: an `iotpipe.simulate` publisher."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever the target runs for the journey (before the stack is taken down)."""

    # Time ---------------------------------------------------------------------------------
    def wait(self, seconds: float, why: str) -> None:
        """Let `seconds` of AWS's time pass (the emulator's clock jumps; AWS takes them)."""
        raise NotImplementedError

    def eventually(self, check: Callable[[], Any], *, what: str) -> Any:
        """Poll `check` until it returns something truthy; fail naming `what` on timeout."""
        deadline = time.monotonic() + self.patience_seconds
        while True:
            found = check()
            if found:
                return found
            assert time.monotonic() < deadline, (
                f"{self.name}: timed out after {self.patience_seconds:.0f} s waiting for {what}"
            )
            time.sleep(self.poll_seconds)

    # Reporting ----------------------------------------------------------------------------
    def note(self, step: str, reason: str) -> None:
        """A step this target cannot take as AWS would, and why; the journey goes on."""
        self._record_property(NOTE_PROPERTY, f"[{self.name}] {step}: {reason}")
        warnings.warn(StepNotRunAsOnAws(f"{step}: {reason}"), stacklevel=2)
        self.say(f"not run on the {self.name}: {step}: {reason}")

    def say(self, text: str) -> None:
        """A line of progress: printed on AWS, where a run takes minutes; the emulator's is
        quiet."""


# The emulator ----------------------------------------------------------------------------------
class EmulatorTarget(Target):
    name = "emulator"
    patience_seconds = 30.0
    poll_seconds = 0.1

    def __init__(self, workdir: Path, cli: Callable[..., Any], endpoint: str, clock: Any) -> None:
        super().__init__(settings.new_stack_name(), EMULATOR_REGION, workdir)
        self.cli = cli
        self.endpoint = endpoint
        self.clock = clock
        self._stop_plane: Callable[[], None] | None = None

    def _invoke(self, *args: str) -> CliResult:
        # The suite's `cli` fixture: every call checked against `iam-policy`, no secret printed.
        found = self.cli(*args, config=self.config_path)
        return CliResult(found.exit_code, found.stdout, found.stderr)

    def _new_client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=self.region)

    def start_pipeline(self) -> None:
        """The local data plane of `iotpipe local serve`: the rules engine, the event source
        mapping running the real processor, and Firehose's delivery, fed by what the emulator's
        IoT data plane receives."""
        from iotpipe.aws import Aws
        from iotpipe.config import load_config
        from iotpipe.context import StackContext
        from iotpipe.local.plane import LocalDataPlane, listen_to_iot_data

        aws = Aws(endpoint_url=self.endpoint, region=self.region)
        # Every client the plane uses exists before the next command runs: the commands' call
        # recorders hook only clients created while they run.
        for service in ("sts", "iot", "kinesis", "lambda", "firehose", "s3", "sqs", "logs"):
            aws.client(service)
        names = StackContext(load_config(self.config_path), aws).names
        inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        plane = LocalDataPlane(aws, names).start()
        restore = listen_to_iot_data(aws, inbox)
        plane.receive_emulator_publishes(inbox)
        plane.run_in_background(poll_seconds=0.05)

        def stop() -> None:
            restore()
            plane.close()

        self._stop_plane = stop

    def publisher(self, devices: list[Any]) -> Any:
        from iotpipe.aws import Aws
        from iotpipe.simulate import HttpPublisher

        # As `simulate` publishes to an emulator: the IoT data plane's HTTPS Publish.
        return HttpPublisher(Aws(endpoint_url=self.endpoint, region=self.region))

    def close(self) -> None:
        if self._stop_plane is not None:
            self._stop_plane()
            self._stop_plane = None

    def wait(self, seconds: float, why: str) -> None:
        self.clock.advance(seconds)


# A real AWS account ----------------------------------------------------------------------------
class AwsTarget(Target):
    name = "AWS"
    patience_seconds = 600.0
    poll_seconds = 10.0

    def __init__(
        self, stack: str, region: str, workdir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        super().__init__(stack, region, workdir)
        self.capsys = capsys
        self.session = boto3.Session(region_name=region)
        self.secrets = [
            value
            for value in (
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN"),
            )
            if value
        ]

    def say(self, text: str) -> None:
        with self.capsys.disabled():
            print(f"e2e: {text}", flush=True)

    def _invoke(self, *args: str) -> CliResult:
        from iotpipe.cli import run

        self.say("iotpipe " + " ".join(args))
        self.capsys.readouterr()
        code = run([*args, "--config", str(self.config_path)])
        captured = self.capsys.readouterr()
        for secret in self.secrets:
            assert secret not in captured.out + captured.err, f"a secret printed by {args}"
        with self.capsys.disabled():
            sys.stdout.write(captured.err + captured.out)
            sys.stdout.flush()
        return CliResult(code, captured.out, captured.err)

    def _new_client(self, service: str) -> Any:
        return self.session.client(service)

    def publisher(self, devices: list[Any]) -> Any:
        from iotpipe.simulate import MqttPublisher

        # As `simulate` publishes to AWS: MQTT over TLS with each device's own certificate.
        return MqttPublisher(devices)

    def wait(self, seconds: float, why: str) -> None:
        self.say(f"waiting {seconds:.0f} s: {why}")
        time.sleep(seconds)


# Taking the stack down --------------------------------------------------------------------------
def take_down(target: Target) -> None:
    """`down --delete-data` until AWS has let it delete everything."""

    def down() -> dict[str, Any]:
        credentials = ("--devices-dir", str(target.devices_dir))
        result = target.iotpipe("down", "--delete-data", "--yes", "--output", "json", *credentials)
        assert result.exit_code == 0, result
        return result.json

    leftovers.take_down(down, target.wait)


def remaining(target: Target) -> leftovers.Leftovers:
    """What is left of the stack once AWS has caught up (the tagging API lags deletions)."""
    found: list[leftovers.Leftovers] = []

    def gone() -> bool:
        found[:] = [leftovers.of_stack(target.client, target.stack)]
        return found[0].empty

    # Still something after the target's patience: the caller says what.
    with contextlib.suppress(AssertionError):
        target.eventually(gone, what=f"nothing left of stack {target.stack}")
    return found[0]


@contextmanager
def throwaway_stack(target: Target) -> Iterator[Target]:
    """The stack for the block; whatever the block does or however it ends (a failure, Ctrl-C),
    what the stack left is taken down afterwards, and what would still be left is an error."""
    try:
        yield target
    finally:
        target.close()
        if not target.torn_down:
            try:
                take_down(target)
                left = remaining(target)
            except BaseException as exc:
                raise AssertionError(
                    f"teardown of stack {target.stack} failed ({exc!r}): run "
                    "`make test-aws-clean` (or `iotpipe down --delete-data` with its config)"
                ) from exc
            assert left.empty, (
                f"teardown left resources of stack {target.stack}: {left.lines()}; run "
                "`make test-aws-clean`"
            )


def aws_target_problems() -> list[str]:
    """Why the AWS target may not run in this process (empty when it may)."""
    from tests.e2e import aws

    problems = aws.missing_settings(os.environ)
    stack = os.environ.get(settings.STACK_VARIABLE, "")
    if problem := settings.stack_name_problem(stack):
        problems.append(f"{settings.STACK_VARIABLE}: {problem}")
    if "tests.conftest" in sys.modules:
        # tests/conftest.py replaces the credentials with the emulator's at import.
        problems.append("the suite's conftest (emulator credentials) is loaded")
    return problems


def _refuse_unless_ready() -> None:
    problems = aws_target_problems()
    if problems:
        pytest.exit(
            "the AWS target runs only through `make test-aws`: " + "; ".join(problems),
            returncode=2,
        )


def pytest_configure(config: pytest.Config) -> None:
    # Before anything runs: the runner (tests/e2e/aws.py) checked all this, a hand-set
    # IOTPIPE_E2E_TARGET did not.
    if os.environ.get(settings.TARGET_VARIABLE) == "aws":
        _refuse_unless_ready()


@pytest.fixture
def target(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Iterator[Target]:
    if os.environ.get(settings.TARGET_VARIABLE) == "aws":
        _refuse_unless_ready()  # also when this conftest was not loaded at startup
        from tests.e2e.aws import region_of

        chosen: Target = AwsTarget(
            os.environ[settings.STACK_VARIABLE],
            region_of(os.environ),
            request.getfixturevalue("tmp_path"),
            request.getfixturevalue("capsys"),
        )
    else:
        chosen = EmulatorTarget(
            request.getfixturevalue("tmp_path"),
            request.getfixturevalue("cli"),
            request.getfixturevalue("endpoint"),
            request.getfixturevalue("aws_clock"),
        )
    chosen._record_property = record_property
    with throwaway_stack(chosen):
        yield chosen


def count_mutating_calls() -> tuple[list[str], Callable[[], None]]:
    """Every mutating AWS call of clients created from now on (as the second `up` creates its
    own); returns the list it fills and the remover of its hook."""
    calls: list[str] = []

    def on_client(service: str, client: Any) -> None:
        def before_call(model: Any, **_: Any) -> None:
            if is_mutating(model.name):
                calls.append(f"{service}:{model.name}")

        client.meta.events.register("before-call", before_call)

    return calls, add_client_hook(on_client)
