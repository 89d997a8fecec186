"""IAM: a role is not assumable at once after a change, and policies have size quotas.

IAM is eventually consistent: "changes that you make in IAM ... take time to become visible
from other services" (IAM user guide, "Troubleshoot IAM: changes that I make are not always
immediately visible",
https://docs.aws.amazon.com/IAM/latest/UserGuide/troubleshoot_general.html#troubleshoot_general_eventual-consistency).
A service handed a role that was just created, or whose policies just changed, refuses it for a
while, each in its own words. The emulator refuses the first attempts of each such service after
every change of the role (a count, not a time, so the suite stays deterministic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, _state, after, before, lock

# How many attempts of each service are refused after a role (or one of its policies) changes.
REFUSALS_AFTER_CHANGE = 2


def _roles_state(call: Call) -> dict[str, dict[str, int]]:
    # IAM is global: one table per account, read by the rules of the services the role goes to.
    return _state[(call.account_id, "global", "iam")].setdefault("changed_roles", {})


@after("iam", "CreateRole", "PutRolePolicy", "UpdateAssumeRolePolicy", "AttachRolePolicy")
def remember_role_change(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        _roles_state(call)[call.params["RoleName"]] = {}


def _role_name(value: str) -> str:
    # A role ARN (arn:aws:iam::123456789012:role/path/name) or, for Glue, a name or path/name.
    return value.rsplit("/", 1)[-1]


_ROLE_KEYS = frozenset({"role", "rolearn"})


def _roles_in(value: Any) -> Iterator[str]:
    """Every role a request passes, wherever it sits (Firehose and IoT nest them)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key.lower() in _ROLE_KEYS and isinstance(item, str) and item:
                yield _role_name(item)
            else:
                yield from _roles_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _roles_in(item)


def _not_yet_assumable(call: Call, consumer: str, roles: list[str]) -> str | None:
    """The first role passed to `consumer` that it must still refuse (counting the refusal)."""
    with lock():
        changed = _roles_state(call)
        for role in roles:
            refused = changed.get(role)
            if refused is not None and refused.get(consumer, 0) < REFUSALS_AFTER_CHANGE:
                refused[consumer] = refused.get(consumer, 0) + 1
                return role
    return None


def _arn(call: Call, role: str) -> str:
    return f"arn:aws:iam::{call.account_id}:role/{role}"


def _refuse_until_propagated(
    service: str, consumer: str, code: str, message: Callable[[Call, str], str], *operations: str
) -> None:
    """Register a rule: `service` refuses a changed role with (code, message) at first."""

    def rule(call: Call) -> None:
        role = _not_yet_assumable(call, consumer, list(_roles_in(call.params)))
        if role is not None:
            raise AwsRefusal(code, message(call, role))

    rule.__name__ = f"{consumer.replace('-', '_')}_role_not_yet_assumable"
    before(service, *operations)(rule)


# Lambda CreateFunction / UpdateFunctionConfiguration: InvalidParameterValueException, "The role
# defined for the function cannot be assumed by Lambda." (Lambda API reference, CreateFunction,
# InvalidParameterValueException; the text as terraform-provider-aws retries it in
# internal/service/lambda/function.go).
_refuse_until_propagated(
    "lambda",
    "lambda-function",
    "InvalidParameterValueException",
    lambda call, role: "The role defined for the function cannot be assumed by Lambda.",
    "CreateFunction",
    "UpdateFunctionConfiguration",
)

# Firehose CreateDeliveryStream / UpdateDestination: InvalidArgumentException, "Firehose is unable
# to assume role arn:... Please check the role provided." (the text terraform-provider-aws retries
# on in internal/service/firehose/delivery_stream.go).
_refuse_until_propagated(
    "firehose",
    "firehose",
    "InvalidArgumentException",
    lambda call, role: (
        f"Firehose is unable to assume role {_arn(call, role)}. Please check the role provided."
    ),
    "CreateDeliveryStream",
    "UpdateDestination",
)

# IoT CreateTopicRule / ReplaceTopicRule: InvalidRequestException, "AWS IoT (iot.amazonaws.com) is
# unable to assume role (sts:AssumeRole) on resource: arn:...  If the role was just created or
# updated, please try again in a few seconds." (quoted in terraform-provider-aws #33433).
_refuse_until_propagated(
    "iot",
    "iot-rule",
    "InvalidRequestException",
    lambda call, role: (
        "AWS IoT (iot.amazonaws.com) is unable to assume role (sts:AssumeRole) on resource: "
        f"{_arn(call, role)}.  If the role was just created or updated, please try again in a "
        "few seconds."
    ),
    "CreateTopicRule",
    "ReplaceTopicRule",
)

# Glue CreateCrawler / UpdateCrawler: InvalidInputException, "Service is unable to assume provided
# role. Please verify role's TrustPolicy." (the text terraform-provider-aws retries on in
# internal/service/glue/crawler.go).
_refuse_until_propagated(
    "glue",
    "glue-crawler",
    "InvalidInputException",
    lambda call, role: (
        "Service is unable to assume provided role. Please verify role's TrustPolicy."
    ),
    "CreateCrawler",
    "UpdateCrawler",
)


# Lambda CreateEventSourceMapping reads the stream as the function's execution role:
# InvalidParameterValueException, "Cannot access stream arn:... Please ensure the role can perform
# the GetRecords, GetShardIterator, DescribeStream, and ListStreams Actions on your stream in
# IAM." (the text terraform-provider-aws retries on, "ensure the role can perform", in
# internal/service/lambda/event_source_mapping.go).
@before("lambda", "CreateEventSourceMapping")
def event_source_role_not_yet_assumable(call: Call) -> None:
    from moto.awslambda.models import lambda_backends

    try:
        function = lambda_backends[call.account_id][call.region].get_function(
            call.params["FunctionName"]
        )
    except Exception:  # moto answers for a function that does not exist
        return
    role = _not_yet_assumable(call, "lambda-esm", [_role_name(function.role)])
    if role is not None:
        raise AwsRefusal(
            "InvalidParameterValueException",
            f"Cannot access stream {call.params.get('EventSourceArn', '')}. Please ensure the role "
            "can perform the GetRecords, GetShardIterator, DescribeStream, and ListStreams "
            "Actions on your stream in IAM.",
        )


# Policy size quotas. IAM and STS quotas
# (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html): "The size of each
# managed policy cannot exceed 6,144 characters"; a role's inline policies together: "Role policy
# size cannot exceed 10,240 characters"; "IAM doesn't count white space when calculating the size
# of a policy against these quotas." Over the quota IAM answers LimitExceeded (HTTP 409) with
# "Cannot exceed quota for PolicySize: 6144" (CreatePolicy and CreatePolicyVersion, as quoted in
# ministryofjustice/analytical-platform #6873 and docker/docs #5815) and "Maximum policy size of
# 10240 bytes exceeded for role <name>" (PutRolePolicy, as quoted in serverless #7643 with
# "Status Code: 409; Error Code: LimitExceeded").
MANAGED_POLICY_MAX = 6_144
ROLE_INLINE_POLICIES_MAX = 10_240
# IoT CreatePolicy / CreatePolicyVersion (IoT API reference): "policyDocument must have a minimum
# length of 1, with a maximum length of 2048, excluding whitespace."
IOT_POLICY_MAX = 2_048


def policy_size(document: str) -> int:
    """A policy's size as IAM and IoT count it: characters other than whitespace."""
    return sum(1 for c in document if not c.isspace())


@before("iam", "CreatePolicy", "CreatePolicyVersion")
def managed_policy_size(call: Call) -> None:
    if policy_size(call.params.get("PolicyDocument", "")) > MANAGED_POLICY_MAX:
        raise AwsRefusal(
            "LimitExceeded", f"Cannot exceed quota for PolicySize: {MANAGED_POLICY_MAX}", 409
        )


@before("iam", "PutRolePolicy")
def role_inline_policies_size(call: Call) -> None:
    from moto.iam.models import iam_backends
    from moto.utilities.utils import get_partition

    role_name, policy_name = call.params["RoleName"], call.params["PolicyName"]
    try:
        role = iam_backends[call.account_id][get_partition(call.region)].get_role(role_name)
    except Exception:  # moto answers for a role that does not exist
        return
    # The policy of the same name is replaced, so it does not count twice.
    others = [doc for name, doc in role.policies.items() if name != policy_name]
    total = sum(map(policy_size, [*others, call.params.get("PolicyDocument", "")]))
    if total > ROLE_INLINE_POLICIES_MAX:
        raise AwsRefusal(
            "LimitExceeded",
            f"Maximum policy size of {ROLE_INLINE_POLICIES_MAX} bytes exceeded for role "
            f"{role_name}",
            409,
        )


@before("iot", "CreatePolicy", "CreatePolicyVersion")
def iot_policy_size(call: Call) -> None:
    # The limit is documented; the exact words of IoT's refusal are not, so this names the
    # documented limit under the documented InvalidRequestException.
    if policy_size(call.params.get("policyDocument", "")) > IOT_POLICY_MAX:
        raise AwsRefusal(
            "InvalidRequestException",
            f"The policy document exceeds the maximum length of {IOT_POLICY_MAX} characters, "
            "excluding whitespace.",
        )
