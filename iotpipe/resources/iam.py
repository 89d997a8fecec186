"""IAM: one role per service, each with one inline policy scoped to the ARNs the service touches.

A service module builds its own role with `ServiceRole` (the policy sits next to the code that
needs it); this module only knows how to reconcile a role, its trust policy and its inline policy.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource
from iotpipe.permissions import Grant, owned, reads, writes

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


class ServiceRole(Resource):
    kind = "iam.role"

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
            reads(
                [
                    "iam:GetRole",
                    "iam:GetRolePolicy",
                    "iam:ListRolePolicies",
                    "iam:ListAttachedRolePolicies",
                ],
                self.arn,
            ),
            writes(
                [
                    "iam:CreateRole",
                    "iam:UpdateRole",
                    "iam:UpdateAssumeRolePolicy",
                    "iam:TagRole",
                    "iam:PutRolePolicy",
                    "iam:DeleteRolePolicy",
                    "iam:DetachRolePolicy",
                ],
                self.arn,
            ),
            writes(["iam:DeleteRole"], self.arn, condition=owned(self.ctx.stack)),
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
        found = aws.call(
            "iam", "get_role", resource=self.label, missing=("NoSuchEntity",), RoleName=self.name
        )
        if found is None:
            return None
        role = found["Role"]
        # GetRole carries the role's tags (at most 50, all of them): no ListRoleTags needed.
        inline, names, attached = aws.gather(
            lambda: aws.call(
                "iam",
                "get_role_policy",
                resource=self.label,
                missing=("NoSuchEntity",),
                RoleName=self.name,
                PolicyName=self.policy_name,
            ),
            lambda: self._inline_policy_names(aws),
            lambda: self._attached_policy_arns(aws),
        )
        return {
            "tags": {t["Key"]: t["Value"] for t in role.get("Tags", [])},
            "description": role.get("Description", ""),
            "trust_policy": role.get("AssumeRolePolicyDocument"),
            "policy": inline["PolicyDocument"] if inline else None,
            "managed_policies": attached,
            "inline_policies": names,
        }

    def _inline_policy_names(self, aws: Aws) -> list[str]:
        listed = aws.paginate(
            "iam", "list_role_policies", resource=self.label, key="PolicyNames", RoleName=self.name
        )
        return sorted(listed)

    def _attached_policy_arns(self, aws: Aws) -> list[str]:
        listed = aws.paginate(
            "iam",
            "list_attached_role_policies",
            resource=self.label,
            key="AttachedPolicies",
            RoleName=self.name,
        )
        return sorted(policy["PolicyArn"] for policy in listed)

    def create(self, aws: Aws) -> None:
        aws.call(
            "iam",
            "create_role",
            resource=self.label,
            missing=("EntityAlreadyExists",),
            RoleName=self.name,
            AssumeRolePolicyDocument=json.dumps(self.trust),
            Description=self.description,
            Tags=self.ctx.tag_list,
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        for change in changes:
            if change.field == "tags":
                aws.call(
                    "iam",
                    "tag_role",
                    resource=self.label,
                    RoleName=self.name,
                    Tags=self.ctx.tag_list,
                )
            elif change.field == "description":
                aws.call(
                    "iam",
                    "update_role",
                    resource=self.label,
                    RoleName=self.name,
                    Description=self.description,
                )
            elif change.field == "trust_policy":
                aws.call(
                    "iam",
                    "update_assume_role_policy",
                    resource=self.label,
                    RoleName=self.name,
                    PolicyDocument=json.dumps(self.trust),
                )
            elif change.field == "policy":
                aws.call(
                    "iam",
                    "put_role_policy",
                    resource=self.label,
                    RoleName=self.name,
                    PolicyName=self.policy_name,
                    PolicyDocument=json.dumps(self.policy),
                )
            elif change.field == "managed_policies":
                for arn in change.old or []:
                    self._detach(aws, arn)
            elif change.field == "inline_policies":
                for name in set(change.old or []) - {self.policy_name}:
                    self._delete_inline(aws, name)

    def _delete_inline(self, aws: Aws, name: str) -> None:
        aws.call(
            "iam",
            "delete_role_policy",
            resource=self.label,
            missing=("NoSuchEntity",),
            RoleName=self.name,
            PolicyName=name,
        )

    def _detach(self, aws: Aws, arn: str) -> None:
        aws.call(
            "iam",
            "detach_role_policy",
            resource=self.label,
            missing=("NoSuchEntity",),
            RoleName=self.name,
            PolicyArn=arn,
        )

    def delete(self, aws: Aws) -> None:
        label = self.label
        for name in self._inline_policy_names(aws):
            self._delete_inline(aws, name)
        for arn in self._attached_policy_arns(aws):
            self._detach(aws, arn)
        aws.call(
            "iam", "delete_role", resource=label, missing=("NoSuchEntity",), RoleName=self.name
        )
