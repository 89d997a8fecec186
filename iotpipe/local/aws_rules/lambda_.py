"""Lambda: function states after a create or an update, and the public Powertools layer versions.

Function states (Lambda developer guide, "Lambda function states",
https://docs.aws.amazon.com/lambda/latest/dg/functions-states.html): "After Lambda creates the
function, it sets the state to pending ... Lambda does not invoke a function during pending
state." "The following operations fail while function creation is pending: Invoke,
UpdateFunctionCode, UpdateFunctionConfiguration, PublishVersion." After an update,
`LastUpdateStatus` is `InProgress` ("invocations go to the function's previous code and
configuration") and "The following operations fail while an asynchronous update is in progress:
UpdateFunctionCode, UpdateFunctionConfiguration, PublishVersion." moto finishes both at once.

Layers: AWS publishes Powertools for AWS Lambda (Python) from its own account for every account
to use, and answers a version it does not publish as it answers any layer the caller may not read.
"""

from __future__ import annotations

import re
from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, clock, lock
from iotpipe.resources.lambda_ import POWERTOOLS_ACCOUNT

# How long a new function stays Pending, and an update InProgress, in emulated seconds. AWS takes
# a few seconds for a zip function outside a VPC (a minute or more inside one); short enough that
# `demo`, which runs at real speed, stays quick.
PENDING_SECONDS = 3.0
UPDATE_SECONDS = 2.0

# AWS's texts (ResourceConflictException, HTTP 409, per the API reference of each operation).
# An update while the function is still being created, as quoted in
# aws/serverless-application-model #2356:
PENDING_CONFLICT = (
    "The operation cannot be performed at this time. The resource {arn} is currently in the "
    "following state: 'Pending'. StateReasonCode: 'Creating'"
)
# Invoke while Pending, as quoted in remotion-dev/remotion #1186:
PENDING_INVOKE_CONFLICT = (
    "The operation cannot be performed at this time. The function is currently in the following "
    "state: Pending"
)
# A change while an update is in progress, as quoted in ansible-collections/community.aws #830,
# hashicorp/terraform #29604 and aws/aws-cli #6718:
UPDATE_CONFLICT = (
    "The operation cannot be performed at this time. An update is in progress for resource: {arn}"
)
# What GetFunctionConfiguration shows meanwhile (CreateFunction's reply: terraform-provider-aws
# #42245 debug log; an update's: appleboy/lambda-action #65, "Last Update Status: InProgress",
# "Reason: The function is being created.", "ReasonCode: Creating").
BEING_CREATED = "The function is being created."
BLOCKED_WHILE_PENDING = ("UpdateFunctionCode", "UpdateFunctionConfiguration", "PublishVersion")
BLOCKED_WHILE_UPDATING = ("UpdateFunctionCode", "UpdateFunctionConfiguration", "PublishVersion")


def function_name(name_or_arn: str) -> str:
    """The function's name from a name, a (partial) ARN, or either with a qualifier."""
    if ":function:" in name_or_arn:
        return name_or_arn.split(":function:", 1)[1].split(":", 1)[0]
    return name_or_arn.split(":", 1)[0]


def _arn(call: Call, name: str) -> str:
    return f"arn:aws:lambda:{call.region}:{call.account_id}:function:{name}"


def _phase(call: Call, name: str) -> str | None:
    """The function's phase: "pending" while being created, "updating" while an update applies."""
    with lock():
        times = call.state.get("functions", {}).get(name)
    if times is None:
        return None
    now = clock.now()
    if now < times.get("pending_until", 0.0):
        return "pending"
    if now < times.get("updating_until", 0.0):
        return "updating"
    return None


def _record(call: Call, name: str, **until: float) -> None:
    with lock():
        call.state.setdefault("functions", {})[name] = until


@after("lambda", "CreateFunction")
def created_pending(call: Call, reply: dict[str, Any]) -> dict[str, Any]:
    name = function_name(call.params["FunctionName"])
    now = clock.now()
    _record(call, name, pending_until=now + PENDING_SECONDS)
    reply = {k: v for k, v in reply.items() if not k.startswith("LastUpdateStatus")}
    return {
        **reply,
        "State": "Pending",
        "StateReason": BEING_CREATED,
        "StateReasonCode": "Creating",
    }


@after("lambda", "UpdateFunctionCode", "UpdateFunctionConfiguration")
def updated_in_progress(call: Call, reply: dict[str, Any]) -> dict[str, Any]:
    name = function_name(call.params["FunctionName"])
    _record(call, name, updating_until=clock.now() + UPDATE_SECONDS)
    return _in_progress(reply)


@after("lambda", "DeleteFunction")
def forget_deleted(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        call.state.get("functions", {}).pop(function_name(call.params["FunctionName"]), None)


def _pending(config: dict[str, Any]) -> dict[str, Any]:
    return {
        **config,
        "State": "Pending",
        "StateReason": BEING_CREATED,
        "StateReasonCode": "Creating",
        "LastUpdateStatus": "InProgress",
    }


def _in_progress(config: dict[str, Any]) -> dict[str, Any]:
    return {
        **config,
        "LastUpdateStatus": "InProgress",
        "LastUpdateStatusReason": BEING_CREATED,
        "LastUpdateStatusReasonCode": "Creating",
    }


@after("lambda", "GetFunctionConfiguration")
def configuration_state(call: Call, reply: dict[str, Any]) -> dict[str, Any] | None:
    phase = _phase(call, function_name(call.params["FunctionName"]))
    if phase == "pending":
        return _pending(reply)
    return _in_progress(reply) if phase == "updating" else None


@after("lambda", "GetFunction")
def function_state(call: Call, reply: dict[str, Any]) -> dict[str, Any] | None:
    shown = configuration_state(call, reply.get("Configuration", {}))
    return None if shown is None else {**reply, "Configuration": shown}


@before("lambda", *dict.fromkeys(BLOCKED_WHILE_PENDING + BLOCKED_WHILE_UPDATING))
def refuse_change_while_busy(call: Call) -> None:
    name = function_name(call.params["FunctionName"])
    phase = _phase(call, name)
    if phase == "pending" and call.operation in BLOCKED_WHILE_PENDING:
        raise AwsRefusal(
            "ResourceConflictException", PENDING_CONFLICT.format(arn=_arn(call, name)), 409
        )
    if phase == "updating" and call.operation in BLOCKED_WHILE_UPDATING:
        raise AwsRefusal(
            "ResourceConflictException", UPDATE_CONFLICT.format(arn=_arn(call, name)), 409
        )


@before("lambda", "Invoke")
def refuse_invoke_while_pending(call: Call) -> None:
    if _phase(call, function_name(call.params["FunctionName"])) == "pending":
        raise AwsRefusal("ResourceConflictException", PENDING_INVOKE_CONFLICT, 409)


# --- AWS's public Powertools layer -------------------------------------------------------------

# Powertools for AWS Lambda (Python) v3: one layer per Python version and architecture, published
# from POWERTOOLS_ACCOUNT with the same version numbers in every commercial region. The latest
# version its documentation lists is 27 ("Lambda Layer" table,
# https://docs.powertools.aws.dev/lambda/python/latest/getting-started/install/#lambda-layer);
# every version from 1 up to it is taken to exist in every region (AWS offers no way to list
# another account's layer versions: ListLayerVersions needs lambda:ListLayerVersions, which
# Powertools does not grant).
POWERTOOLS_LAYER = re.compile(r"AWSLambdaPowertoolsPythonV3-python3(10|11|12|13|14)-(x86_64|arm64)")
POWERTOOLS_LATEST_VERSION = 27

# A version the caller may not read (including one that does not exist in another account) is
# answered with AccessDeniedException, HTTP 403, by GetLayerVersion(ByArn) and by CreateFunction /
# UpdateFunctionConfiguration naming it, with this text (DataDog/datadog-lambda-python #404 for a
# version not yet published; crucial-project/serverless-shell #2 for CreateFunction). A missing
# permission of the caller's own says "no identity-based policy" instead.
LAYER_NOT_READABLE = (
    "User: {user} is not authorized to perform: lambda:GetLayerVersion on resource: {arn} "
    "because no resource-based policy allows the lambda:GetLayerVersion action"
)


def published_layer_version(arn: str) -> dict[str, Any] | None:
    """GetLayerVersionByArn's answer for a version of AWS's Powertools layer that exists."""
    parts = arn.split(":")
    if len(parts) != 8 or parts[4] != POWERTOOLS_ACCOUNT or not parts[7].isdigit():
        return None
    name, version = parts[6], int(parts[7])
    match = POWERTOOLS_LAYER.fullmatch(name)
    if match is None or not 1 <= version <= POWERTOOLS_LATEST_VERSION:
        return None
    python, architecture = match.groups()
    return {
        "Content": {"Location": "", "CodeSha256": "", "CodeSize": 0},
        "LayerArn": ":".join(parts[:7]),
        "LayerVersionArn": arn,
        "Description": f"Powertools for AWS Lambda (Python) V3 [{architecture}]",
        "CreatedDate": "2024-08-01T00:00:00.000+0000",
        "Version": version,
        "CompatibleRuntimes": [f"python3.{python}"],
        "CompatibleArchitectures": [architecture],
        "LicenseInfo": "MIT-0",
    }


def _refuse_unpublished(call: Call, arns: list[str]) -> None:
    for arn in arns:
        parts = arn.split(":")
        ours = len(parts) > 4 and parts[4] == POWERTOOLS_ACCOUNT
        if ours and published_layer_version(arn) is None:
            user = f"arn:aws:iam::{call.account_id}:root"
            raise AwsRefusal(
                "AccessDeniedException", LAYER_NOT_READABLE.format(user=user, arn=arn), 403
            )


@before("lambda", "GetLayerVersionByArn")
def refuse_unpublished_layer_version(call: Call) -> None:
    _refuse_unpublished(call, [call.params["Arn"]])


@before("lambda", "CreateFunction", "UpdateFunctionConfiguration")
def refuse_function_with_unpublished_layer(call: Call) -> None:
    _refuse_unpublished(call, list(call.params.get("Layers") or []))
