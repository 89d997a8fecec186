"""Firehose: the archive delivery stream (processor -> batched, compressed objects in S3).

Buffering is large by default (64 MiB / 15 min) so Athena reads few, big objects; the Hive-style
`dt=/hour=` prefix lets it prune partitions. With archive.format = "parquet" Firehose converts the
JSON lines with the Glue table's schema (Snappy inside the Parquet files, none around them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import IAM_PROPAGATION
from iotpipe.engine.model import Change, Resource
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, owned, reads, writes
from iotpipe.resources.deletion import DELETING, create_once_deleted, wait_while_deleting
from iotpipe.resources.iam import ServiceRole, allow, policy_document, trust_policy
from iotpipe.resources.logs import LOG_STREAMS_WHY, LogGroup, group_arns

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

ARCHIVE_PREFIX = "readings/dt=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
ERROR_PREFIX = "firehose-errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/"
LOG_STREAM = "DestinationDelivery"
# Firehose's own key: encryption at rest with no KMS charge.
ENCRYPTION = "AWS_OWNED_CMK"
NOT_FOUND = ("ResourceNotFoundException",)


def firehose_role(ctx: StackContext) -> ServiceRole:
    names = ctx.names
    bucket = names.archive_bucket_arn
    statements = [
        allow(
            ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
            [bucket],
            sid="ArchiveBucket",
        ),
        allow(
            ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"],
            [f"{bucket}/{names.archive_prefix}*", f"{bucket}/{names.archive_error_prefix}*"],
            sid="ArchiveObjects",
        ),
        allow(
            ["logs:PutLogEvents"],
            [names.arn("logs", f"log-group:{names.archive_log_group}:log-stream:*")],
            sid="DeliveryLogs",
        ),
    ]
    if ctx.config.archive.format == "parquet":
        # Parquet conversion reads the schema from the Glue table.
        statements.append(
            allow(
                ["glue:GetTable", "glue:GetTableVersion", "glue:GetTableVersions"],
                [names.glue_catalog_arn, names.glue_database_arn, names.glue_table_arn],
                sid="ParquetSchema",
            )
        )
    return ServiceRole(
        ctx,
        names.role("firehose"),
        trust=trust_policy("firehose.amazonaws.com", names.account, external_id=True),
        policy=policy_document(*statements),
        description=f"iotpipe {ctx.stack}: Firehose delivery of the archive to S3",
    )


class DeliveryLogStream(Resource):
    """The log stream Firehose writes delivery errors to (it does not create it itself)."""

    kind = "logs.stream"

    def __init__(self, ctx: StackContext, name: str, group: LogGroup) -> None:
        super().__init__(ctx, name, depends_on=(group.key,))
        self.group = group.name

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.group}:{self.name}"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.group}:{self.name}"

    def grants(self) -> list[Grant]:
        groups = group_arns(self.ctx.names, self.group)
        return [
            reads(
                ["logs:DescribeLogStreams", "logs:ListTagsLogGroup"], groups, why=LOG_STREAMS_WHY
            ),
            writes(["logs:CreateLogStream", "logs:DeleteLogStream"], groups, why=LOG_STREAMS_WHY),
        ]

    def desired(self) -> dict[str, Any]:
        return {}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = aws.call(
            "logs",
            "describe_log_streams",
            resource=self.label,
            missing=NOT_FOUND,
            logGroupName=self.group,
            logStreamNamePrefix=self.name,
        )
        streams = (found or {}).get("logStreams", [])
        if not any(s["logStreamName"] == self.name for s in streams):
            return None
        # A stream cannot be tagged: it belongs to whoever owns its group.
        tags = aws.call("logs", "list_tags_log_group", resource=self.label, logGroupName=self.group)
        return {"tags": tags.get("tags", {})}

    def create(self, aws: Aws) -> None:
        aws.call(
            "logs",
            "create_log_stream",
            resource=self.label,
            missing=("ResourceAlreadyExistsException",),
            logGroupName=self.group,
            logStreamName=self.name,
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        """Nothing of a log stream can change."""

    def delete(self, aws: Aws) -> None:
        aws.call(
            "logs",
            "delete_log_stream",
            resource=self.label,
            missing=NOT_FOUND,
            logGroupName=self.group,
            logStreamName=self.name,
        )


class ArchiveDeliveryStream(Resource):
    kind = "firehose.delivery_stream"

    @property
    def parquet(self) -> bool:
        return self.ctx.config.archive.format == "parquet"

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.archive_delivery_stream_arn
        return [
            reads(["firehose:DescribeDeliveryStream", "firehose:ListTagsForDeliveryStream"], arn),
            writes(
                [
                    "firehose:CreateDeliveryStream",
                    "firehose:UpdateDestination",
                    "firehose:StartDeliveryStreamEncryption",
                    "firehose:TagDeliveryStream",
                ],
                arn,
            ),
            writes(["firehose:DeleteDeliveryStream"], arn, condition=owned(self.ctx.stack)),
        ]

    def desired(self) -> dict[str, Any]:
        names, archive = self.ctx.names, self.ctx.config.archive
        return {
            "tags": self.ctx.tags,
            "role": names.role_arn("firehose"),
            "bucket": names.archive_bucket_arn,
            "prefix": ARCHIVE_PREFIX,
            "error_prefix": ERROR_PREFIX,
            "buffering": {"size_mb": archive.buffer_mb, "interval_seconds": archive.buffer_seconds},
            # Parquet compresses inside the file (Snappy); gzip around it would make it unreadable.
            "compression": "UNCOMPRESSED" if self.parquet else "GZIP",
            "parquet_schema": f"{names.glue_database}.{names.glue_table}" if self.parquet else None,
            "encryption": ENCRYPTION,
            "logging": {"group": names.archive_log_group, "stream": LOG_STREAM},
        }

    def _describe(self, aws: Aws) -> dict[str, Any] | None:
        found = aws.call(
            "firehose",
            "describe_delivery_stream",
            resource=self.label,
            missing=NOT_FOUND,
            DeliveryStreamName=self.name,
        )
        return found["DeliveryStreamDescription"] if found else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        stream = self._describe(aws)
        # A stream still DELETING is as good as gone: `create` waits it out.
        if stream is None or stream["DeliveryStreamStatus"] == DELETING:
            return None
        destination = stream["Destinations"][0]
        s3 = destination.get("ExtendedS3DestinationDescription", {})
        hints = s3.get("BufferingHints", {})
        logging = s3.get("CloudWatchLoggingOptions", {})
        conversion = s3.get("DataFormatConversionConfiguration", {})
        schema = conversion.get("SchemaConfiguration", {})
        encryption = stream.get("DeliveryStreamEncryptionConfiguration", {})
        tags = aws.call(
            "firehose",
            "list_tags_for_delivery_stream",
            resource=self.label,
            DeliveryStreamName=self.name,
        )
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "role": s3.get("RoleARN"),
            "bucket": s3.get("BucketARN"),
            "prefix": s3.get("Prefix"),
            "error_prefix": s3.get("ErrorOutputPrefix"),
            "buffering": {
                "size_mb": hints.get("SizeInMBs"),
                "interval_seconds": hints.get("IntervalInSeconds"),
            },
            "compression": s3.get("CompressionFormat"),
            "parquet_schema": f"{schema.get('DatabaseName')}.{schema.get('TableName')}"
            if conversion.get("Enabled")
            else None,
            "encryption": encryption.get("KeyType")
            if encryption.get("Status", "ENABLED") in ("ENABLED", "ENABLING")
            else None,
            "logging": {
                "group": logging.get("LogGroupName"),
                "stream": logging.get("LogStreamName"),
            }
            if logging.get("Enabled")
            else None,
            "status": stream["DeliveryStreamStatus"],
            "version": stream["VersionId"],
            "destination_id": destination["DestinationId"],
        }

    def _destination(self) -> dict[str, Any]:
        want, names = self.desired(), self.ctx.names
        destination: dict[str, Any] = {
            "RoleARN": want["role"],
            "BucketARN": want["bucket"],
            "Prefix": want["prefix"],
            "ErrorOutputPrefix": want["error_prefix"],
            "BufferingHints": {
                "SizeInMBs": want["buffering"]["size_mb"],
                "IntervalInSeconds": want["buffering"]["interval_seconds"],
            },
            "CompressionFormat": want["compression"],
            "CloudWatchLoggingOptions": {
                "Enabled": True,
                "LogGroupName": want["logging"]["group"],
                "LogStreamName": want["logging"]["stream"],
            },
        }
        if self.parquet:
            destination["DataFormatConversionConfiguration"] = {
                "Enabled": True,
                "SchemaConfiguration": {
                    "RoleARN": want["role"],
                    "CatalogId": names.account,
                    "DatabaseName": names.glue_database,
                    "TableName": names.glue_table,
                    "Region": names.region,
                    "VersionId": "LATEST",
                },
                "InputFormatConfiguration": {"Deserializer": {"OpenXJsonSerDe": {}}},
                "OutputFormatConfiguration": {
                    "Serializer": {"ParquetSerDe": {"Compression": "SNAPPY"}}
                },
            }
        else:
            destination["DataFormatConversionConfiguration"] = {"Enabled": False}
        return destination

    def create(self, aws: Aws) -> None:
        destination = self._destination()
        if not self.parquet:
            # A stream created without conversion needs no "disabled" block.
            del destination["DataFormatConversionConfiguration"]

        def create() -> Any:
            # ResourceInUseException: the stream exists (another run made it), or is DELETING.
            return aws.call(
                "firehose",
                "create_delivery_stream",
                resource=self.label,
                # The role was created moments ago; Firehose may not be able to assume it yet.
                retry_on=IAM_PROPAGATION,
                missing=("ResourceInUseException",),
                DeliveryStreamName=self.name,
                DeliveryStreamType="DirectPut",
                DeliveryStreamEncryptionConfigurationInput={"KeyType": ENCRYPTION},
                ExtendedS3DestinationConfiguration=destination,
                Tags=self.ctx.tag_list,
            )

        held_by = create_once_deleted(
            aws,
            resource=self.label,
            create=create,
            status=lambda: self._status(aws),
            what="delivery stream",
        )
        if held_by == "DELETING_FAILED":
            raise AwsError(
                "the previous delivery stream of this name failed to delete "
                "(DELETING_FAILED), so the name is still taken",
                resource=self.label,
                hint=f"aws firehose delete-delivery-stream --delivery-stream-name {self.name} "
                "--allow-force-delete, then run `iotpipe up` again",
            )
        self.wait_active(aws)

    def _status(self, aws: Aws) -> str | None:
        stream = self._describe(aws)
        return stream["DeliveryStreamStatus"] if stream else None

    def wait_active(self, aws: Aws) -> dict[str, Any]:
        def active() -> dict[str, Any] | None:
            observed = self.observe(aws)
            if observed and observed["status"] == "CREATING_FAILED":
                stream = self._describe(aws) or {}
                reason = stream.get("FailureDescription", {}).get("Details", "no details")
                raise AwsError(f"creation failed: {reason}", resource=self.label)
            return observed if observed and observed["status"] == "ACTIVE" else None

        return aws.wait_for(active, resource=self.label, what="for the stream to become ACTIVE")

    def update(self, aws: Aws, changes: list[Change]) -> None:
        fields = {c.field for c in changes}
        observed = self.wait_active(aws)
        if "tags" in fields:
            aws.call(
                "firehose",
                "tag_delivery_stream",
                resource=self.label,
                DeliveryStreamName=self.name,
                Tags=self.ctx.tag_list,
            )
        if "encryption" in fields:
            aws.call(
                "firehose",
                "start_delivery_stream_encryption",
                resource=self.label,
                DeliveryStreamName=self.name,
                DeliveryStreamEncryptionConfigurationInput={"KeyType": ENCRYPTION},
            )
            observed = self.wait_active(aws)
        if fields - {"tags", "encryption"}:
            # The version id makes a concurrent change fail instead of being overwritten.
            aws.call(
                "firehose",
                "update_destination",
                resource=self.label,
                retry_on=IAM_PROPAGATION,
                DeliveryStreamName=self.name,
                CurrentDeliveryStreamVersionId=observed["version"],
                DestinationId=observed["destination_id"],
                ExtendedS3DestinationUpdate=self._destination(),
            )
            self.wait_active(aws)

    def delete(self, aws: Aws) -> None:
        aws.call(
            "firehose",
            "delete_delivery_stream",
            resource=self.label,
            missing=NOT_FOUND,
            DeliveryStreamName=self.name,
        )
        # AWS keeps the name until the deletion finishes (and the stream can still deliver
        # buffered objects meanwhile): wait, so a later `up` can create it again.
        wait_while_deleting(
            aws,
            resource=self.label,
            status=lambda: self._status(aws),
            # DeleteDeliveryStream (API reference): "A stream may remain in the DELETING state
            # for several minutes."
            message="waiting for AWS to finish deleting the delivery stream (it can take several "
            "minutes)",
        )


def resources(ctx: StackContext) -> list[Resource]:
    names = ctx.names
    role = firehose_role(ctx)
    log_group = LogGroup(
        ctx, names.archive_log_group, retention_days=ctx.config.archive.log_retention_days
    )
    log_stream = DeliveryLogStream(ctx, LOG_STREAM, log_group)
    depends_on = [role.key, f"s3.bucket/{names.archive_bucket}", log_group.key, log_stream.key]
    if ctx.config.archive.format == "parquet":
        depends_on.append(f"glue.table/{names.glue_database}/{names.glue_table}")
    stream = ArchiveDeliveryStream(ctx, names.archive_delivery_stream, tuple(depends_on))
    return [role, log_group, log_stream, stream]
