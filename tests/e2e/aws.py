"""`make test-aws` and `make test-aws-clean`: the end-to-end journey on a real AWS account, only
when asked, and the removal of what an interrupted run left.

    python -m tests.e2e.aws run        # check, print the plan and its cost, ask, run the journey
    python -m tests.e2e.aws clean      # find e2e stacks by tag and by name, take each down
    python -m tests.e2e.aws policies   # the IAM policies the run's identity needs

Each refuses to start (exit 2, before any AWS call) unless the opt-in, credentials (a profile or
keys) and a region are all given, and says exactly what to set.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from iotpipe.config import region_problem
from iotpipe.errors import INTERRUPTED_EXIT_CODE, IotpipeError
from tests.e2e import leftovers, settings

OPT_IN = "IOTPIPE_TEST_AWS"
YES = "IOTPIPE_TEST_AWS_YES"
PINNED_STACK = "IOTPIPE_TEST_AWS_STACK"
ROOT = Path(__file__).resolve().parents[2]
JOURNEY = "tests/e2e/test_journey.py"
EXAMPLE = f"{OPT_IN}=1 AWS_PROFILE=sandbox AWS_REGION=us-east-1"

Ask = Callable[[str], str]


def region_of(env: Mapping[str, str]) -> str:
    return env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""


def missing_settings(env: Mapping[str, str], *, pinned_stack: bool = True) -> list[str]:
    """What must still be set (each with why) before anything may reach AWS."""
    problems = []
    if env.get(OPT_IN) != "1":
        problems.append(
            f"{OPT_IN}=1  (the opt-in: the run creates a real stack in the account, and AWS "
            "bills it)"
        )
    if not env.get("AWS_PROFILE") and not env.get("AWS_ACCESS_KEY_ID"):
        problems.append(
            "AWS_PROFILE=<profile>, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY  (the account "
            "to test in)"
        )
    elif not env.get("AWS_PROFILE") and not env.get("AWS_SECRET_ACCESS_KEY"):
        problems.append("AWS_SECRET_ACCESS_KEY  (AWS_ACCESS_KEY_ID is set without it)")
    region = region_of(env)
    if not region:
        problems.append("AWS_REGION=<region>  (or AWS_DEFAULT_REGION; e.g. us-east-1)")
    elif problem := region_problem(region):
        problems.append(f"AWS_REGION: {problem}")
    if env.get("AWS_ENDPOINT_URL"):
        problems.append("no AWS_ENDPOINT_URL  (unset it: it sends every call to an emulator)")
    pinned = env.get(PINNED_STACK) if pinned_stack else None
    if pinned and (problem := settings.stack_name_problem(pinned)):
        problems.append(f"{PINNED_STACK}: {problem}")
    return problems


class Refused(IotpipeError):
    exit_code = 2


def _check(env: Mapping[str, str], command: str, does: str, *, pinned_stack: bool = True) -> None:
    problems = missing_settings(env, pinned_stack=pinned_stack)
    if problems:
        raise Refused(
            f"`{command}` {does}, so it starts only when asked; set:\n  " + "\n  ".join(problems),
            hint=f"for example: {EXAMPLE} {command}",
        )


class Printer:
    """Plain lines: what it prints is read, and pasted into a shell, unwrapped."""

    def __init__(self) -> None:
        self.out, self.err = sys.stdout, sys.stderr

    def info(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def error(self, text: str, hint: str | None = None) -> None:
        print(f"error: {text}", file=self.err, flush=True)
        if hint:
            print(f"hint: {hint}", file=self.err, flush=True)

    def notice(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def data(self, value: Any) -> None:
        print(json.dumps(value, indent=2), file=self.out, flush=True)


def _confirm(env: Mapping[str, str], ask: Ask | None, question: str) -> bool:
    if env.get(YES) == "1":
        return True
    if ask is None:
        raise Refused(
            "no terminal to ask for confirmation on",
            hint=f"set {YES}=1 to go on without being asked",
        )
    return ask(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _account(region: str) -> str:
    from iotpipe.aws import Aws

    return Aws(region=region).account_id


def describe_run(stack: str, region: str, account: str) -> list[tuple[str, str]]:
    """What a run creates, does and costs, as (what, detail) lines; no AWS call."""
    from iotpipe.naming import Names
    from iotpipe.resources.cloudwatch import alarm_count

    names = Names(stack=stack, app="sensors", region=region, account=account)
    config = settings.config_of(settings.config_text(stack, region, emulator=False))
    prefix = settings.device_prefix(stack)
    return [
        ("account", account),
        ("region", region),
        (
            "stack",
            f"{stack}: new and thrown away after the run; everything is named after it and "
            f"tagged iotpipe:stack={stack}",
        ),
        (
            "creates",
            f"what `iotpipe up` builds: S3 bucket {names.archive_bucket}, Kinesis stream "
            f"{names.readings_stream} (1 shard, resharded to 2), DynamoDB table "
            f"{names.device_state_table}, Lambda function {names.processor_function} with its "
            f"dead-letter queue, Firehose stream {names.archive_delivery_stream}, Glue database "
            f"{names.glue_database} and crawler, Athena workgroup {names.workgroup}, IoT rule "
            f"{names.topic_rule}, policy and thing type, {alarm_count(config)} CloudWatch alarms "
            f"and a dashboard, SNS topic {names.alerts_topic} and its KMS key, 4 IAM roles; and "
            f"{settings.DEVICES} devices {prefix}0001..{settings.DEVICES:04d} (things with "
            "certificates)",
        ),
        (
            "runs",
            "readings over MQTT/TLS with the devices' certificates (a few malformed on purpose), "
            "Athena queries, one alarm set to ALARM (its notification goes to the stack's topic, "
            "which has no subscriber), a reshard, a second `up`, `down --delete-data`",
        ),
        ("cost", settings.run_cost(stack, region).summary()),
        (
            "leaves",
            "the alerts topic's KMS key, pending deletion for 7 days (the shortest wait KMS "
            "allows); nothing else",
        ),
    ]


def _print_lines(out: Printer, title: str, lines: list[tuple[str, str]]) -> None:
    out.info(title)
    for what, detail in lines:
        out.info(f"  {what:<8} {detail}")


def start_pytest(args: list[str], env: dict[str, str]) -> int:
    """Run the journey's pytest; Ctrl-C reaches it too, and its teardown takes the stack down
    while this waits for it."""
    child = subprocess.Popen([sys.executable, "-m", "pytest", *args], env=env, cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            print(
                "interrupted: waiting for the journey's teardown to take the stack down",
                file=sys.stderr,
            )


def run(
    env: Mapping[str, str],
    *,
    ask: Ask | None,
    out: Printer,
    start: Callable[[list[str], dict[str, str]], int] = start_pytest,
) -> int:
    """`make test-aws`."""
    _check(env, "make test-aws", "creates a stack in a real AWS account, and AWS bills it")
    region = region_of(env)
    stack = env.get(PINNED_STACK) or settings.new_stack_name()
    account = _account(region)
    _print_lines(out, "The end-to-end journey on AWS:", describe_run(stack, region, account))
    if not _confirm(env, ask, f"Create stack {stack} in account {account} ({region}) and run it?"):
        out.notice("cancelled: nothing was created")
        return 1
    args = [JOURNEY, "-m", "e2e", "--confcutdir", "tests/e2e", "-p", "no:cacheprovider", "-v"]
    return start(args, {**env, settings.TARGET_VARIABLE: "aws", settings.STACK_VARIABLE: stack})


def find_stacks(clients: leftovers.Clients) -> list[str]:
    """The e2e stacks with anything in the region: by their tag and by the names they gave."""
    tagged = {v for v in leftovers.stack_tag_values(clients) if settings.STACK_PATTERN.fullmatch(v)}
    named = {
        match.group(0).replace("_", "-")
        for name in leftovers.named(clients, settings.STACK_PATTERN)
        if (match := settings.STACK_PATTERN.search(name))
    }
    return sorted(tagged | named)


def _down(stack: str, region: str, workdir: Path, endpoint_url: str | None) -> dict[str, Any]:
    from iotpipe.cli import run as iotpipe

    config = workdir / f"{stack}.toml"
    config.write_text(settings.config_text(stack, region, emulator=endpoint_url is not None))
    argv = ["down", "--delete-data", "--yes", "--output", "json", "--config", str(config)]
    argv += ["--devices-dir", str(workdir / "devices")]
    if endpoint_url:
        argv += ["--endpoint-url", endpoint_url]
    document = io.StringIO()
    with contextlib.redirect_stdout(document):
        code = iotpipe(argv)
    if code != 0:
        raise IotpipeError(f"`iotpipe down --delete-data` of stack {stack} failed (exit {code})")
    return json.loads(document.getvalue())


# The tagging API lists a deleted resource for a while: how often, and how long apart, to look.
SETTLE_LOOKS = 10
SETTLE_SECONDS = 30.0


def _settled(
    clients: leftovers.Clients, stacks: list[str], wait: Callable[[float, str], None]
) -> dict[str, list[str]]:
    """What is still left of each of `stacks` once AWS has caught up with the deletions."""
    for look in range(SETTLE_LOOKS):
        still = {
            stack: found.lines()
            for stack in stacks
            if not (found := leftovers.of_stack(clients, stack)).empty
        }
        if not still or look == SETTLE_LOOKS - 1:
            return still
        wait(SETTLE_SECONDS, "the tagging API lists deleted resources for a while")
    return still


def clean(
    env: Mapping[str, str],
    *,
    ask: Ask | None,
    out: Printer,
    endpoint_url: str | None = None,
    wait: Callable[[float, str], None] | None = None,
) -> int:
    """`make test-aws-clean`: every e2e stack found is taken down with `down --delete-data`."""
    import boto3

    _check(env, "make test-aws-clean", "deletes stacks in a real AWS account", pinned_stack=False)
    region = region_of(env)

    def pause(seconds: float, why: str) -> None:
        out.info(f"waiting {seconds:.0f} s: {why}")
        time.sleep(seconds)

    wait = wait or pause
    session = boto3.Session(region_name=region)
    made: dict[str, Any] = {}

    def clients(service: str) -> Any:
        if service not in made:
            made[service] = session.client(service, endpoint_url=endpoint_url)
        return made[service]

    stacks = find_stacks(clients)
    left = {stack: leftovers.of_stack(clients, stack) for stack in stacks}
    for stack, found in left.items():
        for arn in found.tagged.keys_pending_deletion:
            out.info(f"{stack}: KMS key {arn} is pending deletion; KMS deletes it in time")
    to_remove = [stack for stack, found in left.items() if not found.empty]
    if not to_remove:
        out.info(f"no e2e stack ({settings.PREFIX}*) has anything left in {region}")
        return 0
    _print_lines(
        out,
        f"e2e stacks with resources left in {region}:",
        [(stack, f"{len(left[stack].lines())} resource(s)") for stack in to_remove],
    )
    if not _confirm(env, ask, f"Take down {len(to_remove)} stack(s), data included?"):
        out.notice("cancelled: nothing was deleted")
        return 1
    with tempfile.TemporaryDirectory(prefix="iotpipe-e2e-clean-") as tmp:
        for stack in to_remove:
            out.info(f"taking down {stack}")
            leftovers.take_down(lambda s=stack: _down(s, region, Path(tmp), endpoint_url), wait)
    still = _settled(clients, to_remove, wait)
    for stack, lines in still.items():
        out.error(
            f"{stack} still has: " + "; ".join(lines),
            hint="run `make test-aws-clean` again; if it stays, delete these by hand",
        )
    if still:
        return 1
    out.info(f"taken down: {', '.join(to_remove)}")
    return 0


def policies(env: Mapping[str, str], *, out: Printer) -> int:
    """The policies the run's identity needs: `iam-policy`'s deploy and operate jobs for the
    pinned stack, and the journey's own checks."""
    from iotpipe.cli import run as iotpipe

    _check(
        env, "python -m tests.e2e.aws policies", "asks AWS (STS) for the account of the credentials"
    )
    stack = env.get(PINNED_STACK)
    if not stack:
        raise Refused(
            f"set {PINNED_STACK}=<name>: the policies name the stack's resources exactly, so the "
            "runs they are for use that one name",
            hint=f"e.g. {PINNED_STACK}={settings.PREFIX}0a1b2c",
        )
    region = region_of(env)
    account = _account(region)
    documents: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="iotpipe-e2e-policies-") as tmp:
        config = Path(tmp) / "iotpipe.toml"
        config.write_text(settings.config_text(stack, region, emulator=False))
        for job in ("deploy", "operate"):
            text = io.StringIO()
            argv = ["iam-policy", "--job", job, "--account-id", account, "--config", str(config)]
            with contextlib.redirect_stdout(text):
                code = iotpipe(argv)
            if code != 0:
                return code
            documents[job] = json.loads(text.getvalue())
    documents["e2e-checks"] = [
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "EndToEndChecks",
                    "Effect": "Allow",
                    "Action": sorted(settings.JOURNEY_ACTIONS),
                    # Listings and the tagging API have no resource to scope them to; the alarm
                    # drill touches the stack's own alarms only.
                    "Resource": "*",
                }
            ],
        }
    ]
    out.data(documents)
    return 0


def _on_terminal(question: str) -> str:
    try:
        return input(question)
    except EOFError:  # Ctrl-D: no answer is no
        return ""


def _terminal_ask() -> Ask | None:
    return _on_terminal if sys.stdin.isatty() else None


def main(argv: list[str]) -> int:
    out = Printer()
    commands = {
        "run": lambda: run(os.environ, ask=_terminal_ask(), out=out),
        "clean": lambda: clean(os.environ, ask=_terminal_ask(), out=out),
        "policies": lambda: policies(os.environ, out=out),
    }
    if len(argv) != 1 or argv[0] not in commands:
        out.error(
            f"usage: python -m tests.e2e.aws {{{','.join(commands)}}}",
            hint="`make test-aws` runs `run`, `make test-aws-clean` runs `clean`",
        )
        return 2
    try:
        return commands[argv[0]]()
    except IotpipeError as exc:
        out.error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        # Before the journey starts (it handles Ctrl-C itself), or in the middle of a clean-up.
        out.notice(f"interrupted: `make test-aws-clean` removes what {argv[0]} may have left")
        return INTERRUPTED_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
