"""IoT Core: the sensors' thing type, the device policy, and the topic rule feeding Kinesis.

moto implements no IoT tagging, so ownership is recorded where `observe` can read it back on AWS
and on the emulator alike: in the thing type's and the rule's descriptions, and in a statement id
of the device policy. Tags are still passed on create, for AWS's cost reports.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import jmespath

from iotpipe.aws import IAM_PROPAGATION
from iotpipe.devices import DEFAULT_CONCURRENCY, Fleet, revoke_grants
from iotpipe.engine.fields import REPLACE, Field, State, Write, call
from iotpipe.engine.model import STACK_TAG, Deferred, Resource
from iotpipe.errors import AwsError, IotpipeError
from iotpipe.permissions import Grant, lifecycle, reads, writes
from iotpipe.resources.iam import ServiceRole, allow, policy_document, trust_policy

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

THING = "${iot:Connection.Thing.ThingName}"
SQL_VERSION = "2016-03-23"
# "Before you can delete a thing type, wait for five minutes after you deprecate it."
DEPRECATION_WAIT = timedelta(minutes=5)
# How many of the type's devices a plan names.
PLAN_DEVICES = 5
# AWS keeps at most five versions of an IoT policy.
MAX_POLICY_VERSIONS = 5
# Statement ids allow only letters and digits; stack names are lowercase, so "X" stands for "-".
OWNER_SID_PREFIX = "ConnectAsThingIotpipeStack"
_OWNER_IN_TEXT = re.compile(re.escape(STACK_TAG) + r"=([a-z0-9-]+)")


def _owner_marker(stack: str) -> str:
    return f"{STACK_TAG}={stack}"


def _owner_from_text(text: str | None) -> str | None:
    match = _OWNER_IN_TEXT.search(text or "")
    return match.group(1) if match else None


def device_topic(names: Names, *, basic_ingest: bool) -> str:
    """The one topic a device publishes readings to; with Basic Ingest, straight to the rule."""
    topic = names.telemetry_topic(THING)
    return f"$aws/rules/{names.topic_rule}/{topic}" if basic_ingest else topic


def device_policy_document(names: Names, stack: str, *, basic_ingest: bool) -> dict[str, Any]:
    """Connect only as itself, publish only its own readings, use only its own shadow."""
    shadow = f"$aws/things/{THING}/shadow/*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": OWNER_SID_PREFIX + stack.replace("-", "X"),
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": names.arn("iot", f"client/{THING}"),
                # The certificate must belong to the thing whose name the client id claims.
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Sid": "PublishOwnTelemetry",
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": names.arn(
                    "iot", f"topic/{device_topic(names, basic_ingest=basic_ingest)}"
                ),
            },
            {
                "Sid": "OwnShadowTopics",
                "Effect": "Allow",
                "Action": ["iot:Publish", "iot:Receive"],
                "Resource": names.arn("iot", f"topic/{shadow}"),
            },
            {
                "Sid": "OwnShadowSubscriptions",
                "Effect": "Allow",
                "Action": "iot:Subscribe",
                "Resource": names.arn("iot", f"topicfilter/{shadow}"),
            },
        ],
    }


def rule_sql(names: Names) -> str:
    """Every device's readings, with the device's identity taken from its topic."""
    device = f"topic({names.thing_topic_level})"
    every_device = names.telemetry_topic("+")
    return f"SELECT *, {device} AS device_id, timestamp() AS received_at FROM '{every_device}'"


# Where a thing type's description (and so its owner) is, in what its resources observe.
TYPE_DESCRIPTION = "type.thingTypeProperties.thingTypeDescription"


class SensorThingType(Resource):
    kind = "iot.thing-type"
    absent = ("ResourceNotFoundException",)
    fields = (
        # AWS cannot change a thing type's description; it can only deprecate and delete the type.
        Field("description", TYPE_DESCRIPTION, REPLACE),
        Field("deprecated", "type.thingTypeMetadata.deprecated || `false`", "deprecate_thing_type"),
    )
    writes = (
        call(
            "iot",
            "deprecate_thing_type",
            lambda r, want, have: {
                "thingTypeName": r.name,
                "undoDeprecate": not want["deprecated"],
            },
        ),
    )

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.arn("iot", f"thingtype/{self.name}")
        return [
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["iot:DescribeThingType"],
                write=["iot:CreateThingType", "iot:DeprecateThingType", "iot:TagResource"],
                delete=["iot:DeleteThingType"],
            ),
            reads(["iot:ListThings"], "*", why="IAM has no resource type for iot:ListThings"),
        ]

    def desired(self) -> dict[str, Any]:
        return {
            "description": f"Sensors of the iotpipe pipeline ({_owner_marker(self.ctx.stack)})",
            "deprecated": False,
        }

    def owner(self, observed: State) -> str | None:
        return _owner_from_text(observed["description"])

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found, users = aws.gather(
            lambda: self.find(aws, "describe_thing_type", thingTypeName=self.name),
            # The first few devices of the type, for the plan to name (one call, not the fleet).
            lambda: self.call(
                aws,
                "list_things",
                thingTypeName=self.name,
                maxResults=PLAN_DEVICES + 1,
            ),
        )
        return None if found is None else {"type": found, "things": users.get("things", [])}

    def notes(self, observed: State) -> list[str]:
        devices = sorted(thing["thingName"] for thing in observed.raw["things"])
        if not devices:
            return []
        shown = ", ".join(devices[:PLAN_DEVICES])
        more = " and more" if len(devices) > PLAN_DEVICES else ""
        return [
            f"registered devices: {shown}{more} (`down` keeps them; `down --delete-data` "
            "revokes and deletes them)"
        ]

    def create(self, aws: Aws) -> None:
        self.call(
            aws,
            "create_thing_type",
            thingTypeName=self.name,
            thingTypeProperties={"thingTypeDescription": self.desired()["description"]},
            tags=self.ctx.tag_list,
        )

    def delete(self, aws: Aws) -> None:
        users = list(
            aws.paginate(
                "iot",
                "list_things",
                resource=self.label,
                key="things",
                thingTypeName=self.name,
            )
        )
        if users:
            # AWS refuses to delete a thing type that things still use.
            raise AwsError(
                f"{len(users)} thing(s) still use the type, e.g. {users[0]['thingName']}",
                resource=self.label,
                hint="`iotpipe down --delete-data` revokes and deletes the stack's devices",
            )
        self.remove(aws, "deprecate_thing_type", thingTypeName=self.name, undoDeprecate=False)
        try:
            self.remove(aws, "delete_thing_type", thingTypeName=self.name)
        except AwsError as exc:
            if exc.code != "InvalidRequestException":
                raise
            # AWS deletes a thing type only five minutes after its deprecation (IoT developer
            # guide, delete-thing-types.html): rather than hold `down` for that long, the
            # deprecated type is left for the next `down`, which says so.
            raise Deferred(
                f"deprecated, not yet deleted: AWS deletes a thing type only 5 minutes after "
                f"its deprecation; run `iotpipe down` again after {self._deletable_at(aws)} to "
                "remove it (`iotpipe up` in the meantime takes it back into use)",
                resource=self.label,
            ) from exc

    def _deletable_at(self, aws: Aws) -> str:
        found = self.find(aws, "describe_thing_type", thingTypeName=self.name)
        since = ((found or {}).get("thingTypeMetadata") or {}).get("deprecationDate")
        if not isinstance(since, datetime):
            return "5 minutes"
        return (since + DEPRECATION_WAIT).astimezone(UTC).strftime("%H:%M:%S UTC")


class DeviceFleet(Resource):
    """The stack's registered devices (things of its thing type, their certificates, shadows).

    `iotpipe devices` creates them, never `up`; `down` keeps them, with the thing type and the
    policy they need, unless --delete-data, which revokes and deletes every one of them and the
    credential folders `devices register` wrote for them.
    """

    kind = "iot.devices"
    data_store = True
    absent = ("ResourceNotFoundException",)

    def __init__(
        self, ctx: StackContext, thing_type: SensorThingType, policy: DevicePolicy
    ) -> None:
        super().__init__(ctx, thing_type.name, depends_on=(thing_type.key, policy.key))
        self.credentials: Path | None = None

    @property
    def label(self) -> str:
        return f"devices of thing type {self.name}"

    def _fleet(self, aws: Aws) -> Fleet:
        basic_ingest = self.ctx.config.iot.basic_ingest
        return Fleet(aws, self.ctx.names, basic_ingest=basic_ingest)

    def grants(self) -> list[Grant]:
        return revoke_grants(self.ctx.names)

    def desired(self) -> dict[str, Any]:
        return {}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "describe_thing_type", thingTypeName=self.name)
        if found is None:
            return None
        devices = sorted(thing["name"] for thing in self._fleet(aws).list())
        return {"type": found, "devices": devices} if devices else None

    def owner(self, observed: State) -> str | None:
        return _owner_from_text(jmespath.search(TYPE_DESCRIPTION, observed.raw))

    def keep_note(self, observed: State) -> str:
        return (
            f"{_some(observed.raw['devices'])} kept with their certificates "
            "(`down --delete-data` revokes and deletes them)"
        )

    def delete_note(self, observed: State) -> str | None:
        return f"revokes and deletes {_some(observed.raw['devices'])}"

    def create(self, aws: Aws) -> None:
        raise IotpipeError("internal: devices are registered by `iotpipe devices register`")

    def delete(self, aws: Aws) -> None:
        fleet = self._fleet(aws)
        names = [thing["name"] for thing in fleet.list()]
        with ThreadPoolExecutor(max_workers=DEFAULT_CONCURRENCY) as pool:
            futures = [
                pool.submit(fleet.revoke, name, delete=True, credentials=self.credentials)
                for name in names
            ]
            for future in futures:
                future.result()


def _some(devices: list[str], shown: int = 5) -> str:
    listed = ", ".join(devices[:shown])
    more = f" and {len(devices) - shown} more" if len(devices) > shown else ""
    return f"{len(devices)} device(s): {listed}{more}"


class DevicePolicy(Resource):
    kind = "iot.policy"
    absent = ("ResourceNotFoundException",)
    # GetPolicy answers the default version's document.
    fields = (Field("document", lambda raw: json.loads(raw["policyDocument"]), "new_version"),)
    writes = (
        Write("new_version", lambda r, aws, want, have: r.new_version(aws, want["document"])),
    )

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.arn("iot", f"policy/{self.name}")
        return [
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["iot:GetPolicy"],
                write=[
                    "iot:CreatePolicy",
                    "iot:CreatePolicyVersion",
                    "iot:DeletePolicyVersion",
                    "iot:ListPolicyVersions",
                    "iot:ListTargetsForPolicy",
                    "iot:TagResource",
                ],
                delete=["iot:DeletePolicy"],
            ),
            # Before the policy goes, it is detached from the certificates it is attached to.
            writes(
                ["iot:DetachPolicy"],
                names.arn("iot", "cert/*"),
                why="certificate ids are random; IAM offers no stack scope for them",
            ),
        ]

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        basic_ingest = self.ctx.config.iot.basic_ingest
        return {
            "document": device_policy_document(names, self.ctx.stack, basic_ingest=basic_ingest)
        }

    def owner(self, observed: State) -> str | None:
        for statement in (observed["document"] or {}).get("Statement", []):
            sid = str(statement.get("Sid", ""))
            if sid.startswith(OWNER_SID_PREFIX):
                return sid.removeprefix(OWNER_SID_PREFIX).replace("X", "-")
        return None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        return self.find(aws, "get_policy", policyName=self.name)

    def create(self, aws: Aws) -> None:
        self.call(
            aws,
            "create_policy",
            policyName=self.name,
            policyDocument=json.dumps(self.desired()["document"]),
            tags=self.ctx.tag_list,
        )

    def new_version(self, aws: Aws, document: dict[str, Any]) -> None:
        # IoT policies are versioned: the new document becomes a new default version, and the
        # oldest non-default version makes room when AWS's limit is reached.
        versions = self._versions(aws)
        if len(versions) >= MAX_POLICY_VERSIONS:
            old = [v for v in versions if not v["isDefaultVersion"]]
            self._delete_version(aws, min(old, key=lambda v: int(v["versionId"])))
        self.call(
            aws,
            "create_policy_version",
            policyName=self.name,
            policyDocument=json.dumps(document),
            setAsDefault=True,
        )

    def _versions(self, aws: Aws, missing: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        found = self.call(aws, "list_policy_versions", missing=missing, policyName=self.name)
        return (found or {}).get("policyVersions", [])

    def _delete_version(self, aws: Aws, version: dict[str, Any]) -> None:
        self.call(
            aws, "delete_policy_version", policyName=self.name, policyVersionId=version["versionId"]
        )

    def delete(self, aws: Aws) -> None:
        # A policy still attached to device certificates cannot be deleted; the devices lose
        # their permissions with the pipeline anyway.
        for target in aws.paginate(
            "iot",
            "list_targets_for_policy",
            resource=self.label,
            key="targets",
            policyName=self.name,
        ):
            self.call(aws, "detach_policy", policyName=self.name, target=target)
        for version in self._versions(aws, missing=self.absent):
            if not version["isDefaultVersion"]:
                self._delete_version(aws, version)
        self.remove(aws, "delete_policy", policyName=self.name)


def _payload(want: dict[str, Any]) -> dict[str, Any]:
    return {
        "sql": want["sql"],
        "description": want["description"],
        "awsIotSqlVersion": want["sql_version"],
        "ruleDisabled": want["disabled"],
        "actions": want["actions"],
        "errorAction": want["error_action"],
    }


class TelemetryRule(Resource):
    kind = "iot.topic-rule"
    # AWS answers UnauthorizedException, not "not found", for a rule that does not exist.
    absent = ("ResourceNotFoundException", "UnauthorizedException")
    # The rule is one payload: ReplaceTopicRule writes every field of it at once.
    fields = (
        Field("description", "description || ''", "replace_topic_rule"),
        Field("sql", "sql", "replace_topic_rule"),
        Field("sql_version", "awsIotSqlVersion", "replace_topic_rule"),
        Field("disabled", "ruleDisabled || `false`", "replace_topic_rule"),
        Field("actions", "actions || `[]`", "replace_topic_rule"),
        Field("error_action", "errorAction", "replace_topic_rule"),
    )
    writes = (
        call(
            "iot",
            "replace_topic_rule",
            lambda r, want, have: {"ruleName": r.name, "topicRulePayload": _payload(want)},
            retry_on=IAM_PROPAGATION,
        ),
    )

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.arn("iot", f"rule/{self.name}")
        return lifecycle(
            arn,
            self.ctx.stack,
            read=["iot:GetTopicRule"],
            write=["iot:CreateTopicRule", "iot:ReplaceTopicRule", "iot:TagResource"],
            delete=["iot:DeleteTopicRule"],
        )

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        role_arn = names.role_arn("iot-rule")
        return {
            "description": f"Device telemetry into Kinesis ({_owner_marker(self.ctx.stack)})",
            "sql": rule_sql(names),
            "sql_version": SQL_VERSION,
            "disabled": False,
            # One device's readings share a partition key, so they stay in order on one shard.
            "actions": [
                {
                    "kinesis": {
                        "roleArn": role_arn,
                        "streamName": names.readings_stream,
                        "partitionKey": f"${{topic({names.thing_topic_level})}}",
                    }
                }
            ],
            # A reading Kinesis refused is kept, one object per failed message.
            "error_action": {
                "s3": {
                    "roleArn": role_arn,
                    "bucketName": names.archive_bucket,
                    "key": names.iot_errors_prefix
                    + "${parse_time('yyyy-MM-dd', timestamp())}/${newuuid()}.json",
                }
            },
        }

    def owner(self, observed: State) -> str | None:
        return _owner_from_text(observed["description"])

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_topic_rule", ruleName=self.name)
        return None if found is None else found["rule"]

    def create(self, aws: Aws) -> None:
        self.call(
            aws,
            "create_topic_rule",
            retry_on=IAM_PROPAGATION,
            ruleName=self.name,
            topicRulePayload=_payload(self.desired()),
            tags=urlencode(self.ctx.tags),
        )

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_topic_rule", ruleName=self.name)


def rule_role(ctx: StackContext) -> ServiceRole:
    names = ctx.names
    return ServiceRole(
        ctx,
        names.role("iot-rule"),
        trust=trust_policy("iot.amazonaws.com", names.account, source_arn=names.topic_rule_arn),
        policy=policy_document(
            allow(["kinesis:PutRecord"], [names.readings_stream_arn], "WriteReadings"),
            allow(
                ["s3:PutObject"],
                [f"{names.archive_bucket_arn}/{names.iot_errors_prefix}*"],
                "KeepFailedMessages",
            ),
        ),
        description="Lets the IoT telemetry rule write readings to Kinesis and failures to S3",
    )


def device_fleet(ctx: StackContext, credentials: Path | None) -> DeviceFleet:
    """The stack's devices, for `down`; their credential folders are under `credentials`."""
    names = ctx.names
    fleet = DeviceFleet(
        ctx, SensorThingType(ctx, names.thing_type), DevicePolicy(ctx, names.device_policy)
    )
    fleet.credentials = credentials
    return fleet


def resources(ctx: StackContext) -> list[Resource]:
    names = ctx.names
    role = rule_role(ctx)
    return [
        SensorThingType(ctx, names.thing_type),
        DevicePolicy(ctx, names.device_policy),
        role,
        TelemetryRule(
            ctx,
            names.topic_rule,
            depends_on=(
                role.key,
                f"kinesis.stream/{names.readings_stream}",
                f"s3.bucket/{names.archive_bucket}",
            ),
        ),
    ]
