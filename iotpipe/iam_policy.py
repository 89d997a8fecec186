"""The least-privilege IAM policies people and CI roles need, by job.

Nothing here lists an action: each job's policy is assembled from the permissions the code
declares next to its calls (`Resource.grants` for what `plan`, `up` and `down` do to a resource;
`grants` functions in the modules behind `devices`, `reshard`, `query`, `status` and `simulate`;
see iotpipe.permissions). Resources are the stack's exact ARNs wherever AWS knows the name in
advance; a wildcard or "*" appears only where a declaration gives its reason (random ids, or an
action IAM lets no policy scope to a resource).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotpipe import athena_query, devices, health, resharding, simulate
from iotpipe.context import StackContext
from iotpipe.errors import IotpipeError
from iotpipe.permissions import Grant
from iotpipe.resources.iam import POLICY_VERSION
from iotpipe.resources.kinesis import ReadingsStream
from iotpipe.stack import account_grants, build_teardown_resources

# Actions a policy must grant although no API call of that name shows them, each with the reason
# AWS checks it (the audit of the test suite accepts these as used).
IMPLICIT_ACTIONS: dict[str, str] = {
    "iam:PassRole": "CreateFunction, CreateTopicRule, CreateDeliveryStream, CreateCrawler and "
    "their updates pass the stack's service roles (IAM user guide, 'Granting a user "
    "permissions to pass a role to an AWS service')",
    "timestream:DescribeEndpoints": "the SDK discovers Timestream's endpoint with it before "
    "each call (Timestream developer guide, 'The Endpoint Discovery Pattern'); not made "
    "against an explicit endpoint",
    "iot:DescribeEndpoint": "`devices show` finds the account's IoT data endpoint (shadows) "
    "with it; an explicit --endpoint-url replaces that call",
    "iam:CreateServiceLinkedRole": "the first RegisterScalableTarget of a DynamoDB table creates "
    "Application Auto Scaling's service-linked role with the caller's permission (Application "
    "Auto Scaling user guide, 'Service-linked roles')",
    # Creating a resource with tags is authorized as tagging it too ("tag on create"; each
    # service's API reference of its create call). Later tag changes call these by name.
    **{
        action: "creating the resource with the stack's tag is authorized as tagging it too"
        for action in (
            "athena:TagResource",
            "cloudwatch:TagResource",
            "dynamodb:TagResource",
            "firehose:TagDeliveryStream",
            "glue:TagResource",
            "iam:TagRole",
            "iot:TagResource",
            "kinesis:AddTagsToStream",
            "kms:TagResource",
            "lambda:TagResource",
            "logs:TagLogGroup",
            "sns:TagResource",
            "sqs:TagQueue",
            "timestream:TagResource",
        )
    },
    # Athena runs a query with the caller's permissions on the catalog and the bucket (Athena
    # user guide, "Access to Amazon S3" and "Fine-grained access to databases and tables").
    **{
        action: "Athena reads the catalog and the archive, and writes the query's results, "
        "with the permissions of whoever starts the query"
        for action in (
            "glue:GetDatabase",
            "glue:GetTable",
            "s3:GetBucketLocation",
            "s3:ListBucket",
            "s3:ListBucketMultipartUploads",
            "s3:AbortMultipartUpload",
            "s3:ListMultipartUploadParts",
        )
    },
    # Object access in the archive: Athena's (above) for `query`; for `deploy`, whoever may set
    # the bucket's policy or lifecycle could grant it to themselves, so it is stated openly
    # (parliament: RESOURCE_POLICY_PRIVILEGE_ESCALATION).
    **{
        action: "Athena reads the archive and writes results as the caller (query); "
        "PutBucketPolicy could grant it anyway (deploy), so it is stated openly"
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject")
    },
}

# Calls made only against an emulator endpoint, which no job grants.
EMULATOR_ONLY_ACTIONS: dict[str, str] = {
    "iot:Publish": "against AWS, `simulate` publishes over MQTT with each device's certificate "
    "(the device policy authorizes it, not IAM); an emulator takes the HTTPS Publish instead",
}


def _observation(ctx: StackContext, *, plan: bool) -> list[Grant]:
    """`status` (and with `plan`, `plan`): observing every resource the stack may own, and
    its health."""
    resources = build_teardown_resources(ctx, prewarm=False)
    observing = [grant for resource in resources for grant in resource.grants() if grant.read]
    return [
        *account_grants(),
        *[grant for grant in observing if plan or not grant.preflight],
        *health.grants(ctx.names, ctx.config),
    ]


def _deploy(ctx: StackContext) -> list[Grant]:
    # Everything of every resource: its reads (plan's preflight too) and its writes.
    resources = build_teardown_resources(ctx, prewarm=False)
    return [
        *account_grants(),
        *[grant for resource in resources for grant in resource.grants()],
        *health.grants(ctx.names, ctx.config),
    ]


def _operate(ctx: StackContext) -> list[Grant]:
    names = ctx.names
    stream = ReadingsStream(ctx, names.readings_stream)
    return [
        *_observation(ctx, plan=False),
        *devices.grants(names),
        *stream.reshard_grants(),
        *resharding.recommend_grants(),
        *athena_query.grants(names),
        *simulate.grants(names),
    ]


def _read_only(ctx: StackContext) -> list[Grant]:
    return [*_observation(ctx, plan=True), *devices.listing_grants(ctx.names)]


@dataclass(frozen=True)
class Job:
    summary: str
    # The commands the job's policy lets run, as their words ("devices register").
    commands: tuple[str, ...]
    grants: Callable[[StackContext], list[Grant]]

    def covers(self, command: str) -> bool:
        return any(command == c or command.startswith(f"{c} ") for c in self.commands)


JOBS: dict[str, Job] = {
    "deploy": Job(
        "plan, up, down and status: the person or CI role that deploys and tears down",
        ("plan", "up", "down", "status"),
        _deploy,
    ),
    "operate": Job(
        "devices, reshard, query, status and simulate: whoever runs the deployed pipeline",
        ("devices", "reshard", "query", "status", "simulate"),
        _operate,
    ),
    "read-only": Job(
        "plan, status, devices list and show, cost: whoever watches, changing nothing",
        ("plan", "status", "devices list", "devices show", "cost"),
        _read_only,
    ),
}


def statements(grants: list[Grant]) -> list[dict[str, Any]]:
    """The grants as few statements as say the same: the resources of each action (under each
    condition) are gathered first, then the actions that share resources and condition."""
    resources: dict[tuple[str, str], set[str]] = {}
    for grant in grants:
        for action in grant.actions:
            resources.setdefault((action, grant.condition), set()).update(grant.resources)
    shared: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (action, condition), arns in resources.items():
        scope = ("*",) if "*" in arns else tuple(sorted(arns))
        shared.setdefault((condition, scope), []).append(action)
    out: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for (condition, scope), actions in sorted(shared.items(), key=lambda kv: sorted(kv[1])):
        actions.sort()
        # A Sid is alphanumeric: "application-autoscaling" becomes "ApplicationAutoscaling".
        service = actions[0].split(":")[0].title().replace("-", "")
        counts[service] = counts.get(service, 0) + 1
        statement: dict[str, Any] = {
            "Sid": f"{service}{counts[service]}",
            "Effect": "Allow",
            "Action": actions,
            "Resource": scope[0] if len(scope) == 1 else list(scope),
        }
        if condition:
            statement["Condition"] = json.loads(condition)
        out.append(statement)
    return out


def job_policy(ctx: StackContext, job: str) -> dict[str, Any]:
    """The job's whole policy as one document (before it is split to IAM's size quota)."""
    return {"Version": POLICY_VERSION, "Statement": statements(JOBS[job].grants(ctx))}


# A customer managed policy holds at most 6,144 characters, whitespace not counted (IAM and AWS
# STS quotas, "IAM and STS character limits"); `aws iam create-policy` refuses a larger one.
# The emulator enforces the quota with its own count (aws_rules/iam.py), so the tests that create
# these documents there check this one.
MANAGED_POLICY_CHARACTERS = 6144


def policy_characters(document: dict[str, Any]) -> int:
    """The size IAM holds a policy document to: its characters, whitespace not counted."""
    return len("".join(json.dumps(document).split()))


def split_policy(document: dict[str, Any], limit: int = MANAGED_POLICY_CHARACTERS) -> list[dict]:
    """The document's statements, in order, as few documents as fit `limit` each."""
    documents: list[dict[str, Any]] = []
    for statement in document["Statement"]:
        if documents:
            candidate = {**documents[-1], "Statement": [*documents[-1]["Statement"], statement]}
            if policy_characters(candidate) <= limit:
                documents[-1] = candidate
                continue
        alone = {"Version": document["Version"], "Statement": [statement]}
        if policy_characters(alone) > limit:
            raise IotpipeError(f"internal: policy statement {statement['Sid']} exceeds {limit}")
        documents.append(alone)
    return documents


def job_policies(
    ctx: StackContext, jobs: list[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Each job's policy as documents that each fit a customer managed policy."""
    return {job: split_policy(job_policy(ctx, job)) for job in (jobs or list(JOBS))}
