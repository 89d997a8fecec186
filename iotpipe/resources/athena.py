"""Athena: the stack's workgroup, with an enforced, encrypted result location and a cost cap."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.engine.model import Change, Resource
from iotpipe.permissions import Grant, owned, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext

MIB = 1024 * 1024


class Workgroup(Resource):
    kind = "athena.workgroup"

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
            reads(["athena:GetWorkGroup"], arn),
            reads(["athena:ListTagsForResource"], tagged),
            writes(["athena:CreateWorkGroup", "athena:UpdateWorkGroup"], arn),
            writes(["athena:TagResource"], tagged),
            writes(["athena:DeleteWorkGroup"], arn, condition=owned(self.ctx.stack)),
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
        found = aws.call(
            "athena",
            "get_work_group",
            resource=self.label,
            missing=("InvalidRequestException",),
            WorkGroup=self.name,
        )
        group = (found or {}).get("WorkGroup")
        if not group:
            return None
        config = group.get("Configuration", {})
        results = config.get("ResultConfiguration", {})
        tags = aws.call(
            "athena",
            "list_tags_for_resource",
            resource=self.label,
            ResourceARN=self.ctx.names.workgroup_arn,
        )
        return {
            "tags": {t["Key"]: t["Value"] for t in tags.get("Tags", [])},
            "enforced": config.get("EnforceWorkGroupConfiguration"),
            "output_location": results.get("OutputLocation"),
            "result_encryption": results.get("EncryptionConfiguration", {}).get("EncryptionOption"),
            "bytes_scanned_cutoff": config.get("BytesScannedCutoffPerQuery"),
            "cloudwatch_metrics": config.get("PublishCloudWatchMetricsEnabled"),
            "engine_version": config.get("EngineVersion", {}).get("SelectedEngineVersion"),
        }

    @property
    def _description(self) -> str:
        return f"iotpipe {self.ctx.stack}: queries over the readings archive"

    def _result_configuration(self) -> dict[str, Any]:
        want = self.desired()
        return {
            "OutputLocation": want["output_location"],
            "EncryptionConfiguration": {"EncryptionOption": want["result_encryption"]},
        }

    def create(self, aws: Aws) -> None:
        want = self.desired()
        aws.call(
            "athena",
            "create_work_group",
            resource=self.label,
            Name=self.name,
            Description=self._description,
            Configuration={
                "ResultConfiguration": self._result_configuration(),
                "EnforceWorkGroupConfiguration": want["enforced"],
                "PublishCloudWatchMetricsEnabled": want["cloudwatch_metrics"],
                "BytesScannedCutoffPerQuery": want["bytes_scanned_cutoff"],
                "EngineVersion": {"SelectedEngineVersion": want["engine_version"]},
            },
            Tags=self.ctx.tag_list,
        )

    def update(self, aws: Aws, changes: list[Change]) -> None:
        want = self.desired()
        fields = {c.field for c in changes}
        if "tags" in fields:
            aws.call(
                "athena",
                "tag_resource",
                resource=self.label,
                ResourceARN=self.ctx.names.workgroup_arn,
                Tags=self.ctx.tag_list,
            )
        if fields - {"tags"}:
            aws.call(
                "athena",
                "update_work_group",
                resource=self.label,
                WorkGroup=self.name,
                ConfigurationUpdates={
                    "ResultConfigurationUpdates": self._result_configuration(),
                    "EnforceWorkGroupConfiguration": want["enforced"],
                    "PublishCloudWatchMetricsEnabled": want["cloudwatch_metrics"],
                    "BytesScannedCutoffPerQuery": want["bytes_scanned_cutoff"],
                    "EngineVersion": {"SelectedEngineVersion": want["engine_version"]},
                },
            )

    def delete(self, aws: Aws) -> None:
        aws.call(
            "athena",
            "delete_work_group",
            resource=self.label,
            missing=("InvalidRequestException",),
            WorkGroup=self.name,
            # Saved queries and prepared statements of the workgroup go with it.
            RecursiveDeleteOption=True,
        )


def resources(ctx: StackContext) -> list[Resource]:
    bucket = f"s3.bucket/{ctx.names.archive_bucket}"
    return [Workgroup(ctx, ctx.names.workgroup, depends_on=(bucket,))]
