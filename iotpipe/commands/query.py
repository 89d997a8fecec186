"""`iotpipe query`: run Athena SQL over the archive and print the rows and what the scan cost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from iotpipe.athena_query import AthenaQuery, describe_scan
from iotpipe.commands.common import get_app
from iotpipe.errors import UsageError


def query(
    ctx: typer.Context,
    sql: Annotated[
        str | None,
        typer.Argument(help='The SQL, or "-" to read it from stdin.', show_default=False),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Read the SQL from this file.", show_default=False),
    ] = None,
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
) -> None:
    """Run SQL in the stack's Athena workgroup; print rows (table/csv/json) and data scanned."""
    app = get_app(ctx)
    text = _read_sql(sql, file)
    out = app.out
    names = app.stack.names
    runner = AthenaQuery(
        app.aws, workgroup=workgroup or names.workgroup, database=database or names.glue_database
    )
    with out.waiting("starting query") as update:
        result = runner.run(
            text,
            timeout_seconds=timeout,
            max_rows=max_rows,
            on_state=lambda state, elapsed: update(f"query {state.lower()} ({elapsed:.0f} s)"),
        )
    if out.json_mode:
        out.data(result.to_dict())
        return
    if out.mode == "csv":
        out.csv_rows(result.columns, result.rows)
    else:
        out.table(result.columns, result.rows)
    shown = f"{len(result.rows):,} row(s)"
    if result.truncated:
        shown += f" (stopped at --max-rows {max_rows})"
    out.info(f"{shown} in {result.seconds:.1f} s; {describe_scan(result)}")


def _read_sql(sql: str | None, file: Path | None) -> str:
    if (sql is None) == (file is None):
        raise UsageError(
            'give the SQL as an argument, "-" for stdin, or -f FILE (exactly one)',
            hint='iotpipe query "SELECT device_id, ts FROM readings LIMIT 10"',
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
    text = text.strip().rstrip(";").strip()
    if not text:
        raise UsageError(f"no SQL in {source}")
    return text


def register(app: typer.Typer) -> None:
    app.command()(query)
