"""`iotpipe query`: run Athena SQL over the archive and print the rows and what the scan cost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from iotpipe.athena_query import (
    READ_ONLY_STATEMENTS,
    AthenaQuery,
    describe_scan,
    is_aws_endpoint,
    single_statement,
    writing_statement,
)
from iotpipe.commands.common import get_app
from iotpipe.errors import UsageError

SqlArgument = Annotated[
    str | None,
    typer.Argument(help='The SQL, or "-" to read it from stdin.', show_default=False),
]
SqlFileOption = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="Read the SQL from this file.", show_default=False),
]


def query(
    ctx: typer.Context,
    sql: SqlArgument = None,
    file: SqlFileOption = None,
    workgroup: Annotated[
        str | None, typer.Option(help="Athena workgroup (default: the stack's).")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="Glue database (default: the stack's).")
    ] = None,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", min=1, help="Print at most this many rows.")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=1, help="Stop the query in Athena after this many seconds."),
    ] = None,
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Also run a statement that changes tables or data (CREATE, DROP, INSERT, MSCK "
            "REPAIR, ...); without it only read-only statements run.",
        ),
    ] = False,
) -> None:
    """Run one SQL statement in the stack's Athena workgroup; print rows (table/csv/json) and
    data scanned. Only read-only statements (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN) run unless
    --allow-writes is given: the workgroup and its tables are shared."""
    app = get_app(ctx)
    text = read_sql(sql, file)
    # Refused before any AWS call: the workgroup and its tables are everyone's.
    if not allow_writes and (kind := writing_statement(text)):
        raise UsageError(
            f"refusing to run {kind}: `iotpipe query` runs only read-only statements "
            f"({', '.join(READ_ONLY_STATEMENTS)}) unless --allow-writes is given",
            hint="to change the catalog or the data for everyone who uses the workgroup, "
            "add --allow-writes",
        )
    out = app.out
    names = app.stack.names
    runner = AthenaQuery(
        app.aws, workgroup=workgroup or names.workgroup, database=database or names.glue_database
    )
    if not is_aws_endpoint(runner.endpoint_url):
        out.warn(
            f"{runner.endpoint_url} is not AWS: an emulator such as moto (`iotpipe local serve`, "
            "`iotpipe demo`) stores Athena queries but does not execute SQL, so what follows is "
            "not computed from the archive; `iotpipe local query` runs the same SQL over the "
            "emulator's archive with a local engine"
        )
    with out.waiting("starting query") as update:
        result = runner.run(
            text,
            timeout_seconds=timeout,
            max_rows=max_rows,
            on_state=lambda state, elapsed: update(f"query {state.lower()} ({elapsed:.0f} s)"),
        )
    if not out.query_result(result):
        return
    shown = f"{len(result.rows):,} row(s)"
    if result.truncated:
        shown += f" (stopped at --max-rows {max_rows})"
    out.info(f"{shown} in {result.seconds:.1f} s; {describe_scan(result)}")


def read_sql(sql: str | None, file: Path | None, *, command: str = "iotpipe query") -> str:
    """The one SQL statement given as an argument, on stdin (`-`) or in a file (-f)."""
    example = f'{command} "SELECT device_id, ts FROM readings LIMIT 10"'
    if (sql is None) == (file is None):
        raise UsageError(
            'give the SQL as an argument, "-" for stdin, or -f FILE (exactly one)', hint=example
        )
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read SQL file {file}: {exc}") from None
        source = str(file)
    elif sql == "-":
        text, source = sys.stdin.read(), "stdin"
    else:
        text, source = sql or "", "the argument"
    if not text.strip():
        raise UsageError(f"no SQL in {source}", hint=example)
    return single_statement(text)


def register(app: typer.Typer) -> None:
    app.command()(query)
