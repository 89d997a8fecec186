"""DynamoDB: the device-state table (latest reading per device, expiring through TTL).

Provisioned with auto scaling by default (`[device_state] capacity`), or on-demand; the table's
auto scaling settings are one of its fields (see resources/autoscaling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.engine.model import Change, Deferred, Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes
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
# Fields that UpdateTable's capacity settings and Application Auto Scaling apply together.
CAPACITY_FIELDS = ("billing_mode", "provisioned_throughput", "auto_scaling")


class DeviceStateTable(Resource):
    kind = "dynamodb.table"
    data_store = True
    replace_on = frozenset({"key_schema"})
    # Only the capacity of the dimensions that are not auto scaled is ours to set.
    subset_fields = frozenset({"tags", "provisioned_throughput"})

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.device_state_table_arn
        return [
            reads(
                [
                    "dynamodb:DescribeTable",
                    "dynamodb:DescribeTimeToLive",
                    "dynamodb:DescribeContinuousBackups",
                    "dynamodb:ListTagsOfResource",
                ],
                arn,
            ),
            writes(
                [
                    "dynamodb:CreateTable",
                    "dynamodb:UpdateTable",
                    "dynamodb:UpdateTimeToLive",
                    "dynamodb:UpdateContinuousBackups",
                    "dynamodb:TagResource",
                ],
                arn,
            ),
            writes(["dynamodb:DeleteTable"], arn, condition=owned(self.ctx.stack)),
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

    def _describe(self, aws: Aws) -> dict[str, Any] | None:
        described = aws.call(
            "dynamodb",
            "describe_table",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            TableName=self.name,
        )
        return described["Table"] if described else None

    def _status(self, aws: Aws) -> str | None:
        table = self._describe(aws)
        return table["TableStatus"] if table else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        table = self._describe(aws)
        # A table still DELETING is as good as gone: `create` waits it out.
        if table is None or table["TableStatus"] == DELETING:
            return None
        types = {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]}
        label, name = self.label, self.name
        tags, ttl, backups, scaling = aws.gather(
            lambda: aws.call(
                "dynamodb", "list_tags_of_resource", resource=label, ResourceArn=table["TableArn"]
            ),
            lambda: aws.call("dynamodb", "describe_time_to_live", resource=label, TableName=name)[
                "TimeToLiveDescription"
            ],
            lambda: aws.call(
                "dynamodb", "describe_continuous_backups", resource=label, TableName=name
            )["ContinuousBackupsDescription"],
            lambda: autoscaling.observe(aws, name, label),
        )
        pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
        sse = table.get("SSEDescription", {})
        billing_mode = table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED")
        throughput = table.get("ProvisionedThroughput", {})
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "billing_mode": billing_mode,
            "provisioned_throughput": {
                field: throughput.get(field)
                for field in ("ReadCapacityUnits", "WriteCapacityUnits")
            }
            if billing_mode == "PROVISIONED"
            else {},
            "auto_scaling": autoscaling.shown(scaling),
            "scaling_targets": scaling,
            "key_schema": {
                k["AttributeName"]: types.get(k["AttributeName"]) for k in table["KeySchema"]
            },
            "encryption": sse.get("SSEType", "KMS")
            if sse.get("Status") == "ENABLED"
            else "AWS_OWNED",
            "ttl": {
                "attribute": ttl.get("AttributeName"),
                "enabled": ttl.get("TimeToLiveStatus") in ("ENABLED", "ENABLING"),
            },
            "point_in_time_recovery": pitr == "ENABLED",
            "status": table["TableStatus"],
            "arn": table["TableArn"],
        }

    def create(self, aws: Aws) -> None:
        def create() -> Any:
            # ResourceInUseException: the table exists (another run made it), or is DELETING.
            return aws.call(
                "dynamodb",
                "create_table",
                resource=self.label,
                missing=("ResourceInUseException",),
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
        self.wait_active(aws)

    def wait_active(self, aws: Aws) -> dict[str, Any]:
        def active() -> dict[str, Any] | None:
            observed = self.observe(aws)
            return observed if observed and observed["status"] == "ACTIVE" else None

        return aws.wait_for(active, resource=self.label, what="for the table to become ACTIVE")

    def _capacity_parameters(self, observed: dict[str, Any] | None = None) -> dict[str, Any]:
        """BillingMode, and for a provisioned table its ProvisionedThroughput: the fixed
        dimensions as configured, the scaled ones as they are (or at their minimum)."""
        config = self.ctx.config
        mode = BILLING_MODES[config.device_state.capacity]
        if mode == "PAY_PER_REQUEST":
            return {"BillingMode": mode}
        current = {
            k: v for k, v in ((observed or {}).get("provisioned_throughput") or {}).items() if v
        }
        return {
            "BillingMode": mode,
            "ProvisionedThroughput": {
                **autoscaling.initial_throughput(config),
                **current,
                **autoscaling.fixed_throughput(config),
            },
        }

    def _update_capacity(self, aws: Aws, observed: dict[str, Any]) -> None:
        """Billing mode, throughput and auto scaling, in the order AWS takes them: targets go
        before a table leaves provisioned mode, and come after it enters it."""
        want = self.desired()
        targets = observed.get("scaling_targets") or {}
        going = {d: s for d, s in targets.items() if d not in want["auto_scaling"]}
        for dimension, spec in going.items():
            autoscaling.remove(aws, self.name, self.label, dimension, spec)
        parameters = self._capacity_parameters(observed)
        unchanged_mode = parameters["BillingMode"] == observed["billing_mode"]
        if unchanged_mode:
            parameters.pop("BillingMode")
        throughput = parameters.get("ProvisionedThroughput")
        if unchanged_mode and throughput == observed["provisioned_throughput"]:
            parameters.pop("ProvisionedThroughput", None)
        if parameters:
            self._update_table(aws, parameters)
        kept = {d: s for d, s in targets.items() if d in want["auto_scaling"]}
        autoscaling.apply(aws, self.name, self.label, want["auto_scaling"], kept)

    def _update_table(self, aws: Aws, parameters: dict[str, Any]) -> None:
        try:
            aws.call(
                "dynamodb",
                "update_table",
                resource=self.label,
                TableName=self.name,
                **parameters,
            )
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
        self.wait_active(aws)

    def update(self, aws: Aws, changes: list[Change]) -> None:
        want = self.desired()
        observed = self.wait_active(aws)
        if any(change.field in CAPACITY_FIELDS for change in changes):
            self._update_capacity(aws, observed)
        for change in changes:
            field = change.field
            if field == "tags":
                aws.call(
                    "dynamodb",
                    "tag_resource",
                    resource=self.label,
                    ResourceArn=observed["arn"],
                    Tags=[{"Key": k, "Value": v} for k, v in want["tags"].items()],
                )
            elif field == "encryption":
                aws.call(
                    "dynamodb",
                    "update_table",
                    resource=self.label,
                    TableName=self.name,
                    SSESpecification={"Enabled": False},
                )
                self.wait_active(aws)
            elif field == "point_in_time_recovery":
                self._wait_for_continuous_backups(aws)
                aws.call(
                    "dynamodb",
                    "update_continuous_backups",
                    resource=self.label,
                    retry_on=(BACKUPS_BEING_ENABLED,),
                    TableName=self.name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": want[field]},
                )
        # Last: AWS may refuse it for up to an hour, and every other change is made by then.
        if any(change.field == "ttl" for change in changes):
            self._update_ttl(aws, want["ttl"])

    def _wait_for_continuous_backups(self, aws: Aws) -> None:
        """A new table's continuous backups are enabled seconds after it turns ACTIVE.

        Until then DescribeContinuousBackups says DISABLED and UpdateContinuousBackups is refused:
        wait for ENABLED first (the refusal is still retried, should it come anyway).
        """

        def status() -> str:
            described = aws.call(
                "dynamodb", "describe_continuous_backups", resource=self.label, TableName=self.name
            )
            return str(described["ContinuousBackupsDescription"].get("ContinuousBackupsStatus"))

        if status() == "ENABLED":
            return
        report_wait("waiting for DynamoDB to finish enabling the new table's backups")
        try:
            aws.wait_for(
                lambda: status() == "ENABLED",
                resource=self.label,
                what="for DynamoDB to enable continuous backups",
                # As long as the refusal itself would be retried; then let AWS answer.
                timeout_seconds=aws.policy.transient_deadline_seconds,
            )
        except AwsError:
            return

    def _update_ttl(self, aws: Aws, ttl: dict[str, Any]) -> None:
        # AWS refuses a TTL change within an hour of the last one: only call on a real diff.
        try:
            aws.call(
                "dynamodb",
                "update_time_to_live",
                resource=self.label,
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
        targets = autoscaling.observe(aws, self.name, self.label)
        for dimension, spec in targets.items():
            autoscaling.remove(aws, self.name, self.label, dimension, spec)
        aws.call(
            "dynamodb",
            "delete_table",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            TableName=self.name,
        )
        # AWS keeps the name until the deletion finishes: a later `up` could not create it.
        wait_while_deleting(
            aws,
            resource=self.label,
            status=lambda: self._status(aws),
            message="waiting for AWS to finish deleting the table (usually seconds)",
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [DeviceStateTable(ctx, ctx.names.device_state_table)]
