"""Running one Athena query to the end: start, poll with backoff, page through every result row.

Athena bills $5 per TB scanned, rounded up to the megabyte with a 10 MB minimum per query
(failed queries are free; cancelled ones pay for what they scanned). A query that outlives the
caller (Ctrl-C, --timeout) is stopped in Athena so it stops scanning, and billing.

The workgroup is shared: a `DROP TABLE readings` run through it drops the Glue table for everyone.
So a statement is read by sqlglot (the tokens and the syntax tree, never a pattern over the text,
so comments, case and whitespace change nothing) and only one read-only statement runs unless the
caller allows writes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from iotpipe.errors import IotpipeError, UsageError
from iotpipe.permissions import Grant, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.naming import Names

PRICE_PER_TB_USD = 5.0
BYTES_PER_TB = 1024**4
MIN_BILLED_BYTES = 10 * 1024**2
PAGE_SIZE = 1000  # GetQueryResults' maximum
POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
DONE_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})

# The statements that only read (Athena's SQL reference: SELECT, WITH, SHOW, DESCRIBE, EXPLAIN).
READ_ONLY_STATEMENTS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "EXPLAIN")
# Athena's own dialect in sqlglot: Trino for queries, Hive for DDL (SHOW, CREATE, MSCK, ...).
SQL_DIALECT = "athena"
# Host suffixes of AWS's endpoints (commercial, China, dual-stack, GovCloud's ISO partitions).
_AWS_ENDPOINT_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn", ".api.aws", ".c2s.ic.gov")

_INTEGER_TYPES = frozenset({"tinyint", "smallint", "integer", "int", "bigint"})
_FLOAT_TYPES = frozenset({"float", "real", "double"})


class QueryFailed(IotpipeError):
    """Athena ran the query and it did not succeed (failed, cancelled, timed out)."""


class QueryInterrupted(IotpipeError):
    """Ctrl-C: the query was stopped in Athena."""

    exit_code = 130


def _tokens(sql: str) -> list[Any]:
    from sqlglot.dialects.dialect import Dialect
    from sqlglot.errors import TokenError
    from sqlglot.tokens import TokenType

    try:
        tokens = Dialect.get_or_raise(SQL_DIALECT).tokenize(sql)
    except TokenError as exc:
        raise UsageError(
            f"cannot read the SQL: {exc}", hint="check that every quote and comment is closed"
        ) from None
    # The Athena dialect marks where Hive syntax starts with a token of no text.
    marker = getattr(TokenType, "HIVE_TOKEN_STREAM", None)
    return [t for t in tokens if t.token_type != marker]


def single_statement(sql: str) -> str:
    """`sql` as one statement: comments and trailing semicolons allowed, a second statement not.

    Returns the statement's text, cut at its terminating semicolon.
    """
    from sqlglot.tokens import TokenType

    statements, inside, begin, end = 0, False, 0, None
    for token in _tokens(sql):
        if token.token_type == TokenType.SEMICOLON:
            if statements == 0:
                begin = token.end + 1
            elif inside and end is None:
                end = token.start
            inside = False
        elif not inside:
            statements, inside = statements + 1, True
    if statements == 0:
        raise UsageError("no SQL statement: the text holds only comments or semicolons")
    if statements > 1:
        raise UsageError(
            f"{statements} SQL statements: give one statement at a time",
            hint="Athena runs one statement per query; run each on its own",
        )
    return sql[begin:end].strip()


def _article(keyword: str) -> str:
    spoken_with_a_vowel = keyword[:1] in "AEIO" or keyword.startswith(("UN", "UPDATE"))
    return f"an {keyword}" if spoken_with_a_vowel else f"a {keyword}"


def _explained(tokens: list[Any]) -> str:
    """The statement an EXPLAIN is about: its text after ANALYZE, VERBOSE or `(options)`."""
    # sqlglot reads EXPLAIN as a command: the rest of the statement is one token of raw text.
    rest = tokens[1].text if len(tokens) > 1 else ""
    inner = _tokens(rest)
    index = 0
    while index < len(inner) and inner[index].text.upper() in ("ANALYZE", "VERBOSE"):
        index += 1
    options = (
        index + 1 < len(inner)
        and inner[index].text == "("
        and inner[index + 1].text.upper() not in ("SELECT", "WITH", "(")
    )
    if options:
        depth = 1
        index += 1
        while index < len(inner) and depth:
            depth += {"(": 1, ")": -1}.get(inner[index].text, 0)
            index += 1
    return rest[inner[index].start :] if index < len(inner) else ""


def writing_statement(sql: str) -> str | None:
    """What `sql` (one statement) is when it is not read-only, e.g. "a DROP TABLE statement";
    None for SELECT, WITH ... SELECT, SHOW, DESCRIBE and EXPLAIN of a read-only statement."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError

    tokens = _tokens(sql)
    if not tokens:
        return None
    first = tokens[0].text.upper()
    if first in ("SHOW", "DESCRIBE", "DESC"):
        return None
    if first == "EXPLAIN":
        explained = _explained(tokens)
        inner = writing_statement(explained) if explained else None
        return f"an EXPLAIN of {inner}" if inner else None
    # sqlglot warns on stderr when it falls back to reading a statement as a bare command.
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    try:
        tree = sqlglot.parse_one(sql, read=SQL_DIALECT)
    except ParseError as exc:
        return f"a statement the SQL parser cannot read ({str(exc).splitlines()[0]})"
    writes = (exp.DDL, exp.DML, exp.Drop, exp.Alter, exp.Into, exp.Command, exp.TruncateTable)
    if isinstance(tree, exp.Query):
        inside = tree.find(*writes)
        if inside is None:
            return None
        if isinstance(inside, exp.Into):
            return "a SELECT ... INTO statement"
        return f"a query holding {_article(inside.key.upper())} statement"
    if isinstance(tree, exp.Command):
        return f"{_article(str(tree.this).upper())} statement"
    # Named as written (sqlglot reads some statements of other dialects as something else),
    # except after WITH, where the statement that follows is the one that writes.
    keyword = tree.key.upper() if first == "WITH" else first
    kind = tree.args.get("kind")
    if isinstance(kind, str) and kind:
        keyword += f" {kind.upper()}"
    return f"{_article(keyword)} statement"


def is_aws_endpoint(url: str) -> bool:
    """True when `url` is one of AWS's own endpoints (not an emulator or a proxy)."""
    host = (urlsplit(url).hostname or "").lower()
    return host.endswith(_AWS_ENDPOINT_SUFFIXES)


def billed_bytes(scanned: int) -> int:
    """What Athena bills for a query that scanned `scanned` bytes: whole MB, 10 MB minimum."""
    megabytes = math.ceil(scanned / 1024**2)
    return max(megabytes * 1024**2, MIN_BILLED_BYTES)


def cost_usd(scanned: int) -> float:
    return billed_bytes(scanned) / BYTES_PER_TB * PRICE_PER_TB_USD


@dataclass
class QueryResult:
    query_id: str
    columns: list[str]
    types: list[str]
    rows: list[list[str | None]] = field(default_factory=list)
    bytes_scanned: int = 0
    truncated: bool = False
    pages: int = 0
    seconds: float = 0.0

    @property
    def cost_usd(self) -> float:
        return cost_usd(self.bytes_scanned)

    def records(self) -> list[dict[str, Any]]:
        """Rows as objects with values typed by their Athena column types (for JSON)."""
        typed = list(zip(self.columns, self.types, strict=True))
        return [
            {name: _typed(value, kind) for (name, kind), value in zip(typed, row, strict=False)}
            for row in self.rows
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query_execution_id": self.query_id,
            "columns": [
                {"name": n, "type": t} for n, t in zip(self.columns, self.types, strict=True)
            ],
            "rows": self.records(),
            "row_count": len(self.rows),
            "truncated": self.truncated,
            "data_scanned_bytes": self.bytes_scanned,
            "billed_bytes": billed_bytes(self.bytes_scanned),
            "cost_usd": round(self.cost_usd, 6),
            "seconds": round(self.seconds, 2),
        }


def _typed(value: str | None, kind: str) -> Any:
    if value is None:
        return None
    try:
        if kind in _INTEGER_TYPES:
            return int(value)
        if kind in _FLOAT_TYPES:
            return float(value)
    except ValueError:
        return value
    if kind == "boolean":
        return value.lower() == "true"
    return value


class AthenaQuery:
    """One query in one workgroup and database."""

    def __init__(self, aws: Aws, *, workgroup: str, database: str) -> None:
        self.aws = aws
        self.workgroup = workgroup
        self.database = database
        self.label = f"athena.workgroup {workgroup}"
        # Poll sleeps follow the retry policy's scale (tests shorten them).
        self._scale = aws.policy.base_seconds / 0.5

    @property
    def endpoint_url(self) -> str:
        """Where the queries go: AWS's Athena endpoint, or the one given to the SDK."""
        return str(self.aws.client("athena").meta.endpoint_url)

    def run(
        self,
        sql: str,
        *,
        timeout_seconds: float | None = None,
        max_rows: int | None = None,
        on_state: Callable[[str, float], None] | None = None,
    ) -> QueryResult:
        started = time.monotonic()
        query_id = self.aws.call(
            "athena",
            "start_query_execution",
            resource=self.label,
            QueryString=sql,
            WorkGroup=self.workgroup,
            QueryExecutionContext={"Catalog": "AwsDataCatalog", "Database": self.database},
        )["QueryExecutionId"]
        try:
            execution = self._wait(query_id, started, timeout_seconds, on_state)
            result = self._check(execution)
            self._fetch(result, execution, max_rows)
        except KeyboardInterrupt:
            self._stop(query_id)
            raise QueryInterrupted(f"interrupted: query {query_id} was stopped in Athena") from None
        result.seconds = time.monotonic() - started
        return result

    def _wait(
        self,
        query_id: str,
        started: float,
        timeout_seconds: float | None,
        on_state: Callable[[str, float], None] | None,
    ) -> dict[str, Any]:
        attempt = 0
        while True:
            execution = self.aws.call(
                "athena", "get_query_execution", resource=self.label, QueryExecutionId=query_id
            )["QueryExecution"]
            state = execution["Status"]["State"]
            elapsed = time.monotonic() - started
            if on_state:
                on_state(state, elapsed)
            if state in DONE_STATES:
                return execution
            if timeout_seconds is not None and elapsed >= timeout_seconds:
                self._stop(query_id)
                raise QueryFailed(
                    f"query {query_id} still {state} after {timeout_seconds:g} s; "
                    "stopped in Athena",
                    hint="raise --timeout, or narrow the query with a partition filter "
                    "(WHERE dt = 'YYYY-MM-DD')",
                )
            delay = min(POLL_FIRST_SECONDS * 1.5 ** min(attempt, 10), POLL_MAX_SECONDS)
            self.aws.policy.sleep(delay * self._scale)
            attempt += 1

    def _stop(self, query_id: str) -> None:
        self.aws.call(
            "athena", "stop_query_execution", resource=self.label, QueryExecutionId=query_id
        )

    def _check(self, execution: dict[str, Any]) -> QueryResult:
        query_id = execution["QueryExecutionId"]
        status = execution["Status"]
        scanned = int(execution.get("Statistics", {}).get("DataScannedInBytes", 0) or 0)
        reason = status.get("StateChangeReason") or status.get("AthenaError", {}).get(
            "ErrorMessage", "no reason given"
        )
        if status["State"] == "FAILED":
            raise QueryFailed(f"query {query_id} failed: {reason}", hint=_failure_hint(reason))
        if status["State"] == "CANCELLED":
            if _is_cutoff(reason):
                raise QueryFailed(
                    f"query {query_id} was cancelled by workgroup {self.workgroup}'s per-query "
                    f"data limit after scanning {_size(scanned)}: {reason}",
                    hint="narrow the query with a partition filter (WHERE dt = 'YYYY-MM-DD'), "
                    "or raise [catalog] bytes_scanned_cutoff_mb and run `iotpipe up`",
                )
            raise QueryFailed(f"query {query_id} was cancelled: {reason}")
        return QueryResult(query_id=query_id, columns=[], types=[], bytes_scanned=scanned)

    def _fetch(self, result: QueryResult, execution: dict[str, Any], max_rows: int | None) -> None:
        # SELECT results start with a header row on the first page; DDL results have none.
        skip_header = execution.get("StatementType", "DML") == "DML"
        for page in self.aws.pages(
            "athena",
            "get_query_results",
            resource=self.label,
            QueryExecutionId=result.query_id,
            MaxResults=PAGE_SIZE,
        ):
            result.pages += 1
            result_set = page.get("ResultSet", {})
            if result.pages == 1:
                info = result_set.get("ResultSetMetadata", {}).get("ColumnInfo", [])
                result.columns = [c.get("Label") or c["Name"] for c in info]
                result.types = [c.get("Type", "varchar").lower() for c in info]
            rows = result_set.get("Rows", [])
            if result.pages == 1 and skip_header and rows:
                rows = rows[1:]
            for row in rows:
                if max_rows is not None and len(result.rows) >= max_rows:
                    result.truncated = True
                    return
                result.rows.append([cell.get("VarCharValue") for cell in row.get("Data", [])])
            if not page.get("NextToken"):
                return
            if max_rows is not None and len(result.rows) >= max_rows:
                result.truncated = True
                return


def _is_cutoff(reason: str) -> bool:
    text = reason.lower()
    return "bytes scanned" in text or "limit" in text


def _failure_hint(reason: str) -> str | None:
    text = reason.lower()
    if "table" in text and ("not found" in text or "does not exist" in text):
        return "the table appears once `iotpipe up` has created the Glue catalog"
    if "syntax" in text or "mismatched input" in text:
        return "check the SQL (Athena speaks Trino SQL)"
    return None


def _size(count: int) -> str:
    for unit, size in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= size:
            return f"{count / size:,.1f} {unit}"
    return f"{count} bytes"


def describe_scan(result: QueryResult) -> str:
    """One line: data scanned and what Athena bills for it."""
    note = (
        " (Athena bills at least 10 MB per query)"
        if result.bytes_scanned < MIN_BILLED_BYTES
        else ""
    )
    return (
        f"data scanned: {_size(result.bytes_scanned)}; cost ${result.cost_usd:.6f} "
        f"at ${PRICE_PER_TB_USD:g} per TB{note}"
    )


def grants(names: Names) -> list[Grant]:
    """`iotpipe query`: the Athena calls, and what Athena checks the caller may do on the
    caller's behalf while it runs the query (Athena user guide, "Identity and access
    management in Athena": the catalog's database and table, reading the archive, writing the
    results under the workgroup's output location)."""
    bucket = names.archive_bucket_arn
    catalog = [names.glue_catalog_arn, names.glue_database_arn, names.glue_table_arn]
    return [
        writes(
            [
                "athena:StartQueryExecution",
                "athena:GetQueryExecution",
                "athena:GetQueryResults",
                "athena:StopQueryExecution",
            ],
            names.workgroup_arn,
        ),
        reads(["glue:GetDatabase", "glue:GetTable"], catalog),
        reads(["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"], bucket),
        reads(
            ["s3:GetObject"],
            f"{bucket}/{names.archive_prefix}*",
            why="the archived readings, under their key prefix",
        ),
        writes(
            [
                "s3:GetObject",
                "s3:PutObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
            f"{bucket}/{names.athena_results_prefix}*",
            why="the query results, under the workgroup's output prefix",
        ),
    ]
