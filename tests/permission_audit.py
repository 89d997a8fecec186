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


# A PartiQL statement is authorized by its verb, whatever operation carries it ("IAM security
# policies with PartiQL for DynamoDB": PartiQLSelect, PartiQLInsert, PartiQLUpdate, PartiQLDelete).
PARTIQL_OPERATIONS = {"ExecuteStatement", "BatchExecuteStatement", "ExecuteTransaction"}
PARTIQL_VERBS = {"SELECT": "Select", "INSERT": "Insert", "UPDATE": "Update", "DELETE": "Delete"}


def call_actions(service: str, operation: str, request: dict[str, Any]) -> set[str]:
    """The IAM actions one call is authorized as: its own, or one per PartiQL statement verb."""
    if service != "dynamodb" or operation not in PARTIQL_OPERATIONS:
        return {iam_action(service, operation)}
    body = json.loads(request.get("body") or b"{}")
    statements = body.get("Statements") or body.get("TransactStatements") or [body]
    return {
        f"dynamodb:PartiQL{PARTIQL_VERBS[s['Statement'].split(None, 1)[0].upper()]}"
        for s in statements
    }


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
        def before_call(model: Any, params: dict[str, Any], **_: Any) -> None:
            actions.update(call_actions(service, model.name, params))

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
    from iotpipe.context import StackContext
    from iotpipe.iam_policy import job_policy

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


def audit(config_path: Path) -> tuple[list[str], list[str]]:
    """(figures, problems) of the second direction: every action each job grants (for the stack
    `config_path` describes) is called by one of the job's commands somewhere in the suite, or
    is one AWS checks without a call of that name."""
    from iotpipe.aws import Aws
    from iotpipe.config import load_config
    from iotpipe.context import StackContext
    from iotpipe.iam_policy import IMPLICIT_ACTIONS, JOBS, job_policies, policy_characters

    config = load_config(config_path)
    ctx = StackContext(config, Aws(region=config.stack.region), "123456789012", True)
    figures, problems = [], []
    for name, documents in job_policies(ctx).items():
        job = JOBS[name]
        actions = {a for d in documents for s in d["Statement"] for a in s["Action"]}
        called = called_by(job.covers)
        unused = sorted(actions - called - set(IMPLICIT_ACTIONS))
        calls = sum(n for (command, _), n in CALLS.items() if job.covers(command))
        sizes = ", ".join(f"{policy_characters(d):,}" for d in documents)
        figures.append(
            f"{name}: {len(documents)} documents ({sizes} characters), {len(actions)} actions "
            f"granted, {len(actions & called)} of them called by its commands "
            f"({calls} calls checked, each action once per command run), "
            f"{len(actions - called)} checked by AWS without a call of their name"
        )
        if unused:
            problems.append(f"{name} grants actions none of its commands calls: {unused}")
    # The processor's role: the handler's calls, and the uses AWS documents for the role.
    role = processor_role_actions(config_path)
    handler = called_by(lambda command: command == PROCESSOR)
    unused = sorted(role - handler - set(PROCESSOR_ROLE_USES))
    figures.append(
        f"processor role: {len(role)} actions, {len(role & handler)} called by the handler in "
        f"the processor tests, {len(role - handler)} used by Lambda itself as documented"
    )
    if unused:
        problems.append(f"the processor's role grants actions nothing uses: {unused}")
    return figures, problems


def whole_suite(config: Any) -> bool:
    """Whether this session runs every test (the audit is meaningless for a selection)."""
    tests = Path(__file__).resolve().parent
    paths = [Path(arg.split("::")[0]).resolve() for arg in config.args] or [tests]
    return (
        not config.option.keyword
        and not config.option.markexpr
        and all(path == tests for path in paths)
    )


# The processor's own calls (its handler, in the processor tests) are recorded under this name.
PROCESSOR = "processor handler"

# What the processor's role is used for besides the handler's calls, each as AWS documents it.
PROCESSOR_ROLE_USES = {
    # Lambda developer guide, "Using Lambda with Kinesis": the execution role's permissions
    # (the AWSLambdaKinesisExecutionRole managed policy) let the event source mapping read.
    "kinesis:DescribeStream": "the event source mapping reads the stream as the function's role",
    "kinesis:DescribeStreamSummary": "the event source mapping reads the stream as the role",
    "kinesis:GetRecords": "the event source mapping reads the stream as the function's role",
    "kinesis:GetShardIterator": "the event source mapping reads the stream as the role",
    "kinesis:ListShards": "the event source mapping reads the stream as the function's role",
    "kinesis:ListStreams": "the event source mapping reads the stream as the function's role",
    # Same guide, "On-failure destinations": the mapping sends a failed batch's record to SQS
    # with the execution role.
    "sqs:SendMessage": "the event source mapping's on-failure destination, as the role",
    # Lambda developer guide, "Lambda execution role": the runtime writes the function's logs.
    "logs:CreateLogStream": "the Lambda runtime writes the function's logs as the role",
    "logs:PutLogEvents": "the Lambda runtime writes the function's logs as the role",
    # Timestream developer guide, "The Endpoint Discovery Pattern"; the SDK's own call, which
    # an explicit endpoint (the emulator) skips.
    "timestream:DescribeEndpoints": "the SDK discovers Timestream's endpoint before writing",
}


def processor_role_actions(config_path: Path) -> set[str]:
    """The actions of the processor's role for the stack, with time series on."""
    from iotpipe.aws import Aws
    from iotpipe.config import load_config
    from iotpipe.context import StackContext
    from iotpipe.resources.lambda_ import processor_role

    config = load_config(config_path)
    config = config.model_copy(
        update={"timeseries": config.timeseries.model_copy(update={"enabled": True})}
    )
    ctx = StackContext(config, Aws(region=config.stack.region), "123456789012", True)
    actions: set[str] = set()
    for statement in processor_role(ctx).policy["Statement"]:
        listed = statement["Action"]
        actions |= {listed} if isinstance(listed, str) else set(listed)
    return actions


@contextmanager
def recording_processor(clients_module: Any, monkeypatch: Any) -> Iterator[set[str]]:
    """The IAM actions of the calls the processor's own clients make inside the block."""
    actions: set[str] = set()
    original = clients_module.client

    def client(service: str) -> Any:
        created = service not in clients_module.CLIENTS
        found = original(service)
        if created:

            def before_call(model: Any, params: dict[str, Any], **_: Any) -> None:
                actions.update(call_actions(service, model.name, params))

            found.meta.events.register("before-call", before_call)
        return found

    monkeypatch.setattr(clients_module, "client", client)
    yield actions
    record(PROCESSOR, actions)
