"""Firehose: the archive delivery stream (processor -> batched, compressed objects in S3).

Buffering is large by default (64 MiB / 15 min) so Athena reads few, big objects; the Hive-style
`dt=/hour=` prefix lets it prune partitions. With archive.format = "parquet" Firehose converts the
JSON lines with the Glue table's schema (Snappy inside the Parquet files, none around them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jmespath

from iotpipe.aws import IAM_PROPAGATION
from iotpipe.engine.fields import Field, Settled, Tagging, call
from iotpipe.engine.model import Resource
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, lifecycle
from iotpipe.resources.deletion import DELETING, create_once_deleted, wait_while_deleting
from iotpipe.resources.iam import ServiceRole, allow, policy_document, trust_policy
from iotpipe.resources.logs import LogGroup, LogStream

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

ARCHIVE_PREFIX = "readings/dt=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/"
ERROR_PREFIX = "firehose-errors/!{firehose:error-output-type}/dt=!{timestamp:yyyy-MM-dd}/"
# The log stream Firehose writes delivery errors to (it does not create it itself).
LOG_STREAM = "DestinationDelivery"
# Firehose's own key: encryption at rest with no KMS charge.
ENCRYPTION = "AWS_OWNED_CMK"


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


S3 = "Destinations[0].ExtendedS3DestinationDescription"


def _parquet_schema(raw: dict[str, Any]) -> str | None:
    conversion = jmespath.search(f"{S3}.DataFormatConversionConfiguration", raw) or {}
    if not conversion.get("Enabled"):
        return None
    schema = conversion.get("SchemaConfiguration", {})
    return f"{schema.get('DatabaseName')}.{schema.get('TableName')}"


def _encryption(raw: dict[str, Any]) -> str | None:
    encryption = raw.get("DeliveryStreamEncryptionConfiguration", {})
    if encryption.get("Status", "ENABLED") in ("ENABLED", "ENABLING"):
        return encryption.get("KeyType")
    return None


def _logging(raw: dict[str, Any]) -> dict[str, Any] | None:
    logging = jmespath.search(f"{S3}.CloudWatchLoggingOptions", raw) or {}
    if not logging.get("Enabled"):
        return None
    return {"group": logging.get("LogGroupName"), "stream": logging.get("LogStreamName")}


def _creation_failure(raw: dict[str, Any]) -> str | None:
    if raw["DeliveryStreamStatus"] != "CREATING_FAILED":
        return None
    reason = raw.get("FailureDescription", {}).get("Details", "no details")
    return f"creation failed: {reason}"


# Every destination field is set by one UpdateDestination call.
_DESTINATION = "update_destination"


class ArchiveDeliveryStream(Resource):
    kind = "firehose.delivery_stream"
    absent = ("ResourceNotFoundException",)
    # The stream exists (another run made it), or is still DELETING.
    present = ("ResourceInUseException",)
    fields = (
        Field("role", f"{S3}.RoleARN", _DESTINATION),
        Field("bucket", f"{S3}.BucketARN", _DESTINATION),
        Field("prefix", f"{S3}.Prefix", _DESTINATION),
        Field("error_prefix", f"{S3}.ErrorOutputPrefix", _DESTINATION),
        Field(
            "buffering",
            f"{S3}.BufferingHints.{{size_mb: SizeInMBs, interval_seconds: IntervalInSeconds}}",
            _DESTINATION,
        ),
        Field("compression", f"{S3}.CompressionFormat", _DESTINATION),
        Field("parquet_schema", _parquet_schema, _DESTINATION),
        Field("encryption", _encryption, "start_delivery_stream_encryption"),
        Field("logging", _logging, _DESTINATION),
    )
    writes = (
        call(
            "firehose",
            "start_delivery_stream_encryption",
            lambda r, want, have: {
                "DeliveryStreamName": r.name,
                "DeliveryStreamEncryptionConfigurationInput": {"KeyType": ENCRYPTION},
            },
            settles=True,
        ),
        # The version id makes a concurrent change fail instead of being overwritten.
        call(
            "firehose",
            _DESTINATION,
            lambda r, want, have: {
                "DeliveryStreamName": r.name,
                "CurrentDeliveryStreamVersionId": have.raw["VersionId"],
                "DestinationId": have.raw["Destinations"][0]["DestinationId"],
                "ExtendedS3DestinationUpdate": r.destination(),
            },
            settles=True,
            retry_on=IAM_PROPAGATION,
        ),
    )
    tagging = Tagging(
        "firehose",
        "list_tags_for_delivery_stream",
        "tag_delivery_stream",
        lambda r, raw: {"DeliveryStreamName": r.name},
    )
    settled = Settled(
        "DeliveryStreamStatus",
        frozenset({"ACTIVE"}),
        "for the stream to become ACTIVE",
        failed=_creation_failure,
    )

    @property
    def parquet(self) -> bool:
        return self.ctx.config.archive.format == "parquet"

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.archive_delivery_stream_arn
        return lifecycle(
            arn,
            self.ctx.stack,
            read=["firehose:DescribeDeliveryStream", "firehose:ListTagsForDeliveryStream"],
            write=[
                "firehose:CreateDeliveryStream",
                "firehose:UpdateDestination",
                "firehose:StartDeliveryStreamEncryption",
                "firehose:TagDeliveryStream",
            ],
            delete=["firehose:DeleteDeliveryStream"],
        )

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
        found = self.find(aws, "describe_delivery_stream", DeliveryStreamName=self.name)
        return found["DeliveryStreamDescription"] if found else None

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        stream = self._describe(aws)
        # A stream still DELETING is as good as gone: `create` waits it out.
        return None if stream is None or stream["DeliveryStreamStatus"] == DELETING else stream

    def destination(self) -> dict[str, Any]:
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
        destination = self.destination()
        if not self.parquet:
            # A stream created without conversion needs no "disabled" block.
            del destination["DataFormatConversionConfiguration"]

        def create() -> Any:
            return self.make(
                aws,
                "create_delivery_stream",
                # The role was created moments ago; Firehose may not be able to assume it yet.
                retry_on=IAM_PROPAGATION,
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

    def _status(self, aws: Aws) -> str | None:
        stream = self._describe(aws)
        return stream["DeliveryStreamStatus"] if stream else None

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_delivery_stream", DeliveryStreamName=self.name)
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
    log_stream = LogStream(ctx, LOG_STREAM, log_group)
    depends_on = [role.key, f"s3.bucket/{names.archive_bucket}", log_group.key, log_stream.key]
    if ctx.config.archive.format == "parquet":
        depends_on.append(f"glue.table/{names.glue_database}/{names.glue_table}")
    stream = ArchiveDeliveryStream(ctx, names.archive_delivery_stream, tuple(depends_on))
    return [role, log_group, log_stream, stream]
