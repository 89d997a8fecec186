"""Every AWS call each command makes, checked against the IAM policies `iam-policy` prints.

The `cli` fixture records, for each command it runs, the operations the command's clients call
(botocore's `before-call`, so refused and retried calls count too) and checks at once that every
job which includes the command is allowed each call's IAM action (the first direction of the
proof). The calls of the whole suite are gathered here, across xdist workers, and when the whole
suite has run, `audit` checks the other direction: every action a job grants is called by one of
its commands, or is listed in `iotpipe.iam_policy.IMPLICIT_ACTIONS` with the reason no call of
that name shows it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import typer

from iotpipe import aws as aws_module
from iotpipe.cli import app

# The IAM service prefix of each boto3 client the code uses, where the two differ.
SERVICE_PREFIXES = {
    "iot-data": "iot",
    "timestream-write": "timestream",
    "timestream-query": "timestream",
}

# Operations whose IAM action is not named after them (Service Authorization Reference, "Actions
# defined by Amazon S3"; "Actions defined by AWS Lambda"). Every other operation's action is its
# own name.
OPERATION_ACTIONS = {
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjectVersions"): "s3:ListBucketVersions",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "GetBucketEncryption"): "s3:GetEncryptionConfiguration",
    ("s3", "PutBucketEncryption"): "s3:PutEncryptionConfiguration",
    ("s3", "GetPublicAccessBlock"): "s3:GetBucketPublicAccessBlock",
    ("s3", "PutPublicAccessBlock"): "s3:PutBucketPublicAccessBlock",
    ("s3", "GetBucketLifecycleConfiguration"): "s3:GetLifecycleConfiguration",
    ("s3", "PutBucketLifecycleConfiguration"): "s3:PutLifecycleConfiguration",
    # DeleteObjects is authorized per key: s3:DeleteObject, or s3:DeleteObjectVersion for a
    # versioned key; `down --delete-data` removes versions (both are granted, see the policy).
    ("s3", "DeleteObjects"): "s3:DeleteObjectVersion",
    ("lambda", "GetLayerVersionByArn"): "lambda:GetLayerVersion",
}


def iam_action(service: str, operation: str) -> str:
    """The IAM action a call of `service`'s `operation` (botocore's name) is authorized as."""
    prefix = SERVICE_PREFIXES.get(service, service)
    return OPERATION_ACTIONS.get((prefix, operation), f"{prefix}:{operation}")


@lru_cache(maxsize=1)
def _root() -> Any:
    return typer.main.get_command(app)


def command_path(argv: Sequence[str]) -> str:
    """The command `argv` runs, as its words: "up", "devices register", "local query"."""
    words: list[str] = []
    group = _root()
    for arg in argv:
        commands = getattr(group, "commands", None)  # a group's subcommands by name
        if commands is None or arg.startswith("-"):
            break
        sub = commands.get(arg)
        if sub is None:
            break
        words.append(arg)
        group = sub
    return " ".join(words)


# (command, IAM action) -> how many calls, for the whole session of this process.
CALLS: defaultdict[tuple[str, str], int] = defaultdict(int)


@contextmanager
def recording() -> Iterator[set[str]]:
    """The IAM actions of every AWS call made inside the block (by clients created in it)."""
    actions: set[str] = set()

    def on_client(service: str, client: Any) -> None:
        def before_call(model: Any, **_: Any) -> None:
            actions.add(iam_action(service, model.name))

        client.meta.events.register("before-call", before_call)

    remove = aws_module.add_client_hook(on_client)
    try:
        yield actions
    finally:
        remove()


def record(command: str, actions: set[str]) -> None:
    for action in actions:
        CALLS[command, action] += 1


def dump() -> str:
    return json.dumps([[command, action, n] for (command, action), n in sorted(CALLS.items())])


def load(text: str) -> None:
    for command, action, n in json.loads(text):
        CALLS[command, action] += n


def called_by(commands: Callable[[str], bool]) -> set[str]:
    return {action for (command, action) in CALLS if commands(command)}


@lru_cache(maxsize=64)
def granted(config_path: Path, config_text: str, job: str) -> frozenset[str]:
    """Every action `job`'s policy grants for the stack the config (of this text) describes."""
    from iotpipe.aws import Aws
    from iotpipe.config import load_config
    from iotpipe.iam_policy import job_policy
    from iotpipe.stack import StackContext

    config = load_config(config_path)
    ctx = StackContext(config, Aws(region=config.stack.region), "123456789012", True)
    return frozenset(
        action for statement in job_policy(ctx, job)["Statement"] for action in statement["Action"]
    )


def not_allowed(command: str, actions: set[str], config_path: Path) -> dict[str, list[str]]:
    """The calls `command` made that a job covering it does not allow, by job."""
    from iotpipe.iam_policy import EMULATOR_ONLY_ACTIONS, JOBS

    try:
        text = config_path.read_text()
        jobs = {
            name: granted(config_path, text, name)
            for name, job in JOBS.items()
            if job.covers(command)
        }
    except Exception:  # a config the command refused: it made no call to check
        return {}
    missing = {
        name: sorted(actions - allowed - set(EMULATOR_ONLY_ACTIONS))
        for name, allowed in jobs.items()
    }
    return {name: listed for name, listed in missing.items() if listed}
