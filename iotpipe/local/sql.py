"""Athena, locally: DuckDB over the archived objects, with the Trino SQL translated by sqlglot.

The emulator stores Athena queries but never runs them. This engine reads the Glue table as `up`
declared it (columns, partition keys, the archive location template), copies the archive's objects
from the emulator's S3 into a temporary directory (local files: no DuckDB extension to download),
and exposes them as the view `readings` (also `<glue database>.readings`) with the table's columns
and its partition columns `dt` and `hour` taken from the object paths (Hive partitioning), as
Athena does with partition projection. The SQL is translated from Trino to DuckDB by sqlglot;
results are DuckDB's, labelled as local wherever they are shown.

The engine reads the archive and nothing else: only one read-only statement is accepted (read by
sqlglot, as `iotpipe query` reads it), and once the archive is loaded into its in-memory tables
DuckDB is locked down as its "Securing DuckDB" guide describes: no file or network access, no
extension loading, no Python variables as tables, and the configuration locked so no statement
can undo it.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotpipe.athena_query import (
    READ_ONLY_STATEMENTS,
    SQL_DIALECT,
    single_statement,
    writing_statement,
)
from iotpipe.errors import AwsError, UsageError

if TYPE_CHECKING:
    from iotpipe.aws import Aws

_SIMPLE_TYPES = {
    "string": "VARCHAR",
    "varchar": "VARCHAR",
    "char": "VARCHAR",
    "bigint": "BIGINT",
    "int": "INTEGER",
    "integer": "INTEGER",
    "smallint": "SMALLINT",
    "tinyint": "TINYINT",
    "double": "DOUBLE",
    "float": "FLOAT",
    "boolean": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
    "binary": "BLOB",
}


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "<(":
            depth += 1
        elif char in ">)":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def duckdb_type(hive: str) -> str:
    """The DuckDB type for a Glue (Hive) column type."""
    kind = hive.strip().lower()
    if kind in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[kind]
    if match := re.fullmatch(r"(varchar|char)\(\d+\)", kind):
        return "VARCHAR"
    if match := re.fullmatch(r"decimal\((\d+),\s*(\d+)\)", kind):
        return f"DECIMAL({match[1]},{match[2]})"
    if match := re.fullmatch(r"map<(.+)>", kind):
        key, value = _split_top_level(match[1])
        return f"MAP({duckdb_type(key)}, {duckdb_type(value)})"
    if match := re.fullmatch(r"array<(.+)>", kind):
        return f"{duckdb_type(match[1])}[]"
    if match := re.fullmatch(r"struct<(.+)>", kind):
        fields = []
        for part in _split_top_level(match[1]):
            name, _, inner = part.partition(":")
            fields.append(f'"{name.strip()}" {duckdb_type(inner)}')
        return f"STRUCT({', '.join(fields)})"
    raise UsageError(f"Glue column type {hive!r} is not supported by the local SQL engine")


@dataclass(frozen=True)
class TableSpec:
    database: str
    table: str
    columns: list[tuple[str, str]]
    partition_keys: list[tuple[str, str]]
    bucket: str
    prefix: str
    serde: str

    @classmethod
    def from_glue(cls, database: str, table: dict[str, Any]) -> TableSpec:
        """From a GetTable response's Table."""
        storage = table.get("StorageDescriptor") or {}
        parameters = table.get("Parameters") or {}
        location = parameters.get("storage.location.template") or storage.get("Location", "")
        match = re.match(r"s3://([^/]+)/(.*)", location)
        if not match:
            raise UsageError(f"Glue table {database}.{table['Name']}: no S3 location")
        # The part of the location before its first partition directory is the table's root.
        prefix = re.split(r"[^/]*\$\{", match[2], maxsplit=1)[0]
        return cls(
            database=database,
            table=table["Name"],
            columns=[(c["Name"], c["Type"]) for c in storage.get("Columns", [])],
            partition_keys=[(c["Name"], c["Type"]) for c in table.get("PartitionKeys", [])],
            bucket=match[1],
            prefix=prefix,
            serde=(storage.get("SerdeInfo") or {}).get("SerializationLibrary", ""),
        )


@dataclass
class LocalQueryResult:
    sql: str
    translated: str
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    objects_read: int
    bytes_read: int
    seconds: float = 0.0
    engine: str = field(default="local (DuckDB)")

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "sql": self.sql,
            "translated_sql": self.translated,
            "columns": [
                {"name": n, "type": t} for n, t in zip(self.columns, self.types, strict=True)
            ],
            "rows": self.records(),
            "row_count": len(self.rows),
            "objects_read": self.objects_read,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 2),
        }


# Run in this order once the archive is loaded; the last one makes every setting final.
LOCKDOWN = (
    "SET python_enable_replacements = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET allow_community_extensions = false",
    "SET enable_external_access = false",
    "SET lock_configuration = true",
)


def lock_down(connection: Any, *, spill_directory: Path) -> None:
    """Close DuckDB to the filesystem, the network and extensions for good.

    What a query needs beyond memory spills to `spill_directory` (the engine's own temporary
    directory), set before the configuration is locked.
    """
    connection.execute(f"SET temp_directory = '{spill_directory.as_posix()}'")
    for setting in LOCKDOWN:
        connection.execute(setting)


def check_read_only(sql: str) -> str:
    """The one statement in `sql` if it only reads; UsageError (exit 2) otherwise."""
    statement = single_statement(sql)
    kind = writing_statement(statement)
    if kind:
        raise UsageError(
            f"refusing to run {kind}: the local SQL engine runs only read-only statements "
            f"({', '.join(READ_ONLY_STATEMENTS)})",
            hint="it answers queries over the archive; it changes nothing and writes no file",
        )
    return statement


def translate(sql: str) -> str:
    """Trino (Athena engine v3) SQL in DuckDB's dialect."""
    import sqlglot
    from sqlglot.errors import ParseError

    try:
        statements = sqlglot.transpile(sql, read=SQL_DIALECT, write="duckdb")
    except ParseError as exc:
        raise UsageError(f"cannot parse the SQL: {exc}") from None
    if len(statements) != 1:
        raise UsageError("give exactly one SQL statement")
    return statements[0]


class LocalSql:
    """The archive of one stack, queryable with Athena SQL."""

    def __init__(self, aws: Aws, spec: TableSpec, workdir: Path) -> None:
        self.aws = aws
        self.spec = spec
        self.workdir = workdir

    @classmethod
    def from_emulator(cls, aws: Aws, database: str, table: str, workdir: Path) -> LocalSql:
        found = aws.call(
            "glue",
            "get_table",
            resource=f"Glue table {database}.{table}",
            missing=("EntityNotFoundException",),
            DatabaseName=database,
            Name=table,
        )
        if found is None:
            raise AwsError(
                "not found", resource=f"Glue table {database}.{table}", hint="run `iotpipe up`"
            )
        spec = TableSpec.from_glue(database, found["Table"])
        if "parquet" in spec.serde.lower():
            raise UsageError(
                "the local SQL engine reads the GZIP JSON archive; this table is Parquet",
                hint='use [archive] format = "gzip" for the demo and local serve',
            )
        return cls(aws, spec, workdir)

    def _fetch(self) -> tuple[int, int]:
        """Copy the archive's objects under the table's root into the work directory."""
        spec = self.spec
        resource = f"bucket {spec.bucket}"
        count = size = 0
        for item in self.aws.paginate(
            "s3",
            "list_objects_v2",
            resource=resource,
            key="Contents",
            Bucket=spec.bucket,
            Prefix=spec.prefix,
        ):
            target = self.workdir / item["Key"]
            if target.exists() and target.stat().st_size == item["Size"]:
                count, size = count + 1, size + item["Size"]
                continue
            body = self.aws.call(
                "s3", "get_object", resource=resource, Bucket=spec.bucket, Key=item["Key"]
            )["Body"].read()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            count, size = count + 1, size + len(body)
        return count, size

    def _view_sql(self, has_objects: bool) -> str:
        spec = self.spec
        selected = []
        json_columns = {}
        for name, hive in spec.columns:
            duck = duckdb_type(hive)
            if duck == "VARCHAR":
                # The JSON SerDe gives a string column the JSON text of a nested value.
                json_columns[name] = "JSON"
                selected.append(
                    f"CASE WHEN json_type(\"{name}\") = 'VARCHAR' "
                    f"THEN json_extract_string(\"{name}\", '$') "
                    f'ELSE CAST("{name}" AS VARCHAR) END AS "{name}"'
                )
            else:
                json_columns[name] = duck
                selected.append(f'"{name}"')
        partitions = [(n, duckdb_type(t)) for n, t in spec.partition_keys]
        if not has_objects:
            casts = [f'CAST(NULL AS {duckdb_type(t)}) AS "{n}"' for n, t in spec.columns]
            casts += [f'CAST(NULL AS {t}) AS "{n}"' for n, t in partitions]
            return f"SELECT {', '.join(casts)} WHERE false"
        root = (self.workdir / spec.prefix).as_posix().rstrip("/")
        pattern = root + "/*" * len(partitions) + "/*"
        column_types = ", ".join(f"'{n}': '{t}'" for n, t in json_columns.items())
        hive_types = ", ".join(f"'{n}': '{t}'" for n, t in partitions)
        selected += [f'"{n}"' for n, _ in partitions]
        return (
            f"SELECT {', '.join(selected)} FROM read_json('{pattern}', "
            "format='newline_delimited', compression='auto', "
            f"hive_partitioning={'true' if partitions else 'false'}, "
            + (f"hive_types={{{hive_types}}}, " if partitions else "")
            + f"columns={{{column_types}}})"
        )

    def _open(self, has_objects: bool) -> Any:
        """An in-memory database holding the archive as tables, locked down."""
        import duckdb

        spec = self.spec
        connection = duckdb.connect(":memory:")
        connection.execute("SET TimeZone = 'UTC'")
        # Tables, not views over the files: once loaded, nothing needs the filesystem.
        connection.execute(f'CREATE TABLE "{spec.table}" AS {self._view_sql(has_objects)}')
        connection.execute(f'CREATE SCHEMA "{spec.database}"')
        connection.execute(
            f'CREATE VIEW "{spec.database}"."{spec.table}" AS SELECT * FROM main."{spec.table}"'
        )
        lock_down(connection, spill_directory=self.workdir / "spill")
        return connection

    def run(self, sql: str, *, max_rows: int | None = None) -> LocalQueryResult:
        import duckdb

        started = time.monotonic()
        statement = check_read_only(sql)
        translated = translate(statement)
        objects, size = self._fetch()
        connection = self._open(objects > 0)
        try:
            try:
                cursor = connection.execute(translated)
            except duckdb.PermissionException as exc:
                raise UsageError(
                    "the local SQL engine reads only the archive: "
                    + str(exc).splitlines()[0].removeprefix("Permission Error: "),
                    hint=f"query the table {self.spec.table} (or {self.spec.database}."
                    f"{self.spec.table}); files, the network and extensions are closed to it",
                ) from None
            except duckdb.Error as exc:
                raise UsageError(
                    f"the local SQL engine rejected the query: {exc}".splitlines()[0],
                    hint=f"translated to DuckDB as: {translated}",
                ) from None
            columns = [d[0] for d in cursor.description or []]
            types = [str(d[1]).lower() for d in cursor.description or []]
            rows = cursor.fetchmany(max_rows) if max_rows else cursor.fetchall()
        finally:
            connection.close()
        return LocalQueryResult(
            sql=statement,
            translated=translated,
            columns=columns,
            types=types,
            rows=[list(row) for row in rows],
            objects_read=objects,
            bytes_read=size,
            seconds=time.monotonic() - started,
        )


def run_query(
    aws: Aws, *, database: str, table: str, sql: str, max_rows: int | None = None
) -> LocalQueryResult:
    """Run Athena SQL against a stack's archive in the emulator, with the local engine."""
    with tempfile.TemporaryDirectory(prefix="iotpipe-sql-") as workdir:
        engine = LocalSql.from_emulator(aws, database, table, Path(workdir))
        return engine.run(sql, max_rows=max_rows)
