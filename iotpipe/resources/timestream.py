"""Timestream for LiveAnalytics: the optional time-series sink (database and readings table).

AWS closed Timestream for LiveAnalytics to new customers on 2025-06-20. An account that cannot
use it gets AccessDeniedException (or fails endpoint discovery) on every call, so both resources
are optional: `up` skips them with a warning naming the fix and brings up everything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from botocore.discovery import EndpointDiscoveryException

from iotpipe.engine.fields import Field, State, Tagging, Write
from iotpipe.engine.model import Resource, Unavailable
from iotpipe.errors import AwsError
from iotpipe.permissions import Grant, lifecycle, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

SERVICE = "timestream-write"
NOT_FOUND = ("ResourceNotFoundException",)
DISABLE_HINT = "set `[timeseries] enabled = false` in the config to stop using the time-series sink"
# Readings older than the memory window (a device back online after a day) would otherwise be
# rejected; magnetic-store writes accept them, up to the magnetic retention. The processor is
# told (TIMESERIES_MAGNETIC_STORE_WRITES), so it sends exactly what the table takes.
MAGNETIC_STORE_WRITES = True


def _closed_to_account(exc: AwsError) -> bool:
    if exc.code == "AccessDeniedException" or "only existing timestream" in exc.message.lower():
        return True
    return isinstance(exc.__cause__, EndpointDiscoveryException)


def _call(aws: Aws, operation: str, resource: str, **params: Any) -> Any:
    """A Timestream call for `resource` (its label); a refusal to serve this account becomes
    `Unavailable`."""
    try:
        return aws.call(SERVICE, operation, resource=resource, missing=NOT_FOUND, **params)
    except AwsError as exc:
        if not _closed_to_account(exc):
            raise
        raise Unavailable(
            "Timestream for LiveAnalytics is not available to this account (AWS closed it to "
            f"new customers on 2025-06-20; AWS said: {exc.message}). The rest of the pipeline "
            f"is unaffected; to stop this warning, {DISABLE_HINT}.",
            resource=resource,
            code=exc.code,
            hint=DISABLE_HINT,
        ) from exc


def available(aws: Aws) -> bool:
    """Whether this account may use Timestream for LiveAnalytics at all."""
    try:
        _call(aws, "list_databases", "timestream", MaxResults=1)
    except Unavailable:
        return False
    return True


def _tagging_grants(names: Names, arn: str) -> list[Grant]:
    # IAM gives Timestream's tagging actions three resource types (database, table, scheduled
    # query); each is named for this stack only.
    tagged = [arn, names.arn("timestream", f"scheduled-query/{names.stack}")]
    return [
        reads(["timestream:ListTagsForResource"], tagged),
        writes(["timestream:TagResource"], tagged),
    ]


def _service_grants() -> list[Grant]:
    why = "IAM has no resource type for these Timestream actions"
    # `available` lists databases; the SDK discovers Timestream's endpoint before each call.
    return [reads(["timestream:ListDatabases", "timestream:DescribeEndpoints"], "*", why=why)]


def _tagging(described: str) -> Tagging:
    """Tags read and written by the ARN in the Describe answer's `described` part."""
    return Tagging(
        SERVICE,
        "list_tags_for_resource",
        "tag_resource",
        lambda r, raw: {"ResourceARN": raw[described]["Arn"]},
        missing=NOT_FOUND,
    )


def _settings(want: dict[str, Any]) -> dict[str, Any]:
    """The table's retention and magnetic-store writes as CreateTable and UpdateTable take them."""
    return {
        "RetentionProperties": {
            "MemoryStoreRetentionPeriodInHours": want["memory_retention_hours"],
            "MagneticStoreRetentionPeriodInDays": want["magnetic_retention_days"],
        },
        "MagneticStoreWriteProperties": {
            "EnableMagneticStoreWrites": want["magnetic_store_writes"]
        },
    }


def _update_table(r: TimeseriesTable, aws: Aws, want: dict[str, Any], have: State) -> None:
    params = {"DatabaseName": r.database, "TableName": r.name, **_settings(want)}
    _call(aws, "update_table", r.label, **params)


class TimeseriesDatabase(Resource):
    kind = "timestream.database"
    data_store = True
    optional = True
    tagging = _tagging("Database")

    @property
    def arn(self) -> str:
        return self.ctx.names.timeseries_database_arn

    def grants(self) -> list[Grant]:
        return [
            *_service_grants(),
            *_tagging_grants(self.ctx.names, self.arn),
            *lifecycle(
                self.arn,
                self.ctx.stack,
                read=["timestream:DescribeDatabase"],
                write=["timestream:CreateDatabase"],
                delete=["timestream:DeleteDatabase"],
            ),
        ]

    def desired(self) -> dict[str, Any]:
        # Timestream always encrypts at rest (AWS managed key by default).
        return {"tags": self.ctx.tags}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        return _call(aws, "describe_database", self.label, DatabaseName=self.name)

    def create(self, aws: Aws) -> None:
        _call(aws, "create_database", self.label, DatabaseName=self.name, Tags=self.ctx.tag_list)

    def delete(self, aws: Aws) -> None:
        _call(aws, "delete_database", self.label, DatabaseName=self.name)


class TimeseriesTable(Resource):
    kind = "timestream.table"
    data_store = True
    optional = True
    fields = (
        Field(
            "memory_retention_hours",
            "Table.RetentionProperties.MemoryStoreRetentionPeriodInHours",
            "update_table",
        ),
        Field(
            "magnetic_retention_days",
            "Table.RetentionProperties.MagneticStoreRetentionPeriodInDays",
            "update_table",
        ),
        Field(
            "magnetic_store_writes",
            "Table.MagneticStoreWriteProperties.EnableMagneticStoreWrites || `false`",
            "update_table",
        ),
    )
    writes = (Write("update_table", _update_table),)
    tagging = _tagging("Table")

    def __init__(self, ctx: StackContext, name: str, database: TimeseriesDatabase) -> None:
        super().__init__(ctx, name, within=database)
        self.database = database.name

    def grants(self) -> list[Grant]:
        arn = self.ctx.names.timeseries_table_arn
        return [
            *_service_grants(),
            *_tagging_grants(self.ctx.names, arn),
            *lifecycle(
                arn,
                self.ctx.stack,
                read=["timestream:DescribeTable"],
                write=["timestream:CreateTable", "timestream:UpdateTable"],
                delete=["timestream:DeleteTable"],
            ),
        ]

    def desired(self) -> dict[str, Any]:
        section = self.ctx.config.timeseries
        return {
            "tags": self.ctx.tags,
            "memory_retention_hours": section.memory_retention_hours,
            "magnetic_retention_days": section.magnetic_retention_days,
            "magnetic_store_writes": MAGNETIC_STORE_WRITES,
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        table = {"DatabaseName": self.database, "TableName": self.name}
        found = _call(aws, "describe_table", self.label, **table)
        # A table still DELETING is as good as gone.
        return None if found is None or found["Table"].get("TableStatus") == "DELETING" else found

    def create(self, aws: Aws) -> None:
        _call(
            aws,
            "create_table",
            self.label,
            DatabaseName=self.database,
            TableName=self.name,
            Tags=self.ctx.tag_list,
            **_settings(self.desired()),
        )

    def delete(self, aws: Aws) -> None:
        _call(aws, "delete_table", self.label, DatabaseName=self.database, TableName=self.name)
        # The database refuses to go while a table is still being deleted.
        aws.wait_for(
            lambda: self.observe(aws) is None,
            resource=self.label,
            what="for the table to be deleted",
        )


def resources(ctx: StackContext) -> list[Resource]:
    if not ctx.config.timeseries.enabled:
        return []
    names = ctx.names
    database = TimeseriesDatabase(ctx, names.timeseries_database)
    return [database, TimeseriesTable(ctx, names.timeseries_table, database)]
