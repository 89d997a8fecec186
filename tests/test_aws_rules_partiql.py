"""The emulator runs PartiQL batches of conditional UPDATEs and INSERTs as AWS does (moto does not):
conditions hold, an UPDATE never creates an item, an INSERT never overwrites one, and each
statement succeeds or fails on its own."""

from __future__ import annotations

import botocore.exceptions
import pytest

from tests.support import client

TABLE = "partiql"
UPDATE = f'UPDATE "{TABLE}" SET "ts" = ? SET "v" = ? REMOVE "seq" WHERE "id" = ? AND "ts" <= ?'
INSERT = f"INSERT INTO \"{TABLE}\" VALUE {{'id': ?, 'ts': ?, 'v': ?}}"


@pytest.fixture(name="dynamodb")
def dynamodb_fixture(endpoint: str):
    dynamodb = client(endpoint, "dynamodb")
    dynamodb.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return dynamodb


def update(device: str, ts: int, value: str = "x") -> dict:
    return {
        "Statement": UPDATE,
        "Parameters": [{"N": str(ts)}, {"S": value}, {"S": device}, {"N": str(ts)}],
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }


def insert(device: str, ts: int, value: str = "x") -> dict:
    return {"Statement": INSERT, "Parameters": [{"S": device}, {"N": str(ts)}, {"S": value}]}


def item(dynamodb, device: str) -> dict | None:
    return dynamodb.get_item(TableName=TABLE, Key={"id": {"S": device}}).get("Item")


def test_an_update_never_creates_an_item_and_an_insert_never_overwrites(dynamodb) -> None:
    (missing,) = dynamodb.batch_execute_statement(Statements=[update("a", 5)])["Responses"]
    assert missing["Error"]["Code"] == "ConditionalCheckFailed"
    assert "Item" not in missing["Error"]  # nothing stored: nothing to return
    assert item(dynamodb, "a") is None

    (created,) = dynamodb.batch_execute_statement(Statements=[insert("a", 5, "first")])["Responses"]
    assert "Error" not in created
    assert item(dynamodb, "a") == {"id": {"S": "a"}, "ts": {"N": "5"}, "v": {"S": "first"}}

    (again,) = dynamodb.batch_execute_statement(Statements=[insert("a", 9, "second")])["Responses"]
    assert again["Error"]["Code"] == "DuplicateItem"
    assert item(dynamodb, "a")["v"] == {"S": "first"}


def test_the_condition_holds_and_a_refusal_returns_the_stored_item(dynamodb) -> None:
    dynamodb.put_item(
        TableName=TABLE,
        Item={"id": {"S": "a"}, "ts": {"N": "10"}, "v": {"S": "stored"}, "seq": {"N": "3"}},
    )
    (older,) = dynamodb.batch_execute_statement(Statements=[update("a", 9, "older")])["Responses"]
    assert older["Error"]["Code"] == "ConditionalCheckFailed"
    assert older["Error"]["Item"]["v"] == {"S": "stored"}
    assert item(dynamodb, "a")["v"] == {"S": "stored"}

    (tie,) = dynamodb.batch_execute_statement(Statements=[update("a", 10, "tie")])["Responses"]
    assert "Error" not in tie
    # SET changes the attributes it names, REMOVE drops one, the rest stays.
    assert item(dynamodb, "a") == {"id": {"S": "a"}, "ts": {"N": "10"}, "v": {"S": "tie"}}

    without_old = {**update("a", 1), "ReturnValuesOnConditionCheckFailure": "NONE"}
    (refused,) = dynamodb.batch_execute_statement(Statements=[without_old])["Responses"]
    assert refused["Error"]["Code"] == "ConditionalCheckFailed"
    assert "Item" not in refused["Error"]


def test_each_statement_succeeds_or_fails_on_its_own(dynamodb) -> None:
    dynamodb.put_item(TableName=TABLE, Item={"id": {"S": "b"}, "ts": {"N": "50"}})
    statements = [update("a", 5), insert("c", 7), update("b", 40), update("b2", 1)]
    answers = dynamodb.batch_execute_statement(Statements=statements)["Responses"]
    codes = [a.get("Error", {}).get("Code") for a in answers]
    assert codes == [
        "ConditionalCheckFailed",
        None,
        "ConditionalCheckFailed",
        "ConditionalCheckFailed",
    ]
    assert item(dynamodb, "c")["ts"] == {"N": "7"}
    assert item(dynamodb, "b")["ts"] == {"N": "50"}


@pytest.mark.parametrize(
    ("statements", "says"),
    [
        ([update(f"d{i}", 1) for i in range(26)], "less than or equal to 25"),
        (
            [
                update("a", 1),
                {
                    "Statement": f'SELECT * FROM "{TABLE}" WHERE "id" = ?',
                    "Parameters": [{"S": "a"}],
                },
            ],
            "either all read statements or all write statements",
        ),
    ],
)
def test_a_batch_aws_refuses_whole_is_refused(dynamodb, statements, says) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        dynamodb.batch_execute_statement(Statements=statements)
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert says in refused.value.response["Error"]["Message"]


def test_a_statement_the_emulator_does_not_run_says_so(dynamodb) -> None:
    statements = [
        {"Statement": f'DELETE FROM "{TABLE}" WHERE "id" = ?', "Parameters": [{"S": "a"}]},
        {"Statement": UPDATE, "Parameters": [{"N": "1"}]},
        {
            "Statement": UPDATE.replace(TABLE, "no-such-table"),
            **{k: v for k, v in update("a", 1).items() if k != "Statement"},
        },
    ]
    answers = dynamodb.batch_execute_statement(Statements=statements)["Responses"]
    assert [a["Error"]["Code"] for a in answers] == [
        "ValidationError",
        "ValidationError",
        "ResourceNotFound",
    ]
    assert "the emulator runs only" in answers[0]["Error"]["Message"]
    assert "don't match" in answers[1]["Error"]["Message"]
