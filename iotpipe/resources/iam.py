"""IAM: one role per service, each with one inline policy scoped to the ARNs the service touches.

A service module builds its own role with `ServiceRole` (the policy sits next to the code that
needs it); this module only knows how to reconcile a role, its trust policy and its inline policy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, Tagging, Write, call
from iotpipe.engine.model import Resource
from iotpipe.permissions import Grant, lifecycle, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

POLICY_VERSION = "2012-10-17"


def trust_policy(
    service: str, account: str, *, source_arn: str | None = None, external_id: bool = False
) -> dict[str, Any]:
    """Let `service` assume the role, only on behalf of this account (confused-deputy guard)."""
    condition: dict[str, Any] = {"StringEquals": {"aws:SourceAccount": account}}
    if external_id:
        # Firehose passes the account id as the external id rather than aws:SourceAccount.
        condition = {"StringEquals": {"sts:ExternalId": account}}
    if source_arn:
        condition["ArnLike"] = {"aws:SourceArn": source_arn}
    return {
        "Version": POLICY_VERSION,
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": service},
                "Action": "sts:AssumeRole",
                "Condition": condition,
            }
        ],
    }


def policy_document(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": POLICY_VERSION, "Statement": list(statements)}


def allow(actions: list[str], resources: list[str], sid: str) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": resources if len(resources) > 1 else resources[0],
    }


def _attached(raw: dict[str, Any]) -> list[str]:
    return sorted(policy["PolicyArn"] for policy in raw["AttachedPolicies"])


class ServiceRole(Resource):
    kind = "iam.role"
    absent = ("NoSuchEntity",)
    present = ("EntityAlreadyExists",)
    fields = (
        Field("description", "Role.Description || ''", "update_role"),
        Field("trust_policy", "Role.AssumeRolePolicyDocument", "update_assume_role_policy"),
        Field("policy", "Policy.PolicyDocument", "put_role_policy"),
        Field("managed_policies", _attached, "remove_foreign_policies"),
        Field("inline_policies", lambda raw: sorted(raw["PolicyNames"]), "remove_foreign_policies"),
    )
    writes = (
        call(
            "iam",
            "update_role",
            lambda r, want, have: {"RoleName": r.name, "Description": want["description"]},
        ),
        call(
            "iam",
            "update_assume_role_policy",
            lambda r, want, have: {
                "RoleName": r.name,
                "PolicyDocument": json.dumps(want["trust_policy"]),
            },
        ),
        call(
            "iam",
            "put_role_policy",
            lambda r, want, have: {
                "RoleName": r.name,
                "PolicyName": r.policy_name,
                "PolicyDocument": json.dumps(want["policy"]),
            },
        ),
        Write(
            "remove_foreign_policies",
            lambda r, aws, want, have: r.remove_policies(
                aws, set(have["inline_policies"]) - {r.policy_name}, have["managed_policies"]
            ),
        ),
    )
    # GetRole's answer carries the role's tags (at most 50, all of them).
    tagging = Tagging(
        "iam", None, "tag_role", lambda r, raw: {"RoleName": r.name}, found="Role.Tags"
    )

    def __init__(
        self,
        ctx: StackContext,
        name: str,
        *,
        trust: dict[str, Any],
        policy: dict[str, Any],
        description: str,
        depends_on: tuple[str, ...] = (),
    ) -> None:
        super().__init__(ctx, name, depends_on)
        self.trust = trust
        self.policy = policy
        self.description = description

    @property
    def policy_name(self) -> str:
        return f"{self.name}-policy"

    @property
    def arn(self) -> str:
        return self.ctx.names.arn("iam", f"role/{self.name}", region=False)

    def grants(self) -> list[Grant]:
        # The service the role is passed to is the one its trust policy lets assume it.
        service = self.trust["Statement"][0]["Principal"]["Service"]
        return [
            *lifecycle(
                self.arn,
                self.ctx.stack,
                read=[
                    "iam:GetRole",
                    "iam:GetRolePolicy",
                    "iam:ListRolePolicies",
                    "iam:ListAttachedRolePolicies",
                ],
                write=[
                    "iam:CreateRole",
                    "iam:UpdateRole",
                    "iam:UpdateAssumeRolePolicy",
                    "iam:TagRole",
                    "iam:PutRolePolicy",
                    "iam:DeleteRolePolicy",
                    "iam:DetachRolePolicy",
                ],
                delete=["iam:DeleteRole"],
            ),
            writes(
                ["iam:PassRole"],
                self.arn,
                condition={"StringEquals": {"iam:PassedToService": service}},
            ),
        ]

    def desired(self) -> dict[str, Any]:
        return {
            "tags": self.ctx.tags,
            "description": self.description,
            "trust_policy": self.trust,
            "policy": self.policy,
            # A policy attached or put on the role outside iotpipe widens what the service may
            # do: `up` takes it off again.
            "managed_policies": [],
            "inline_policies": [self.policy_name],
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_role", RoleName=self.name)
        if found is None:
            return None
        policy, names, attached = aws.gather(
            lambda: self.find(
                aws, "get_role_policy", RoleName=self.name, PolicyName=self.policy_name
            ),
            lambda: self._listed(aws, "list_role_policies", "PolicyNames"),
            lambda: self._listed(aws, "list_attached_role_policies", "AttachedPolicies"),
        )
        return {
            "Role": found["Role"],
            "Policy": policy,
            "PolicyNames": names,
            "AttachedPolicies": attached,
        }

    def _listed(self, aws: Aws, operation: str, key: str) -> list[Any]:
        return list(
            aws.paginate("iam", operation, resource=self.label, key=key, RoleName=self.name)
        )

    def create(self, aws: Aws) -> None:
        self.make(
            aws,
            "create_role",
            RoleName=self.name,
            AssumeRolePolicyDocument=json.dumps(self.trust),
            Description=self.description,
            Tags=self.ctx.tag_list,
        )

    def remove_policies(self, aws: Aws, inline: Iterable[str], attached: Iterable[str]) -> None:
        """Delete the named inline policies, then detach the managed ones."""
        removals = [("delete_role_policy", {"PolicyName": name}) for name in inline]
        removals += [("detach_role_policy", {"PolicyArn": arn}) for arn in attached]
        for operation, policy in removals:
            self.remove(aws, operation, RoleName=self.name, **policy)

    def delete(self, aws: Aws) -> None:
        inline = self._listed(aws, "list_role_policies", "PolicyNames")
        attached = self._listed(aws, "list_attached_role_policies", "AttachedPolicies")
        self.remove_policies(aws, inline, [policy["PolicyArn"] for policy in attached])
        self.remove(aws, "delete_role", RoleName=self.name)
