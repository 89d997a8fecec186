"""DynamoDB: the device-state table (latest reading per device, expiring through TTL)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.stack import StackContext

DEVICE_KEY = "device_id"
TTL_ATTRIBUTE = "expires_at"


class DeviceStateTable(Resource):
    kind = "dynamodb.table"
    data_store = True
    replace_on = frozenset({"key_schema"})

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

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        described = aws.call(
            "dynamodb",
            "describe_table",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            TableName=self.name,
        )
        if described is None or described["Table"]["TableStatus"] == "DELETING":
            return None
        table = described["Table"]
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
        aws.call(
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
            elif field == "ttl":
                # AWS refuses a TTL change within an hour of the last one: only call on a real diff.
                aws.call(
                    "dynamodb",
                    "update_time_to_live",
                    resource=self.label,
                    TableName=self.name,
                    TimeToLiveSpecification={
                        "AttributeName": want["ttl"]["attribute"],
                        "Enabled": want["ttl"]["enabled"],
                    },
                )
            elif field == "point_in_time_recovery":
                aws.call(
                    "dynamodb",
                    "update_continuous_backups",
                    resource=self.label,
                    TableName=self.name,
                    PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": want[field]},
                )

    def delete(self, aws: Aws) -> None:
        aws.call(
            "dynamodb",
            "delete_table",
            resource=self.label,
            missing=("ResourceNotFoundException",),
            TableName=self.name,
        )


def resources(ctx: StackContext) -> list[Resource]:
    return [DeviceStateTable(ctx, ctx.names.device_state_table)]
