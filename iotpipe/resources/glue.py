"""Glue Data Catalog: the archive's database and table, and a scheduled crawler.

The table is declared with an explicit schema and partition projection, so Athena can query the
archive before any crawl and never lists partitions. The crawler only keeps partitions listed for
engines without projection: its policy logs schema changes instead of applying them, and new
partitions inherit the table's schema, so it never fights the declared table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotpipe.aws import IAM_PROPAGATION, Transient
from iotpipe.engine.fields import Field, State, Tagging, call
from iotpipe.engine.model import STACK_TAG, Resource
from iotpipe.packaging import processor_module
from iotpipe.permissions import Grant, lifecycle, reads, writes
from iotpipe.resources.iam import POLICY_VERSION, ServiceRole, allow, policy_document

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.context import StackContext
    from iotpipe.naming import Names

NOT_FOUND = ("EntityNotFoundException",)
EXISTS = ("AlreadyExistsException",)

# The archive line the processor writes, in Hive types: stated once, in the processor's contract.
COLUMNS: list[tuple[str, str]] = list(processor_module("contract").ARCHIVE_COLUMNS)
PARTITION_KEYS = [("dt", "string"), ("hour", "string")]

JSON_FORMAT = {
    "input_format": "org.apache.hadoop.mapred.TextInputFormat",
    "output_format": "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
    "serde": "org.openx.data.jsonserde.JsonSerDe",
    # Metric names are the device's own keys: keep their case.
    "serde_parameters": {"case.insensitive": "false"},
}
PARQUET_FORMAT = {
    "input_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
    "output_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
    "serde": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
    "serde_parameters": {"serialization.format": "1"},
}

CRAWLER_LOG_GROUP = "/aws-glue/crawlers"
# Keep the declared table: partitions take its schema, compatible files stay one table.
CRAWLER_CONFIGURATION = {
    "Version": 1.0,
    "CrawlerOutput": {"Partitions": {"AddOrUpdateBehavior": "InheritFromTable"}},
    "Grouping": {"TableGroupingPolicy": "CombineCompatibleSchemas"},
}
# Report schema drift in the crawler's log, never rewrite or drop the table.
SCHEMA_CHANGE_POLICY = {"UpdateBehavior": "LOG", "DeleteBehavior": "LOG"}
CRAWLER_RUNNING = (Transient("crawler-running", "CrawlerRunningException"),)


def _glue_tagging(arn: Callable[[Names], str]) -> Tagging:
    """Glue's tags: a map, read with GetTags and added with TagResource, by the resource's ARN."""
    return Tagging(
        "glue",
        "get_tags",
        "tag_resource",
        lambda r, raw: {"ResourceArn": arn(r.ctx.names)},
        shape="map",
        param="TagsToAdd",
        missing=NOT_FOUND,
    )


def _database(r: CatalogDatabase, want: dict[str, Any]) -> dict[str, Any]:
    return {"Name": r.name, "Description": want["description"]}


class CatalogDatabase(Resource):
    kind = "glue.database"
    absent = NOT_FOUND
    present = EXISTS
    fields = (Field("description", "Description || ''", "update_database"),)
    writes = (
        call(
            "glue",
            "update_database",
            lambda r, want, have: {"Name": r.name, "DatabaseInput": _database(r, want)},
        ),
    )
    tagging = _glue_tagging(lambda names: names.glue_database_arn)

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        database = [names.glue_catalog_arn, names.glue_database_arn]
        return [
            reads(["glue:GetDatabase", "glue:GetTags"], database),
            writes(["glue:CreateDatabase", "glue:UpdateDatabase", "glue:TagResource"], database),
            # Deleting the database deletes its tables and functions (there are none) too.
            writes(
                ["glue:DeleteDatabase"],
                [
                    *database,
                    names.arn("glue", f"table/{names.glue_database}/*"),
                    names.arn("glue", f"userDefinedFunction/{names.glue_database}/*"),
                ],
                why="the tables and functions inside the stack's own database",
            ),
        ]

    def desired(self) -> dict[str, Any]:
        description = f"iotpipe {self.ctx.stack}: archived sensor readings"
        return {"tags": self.ctx.tags, "description": description}

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_database", Name=self.name)
        return found["Database"] if found else None

    def create(self, aws: Aws) -> None:
        database = _database(self, self.desired())
        self.make(aws, "create_database", DatabaseInput=database, Tags=self.ctx.tags)

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_database", Name=self.name)


UPDATE_TABLE = "update_table"


class ArchiveTable(Resource):
    kind = "glue.table"
    absent = NOT_FOUND
    present = EXISTS
    # Read from GetTable's answer; UpdateTable sets them all at once.
    fields = (
        Field("table_type", "TableType", UPDATE_TABLE),
        Field("columns", "StorageDescriptor.Columns[].[Name, Type] || `[]`", UPDATE_TABLE),
        Field("partition_keys", "PartitionKeys[].[Name, Type] || `[]`", UPDATE_TABLE),
        Field("location", "StorageDescriptor.Location", UPDATE_TABLE),
        Field("input_format", "StorageDescriptor.InputFormat", UPDATE_TABLE),
        Field("output_format", "StorageDescriptor.OutputFormat", UPDATE_TABLE),
        Field("serde", "StorageDescriptor.SerdeInfo.SerializationLibrary", UPDATE_TABLE),
        Field("serde_parameters", "StorageDescriptor.SerdeInfo.Parameters || `{}`", UPDATE_TABLE),
        # Others (a crawler, a person) may add table parameters; only ours must hold.
        Field("parameters", "Parameters || `{}`", UPDATE_TABLE, compare="subset"),
    )
    writes = (
        call(
            "glue",
            UPDATE_TABLE,
            # UpdateTable replaces the definition: keep parameters others added.
            lambda r, want, have: {
                "DatabaseName": r.database,
                "TableInput": r._table_input(want, have["parameters"]),
            },
        ),
    )

    joiner = "."

    def __init__(self, ctx: StackContext, name: str, database: CatalogDatabase) -> None:
        super().__init__(ctx, name, within=database)
        self.database = database.name

    def owner(self, observed: State) -> str | None:
        # Glue tables cannot be tagged: ownership is a table parameter.
        return (observed.get("parameters") or {}).get(STACK_TAG)

    def grants(self) -> list[Grant]:
        names = self.ctx.names
        table = [names.glue_catalog_arn, names.glue_database_arn, names.glue_table_arn]
        return [
            reads(["glue:GetTable"], table),
            writes(["glue:CreateTable", "glue:UpdateTable", "glue:DeleteTable"], table),
        ]

    def desired(self) -> dict[str, Any]:
        parquet = self.ctx.config.archive.format == "parquet"
        names = self.ctx.names
        location = f"s3://{names.archive_bucket}/{names.archive_prefix}"
        return {
            "table_type": "EXTERNAL_TABLE",
            "columns": [list(c) for c in COLUMNS],
            "partition_keys": [list(k) for k in PARTITION_KEYS],
            "location": location,
            **(PARQUET_FORMAT if parquet else JSON_FORMAT),
            "parameters": {
                STACK_TAG: self.ctx.stack,
                "EXTERNAL": "TRUE",
                "classification": "parquet" if parquet else "json",
                "compressionType": "none" if parquet else "gzip",
                # Partition projection: Athena computes partitions instead of listing them.
                "projection.enabled": "true",
                "projection.dt.type": "date",
                "projection.dt.format": "yyyy-MM-dd",
                "projection.dt.range": "NOW-3YEARS,NOW",
                "projection.dt.interval": "1",
                "projection.dt.interval.unit": "DAYS",
                "projection.hour.type": "integer",
                "projection.hour.range": "0,23",
                "projection.hour.digits": "2",
                "storage.location.template": location + "dt=${dt}/hour=${hour}/",
            },
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_table", DatabaseName=self.database, Name=self.name)
        return found["Table"] if found else None

    def _table_input(self, want: dict[str, Any], keep_parameters: dict[str, str]) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Description": f"iotpipe {self.ctx.stack}: readings archived by Firehose",
            "TableType": want["table_type"],
            "Parameters": {**keep_parameters, **want["parameters"]},
            "PartitionKeys": [{"Name": n, "Type": t} for n, t in want["partition_keys"]],
            "StorageDescriptor": {
                "Columns": [{"Name": n, "Type": t} for n, t in want["columns"]],
                "Location": want["location"],
                "InputFormat": want["input_format"],
                "OutputFormat": want["output_format"],
                "Compressed": self.ctx.config.archive.format != "parquet",
                "SerdeInfo": {
                    "SerializationLibrary": want["serde"],
                    "Parameters": want["serde_parameters"],
                },
            },
        }

    def create(self, aws: Aws) -> None:
        table = self._table_input(self.desired(), {})
        self.make(aws, "create_table", DatabaseName=self.database, TableInput=table)

    def delete(self, aws: Aws) -> None:
        self.remove(aws, "delete_table", DatabaseName=self.database, Name=self.name)


# Glue documents its crawler role's trust policy without conditions ("Step 2: Create an IAM
# role for AWS Glue", "Crawler prerequisites"): it does not say it sends aws:SourceAccount or
# aws:SourceArn when it assumes a crawler role, and a condition on a key that is absent never
# matches, so such a condition could leave the crawler unable to assume its role. Who may hand
# this role to Glue is held by iam:PassRole instead, which cannot cross accounts.
# https://docs.aws.amazon.com/glue/latest/dg/create-an-iam-role.html
# https://docs.aws.amazon.com/glue/latest/dg/crawler-prereqs.html
GLUE_TRUST_POLICY = {
    "Version": POLICY_VERSION,
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "glue.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

# What a crawler of this one table does, scoped down from AWS's managed AWSGlueServiceRole
# (glue:* on *, s3:GetBucketLocation/ListBucket, logs on arn:aws:logs:*:*:*:/aws-glue/*): read
# the database and its tables, update the table's crawl statistics (UpdateTable; the LOG schema
# policy keeps the declared schema), and list, add and update partitions.
CRAWLER_CATALOG_ACTIONS = [
    "glue:BatchCreatePartition",
    "glue:BatchGetPartition",
    "glue:BatchUpdatePartition",
    "glue:CreatePartition",
    "glue:GetDatabase",
    "glue:GetPartition",
    "glue:GetPartitions",
    "glue:GetTable",
    "glue:UpdatePartition",
    "glue:UpdateTable",
]


def crawler_log_group_arn(ctx: StackContext) -> str:
    """The log group Glue writes crawler runs to; CreateLogGroup is authorized on this ARN."""
    return ctx.names.arn("logs", f"log-group:{CRAWLER_LOG_GROUP}")


def crawler_role(ctx: StackContext) -> ServiceRole:
    names = ctx.names
    bucket = names.archive_bucket_arn
    list_readings = allow(["s3:ListBucket"], [bucket], sid="ListReadings")
    list_readings["Condition"] = {"StringLike": {"s3:prefix": [f"{names.archive_prefix}*"]}}
    log_group = crawler_log_group_arn(ctx)
    policy = policy_document(
        allow(
            CRAWLER_CATALOG_ACTIONS,
            [names.glue_catalog_arn, names.glue_database_arn, names.glue_table_arn],
            sid="CatalogTable",
        ),
        # GetTables is authorized on every table of the database it lists; reading only.
        allow(
            ["glue:GetTables"],
            [
                names.glue_catalog_arn,
                names.glue_database_arn,
                names.arn("glue", f"table/{names.glue_database}/*"),
            ],
            sid="ListTables",
        ),
        list_readings,
        # A crawler asks where the bucket is before it lists it (AWSGlueServiceRole allows it).
        allow(["s3:GetBucketLocation"], [bucket], sid="LocateBucket"),
        allow(["s3:GetObject"], [f"{bucket}/{names.archive_prefix}*"], sid="ReadReadings"),
        # CreateLogGroup is checked against the group's ARN; the other two against its streams'
        # (log-group:NAME:log-stream:STREAM), one per crawler run.
        allow(["logs:CreateLogGroup"], [log_group], sid="CrawlerLogGroup"),
        allow(
            ["logs:CreateLogStream", "logs:PutLogEvents"],
            [f"{log_group}:log-stream:*"],
            sid="CrawlerLogs",
        ),
    )
    return ServiceRole(
        ctx,
        names.role("crawler"),
        trust=GLUE_TRUST_POLICY,
        policy=policy,
        description=f"iotpipe {ctx.stack}: Glue crawler of the archive",
    )


def _configuration(crawler: dict[str, Any]) -> Any:
    configuration = crawler.get("Configuration")
    return json.loads(configuration) if configuration else None


def _crawler(r: ArchiveCrawler, want: dict[str, Any], have: State | None = None) -> dict[str, Any]:
    """The crawler's settings, as CreateCrawler and UpdateCrawler both take them."""
    return {
        "Name": r.name,
        "Role": want["role"],
        "DatabaseName": want["database"],
        "Description": f"iotpipe {r.ctx.stack}: keeps the archive's partitions listed",
        "Targets": {"S3Targets": [{"Path": path} for path in want["targets"]]},
        "Schedule": want["schedule"],
        "SchemaChangePolicy": want["schema_change_policy"],
        "RecrawlPolicy": {"RecrawlBehavior": want["recrawl"]},
        "Configuration": json.dumps(want["configuration"]),
    }


UPDATE_CRAWLER = "update_crawler"


class ArchiveCrawler(Resource):
    kind = "glue.crawler"
    absent = NOT_FOUND
    present = EXISTS
    # Read from GetCrawler's answer; UpdateCrawler sets them all at once.
    fields = (
        Field("role", "Role", UPDATE_CRAWLER),
        Field("database", "DatabaseName", UPDATE_CRAWLER),
        Field("targets", "Targets.S3Targets[].Path || `[]`", UPDATE_CRAWLER),
        Field("schedule", "Schedule.ScheduleExpression", UPDATE_CRAWLER),
        Field("schema_change_policy", "SchemaChangePolicy", UPDATE_CRAWLER),
        Field("recrawl", "RecrawlPolicy.RecrawlBehavior", UPDATE_CRAWLER),
        Field("configuration", _configuration, UPDATE_CRAWLER),
    )
    writes = (call("glue", UPDATE_CRAWLER, _crawler, retry_on=IAM_PROPAGATION + CRAWLER_RUNNING),)
    tagging = _glue_tagging(lambda names: names.crawler_arn)

    def grants(self) -> list[Grant]:
        stack = self.ctx.stack
        arn = self.ctx.names.crawler_arn
        return [
            *lifecycle(
                arn,
                stack,
                read=["glue:GetCrawler", "glue:GetTags"],
                write=["glue:UpdateCrawler", "glue:StopCrawler", "glue:TagResource"],
                delete=["glue:DeleteCrawler"],
            ),
            writes(
                ["glue:CreateCrawler"],
                "*",
                condition={"StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack}},
                why="IAM has no resource type for glue:CreateCrawler: the request's tag scopes it",
            ),
        ]

    def desired(self) -> dict[str, Any]:
        names = self.ctx.names
        return {
            "tags": self.ctx.tags,
            "role": names.role_arn("crawler"),
            "database": names.glue_database,
            "targets": [f"s3://{names.archive_bucket}/{names.archive_prefix}"],
            "schedule": self.ctx.config.catalog.crawler_schedule,
            "schema_change_policy": SCHEMA_CHANGE_POLICY,
            # Only folders added since the last crawl: cheap, and allowed with a LOG policy.
            "recrawl": "CRAWL_NEW_FOLDERS_ONLY",
            "configuration": CRAWLER_CONFIGURATION,
        }

    def observe(self, aws: Aws) -> dict[str, Any] | None:
        found = self.find(aws, "get_crawler", Name=self.name)
        return found["Crawler"] if found else None

    def create(self, aws: Aws) -> None:
        self.make(
            aws,
            "create_crawler",  # A role created moments ago may not be assumable by Glue yet.
            retry_on=IAM_PROPAGATION,
            Tags=self.ctx.tags,
            **_crawler(self, self.desired()),
        )

    def delete(self, aws: Aws) -> None:
        self.call(
            aws,
            "stop_crawler",
            missing=(*NOT_FOUND, "CrawlerNotRunningException", "CrawlerStoppingException"),
            Name=self.name,
        )
        self.remove(aws, "delete_crawler", retry_on=CRAWLER_RUNNING, Name=self.name)


def resources(ctx: StackContext) -> list[Resource]:
    names = ctx.names
    database = CatalogDatabase(ctx, names.glue_database)
    table = ArchiveTable(ctx, names.glue_table, database)
    role = crawler_role(ctx)
    crawler = ArchiveCrawler(ctx, names.crawler, depends_on=(role.key, table.key))
    return [database, table, role, crawler]
