"""DynamoDB: the device-state table (latest reading per device, expiring through TTL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.engine.model import Change, Deferred, Resource
from iotpipe.engine.reconcile import report_wait
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes
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


class DeviceStateTable(Resource):
    kind = "dynamodb.table"
    data_store = True
    replace_on = frozenset({"key_schema"})

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
        ]

    def desired(self) -> dict[str, Any]:
        return {
            "tags": self.ctx.tags,
            # On-demand: a few writes a second do not justify provisioned capacity.
            "billing_mode": "PAY_PER_REQUEST",
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
        tags, ttl, backups = aws.gather(
            lambda: aws.call(
                "dynamodb", "list_tags_of_resource", resource=label, ResourceArn=table["TableArn"]
            ),
            lambda: aws.call("dynamodb", "describe_time_to_live", resource=label, TableName=name)[
                "TimeToLiveDescription"
            ],
            lambda: aws.call(
                "dynamodb", "describe_continuous_backups", resource=label, TableName=name
            )["ContinuousBackupsDescription"],
        )
        pitr = backups.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus")
        sse = table.get("SSEDescription", {})
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "billing_mode": table.get("BillingModeSummary", {}).get("BillingMode", "PROVISIONED"),
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
                BillingMode="PAY_PER_REQUEST",
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

    def update(self, aws: Aws, changes: list[Change]) -> None:
        want = self.desired()
        observed = self.wait_active(aws)
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
            elif field == "billing_mode":
                aws.call(
                    "dynamodb",
                    "update_table",
                    resource=self.label,
                    TableName=self.name,
                    BillingMode=want[field],
                )
                self.wait_active(aws)
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
