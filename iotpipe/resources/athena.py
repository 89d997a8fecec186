"""Athena: the stack's workgroup, with an enforced, encrypted result location and a cost cap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.fields import Field, State, Tagging, call
from iotpipe.engine.model import Resource
from iotpipe.permissions import Grant, lifecycle, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

MIB = 1024 * 1024
UPDATE = "update_work_group"


def _configuration(want: dict[str, Any]) -> dict[str, Any]:
    """The workgroup's configuration, in CreateWorkGroup's shape (UpdateWorkGroup's differs in
    one key's name only)."""
    return {
        "ResultConfiguration": {
            "OutputLocation": want["output_location"],
            "EncryptionConfiguration": {"EncryptionOption": want["result_encryption"]},
        },
        "EnforceWorkGroupConfiguration": want["enforced"],
        "PublishCloudWatchMetricsEnabled": want["cloudwatch_metrics"],
        "BytesScannedCutoffPerQuery": want["bytes_scanned_cutoff"],
        "EngineVersion": {"SelectedEngineVersion": want["engine_version"]},
    }


def _update(r: Workgroup, want: dict[str, Any], have: State) -> dict[str, Any]:
    config = _configuration(want)
    results = config.pop("ResultConfiguration")
    return {
        "WorkGroup": r.name,
        "ConfigurationUpdates": {"ResultConfigurationUpdates": results, **config},
    }


class Workgroup(Resource):
    kind = "athena.workgroup"
    # Athena's answer for a workgroup that does not exist.
    absent = ("InvalidRequestException",)
    # Read from GetWorkGroup's answer; UpdateWorkGroup sets them all at once.
    fields = (
        Field("enforced", "Configuration.EnforceWorkGroupConfiguration", UPDATE),
        Field("output_location", "Configuration.ResultConfiguration.OutputLocation", UPDATE),
        Field(
            "result_encryption",
            "Configuration.ResultConfiguration.EncryptionConfiguration.EncryptionOption",
            UPDATE,
        ),
        Field("bytes_scanned_cutoff", "Configuration.BytesScannedCutoffPerQuery", UPDATE),
        Field("cloudwatch_metrics", "Configuration.PublishCloudWatchMetricsEnabled", UPDATE),
        Field("engine_version", "Configuration.EngineVersion.SelectedEngineVersion", UPDATE),
    )
    writes = (call("athena", UPDATE, _update),)
    tagging = Tagging(
        "athena",
        "list_tags_for_resource",
        "tag_resource",
        lambda r, raw: {"ResourceARN": r.ctx.names.workgroup_arn},
    )

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        arn = names.workgroup_arn
        # IAM gives Athena's tagging actions three resource types (workgroup, data catalog,
        # capacity reservation); each is named for this stack only.
        tagged = [
            arn,
            names.arn("athena", f"datacatalog/{self.name}"),
            names.arn("athena", f"capacity-reservation/{self.name}"),
        ]
        return [
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["athena:GetWorkGroup"],
                write=["athena:CreateWorkGroup", "athena:UpdateWorkGroup"],
                delete=["athena:DeleteWorkGroup"],
            ),
            reads(["athena:ListTagsForResource"], tagged),
            writes(["athena:TagResource"], tagged),
        ]

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        return {
            "tags": self.ctx.tags,
            # Enforced: a client cannot send results elsewhere or lift the cutoff.
            "enforced": True,
            "output_location": f"s3://{names.archive_bucket}/{names.athena_results_prefix}",
            "result_encryption": "SSE_S3",
            "bytes_scanned_cutoff": self.ctx.config.catalog.bytes_scanned_cutoff_mb * MIB,
            "cloudwatch_metrics": True,
            "engine_version": "AUTO",
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_work_group", WorkGroup=self.name)
        return (found or {}).get("WorkGroup") or None

    def create(self, aws: Aws) -> None:
        self.call(
            aws,
            "create_work_group",
            Name=self.name,
            Description=f"iotpipe {self.ctx.stack}: queries over the readings archive",
            Configuration=_configuration(self.desired()),
            Tags=self.ctx.tag_list,
        )

    def delete(self, aws: Aws) -> None:
        self.remove(
            aws,
            "delete_work_group",
            WorkGroup=self.name,
            # Saved queries and prepared statements of the workgroup go with it.
            RecursiveDeleteOption=True,
        )


def resources(ctx: StackContext) -> list[Resource]:
    bucket = f"s3.bucket/{ctx.names.archive_bucket}"
    return [Workgroup(ctx, ctx.names.workgroup, depends_on=(bucket,))]
