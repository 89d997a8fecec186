"""DynamoDB: a deleted table stays DELETING for a while; point-in-time recovery is refused right
after the table is created; a table's TTL setting changes at most once an hour."""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, clock, lock
from iotpipe.local.aws_rules.deleting import is_deleting, linger, sweep

# DeleteTable (DynamoDB API reference): "After a DeleteTable request, the specified table is in the
# DELETING state until DynamoDB completes the deletion." No duration is documented; an empty
# on-demand table is gone after some seconds (about 6 s measured by others), so 10 s.
DELETE_SECONDS = 10.0
# A new table's continuous backups are still being enabled for a few seconds: meanwhile
# DescribeContinuousBackups reports ContinuousBackupsStatus DISABLED (observed on AWS by ScyllaDB's
# test_backup.py: "Right after a table is created, it has continuous backups disabled - but a few
# seconds later, it suddenly reports that they are enabled") and UpdateContinuousBackups answers
# ContinuousBackupsUnavailableException ("Backups are being enabled for the table: X. Please
# retry later", as reported from AWS in aws-amplify/amplify-backend #1654; others measured 3-6 s).
BACKUPS_ENABLING_SECONDS = 10.0
# UpdateTimeToLive (DynamoDB API reference): "It can take up to one hour for the change to fully
# process. Any additional UpdateTimeToLive calls for the same table during this one hour duration
# result in a ValidationException." The text is AWS's as quoted in aws/aws-cdk #13720.
TTL_CHANGE_SECONDS = 3600.0
TTL_CHANGED_RECENTLY = "Time to live has been modified multiple times within a fixed interval"
# The operations the pipeline sends that see a table; each first forgets finished deletions.
_SEES_TABLES = (
    "CreateTable",
    "DeleteTable",
    "DescribeTable",
    "ListTables",
    "UpdateTable",
    "TagResource",
    "ListTagsOfResource",
    "DescribeTimeToLive",
    "UpdateTimeToLive",
    "DescribeContinuousBackups",
    "UpdateContinuousBackups",
)
_CHANGES = ("DeleteTable", "UpdateTable", "TagResource", "UpdateTimeToLive")


def _tables(call: Call) -> dict[str, Any]:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[call.account_id][call.region].tables


def _name(call: Call) -> str:
    # TagResource names the table by ARN: arn:aws:dynamodb:region:account:table/NAME.
    name = call.params.get("TableName") or call.params.get("ResourceArn", "")
    return str(name).split(":table/", 1)[-1].split("/", 1)[0]


@before("dynamodb", *_SEES_TABLES)
def forget_finished_deletions(call: Call) -> None:
    sweep(call, _tables(call))


# While the table is DELETING, CreateTable answers "Table already exists: X" (moto's own text,
# AWS's too) and changes answer this (both as terraform-provider-aws quotes them).
@before("dynamodb", *_CHANGES, "UpdateContinuousBackups")
def refuse_changes_while_deleting(call: Call) -> None:
    name = _name(call)
    if is_deleting(call, name):
        raise AwsRefusal(
            "ResourceInUseException",
            f"Attempt to change a resource which is still in use: Table is being deleted: {name}",
        )


@before("dynamodb", "DeleteTable")
def hold_the_deleted_table(call: Call) -> None:
    name = _name(call)
    table = _tables(call).get(name)
    if table is not None:
        with lock():
            call.state.setdefault("being_deleted", {})[name] = table


@after("dynamodb", "DeleteTable")
def keep_it_deleting(call: Call, reply: dict[str, Any]) -> dict[str, Any]:
    name = _name(call)
    with lock():
        table = call.state.get("being_deleted", {}).pop(name, None)
        # A new table of the same name has its own history.
        call.state.get("created", {}).pop(name, None)
        call.state.get("ttl_changed", {}).pop(name, None)
    if table is not None:
        linger(call, _tables(call), name, table, DELETE_SECONDS)
    description = dict(reply.get("TableDescription", {}), TableStatus="DELETING")
    return {**reply, "TableDescription": description}


@after("dynamodb", "DescribeTable")
def show_deleting(call: Call, reply: dict[str, Any]) -> dict[str, Any] | None:
    if not is_deleting(call, _name(call)):
        return None
    return {**reply, "Table": dict(reply.get("Table", {}), TableStatus="DELETING")}


@after("dynamodb", "CreateTable")
def remember_creation(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        call.state.setdefault("created", {})[_name(call)] = clock.now()


def _backups_enabling(call: Call, name: str) -> bool:
    with lock():
        created = call.state.get("created", {}).get(name)
    return created is not None and clock.now() - created < BACKUPS_ENABLING_SECONDS


@after("dynamodb", "DescribeContinuousBackups")
def show_backups_enabling(call: Call, reply: dict[str, Any]) -> dict[str, Any] | None:
    if not _backups_enabling(call, _name(call)):
        return None
    description = dict(reply.get("ContinuousBackupsDescription", {}))
    return {
        **reply,
        "ContinuousBackupsDescription": {**description, "ContinuousBackupsStatus": "DISABLED"},
    }


@before("dynamodb", "UpdateContinuousBackups")
def refuse_backups_while_enabling(call: Call) -> None:
    name = _name(call)
    if _backups_enabling(call, name):
        raise AwsRefusal(
            "ContinuousBackupsUnavailableException",
            f"Backups are being enabled for the table: {name}. Please retry later",
        )


@before("dynamodb", "UpdateTimeToLive")
def refuse_a_second_ttl_change_within_the_hour(call: Call) -> None:
    with lock():
        changed = call.state.get("ttl_changed", {}).get(_name(call))
    if changed is not None and clock.now() - changed < TTL_CHANGE_SECONDS:
        raise AwsRefusal("ValidationException", TTL_CHANGED_RECENTLY)


@after("dynamodb", "UpdateTimeToLive")
def remember_ttl_change(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        call.state.setdefault("ttl_changed", {})[_name(call)] = clock.now()
