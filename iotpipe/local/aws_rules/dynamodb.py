"""DynamoDB: a deleted table stays DELETING for a while; point-in-time recovery is refused right
after the table is created; a table's TTL setting changes at most once an hour; PartiQL batches of
conditional UPDATEs and INSERTs run as AWS runs them."""

from __future__ import annotations

import re
from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, answer, before, clock, lock
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


# --- PartiQL batches: BatchExecuteStatement ---------------------------------------------------
# moto 5.2 parses PartiQL with py-partiql-parser and does not run it as AWS does: a parameterised
# INSERT fails, a conditional UPDATE ignores its condition, and an UPDATE of an item that does not
# exist succeeds without writing. The processor writes device state with conditional UPDATEs and
# INSERTs in batches of 25, so the emulator runs those two forms itself, on moto's tables, with
# moto's own condition and update evaluation:
# - "The entire batch must consist of either read statements or write statements" and at most 25
#   statements (BatchExecuteStatement API reference); each statement's failure is reported in its
#   own response's Error, the others still run ("A HTTP 200 response does not mean that all
#   statements in the BatchExecuteStatement succeeded").
# - UPDATE: "If the WHERE clause of the UPDATE statement does not evaluate to true for any item in
#   the DynamoDB table, ConditionalCheckFailedException is returned" (PartiQL update statements
#   for DynamoDB): a missing item fails the statement too.
# - An INSERT of an item whose key exists fails with DuplicateItem (BatchStatementError's Code
#   values; DuplicateItemException: "There was an attempt to insert an item with the same primary
#   key as an item that already exists in the DynamoDB table", DynamoDB API reference).
# - ReturnValuesOnConditionCheckFailure = ALL_OLD puts the existing item in the Error's Item
#   (BatchStatementError).
# Other statement forms (SELECT, DELETE, nested paths, literals) get a ValidationError saying so.
BATCH_STATEMENTS = 25
_UPDATE = re.compile(
    r'^\s*UPDATE\s+"(?P<table>[^"]+)"\s+(?P<changes>.+?)\s+WHERE\s+(?P<where>.+?)\s*$',
    re.IGNORECASE | re.DOTALL,
)
_CHANGE = re.compile(r'\s*(?:SET\s+"(?P<set>[^"]+)"\s*=\s*\?|REMOVE\s+"(?P<remove>[^"]+)")', re.I)
_WHERE = re.compile(
    r'^"(?P<key>[^"]+)"\s*=\s*\?(?:\s+AND\s+"(?P<attribute>[^"]+)"\s*(?P<op><=|>=|<|>|=)\s*\?)?$',
    re.IGNORECASE,
)
_INSERT = re.compile(
    r'^\s*INSERT\s+INTO\s+"(?P<table>[^"]+)"\s+VALUE\s+\{(?P<pairs>.*)\}\s*$',
    re.IGNORECASE | re.DOTALL,
)
_PAIR = re.compile(r"\s*'(?P<name>[^']+)'\s*:\s*\?\s*")
_READS = re.compile(r"^\s*(SELECT|EXISTS)\b", re.IGNORECASE)


class _StatementError(Exception):
    def __init__(self, code: str, message: str, item: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.item = code, message, item


@answer("dynamodb", "BatchExecuteStatement")
def run_partiql_batch(call: Call) -> dict[str, Any]:
    statements = call.params.get("Statements") or []
    if not 1 <= len(statements) <= BATCH_STATEMENTS:
        raise AwsRefusal(
            "ValidationException",
            f"1 validation error detected: Value at 'statements' failed to satisfy constraint: "
            f"Member must have length less than or equal to {BATCH_STATEMENTS}",
        )
    reads = {bool(_READS.match(s.get("Statement", ""))) for s in statements}
    if len(reads) > 1:
        raise AwsRefusal(
            "ValidationException",
            "Batch statements must be either all read statements or all write statements",
        )
    return {"Responses": [_run_statement(call, statement) for statement in statements]}


def _run_statement(call: Call, request: dict[str, Any]) -> dict[str, Any]:
    text = request.get("Statement", "")
    parameters = list(request.get("Parameters") or [])
    table = ""
    try:
        if match := _UPDATE.match(text):
            table = match["table"]
            _run_update(call, match, parameters, request)
        elif match := _INSERT.match(text):
            table = match["table"]
            _run_insert(call, match, parameters)
        else:
            raise _StatementError(
                "ValidationError",
                "the emulator runs only parameterised UPDATE ... SET/REMOVE ... WHERE key = ? "
                "[AND attribute <op> ?] and INSERT INTO ... VALUE {...} statements",
            )
    except _StatementError as error:
        detail: dict[str, Any] = {"Code": error.code, "Message": error.message}
        if error.item is not None:
            detail["Item"] = error.item
        return {"TableName": table, "Error": detail} if table else {"Error": detail}
    return {"TableName": table}


def _backend(call: Call) -> Any:
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[call.account_id][call.region]


def _hash_key(call: Call, table: str) -> str:
    from moto.dynamodb.exceptions import ResourceNotFoundException

    try:
        return str(_backend(call).get_table(table).hash_key_attr)
    except ResourceNotFoundException:
        raise _StatementError(
            "ResourceNotFound", f"Requested resource not found: {table}"
        ) from None


def _take(parameters: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    if len(parameters) != count:
        raise _StatementError(
            "ValidationError",
            f"Number of parameters in request and statement don't match: {len(parameters)} "
            f"given, {count} in the statement",
        )
    return parameters


def _run_update(
    call: Call, match: re.Match[str], parameters: list[dict[str, Any]], request: dict[str, Any]
) -> None:
    from moto.dynamodb.exceptions import ConditionalCheckFailed

    table = match["table"]
    key_name = _hash_key(call, table)
    changes, position = [], 0
    for change in _CHANGE.finditer(match["changes"]):
        if change.start() != position:
            break
        changes.append(change)
        position = change.end()
    where = _WHERE.match(match["where"].strip())
    if not changes or position != len(match["changes"]) or where is None:
        raise _StatementError("ValidationError", "Statement wasn't well formed, can't be processed")
    if where["key"] != key_name:
        raise _StatementError(
            "ValidationError",
            "Where clause does not contain a mandatory equality on all key attributes",
        )
    placeholders = sum(1 for c in changes if c["set"]) + 1 + (1 if where["attribute"] else 0)
    values = iter(_take(parameters, placeholders))
    names: dict[str, str] = {"#k": key_name}
    attribute_values: dict[str, Any] = {}
    sets, removes = [], []
    for n, change in enumerate(changes):
        names[f"#a{n}"] = change["set"] or change["remove"]
        if change["set"]:
            attribute_values[f":v{n}"] = next(values)
            sets.append(f"#a{n} = :v{n}")
        else:
            removes.append(f"#a{n}")
    key = {key_name: next(values)}
    condition = "attribute_exists(#k)"
    if where["attribute"]:
        names["#c"] = where["attribute"]
        attribute_values[":c"] = next(values)
        condition += f" AND #c {where['op']} :c"
    expression = " ".join(
        part
        for part in (
            f"SET {', '.join(sets)}" if sets else "",
            f"REMOVE {', '.join(removes)}" if removes else "",
        )
        if part
    )
    backend = _backend(call)
    with lock():
        try:
            backend.update_item(
                table,
                key,
                update_expression=expression,
                expression_attribute_names=names,
                expression_attribute_values=attribute_values,
                condition_expression=condition,
            )
        except ConditionalCheckFailed:
            existing = backend.get_item(table, key)
            old = existing.to_json()["Attributes"] if existing is not None else None
            wanted = request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD"
            raise _StatementError(
                "ConditionalCheckFailed",
                "The conditional request failed",
                old if wanted else None,
            ) from None


def _run_insert(call: Call, match: re.Match[str], parameters: list[dict[str, Any]]) -> None:
    from moto.dynamodb.exceptions import ConditionalCheckFailed

    table = match["table"]
    key_name = _hash_key(call, table)
    pairs = [_PAIR.fullmatch(pair) for pair in match["pairs"].split(",")]
    if not pairs or any(pair is None for pair in pairs):
        raise _StatementError("ValidationError", "Statement wasn't well formed, can't be processed")
    names = [pair["name"] for pair in pairs if pair is not None]
    item = dict(zip(names, _take(parameters, len(names)), strict=True))
    if key_name not in item:
        raise _StatementError(
            "ValidationError",
            f"One or more parameter values were invalid: Missing the key {key_name}",
        )
    with lock():
        try:
            _backend(call).put_item(
                table,
                item,
                condition_expression="attribute_not_exists(#k)",
                expression_attribute_names={"#k": key_name},
            )
        except ConditionalCheckFailed:
            raise _StatementError(
                "DuplicateItem", "Duplicate primary key exists in table"
            ) from None
