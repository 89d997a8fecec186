"""Glue: a crawler's role must be one Glue can assume, with only what Glue sends on AssumeRole.

Glue checks at CreateCrawler/UpdateCrawler that it can assume the role and answers
InvalidInputException, "Service is unable to assume provided role. Please verify role's
TrustPolicy." when it cannot (the text terraform-provider-aws matches in
internal/service/glue/crawler.go; older replies named the role: "Service is unable to assume role
arn:... Please verify role's TrustPolicy", as quoted in ansible-collections/community.aws #546).

Glue documents its crawler role's trust policy without conditions and does not say it sends
aws:SourceAccount or aws:SourceArn on AssumeRole ("Step 2: Create an IAM role for AWS Glue",
https://docs.aws.amazon.com/glue/latest/dg/create-an-iam-role.html). IAM evaluates a condition on
a key that is absent as false unless its operator ends in IfExists ("IAM JSON policy elements:
Condition operators", https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html),
so a statement with such a condition does not let Glue in. moto checks none of this.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from iotpipe.local.aws_rules import AwsRefusal, Call, before

GLUE = "glue.amazonaws.com"
# Context keys Glue is not documented to send when it assumes a crawler role.
KEYS_GLUE_DOES_NOT_SEND = frozenset(
    {"aws:sourceaccount", "aws:sourcearn", "aws:sourceorgid", "aws:sourceorgpaths"}
)
UNABLE_TO_ASSUME = "Service is unable to assume provided role. Please verify role's TrustPolicy."


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def glue_may_assume(trust: dict[str, Any]) -> bool:
    """Whether an Allow statement lets glue.amazonaws.com assume the role with Glue's request."""
    for statement in _listed(trust.get("Statement", [])):
        if statement.get("Effect") != "Allow":
            continue
        if "sts:AssumeRole" not in _listed(statement.get("Action", [])):
            continue
        principal = statement.get("Principal", {})
        services = _listed(principal.get("Service", [])) if isinstance(principal, dict) else []
        if GLUE not in services:
            continue
        conditions = statement.get("Condition", {})
        if any(
            key.lower() in KEYS_GLUE_DOES_NOT_SEND and not operator.endswith("IfExists")
            for operator, keys in conditions.items()
            for key in keys
        ):
            continue
        return True
    return False


@before("glue", "CreateCrawler", "UpdateCrawler")
def crawler_role_must_be_assumable_by_glue(call: Call) -> None:
    from moto.iam.models import iam_backends

    role_arn = call.params.get("Role")
    if not role_arn:
        return
    iam = iam_backends[call.account_id]["global"]
    name = role_arn.rsplit("/", 1)[-1]
    try:
        role = iam.get_role(name)
    except Exception:  # moto's own answer for a role that does not exist stands
        return
    document = role.assume_role_policy_document
    try:
        trust = json.loads(unquote(document)) if isinstance(document, str) else document
    except ValueError:
        return
    if not glue_may_assume(trust or {}):
        raise AwsRefusal("InvalidInputException", UNABLE_TO_ASSUME)
