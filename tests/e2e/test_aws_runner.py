"""`make test-aws` and `make test-aws-clean`: they refuse without the opt-in, credentials and a
region, before any AWS call; say what a run creates and costs, and ask; the clean-up finds what
an interrupted run left by tag and by name; the journey's teardown runs after a Ctrl-C."""

from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.endpoint
import pytest

from iotpipe.aws import add_client_hook, is_mutating
from tests.e2e import aws, leftovers, settings
from tests.e2e.conftest import EmulatorTarget, aws_target_problems, throwaway_stack
from tests.support import client

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "example-secret"}
READY = {aws.OPT_IN: "1", **CREDENTIALS, "AWS_REGION": "eu-west-1"}


@pytest.fixture
def no_aws_call(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every request any botocore client would send (none may be sent)."""
    sent: list[str] = []

    def send(endpoint: Any, request: Any) -> Any:
        sent.append(request.url)
        raise AssertionError(f"an AWS call was made: {request.url}")

    monkeypatch.setattr(botocore.endpoint.Endpoint, "_send", send)
    return sent


class Started:
    """Stands in for the journey's pytest: what it would have been started with."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, args: list[str], env: dict[str, str]) -> int:
        self.calls.append((args, env))
        return 0


def _run(env: dict[str, str], *, ask=None, start: Started | None = None) -> int:
    out = aws.Printer()
    try:
        return aws.run(env, ask=ask, out=out, start=start or Started())
    except aws.Refused as exc:
        out.error(exc.message, exc.hint)
        return exc.exit_code


REFUSALS = ["nothing", "no-opt-in", "no-credentials", "no-region", "no-secret", "bad-region"]
REFUSALS += ["emulator-endpoint", "not-an-e2e-name"]


@pytest.mark.parametrize(
    ("env", "to_set", "already_set"),
    [
        ({}, ["IOTPIPE_TEST_AWS=1", "AWS_PROFILE=<profile>", "AWS_REGION=<region>"], []),
        ({**CREDENTIALS, "AWS_REGION": "eu-west-1"}, ["IOTPIPE_TEST_AWS=1"], ["AWS_PROFILE"]),
        (
            {aws.OPT_IN: "1", "AWS_DEFAULT_REGION": "eu-west-1"},
            ["AWS_PROFILE=<profile>, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"],
            ["IOTPIPE_TEST_AWS=1", "AWS_REGION"],
        ),
        ({aws.OPT_IN: "1", "AWS_PROFILE": "sandbox"}, ["AWS_REGION=<region>"], ["AWS_PROFILE"]),
        (
            {aws.OPT_IN: "1", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_REGION": "eu-west-1"},
            ["AWS_SECRET_ACCESS_KEY  (AWS_ACCESS_KEY_ID is set without it)"],
            ["IOTPIPE_TEST_AWS=1"],
        ),
        ({**READY, "AWS_REGION": "eu-west-9x"}, ["AWS_REGION: 'eu-west-9x' is not"], []),
        ({**READY, "AWS_ENDPOINT_URL": "http://localhost:4566"}, ["no AWS_ENDPOINT_URL"], []),
        ({**READY, aws.PINNED_STACK: "prod"}, ["IOTPIPE_TEST_AWS_STACK: 'prod' is not"], []),
    ],
    ids=REFUSALS,
)
def test_make_test_aws_refuses_with_exit_2_and_makes_no_call(
    env: dict[str, str], to_set: list[str], already_set: list[str], no_aws_call, capsys
) -> None:
    started = Started()

    code = _run(env, ask=lambda question: "y", start=started)

    err = capsys.readouterr().err
    assert code == 2
    assert "starts only when asked; set:" in err
    for line in to_set:
        assert f"\n  {line}" in err, err
    for name in already_set:
        assert f"\n  {name}" not in err, err
    assert no_aws_call == [] and started.calls == []


def test_the_make_target_runs_the_checks_and_exits_2_without_the_opt_in(tmp_path: Path) -> None:
    recipe = subprocess.run(
        ["make", "-n", "test-aws", "test-aws-clean"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert "python -m tests.e2e.aws run" in recipe and "python -m tests.e2e.aws clean" in recipe
    bare = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for command in ("run", "clean"):
        refused = subprocess.run(
            [sys.executable, "-m", "tests.e2e.aws", command],
            cwd=ROOT,
            env=bare,
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 2, refused
        assert "IOTPIPE_TEST_AWS=1" in refused.stderr and "AWS_REGION" in refused.stderr


@pytest.fixture
def account(monkeypatch: pytest.MonkeyPatch) -> str:
    # The one AWS call of a run before it asks: STS, for the account the stack will be in.
    monkeypatch.setattr(aws, "_account", lambda region: "210987654321")
    return "210987654321"


def test_with_everything_set_it_says_what_it_creates_and_costs_then_runs(
    account: str, capsys
) -> None:
    started = Started()

    code = _run({**READY, aws.YES: "1"}, start=started)

    out = capsys.readouterr().out
    assert code == 0
    ((args, env),) = started.calls
    stack = env[settings.STACK_VARIABLE]
    assert settings.stack_name_problem(stack) is None
    assert env[settings.TARGET_VARIABLE] == "aws" and env["AWS_REGION"] == "eu-west-1"
    assert args[:3] == [aws.JOURNEY, "-m", "e2e"] and "--confcutdir" in args
    assert f"stack    {stack}" in out and "region   eu-west-1" in out and account in out
    assert f"S3 bucket {stack}-archive-{account}-eu-west-1" in out
    cost = settings.run_cost(stack, "eu-west-1")
    assert f"cost     about ${cost.run:.2f}" in out
    assert f"prorated to {settings.EXPECTED_MINUTES} minutes" in out


def test_a_run_costs_well_under_a_dollar() -> None:
    cost = settings.run_cost(settings.new_stack_name(), "us-east-1")
    # Priced by iotpipe.cost at list prices for the config at its widest (2 shards).
    assert 0 < cost.run < 0.25, cost.summary()
    assert cost.monthly * settings.EXPECTED_MINUTES / (730 * 60) == pytest.approx(cost.run)


def test_two_runs_get_two_stacks(account: str) -> None:
    started = Started()
    for _ in range(2):
        assert _run({**READY, aws.YES: "1"}, start=started) == 0
    stacks = {env[settings.STACK_VARIABLE] for _, env in started.calls}
    assert len(stacks) == 2


def test_without_a_terminal_it_asks_for_the_yes_variable(account: str, capsys) -> None:
    started = Started()

    code = _run(READY, ask=None, start=started)

    assert code == 2 and started.calls == []
    assert "set IOTPIPE_TEST_AWS_YES=1" in capsys.readouterr().err


@pytest.mark.parametrize(("answer", "code", "runs"), [("y", 0, 1), ("", 1, 0), ("no", 1, 0)])
def test_it_asks_before_it_creates_anything(
    account: str, answer: str, code: int, runs: int, capsys
) -> None:
    started, asked = Started(), []

    result = _run(READY, ask=lambda q: asked.append(q) or answer, start=started)

    assert result == code and len(started.calls) == runs
    (question,) = asked
    assert "Create stack iotpipe-e2e-" in question and account in question
    if not runs:
        assert "cancelled: nothing was created" in capsys.readouterr().err


def test_policies_are_the_jobs_for_the_pinned_stack_and_the_checks(account: str, capsys) -> None:
    stack = "iotpipe-e2e-0a1b2c"

    code = aws.policies({**READY, aws.PINNED_STACK: stack}, out=aws.Printer())

    assert code == 0
    documents = json.loads(capsys.readouterr().out)
    assert sorted(documents) == ["deploy", "e2e-checks", "operate"]
    resources = json.dumps([documents["deploy"], documents["operate"]])
    assert f"arn:aws:kinesis:eu-west-1:{account}:stream/{stack}-readings" in resources
    ((checks,),) = [d["Statement"] for d in documents["e2e-checks"]]
    assert checks["Action"] == sorted(settings.JOURNEY_ACTIONS)


def test_policies_need_the_pinned_stack(no_aws_call) -> None:
    with pytest.raises(aws.Refused, match="set IOTPIPE_TEST_AWS_STACK"):
        aws.policies(READY, out=aws.Printer())


def test_the_aws_target_runs_only_through_make_test_aws(
    monkeypatch: pytest.MonkeyPatch, no_aws_call
) -> None:
    # Here tests/conftest.py has replaced the credentials with the emulator's.
    for name, value in {**READY, settings.TARGET_VARIABLE: "aws"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(settings.STACK_VARIABLE, settings.new_stack_name())

    assert aws_target_problems() == ["the suite's conftest (emulator credentials) is loaded"]
    monkeypatch.setenv(settings.STACK_VARIABLE, "prod")
    monkeypatch.delenv(aws.OPT_IN)
    problems = aws_target_problems()
    assert problems[0].startswith("IOTPIPE_TEST_AWS=1") and "IOTPIPE_E2E_STACK" in problems[1]


def test_the_journey_on_aws_started_by_hand_exits_2_before_any_call(tmp_path: Path) -> None:
    """As `make test-aws` starts it, but without the runner's checks passed."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), settings.TARGET_VARIABLE: "aws"}
    args = [aws.JOURNEY, "-m", "e2e", "--confcutdir", "tests/e2e", "-p", "no:cacheprovider"]
    started = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "-q"],
        cwd=ROOT,
        env={**env, settings.STACK_VARIABLE: settings.new_stack_name()},
        capture_output=True,
        text=True,
    )
    assert started.returncode == 2, started
    assert (
        "runs only through `make test-aws`: IOTPIPE_TEST_AWS=1" in started.stdout + started.stderr
    )
    assert "conftest (emulator credentials)" not in started.stdout + started.stderr


def test_the_readme_lists_what_a_run_needs_beyond_the_jobs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Testing against a real account") :]
    for action in settings.JOURNEY_ACTIONS:
        assert f"`{action}`" in section, action
    for variable in (aws.OPT_IN, aws.YES, aws.PINNED_STACK, "make test-aws-clean"):
        assert variable in section


# On the emulator -----------------------------------------------------------------------------
@pytest.fixture
def emulator_env(endpoint: str) -> dict[str, str]:
    return {aws.OPT_IN: "1", aws.YES: "1", **{k: os.environ[k] for k in CREDENTIALS}} | {
        "AWS_REGION": "us-east-1"
    }


def _up(cli, path: Path, stack: str) -> None:
    path.write_text(settings.config_text(stack, "us-east-1", emulator=True))
    assert cli("up", "--yes", config=path).exit_code == 0
    register = ("devices", "register", "--count", "1", "--prefix", f"{stack}-d-")
    assert (
        cli(*register, "--out-dir", str(path.parent / stack), "--yes", config=path).exit_code == 0
    )


def test_clean_takes_down_every_e2e_stack_left_and_nothing_else(
    cli, endpoint: str, emulator_env, aws_clock, tmp_path: Path, capsys
) -> None:
    left = settings.new_stack_name()
    _up(cli, tmp_path / "left.toml", left)
    # A stack whose name is not an e2e one, by name and by tag.
    kinesis = client(endpoint, "kinesis")
    kinesis.create_stream(StreamName="iotpipe-e2e-prod-readings", ShardCount=1)
    kinesis.add_tags_to_stream(
        StreamName="iotpipe-e2e-prod-readings", Tags={"iotpipe:stack": "iotpipe-e2e-prod"}
    )
    capsys.readouterr()
    waited: list[str] = []

    def wait(seconds: float, why: str) -> None:
        waited.append(why)
        aws_clock.advance(seconds)

    code = aws.clean(emulator_env, ask=None, out=aws.Printer(), endpoint_url=endpoint, wait=wait)

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"taken down: {left}" in out
    clients = lambda service: client(endpoint, service)  # noqa: E731
    assert leftovers.of_stack(clients, left).empty
    # The deprecated thing type needed AWS's five minutes, and a second `down`.
    assert any("-sensor" in why for why in waited), waited
    # A stack whose name is not an e2e one is never touched.
    assert client(endpoint, "kinesis").list_streams()["StreamNames"] == [
        "iotpipe-e2e-prod-readings"
    ]
    again = aws.clean(emulator_env, ask=None, out=aws.Printer(), endpoint_url=endpoint, wait=wait)
    assert again == 0
    assert "no e2e stack (iotpipe-e2e-*) has anything left in us-east-1" in capsys.readouterr().out


def test_clean_says_what_it_could_not_remove(
    endpoint: str, emulator_env, aws_clock, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Named after an e2e stack, but nothing `down` knows of: it stays, and clean says so.
    stack = settings.new_stack_name()
    client(endpoint, "sqs").create_queue(QueueName=f"{stack}-by-hand")
    monkeypatch.setattr(aws, "SETTLE_LOOKS", 2)
    waited: list[str] = []

    def wait(seconds: float, why: str) -> None:
        waited.append(why)
        aws_clock.advance(seconds)

    code = aws.clean(emulator_env, ask=None, out=aws.Printer(), endpoint_url=endpoint, wait=wait)

    err = capsys.readouterr().err
    assert code == 1
    assert f"error: {stack} still has: named: SQS queue {stack}-by-hand" in err
    assert waited == ["the tagging API lists deleted resources for a while"]


def _interrupt_at_mutating_call(number: int):
    """Ctrl-C as the `number`th mutating AWS call is made; returns a remover. As a terminal's
    SIGINT, it interrupts the main thread, whichever thread makes the call."""
    seen = [0]

    def attach(service: str, client: Any) -> None:
        def before_call(model: Any, **_: Any) -> None:
            if is_mutating(model.name):
                seen[0] += 1
                if seen[0] == number:
                    _thread.interrupt_main()

        client.meta.events.register("before-call", before_call)

    return add_client_hook(attach)


@pytest.fixture
def emulator_target(cli, endpoint: str, aws_clock, tmp_path: Path) -> Iterator[EmulatorTarget]:
    yield EmulatorTarget(tmp_path, cli, endpoint, aws_clock)


def test_ctrl_c_in_the_middle_of_up_still_takes_the_stack_down(
    emulator_target: EmulatorTarget, endpoint: str
) -> None:
    target = emulator_target
    clients = lambda service: client(endpoint, service)  # noqa: E731
    built: list[str] = []
    with pytest.raises(KeyboardInterrupt), throwaway_stack(target):
        remove = _interrupt_at_mutating_call(25)
        try:
            target.iotpipe("up", "--yes")
        finally:
            remove()
            built += leftovers.named(clients, leftovers.name_pattern(target.stack))

    assert built, "the interrupted up had built part of the stack"
    assert leftovers.of_stack(clients, target.stack).empty
    assert client(endpoint, "s3").list_buckets()["Buckets"] == []


def test_a_failed_step_still_takes_the_stack_down(
    emulator_target: EmulatorTarget, endpoint: str
) -> None:
    target = emulator_target
    with pytest.raises(AssertionError, match="a step failed"), throwaway_stack(target):
        assert target.iotpipe("up", "--yes").exit_code == 0
        raise AssertionError("a step failed")

    clients = lambda service: client(endpoint, service)  # noqa: E731
    assert leftovers.of_stack(clients, target.stack).empty
