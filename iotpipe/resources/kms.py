"""KMS: the customer-managed key that encrypts the alerts topic and that CloudWatch may use.

CloudWatch alarms cannot publish to a topic encrypted with the AWS managed key `alias/aws/sns`:
its key policy cannot be edited to let `cloudwatch.amazonaws.com` use it, so every notification
fails ("CloudWatch Alarms does not have authorization to access the SNS topic encryption key").
AWS's fix is a customer managed key whose policy grants CloudWatch `kms:Decrypt` and
`kms:GenerateDataKey*` (SNS developer guide, "Enable compatibility between event sources from AWS
services and encrypted topics",
https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services;
https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns).

A key cannot be deleted at once, only scheduled for deletion after 7 to 30 days, and while it
waits every use of it fails. So `down` schedules the deletion and removes the alias; an `up`
that finds the alias still on a key pending deletion (a `down` interrupted in between) cancels
the deletion and enables the key again, and one that finds no alias creates a new key.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, Settled, State, Tagging, Write, call, tags_as
from iotpipe.engine.model import STACK_TAG, Resource
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes
from iotpipe.resources import cloudwatch

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

# The shortest waiting period KMS allows (7-30 days): the key only ever protected alert
# messages in flight, which SNS keeps for no longer than its delivery retries.
DELETION_WINDOW_DAYS = 7
MISSING = ("NotFoundException",)
KEY_POLICY_NAME = "default"  # the only key policy name KMS supports
# What a key does for CloudWatch or SNS to encrypt and decrypt a topic's messages.
MESSAGE_KEY_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey*"]


def alias_name(names: Names) -> str:
    return f"alias/{names.alerts_topic}"


def key_policy(names: Names, alarm_arns: list[str]) -> dict[str, Any]:
    """The alerts key's policy: the account administers it through IAM; CloudWatch may use it
    only for this stack's alarms in this account; SNS only for this stack's topic."""
    root = f"arn:{names.partition}:iam::{names.account}:root"
    return {
        "Version": "2012-10-17",
        "Id": f"{names.alerts_topic}-key",
        "Statement": [
            {
                # Without it the key becomes unmanageable (KMS's default key policy).
                "Sid": "AccountAdministersTheKeyThroughIam",
                "Effect": "Allow",
                "Principal": {"AWS": root},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                # CloudWatch sends aws:SourceAccount and aws:SourceArn (the alarm's ARN) with
                # these calls: the confused-deputy guard.
                "Sid": "CloudWatchAlarmsOfThisStackPublish",
                "Effect": "Allow",
                "Principal": {"Service": "cloudwatch.amazonaws.com"},
                "Action": MESSAGE_KEY_ACTIONS,
                "Resource": "*",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": names.account},
                    "ArnLike": {"aws:SourceArn": sorted(alarm_arns)},
                },
            },
            {
                # SNS's own use of a custom key, narrowed to this topic by the encryption context
                # SNS sends (SNS developer guide, "Enabling server-side encryption for a topic").
                "Sid": "SnsEncryptsTheAlertsTopic",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": MESSAGE_KEY_ACTIONS,
                "Resource": "*",
                "Condition": {
                    "StringEquals": {
                        "kms:EncryptionContext:aws:sns:topicArn": names.alerts_topic_arn
                    }
                },
            },
        ],
    }


def _key_id(have: State) -> dict[str, str]:
    return {"KeyId": have.raw["KeyMetadata"]["KeyId"]}


def _enable(r: AlertsKey, aws: Aws, want: dict[str, Any], have: State) -> None:
    """Turn a Disabled or PendingDeletion key on (the settled states that are not Enabled)."""
    if have["state"] == "PendingDeletion":
        # A cancelled deletion leaves the key disabled.
        r.call(aws, "cancel_key_deletion", **_key_id(have))
    r.call(aws, "enable_key", **_key_id(have))


class AlertsKey(Resource):
    """The key, found through its alias (key ids are random)."""

    kind = "kms.key"
    absent = MISSING
    fields = (
        Field("state", "KeyMetadata.KeyState", "enable"),
        # Not read while the key is off (reported off for a key pending deletion): None then.
        Field("rotation", "KeyRotationEnabled", "rotation"),
        Field(
            "policy", lambda raw: json.loads(raw["Policy"]) if "Policy" in raw else None, "policy"
        ),
    )
    writes = (
        # Enabling the key changes its state: rotation and policy, which a key that is off does
        # not show, are read again, and written only if they still differ.
        Write("enable", _enable, settles=True),
        call("kms", "enable_key_rotation", lambda r, want, have: _key_id(have), name="rotation"),
        call(
            "kms",
            "put_key_policy",
            lambda r, want, have: {
                **_key_id(have),
                "PolicyName": KEY_POLICY_NAME,
                "Policy": json.dumps(want["policy"]),
            },
            name="policy",
        ),
    )
    tagging = Tagging(
        "kms",
        "list_resource_tags",
        "tag_resource",
        lambda r, raw: {"KeyId": raw["KeyMetadata"]["KeyId"]},
        shape="tagkey-list",
        missing=MISSING,
    )
    # KMS takes a change in any of these states; the others pass on their own.
    settled = Settled(
        "KeyMetadata.KeyState",
        frozenset({"Enabled", "Disabled", "PendingDeletion"}),
        "for the key to be enabled, disabled or pending deletion",
    )

    def __init__(self, ctx: StackContext) -> None:
        super().__init__(ctx, ctx.names.alerts_topic)

    @property
    def alias(self) -> str:
        return alias_name(self.ctx.names)

    def _policy(self) -> dict[str, Any]:
        arns = [
            self.ctx.names.arn("cloudwatch", f"alarm:{spec.alarm_name(self.ctx.stack)}")
            for spec in cloudwatch.alarm_specs(self.ctx)
        ]
        return key_policy(self.ctx.names, arns)

    def grants(self) -> list[Grant]:
        names, stack = self.ctx.names, self.ctx.stack
        # The key's id is random, so the account's keys are the narrowest ARN. Reading, aliasing
        # and turning rotation on follow CreateKey at once, before a new key's tag may authorize
        # anything (tags take up to five minutes to count in KMS authorization); what changes or
        # removes a key is allowed only on a key carrying the stack's tag.
        keys = names.arn("kms", "key/*")
        why = "KMS key ids are random; the alias finds the stack's key"
        return [
            writes(
                ["kms:CreateKey"],
                "*",
                condition={"StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack}},
                why="IAM has no resource type for kms:CreateKey: the request's tag scopes it",
            ),
            reads(
                [
                    "kms:DescribeKey",
                    "kms:GetKeyPolicy",
                    "kms:GetKeyRotationStatus",
                    "kms:ListResourceTags",
                ],
                keys,
                why=why,
            ),
            writes(["kms:EnableKeyRotation"], keys, why=why),
            # CreateKey with tags needs kms:TagResource too; only the stack's own tag may be set.
            writes(
                ["kms:TagResource"],
                keys,
                condition={
                    "StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack},
                    "ForAllValues:StringEquals": {"aws:TagKeys": [STACK_TAG]},
                },
                why=why,
            ),
            writes(
                [
                    "kms:PutKeyPolicy",
                    "kms:EnableKey",
                    "kms:ScheduleKeyDeletion",
                    "kms:CancelKeyDeletion",
                ],
                keys,
                condition=owned(stack),
                why=why,
            ),
            # An alias action names both the alias (only the stack's) and the key it points to.
            writes(
                ["kms:CreateAlias", "kms:DeleteAlias"],
                [names.arn("kms", self.alias), keys],
                why=why,
            ),
        ]

    def desired(self) -> dict[str, Any]:
        return {
            "tags": self.ctx.tags,
            "state": "Enabled",
            "rotation": True,
            "policy": self._policy(),
        }

    def notes(self, observed: State) -> list[str]:
        if observed.get("state") == "PendingDeletion":
            deletion = observed.raw["KeyMetadata"].get("DeletionDate")
            return [
                f"scheduled for deletion on {deletion} by an earlier down: "
                "up cancels the deletion and enables the key again"
            ]
        return []

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "describe_key", KeyId=self.alias)
        if found is None or found["KeyMetadata"]["KeyState"] != "Enabled":
            return found
        # Rotation and policy are read from an enabled key only (see the fields).
        key_id = found["KeyMetadata"]["KeyId"]
        rotation, policy = aws.gather(
            lambda: self.call(aws, "get_key_rotation_status", KeyId=key_id),
            lambda: self.call(aws, "get_key_policy", KeyId=key_id, PolicyName=KEY_POLICY_NAME),
        )
        return {**found, **rotation, **policy}

    def create(self, aws: Aws) -> None:
        created = self.call(
            aws,
            "create_key",
            Description=f"Encrypts the alerts topic of iotpipe stack {self.ctx.stack}",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Policy=json.dumps(self._policy()),
            Tags=tags_as("tagkey-list", self.ctx.tags),
        )
        key_id = created["KeyMetadata"]["KeyId"]
        try:
            self.call(aws, "create_alias", AliasName=self.alias, TargetKeyId=key_id)
        except BaseException:
            # Without its alias nothing would ever find (or delete) the new key; the alias error
            # is the one to report, whatever becomes of this clean-up.
            with contextlib.suppress(AwsError):
                self._schedule_deletion(aws, key_id)
            raise
        self.call(aws, "enable_key_rotation", KeyId=key_id)

    def _schedule_deletion(self, aws: Aws, key_id: str) -> None:
        self.call(
            aws, "schedule_key_deletion", KeyId=key_id, PendingWindowInDays=DELETION_WINDOW_DAYS
        )

    def delete(self, aws: Aws) -> None:
        found = self.observe(aws)
        if found is None:
            return
        if found["KeyMetadata"]["KeyState"] != "PendingDeletion":
            self._schedule_deletion(aws, found["KeyMetadata"]["KeyId"])
        # Last: a `down` interrupted before this finds the key again through its alias.
        self.remove(aws, "delete_alias", AliasName=self.alias)


def resources(ctx: StackContext) -> list[Resource]:
    return [AlertsKey(ctx)]
