"""The local SQL engine: Athena (Trino) SQL over the archive's GZIP JSON objects with DuckDB."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import duckdb
import pytest

from iotpipe.aws import Aws
from iotpipe.errors import UsageError
from iotpipe.local.sql import duckdb_type, lock_down, run_query, translate
from iotpipe.resources.glue import COLUMNS


def _create_archive_table(aws: Aws, database: str) -> None:
    aws.call("glue", "create_database", resource="g", DatabaseInput={"Name": database})
    aws.call(
        "glue",
        "create_table",
        resource="g",
        DatabaseName=database,
        TableInput={
            "Name": "readings",
            "TableType": "EXTERNAL_TABLE",
            "PartitionKeys": [{"Name": "dt", "Type": "string"}, {"Name": "hour", "Type": "string"}],
            "Parameters": {
                "projection.enabled": "true",
                "storage.location.template": "s3://archive/readings/dt=${dt}/hour=${hour}/",
            },
            "StorageDescriptor": {
                "Columns": [{"Name": n, "Type": t} for n, t in COLUMNS],
                "Location": "s3://archive/readings/",
                "SerdeInfo": {"SerializationLibrary": "org.openx.data.jsonserde.JsonSerDe"},
            },
        },
    )


@pytest.fixture
def aws(endpoint: str) -> Aws:
    aws = Aws(endpoint_url=endpoint, region="us-east-1")
    aws.call("s3", "create_bucket", resource="b", Bucket="archive")
    _create_archive_table(aws, "demo")
    return aws


@pytest.fixture
def stack_archive(aws: Aws) -> Aws:
    """The archive table under the test stack's names too, with one reading: for the CLI."""
    _create_archive_table(aws, "test")
    _archive(aws, "readings/dt=2024-03-09/hour=07/o.gz", [_line("dev-1", 1, 20.0)])
    return aws


def _archive(aws: Aws, key: str, lines: list[dict]) -> None:
    body = gzip.compress("".join(json.dumps(line) + "\n" for line in lines).encode())
    aws.call("s3", "put_object", resource="b", Bucket="archive", Key=key, Body=body)


def _line(device: str, ts: int, temperature: float, extra: dict | None = None) -> dict:
    return {
        "device_id": device,
        "ts": ts,
        "seq": None,
        "received_at": ts + 5,
        "metrics": {"temperature": temperature, "battery": 3.9},
        "extra": extra,
    }


def test_athena_sql_runs_over_the_partitioned_archive(aws: Aws) -> None:
    _archive(
        aws,
        "readings/dt=2024-03-09/hour=07/demo-archive-1-2024-03-09-07-00-00-a.gz",
        [_line("dev-1", 1, 20.0), _line("dev-2", 2, 22.0, {"fw": "1.2"})],
    )
    _archive(
        aws,
        "readings/dt=2024-03-09/hour=08/demo-archive-1-2024-03-09-08-00-00-b.gz",
        [_line("dev-1", 3, 24.0)],
    )
    # Not under the table's root: never read.
    _archive(aws, "quarantine/dt=2024-03-09/x.jsonl.gz", [_line("bad", 0, 0.0)])

    result = run_query(
        aws,
        database="demo",
        table="readings",
        sql="SELECT device_id, count(*) AS readings, avg(element_at(metrics, 'temperature')) "
        "AS avg_temperature, max(hour) AS last_hour FROM demo.readings "
        "WHERE dt = '2024-03-09' GROUP BY device_id ORDER BY device_id",
    )

    assert result.columns == ["device_id", "readings", "avg_temperature", "last_hour"]
    assert result.rows == [["dev-1", 2, 22.0, "08"], ["dev-2", 1, 22.0, "07"]]
    assert result.objects_read == 2 and result.engine.startswith("local")


def test_string_columns_hold_the_json_text_of_nested_values(aws: Aws) -> None:
    _archive(
        aws,
        "readings/dt=2024-03-09/hour=07/o.gz",
        [_line("dev-1", 1, 20.0, {"fw": "1.2"}), _line("dev-2", 1, 20.0)],
    )
    result = run_query(
        aws,
        database="demo",
        table="readings",
        sql="SELECT device_id, extra, metrics['battery'] AS battery FROM readings ORDER BY 1",
    )
    assert result.rows[0][0] == "dev-1" and json.loads(result.rows[0][1]) == {"fw": "1.2"}
    assert result.rows[1][1] is None
    assert result.rows[0][2] == 3.9


def test_an_empty_archive_is_an_empty_table(aws: Aws) -> None:
    result = run_query(
        aws, database="demo", table="readings", sql="SELECT count(*) AS n FROM readings"
    )
    assert result.rows == [[0]]


def test_bad_sql_is_a_usage_error_that_shows_the_translation(aws: Aws) -> None:
    with pytest.raises(UsageError, match="rejected") as caught:
        run_query(aws, database="demo", table="readings", sql="SELECT nope FROM readings")
    assert "translated to DuckDB" in (caught.value.hint or "")


def test_trino_is_translated_to_duckdb() -> None:
    assert "TO_TIMESTAMP" in translate("SELECT from_unixtime(ts / 1000) FROM readings")


def test_glue_types_map_to_duckdb_types() -> None:
    assert duckdb_type("map<string,double>") == "MAP(VARCHAR, DOUBLE)"
    assert duckdb_type("array<struct<a:int,b:string>>") == 'STRUCT("a" INTEGER, "b" VARCHAR)[]'
    with pytest.raises(UsageError):
        duckdb_type("uniontype<int,string>")


def test_local_query_prints_csv_and_json_like_query(cli, endpoint: str) -> None:
    assert cli("up", "--yes").exit_code == 0
    bucket = "test-archive-123456789012-us-east-1"
    body = gzip.compress((json.dumps(_line("d-1", 1_700_000_000_000, 21.5)) + "\n").encode())
    aws = Aws(endpoint_url=endpoint, region="us-east-1")
    aws.call(
        "s3",
        "put_object",
        resource="b",
        Bucket=bucket,
        Key="readings/dt=2023-11-14/hour=22/part-1.gz",
        Body=body,
    )
    sql = "SELECT device_id, json_extract_scalar(metrics, '$.temperature') AS t FROM readings"
    csv = cli("local", "query", sql, "--output", "csv")
    assert csv.exit_code == 0, csv
    assert csv.stdout.splitlines() == ["device_id,t", "d-1,21.5"]
    as_json = cli("local", "query", sql, "-o", "json")
    assert as_json.exit_code == 0, as_json
    assert as_json.json["rows"] == [{"device_id": "d-1", "t": "21.5"}]


def test_local_query_refuses_to_write_a_file(cli, stack_archive, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)

    result = cli("local", "query", "COPY (SELECT * FROM readings) TO 'out.csv'")

    assert result.exit_code == 2, result
    assert "refusing to run a COPY statement" in result.stderr
    assert "read-only" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "iotpipe.toml"]


def test_local_query_cannot_read_a_system_file(cli, stack_archive) -> None:
    result = cli("local", "query", "SELECT * FROM read_csv('/etc/passwd', sep = ':')")

    assert result.exit_code == 2, result
    assert "reads only the archive" in result.stderr
    assert "/etc/passwd" in result.stderr
    assert "root" not in result.stdout + result.stderr.replace("/etc/passwd", "")


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE readings",
        "/* a report */ CREATE TABLE copy AS SELECT * FROM readings",
        "ATTACH 'elsewhere.db'",
        "INSTALL httpfs",
        "SET enable_external_access = true",
        "SELECT 1; SELECT 2",
    ],
)
def test_local_query_runs_only_one_read_only_statement(cli, stack_archive, sql) -> None:
    result = cli("local", "query", sql)

    assert result.exit_code == 2, result
    assert "refusing to run" in result.stderr or "2 SQL statements" in result.stderr


@pytest.mark.parametrize("sql", ["", "   ", ";", "/* nothing */"])
def test_local_query_without_sql_is_a_usage_error(cli, sql) -> None:
    result = cli("local", "query", sql)

    assert result.exit_code == 2, result
    assert "no SQL" in result.stderr
    assert "Traceback" not in result.stderr


def test_local_query_reads_sql_from_stdin_and_from_a_file(
    cli, stack_archive, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT count(*) AS n FROM readings"))
    from_stdin = cli("local", "query", "-", "-o", "json")
    assert from_stdin.exit_code == 0, from_stdin
    assert from_stdin.json["rows"] == [{"n": 1}]

    sql_file = tmp_path / "report.sql"
    sql_file.write_text("-- devices\nSELECT device_id FROM readings;\n")
    from_file = cli("local", "query", "--file", str(sql_file), "-o", "json")
    assert from_file.exit_code == 0, from_file
    assert from_file.json["rows"] == [{"device_id": "dev-1"}]


def test_show_describe_and_explain_run_locally(stack_archive) -> None:
    for sql in ("SHOW TABLES", "DESCRIBE readings", "EXPLAIN SELECT count(*) FROM readings"):
        result = run_query(stack_archive, database="test", table="readings", sql=sql)
        assert result.rows, sql


def test_a_locked_down_connection_touches_no_file_even_if_asked(tmp_path: Path) -> None:
    connection = duckdb.connect(":memory:")
    connection.execute("CREATE TABLE readings AS SELECT 1 AS n")
    lock_down(connection, spill_directory=tmp_path / "spill")
    target = tmp_path / "out.csv"

    with pytest.raises(duckdb.PermissionException):
        connection.execute(f"COPY readings TO '{target}'")
    with pytest.raises(duckdb.PermissionException):
        connection.execute("SELECT * FROM read_text('/etc/passwd')")
    with pytest.raises(duckdb.Error, match="locked"):
        connection.execute("SET enable_external_access = true")
    assert not target.exists()
    assert connection.execute("SELECT n FROM readings").fetchall() == [(1,)]
