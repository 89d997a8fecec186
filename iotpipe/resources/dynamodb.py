"""DynamoDB: the device-state table (latest reading per device, expiring through TTL).

Provisioned with auto scaling by default (`[device_state] capacity`), or on-demand; the table's
auto scaling settings are one of its fields (see resources/autoscaling.py).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.engine.fields import REPLACE, Field, Settled, State, Tagging, Write, call
from iotpipe.engine.model import Deferred, Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, lifecycle
from iotpipe.resources import autoscaling
from iotpipe.resources.deletion import DELETING, create_once_deleted, wait_while_deleting

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

DEVICE_KEY = "device_id"
TTL_ATTRIBUTE = "expires_at"
# UpdateContinuousBackups on a table created moments ago answers this ("Backups are being enabled
# for the table: X. Please retry later") until DynamoDB has set backups up: seconds, sometimes
# minutes (aws-amplify/amplify-backend #1654; ContinuousBackupsUnavailableException in the API
# reference: "Backups have not yet been enabled for this table").
BACKUPS_BEING_ENABLED = Transient(
    "backups-being-enabled", "ContinuousBackupsUnavailableException", None
)
# UpdateTimeToLive (API reference): "Any additional UpdateTimeToLive calls for the same table
# during this one hour duration result in a ValidationException", with this text (quoted in
# aws/aws-cdk #13720).
TTL_CHANGED_RECENTLY = "modified multiple times within a fixed interval"
# A table switches back to on-demand at most once a day (DynamoDB developer guide, "Considerations
# when switching capacity modes"); UpdateTable answers LimitExceededException with this text
# (quoted in aws-amplify/amplify-cli #1054).
ON_DEMAND_SWITCHED_RECENTLY = "Update to PayPerRequest mode are limited"
BILLING_MODES = {"provisioned": "PROVISIONED", "on_demand": "PAY_PER_REQUEST"}


def _billing_mode(raw: dict[str, Any]) -> str:
    return raw["Table"].get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")


def _throughput(raw: dict[str, Any]) -> dict[str, Any]:
    """A provisioned table's capacity units ({} on demand)."""
    if _billing_mode(raw) != "PROVISIONED":
        return {}
    throughput = raw["Table"].get("ProvisionedThroughput", {})
    return {field: throughput.get(field) for field in ("ReadCapacityUnits", "WriteCapacityUnits")}


def _key_schema(raw: dict[str, Any]) -> dict[str, Any]:
    table = raw["Table"]
    types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
    return {k["AttributeName"]: types.get(k["AttributeName"]) for k in table["KeySchema"]}


def _encryption(raw: dict[str, Any]) -> str:
    sse = raw["Table"].get("SSEDescription", {})
    return sse.get("SSEType", "KMS") if sse.get("Status") == "ENABLED" else "AWS_OWNED"


def _ttl(raw: dict[str, Any]) -> dict[str, Any]:
    ttl = raw["TimeToLiveDescription"]
    enabled = ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING")
    return {"attribute": ttl.get("AttributeName"), "enabled": enabled}


def _scaling(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return autoscaling.settings(raw["Table"]["TableName"], raw)


class DeviceStateTable(Resource):
    kind = "dynamodb.table"
    data_store = True
    absent = ("ResourceNotFoundException",)
    # The table exists (another run made it), or is DELETING (`create` waits that out).
    present = ("ResourceInUseException",)
    fields = (
        # The billing mode and capacity: UpdateTable, with auto scaling removed before a table
        # leaves provisioned mode and registered after it enters it (the order AWS takes them).
        Field("billing_mode", _billing_mode, "capacity"),
        # Only the capacity of the dimensions that are not auto scaled is ours to set.
        Field("provisioned_throughput", _throughput, "capacity", compare="subset"),
        Field("auto_scaling", _scaling, "auto_scaling"),
        Field("key_schema", _key_schema, REPLACE),
        Field("encryption", _encryption, "encryption"),
        Field(
            "point_in_time_recovery",
            "ContinuousBackupsDescription.PointInTimeRecoveryDescription"
            ".PointInTimeRecoveryStatus == 'ENABLED'",
            "point_in_time_recovery",
        ),
        Field("ttl", _ttl, "ttl"),
    )
    # Each UpdateTable leaves the table UPDATING; the next change is taken once it is ACTIVE.
    writes = (
        Write("capacity", lambda r, aws, want, have: r._capacity(aws, want, have), settles=True),
        Write(
            "auto_scaling",
            lambda r, aws, want, have: autoscaling.apply(
                aws, r.name, r.label, want["auto_scaling"], autoscaling.registered(r.name, have.raw)
            ),
        ),
        call(
            "dynamodb",
            "update_table",
            lambda r, want, have: {"TableName": r.name, "SSESpecification": {"Enabled": False}},
            name="encryption",
            settles=True,
        ),
        Write("point_in_time_recovery", lambda r, aws, want, have: r._set_backups(aws, want, have)),
        # Last: AWS may refuse it for up to an hour, and every other change is made by then.
        Write("ttl", lambda r, aws, want, have: r._update_ttl(aws, want["ttl"])),
    )
    tagging = Tagging(
        "dynamodb",
        "list_tags_of_resource",
        "tag_resource",
        lambda r, raw: {"ResourceArn": raw["Table"]["TableArn"]},
    )
    settled = Settled("Table.TableStatus", frozenset({"ACTIVE"}), "for the table to become ACTIVE")

    def grants(self) -> list[Grant]:
        return [
            *lifecycle(
                self.ctx.names.device_state_table_arn,
                self.ctx.stack,
                read=[
                    "dynamodb:DescribeTable",
                    "dynamodb:DescribeTimeToLive",
                    "dynamodb:DescribeContinuousBackups",
                    "dynamodb:ListTagsOfResource",
                ],
                write=[
                    "dynamodb:CreateTable",
                    "dynamodb:UpdateTable",
                    "dynamodb:UpdateTimeToLive",
                    "dynamodb:UpdateContinuousBackups",
                    "dynamodb:TagResource",
                ],
                delete=["dynamodb:DeleteTable"],
            ),
            *autoscaling.grants(self.ctx.names),
        ]

    def desired(self) -> dict[str, Any]:
        config = self.ctx.config
        return {
            "tags": self.ctx.tags,
            "billing_mode": BILLING_MODES[config.device_state.capacity],
            "provisioned_throughput": autoscaling.fixed_throughput(config),
            "auto_scaling": autoscaling.scaled(config),
            "key_schema": {DEVICE_KEY: "S"},
            # DynamoDB always encrypts at rest; the AWS-owned key costs nothing per request.
            "encryption": "AWS_OWNED",
            "ttl": {"attribute": TTL_ATTRIBUTE, "enabled": True},
            "point_in_time_recovery": self.ctx.config.device_state.point_in_time_recovery,
        }

    def _status(self, aws: Aws) -> str | None:
        described = self.find(aws, "describe_table", TableName=self.name)
        return described["Table"]["TableStatus"] if described else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        described = self.find(aws, "describe_table", TableName=self.name)
        # A table still DELETING is as good as gone: `create` waits it out.
        if described is None or described["Table"]["TableStatus"] == DELETING:
            return None
        ttl, backups, scaling = aws.gather(
            lambda: self.call(aws, "describe_time_to_live", TableName=self.name),
            lambda: self.call(aws, "describe_continuous_backups", TableName=self.name),
            lambda: autoscaling.observe(aws, self.name, self.label),
        )
        return {**described, **ttl, **backups, **scaling}

    def create(self, aws: Aws) -> None:
        def create() -> Any:
            return self.make(
                aws,
                "create_table",
                TableName=self.name,
                AttributeDefinitions=[{"AttributeName": DEVICE_KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": DEVICE_KEY, "KeyType": "HASH"}],
                **self._capacity_parameters(),
                Tags=self.ctx.tag_list,
            )

        create_once_deleted(
            aws,
            resource=self.label,
            create=create,
            status=lambda: self._status(aws),
            what="table",
        )

    def _capacity_parameters(self, have: State | None = None) -> dict[str, Any]:
        """BillingMode, and for a provisioned table its ProvisionedThroughput: the fixed
        dimensions as configured, the scaled ones as they are (or at their minimum)."""
        config = self.ctx.config
        mode = BILLING_MODES[config.device_state.capacity]
        if mode == "PAY_PER_REQUEST":
            return {"BillingMode": mode}
        current = {k: v for k, v in ((have or {}).get("provisioned_throughput") or {}).items() if v}
        return {
            "BillingMode": mode,
            "ProvisionedThroughput": {
                **autoscaling.initial_throughput(config),
                **current,
                **autoscaling.fixed_throughput(config),
            },
        }

    def _capacity(self, aws: Aws, want: dict[str, Any], have: State) -> None:
        """UpdateTable's billing mode and throughput where they differ, once the dimensions no
        longer auto scaled have lost their targets."""
        targets = autoscaling.registered(self.name, have.raw)
        for dimension, spec in targets.items():
            if dimension not in want["auto_scaling"]:
                autoscaling.remove(aws, self.name, self.label, dimension, spec)
        parameters = self._capacity_parameters(have)
        unchanged_mode = parameters["BillingMode"] == have["billing_mode"]
        if unchanged_mode:
            parameters.pop("BillingMode")
        throughput = parameters.get("ProvisionedThroughput")
        if unchanged_mode and throughput == have["provisioned_throughput"]:
            parameters.pop("ProvisionedThroughput", None)
        if not parameters:
            return
        try:
            self.call(aws, "update_table", TableName=self.name, **parameters)
        except AwsError as exc:
            if exc.code != "LimitExceededException" or ON_DEMAND_SWITCHED_RECENTLY not in str(exc):
                raise
            raise Deferred(
                "not switched to on-demand yet: DynamoDB switches a table back to on-demand at "
                "most once a day, and this table was switched within the last day; run "
                "`iotpipe up` again tomorrow (its auto scaling is already removed, so its "
                "provisioned capacity stays as it is until then)",
                resource=self.label,
            ) from None

    def _set_backups(self, aws: Aws, want: dict[str, Any], have: State) -> None:
        """Point-in-time recovery, once continuous backups are on.

        A new table's continuous backups are enabled seconds after it turns ACTIVE. Until then
        DescribeContinuousBackups says DISABLED and UpdateContinuousBackups is refused: wait for
        ENABLED first (the refusal is still retried, should it come anyway).
        """

        def status() -> str:
            described = self.call(aws, "describe_continuous_backups", TableName=self.name)
            return str(described["ContinuousBackupsDescription"].get("ContinuousBackupsStatus"))

        if have.raw["ContinuousBackupsDescription"].get("ContinuousBackupsStatus") != "ENABLED":
            report_wait("waiting for DynamoDB to finish enabling the new table's backups")
            # As long as the refusal itself would be retried; then let AWS answer.
            with contextlib.suppress(AwsError):
                aws.wait_for(
                    lambda: status() == "ENABLED",
                    resource=self.label,
                    what="for DynamoDB to enable continuous backups",
                    timeout_seconds=aws.policy.transient_deadline_seconds,
                )
        self.call(
            aws,
            "update_continuous_backups",
            retry_on=(BACKUPS_BEING_ENABLED,),
            TableName=self.name,
            PointInTimeRecoverySpecification={
                "PointInTimeRecoveryEnabled": want["point_in_time_recovery"]
            },
        )

    def _update_ttl(self, aws: Aws, ttl: dict[str, Any]) -> None:
        # AWS refuses a TTL change within an hour of the last one: only call on a real diff.
        try:
            self.call(
                aws,
                "update_time_to_live",
                TableName=self.name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["attribute"],
                    "Enabled": ttl["enabled"],
                },
            )
        except AwsError as exc:
            if exc.code != "ValidationException" or TTL_CHANGED_RECENTLY not in str(exc):
                raise
            state = "on" if ttl["enabled"] else "off"
            # Not a failure: the rest of the stack goes on; the next `up` an hour on finishes it.
            raise Deferred(
                f"time to live not turned {state} for {ttl['attribute']!r} yet: DynamoDB accepts "
                "one TTL change per table per hour, and this table's TTL was changed within the "
                "last hour (outside iotpipe, or by an earlier run); run `iotpipe up` again in an "
                "hour",
                resource=self.label,
            ) from None

    def delete(self, aws: Aws) -> None:
        # DynamoDB leaves a deleted table's scalable targets, policies and alarms behind.
        targets = autoscaling.registered(self.name, autoscaling.observe(aws, self.name, self.label))
        for dimension, spec in targets.items():
            autoscaling.remove(aws, self.name, self.label, dimension, spec)
        self.remove(aws, "delete_table", TableName=self.name)
        # AWS keeps the name until the deletion finishes: a later `up` could not create it.
        wait_while_deleting(
            aws,
            resource=self.label,
            status=lambda: self._status(aws),
            message="waiting for AWS to finish deleting the table (usually seconds)",
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [DeviceStateTable(ctx, ctx.names.device_state_table)]
