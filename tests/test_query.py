"""`iotpipe query` against the emulator's Athena, with results seeded through moto's own API."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.athena_query import (
    MIN_BILLED_BYTES,
    billed_bytes,
    cost_usd,
    is_aws_endpoint,
    single_statement,
    writing_statement,
)
from iotpipe.aws import add_client_hook
from iotpipe.errors import UsageError

WORKGROUP = "test"  # the stack's workgroup and Glue database are named after the stack
COLUMNS = [("device_id", "varchar"), ("temperature", "double"), ("seq", "bigint")]


def _moto_api(endpoint: str, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        response.read()


def seed_results(endpoint: str, rows: list[list[str | None]]) -> None:
    """Queue one result set for the next query (header row first, as Athena returns SELECTs)."""

    def row(values: list[str | None]) -> dict[str, Any]:
        return {"Data": [{} if v is None else {"VarCharValue": v} for v in values]}

    header = [name for name, _ in COLUMNS]
    _moto_api(
        endpoint,
        "static/athena/query-results",
        {
            "results": [
                {
                    "rows": [row(header), *[row(r) for r in rows]],
                    "column_info": [
                        {"Name": name, "Label": name, "Type": kind} for name, kind in COLUMNS
                    ],
                }
            ]
        },
    )


@pytest.fixture
def athena(endpoint: str):
    client = boto3.client("athena", endpoint_url=endpoint, region_name="us-east-1")
    client.create_work_group(
        Name=WORKGROUP,
        Configuration={
            "ResultConfiguration": {"OutputLocation": "s3://test-results/athena-results/"},
            "EnforceWorkGroupConfiguration": True,
            "BytesScannedCutoffPerQuery": 1024**3,
        },
    )
    return client


@pytest.fixture
def aws_pages() -> Iterator[list[int]]:
    """Make the emulator's GetQueryResults page like AWS (moto returns every row at once).

    Each response is cut to the request's MaxResults rows from the offset its NextToken names,
    with a NextToken while rows remain. Yields the row counts of the pages served.
    """
    served: list[int] = []

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["page_request"] = dict(params)

    def cut(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        request = context.get("page_request", {})
        start = int(request.get("NextToken") or 0)
        size = int(request.get("MaxResults") or 1000)
        rows = parsed["ResultSet"]["Rows"]
        parsed["ResultSet"]["Rows"] = rows[start : start + size]
        parsed.pop("NextToken", None)
        if start + size < len(rows):
            parsed["NextToken"] = str(start + size)
        served.append(len(parsed["ResultSet"]["Rows"]))

    def attach(service: str, client: Any) -> None:
        if service == "athena":
            events = client.meta.events
            events.register("before-parameter-build.athena.GetQueryResults", remember)
            events.register("after-call.athena.GetQueryResults", cut)

    remove = add_client_hook(attach)
    yield served
    remove()


def _readings(count: int) -> list[list[str | None]]:
    return [[f"sensor-{i:04d}", f"{20 + i % 10}.5", str(i)] for i in range(count)]


def test_rows_as_a_table(cli, endpoint: str, athena) -> None:
    seed_results(endpoint, _readings(3))

    result = cli("query", "SELECT device_id, temperature, seq FROM readings LIMIT 3")

    assert result.exit_code == 0, result
    for name, _ in COLUMNS:
        assert name in result.stdout
    assert "sensor-0002" in result.stdout and "22.5" in result.stdout
    assert "3 row(s)" in result.stdout
    assert "Athena bills at least 10 MB per query" in result.stdout
    execution = athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    assert len(execution) == 1
    started = athena.get_query_execution(QueryExecutionId=execution[0])["QueryExecution"]
    assert started["QueryExecutionContext"]["Database"] == "test"


def test_rows_as_csv(cli, endpoint: str, athena) -> None:
    seed_results(endpoint, [["sensor-1", "21.5", None], ["sensor,2", "22.0", "7"]])

    result = cli("query", "SELECT * FROM readings", "--output", "csv")

    assert result.exit_code == 0, result
    assert list(csv.reader(io.StringIO(result.stdout))) == [
        ["device_id", "temperature", "seq"],
        ["sensor-1", "21.5", ""],
        ["sensor,2", "22.0", "7"],
    ]
    assert "data scanned" in result.stderr


def test_rows_as_json_typed_by_column(cli, endpoint: str, athena) -> None:
    seed_results(endpoint, [["sensor-1", "21.5", "3"]])

    result = cli("query", "SELECT * FROM readings", "--output", "json")

    assert result.exit_code == 0, result
    document = result.json
    assert document["rows"] == [{"device_id": "sensor-1", "temperature": 21.5, "seq": 3}]
    assert document["billed_bytes"] == MIN_BILLED_BYTES
    assert document["cost_usd"] == pytest.approx(cost_usd(0), abs=1e-6)


def test_pages_through_more_than_1000_rows(cli, endpoint: str, athena, aws_pages, faults) -> None:
    seed_results(endpoint, _readings(2_345))

    result = cli("query", "SELECT * FROM readings", "--output", "json")

    assert result.exit_code == 0, result
    rows = result.json["rows"]
    assert len(rows) == 2_345
    assert [r["seq"] for r in rows] == list(range(2_345))
    assert faults.calls.count(("athena", "GetQueryResults")) == 3
    # 1 header + 999 rows, then 1000, then the last 346: the header is skipped once only.
    assert aws_pages == [1000, 1000, 346]


def test_max_rows_stops_paging(cli, endpoint: str, athena, aws_pages, faults) -> None:
    seed_results(endpoint, _readings(2_345))

    result = cli("query", "SELECT * FROM readings", "--max-rows", "1200", "--output", "json")

    assert result.exit_code == 0, result
    assert len(result.json["rows"]) == 1200
    assert result.json["truncated"] is True
    assert faults.calls.count(("athena", "GetQueryResults")) == 2


def test_sql_from_file_and_stdin(cli, endpoint: str, athena, tmp_path, monkeypatch) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT count(*) FROM readings;\n")
    seed_results(endpoint, _readings(1))
    assert cli("query", "-f", str(sql_file)).exit_code == 0

    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT 1"))
    seed_results(endpoint, _readings(1))
    assert cli("query", "-").exit_code == 0

    queries = [
        athena.get_query_execution(QueryExecutionId=q)["QueryExecution"]["Query"]
        for q in athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    ]
    assert sorted(queries) == ["SELECT 1", "SELECT count(*) FROM readings"]


def test_sql_is_required_once(cli, tmp_path) -> None:
    assert cli("query").exit_code == 2
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT 1")
    assert cli("query", "SELECT 1", "-f", str(sql_file)).exit_code == 2
    assert cli("query", "  ;  ").exit_code == 2


def _execution(state: str, reason: str, scanned: int = 0) -> dict[str, Any]:
    return {
        "QueryExecution": {
            "QueryExecutionId": "injected-query",
            "Query": "SELECT * FROM readings",
            "StatementType": "DML",
            "WorkGroup": WORKGROUP,
            "Status": {"State": state, "StateChangeReason": reason},
            "Statistics": {"DataScannedInBytes": scanned},
        }
    }


def test_failed_query_shows_athenas_reason(cli, endpoint: str, athena, faults) -> None:
    reason = "SYNTAX_ERROR: line 1:15: Table awsdatacatalog.test.readingz does not exist"
    faults.respond("athena", "GetQueryExecution", _execution("FAILED", reason))

    result = cli("query", "SELECT * FROM readingz")

    assert result.exit_code == 1
    assert reason in result.stderr
    assert ("athena", "GetQueryResults") not in faults.calls


def test_query_cancelled_by_the_bytes_scanned_cutoff(cli, endpoint: str, athena, faults) -> None:
    reason = "Query cancelled! : Bytes scanned limit was exceeded"
    faults.respond("athena", "GetQueryExecution", _execution("CANCELLED", reason, 1024**3 + 5))

    result = cli("query", "SELECT * FROM readings")

    assert result.exit_code == 1
    assert "cancelled by workgroup test's per-query data limit" in result.stderr
    assert "bytes_scanned_cutoff_mb" in result.stderr


@pytest.fixture
def queries_keep_running(endpoint: str) -> Iterator[None]:
    """Hold every new Athena query in QUEUED/RUNNING (moto's own state manager)."""
    transition = {"model_name": "athena::execution", "transition": {"progression": "manual"}}
    transition["transition"]["times"] = 1_000_000
    _moto_api(endpoint, "state-manager/set-transition", transition)
    yield
    _moto_api(endpoint, "state-manager/unset-transition", {"model_name": "athena::execution"})


def test_timeout_stops_the_query(cli, athena, queries_keep_running, faults) -> None:
    result = cli("query", "SELECT * FROM readings", "--timeout", "1")

    assert result.exit_code == 1
    assert "stopped in Athena" in result.stderr
    assert ("athena", "StopQueryExecution") in faults.calls
    (query_id,) = athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    state = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
    assert state["State"] == "CANCELLED"


def test_ctrl_c_stops_the_query_and_exits_130(cli, athena, queries_keep_running, faults) -> None:
    polls = {"n": 0}

    def interrupt_third_poll(service: str, client: Any) -> None:
        def before_send(event_name: str, **_: Any) -> None:
            if event_name.endswith(".GetQueryExecution"):
                polls["n"] += 1
                if polls["n"] == 3:
                    raise KeyboardInterrupt

        if service == "athena":
            client.meta.events.register("before-send", before_send)

    remove = add_client_hook(interrupt_third_poll)
    try:
        result = cli("query", "SELECT * FROM readings")
    finally:
        remove()

    assert result.exit_code == 130
    assert "stopped in Athena" in result.stderr
    (query_id,) = athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    state = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Status"]
    assert state["State"] == "CANCELLED"


def test_billing_rounds_up_to_megabytes_with_a_10_mb_minimum() -> None:
    assert billed_bytes(0) == MIN_BILLED_BYTES
    assert billed_bytes(11 * 1024**2 + 1) == 12 * 1024**2
    assert cost_usd(1024**4) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE readings",
        "drop   table\n\treadings",
        "/* SELECT */ DROP TABLE readings",
        "CREATE TABLE copy AS SELECT * FROM readings",
        "WITH r AS (SELECT * FROM readings) INSERT INTO other SELECT * FROM r",
        "INSERT INTO readings VALUES ('x', 1.0, 1)",
        "MSCK REPAIR TABLE readings",
        "ALTER TABLE readings ADD COLUMNS (extra string)",
        "UNLOAD (SELECT * FROM readings) TO 's3://elsewhere/' WITH (format = 'JSON')",
        "EXPLAIN ANALYZE DELETE FROM readings",
        "SELECT * INTO copy FROM readings",
    ],
)
def test_only_read_only_statements_run_without_allow_writes(cli, athena, faults, sql) -> None:
    result = cli("query", sql)

    assert result.exit_code == 2, result
    assert "refusing to run" in result.stderr and "--allow-writes" in result.stderr
    assert faults.calls == []  # refused before any AWS call


def test_comments_in_a_sql_file_do_not_hide_a_write(cli, athena, faults, tmp_path) -> None:
    sql_file = tmp_path / "cleanup.sql"
    sql_file.write_text("-- just a report\n/* SELECT 1 */\nDrop Table readings;\n")

    result = cli("query", "-f", str(sql_file))

    assert result.exit_code == 2, result
    assert "refusing to run a DROP TABLE statement" in result.stderr
    assert faults.calls == []  # refused before any AWS call


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  with r AS (SELECT device_id FROM readings) select * from r  ",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SHOW TABLES",
        "SHOW PARTITIONS readings",
        "DESCRIBE readings",
        "EXPLAIN SELECT count(*) FROM readings",
        "EXPLAIN (FORMAT JSON) SELECT 1",
        "EXPLAIN ANALYZE SELECT 1",
        "/* daily report */ SELECT count(*) FROM readings; -- done",
    ],
)
def test_read_only_statements_run(cli, endpoint: str, athena, sql) -> None:
    seed_results(endpoint, _readings(1))

    assert cli("query", sql).exit_code == 0


def test_a_write_runs_with_allow_writes(cli, endpoint: str, athena) -> None:
    seed_results(endpoint, [])

    result = cli("query", "DROP TABLE scratch", "--allow-writes")

    assert result.exit_code == 0, result
    (query_id,) = athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    sent = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Query"]
    assert sent == "DROP TABLE scratch"


@pytest.mark.parametrize("allow_writes", [False, True])
def test_more_than_one_statement_is_refused(cli, athena, faults, allow_writes) -> None:
    flags = ["--allow-writes"] if allow_writes else []

    result = cli("query", "SELECT 1; DROP TABLE readings", *flags)

    assert result.exit_code == 2, result
    assert "2 SQL statements" in result.stderr
    assert faults.calls == []  # refused before any AWS call


def test_a_semicolon_inside_a_string_or_comment_is_not_a_second_statement(
    cli, endpoint: str, athena
) -> None:
    seed_results(endpoint, _readings(1))

    assert cli("query", "SELECT ';' /* ; */ FROM readings;").exit_code == 0

    (query_id,) = athena.list_query_executions(WorkGroup=WORKGROUP)["QueryExecutionIds"]
    sent = athena.get_query_execution(QueryExecutionId=query_id)["QueryExecution"]["Query"]
    assert sent == "SELECT ';' /* ; */ FROM readings"


def test_an_unterminated_string_is_a_usage_error(cli, athena) -> None:
    result = cli("query", "SELECT 'oops FROM readings")

    assert result.exit_code == 2
    assert "cannot read the SQL" in result.stderr


def test_athena_error_message_is_shown_without_a_state_change_reason(
    cli, endpoint: str, athena, faults
) -> None:
    execution = _execution("FAILED", "")
    status = execution["QueryExecution"]["Status"]
    del status["StateChangeReason"]
    status["AthenaError"] = {"ErrorCategory": 2, "ErrorMessage": "COLUMN_NOT_FOUND: line 1:8"}
    faults.respond("athena", "GetQueryExecution", execution)

    result = cli("query", "SELECT nope FROM readings")

    assert result.exit_code == 1
    assert "COLUMN_NOT_FOUND: line 1:8" in result.stderr


def test_against_the_emulator_it_says_sql_is_not_executed(cli, endpoint: str, athena) -> None:
    seed_results(endpoint, _readings(1))

    result = cli("query", "SELECT * FROM readings")

    assert result.exit_code == 0
    assert f"{endpoint} is not AWS" in result.stderr
    assert "does not execute SQL" in result.stderr
    assert "iotpipe local query" in result.stderr


def test_aws_endpoints_are_told_apart_from_others() -> None:
    assert is_aws_endpoint("https://athena.us-east-1.amazonaws.com")
    assert is_aws_endpoint("https://athena.cn-north-1.amazonaws.com.cn")
    assert is_aws_endpoint("https://athena-fips.us-east-1.api.aws")
    assert not is_aws_endpoint("http://127.0.0.1:4566")
    assert not is_aws_endpoint("http://amazonaws.com.example.org")


WRITES = [
    ["DROP", "TABLE", "readings"],
    ["DELETE", "FROM", "readings"],
    ["INSERT", "INTO", "readings", "SELECT", "*", "FROM", "other"],
    ["CREATE", "TABLE", "copy", "AS", "SELECT", "*", "FROM", "readings"],
    ["ALTER", "TABLE", "readings", "DROP", "COLUMN", "seq"],
    ["MSCK", "REPAIR", "TABLE", "readings"],
    ["EXPLAIN", "ANALYZE", "DROP", "TABLE", "readings"],
]
READS = [
    ["SELECT", "device_id", "FROM", "readings"],
    ["WITH", "r", "AS", "(", "SELECT", "1", ")", "SELECT", "*", "FROM", "r"],
    ["SHOW", "TABLES"],
    ["DESCRIBE", "readings"],
    ["EXPLAIN", "SELECT", "1"],
]
_GAPS = st.one_of(
    st.sampled_from([" ", "\n", "\t", "  \r\n "]),
    st.text("abc ;'*", max_size=8).map(lambda t: f" /*{t.replace('*/', '')}*/ "),
    st.text("abc ;'", max_size=8).map(lambda t: f" --{t}\n"),
)


@st.composite
def _disguised(draw: st.DrawFn, words: list[str]) -> str:
    """The statement with random case, and whitespace or comments between every word."""
    parts = []
    for word in words:
        parts.append(draw(_GAPS))
        parts.append("".join(c.upper() if draw(st.booleans()) else c.lower() for c in word))
    return "".join(parts) + draw(st.sampled_from(["", ";", " ; -- end\n"]))


@settings(max_examples=150, derandomize=True, deadline=None)
@given(st.data())
def test_no_comment_whitespace_or_case_turns_a_write_into_a_read(data: st.DataObject) -> None:
    write = data.draw(_disguised(data.draw(st.sampled_from(WRITES))))
    read = data.draw(_disguised(data.draw(st.sampled_from(READS))))

    assert writing_statement(single_statement(write)) is not None, write
    assert writing_statement(single_statement(read)) is None, read
    with pytest.raises(UsageError, match="2 SQL statements"):
        single_statement(f"{read};{write}")
