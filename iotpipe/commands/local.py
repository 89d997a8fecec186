"""`iotpipe local ...`: the embedded emulator and its data plane, for interactive use."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.commands.query import SqlFileOption, read_sql

local_app = typer.Typer(
    name="local",
    help="Run the pipeline on an embedded AWS emulator (needs the `local` extra).",
    no_args_is_help=True,
)


@local_app.command()
def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1 (0: any).")] = 4566,
) -> None:
    """Start the emulator; once `up` has run against it, run the data plane until Ctrl-C."""
    from iotpipe.local.demo import require_local_extra
    from iotpipe.local.serve import LocalServer

    require_local_extra()
    app = get_app(ctx)
    out = app.out
    stop = threading.Event()
    with LocalServer(
        app.config, port=port, on_event=lambda text: out.err.print(f"• {text}")
    ) as server:
        out.info(f"emulator listening on {server.endpoint_url}")
        out.info(f"export AWS_ENDPOINT_URL={server.endpoint_url}")
        out.info(
            "then: iotpipe up --yes; iotpipe devices register --count 5 --out-dir devices; "
            'iotpipe simulate --devices-dir devices; iotpipe local query "SELECT ..."'
        )
        try:
            server.run(stop)
        except KeyboardInterrupt:
            out.info("stopping")


@local_app.command("query")
def query(
    ctx: typer.Context,
    sql: Annotated[
        str | None,
        typer.Argument(
            help='Athena (Trino) SQL over the stack\'s archive, or "-" to read it from stdin.',
            show_default=False,
        ),
    ] = None,
    file: SqlFileOption = None,
    max_rows: Annotated[int | None, typer.Option("--max-rows", min=1)] = None,
) -> None:
    """Run Athena SQL over the archive in the emulator with the local engine (DuckDB); rows as
    a table, csv or json (`--output`), like `iotpipe query`. Read-only statements only (SELECT,
    WITH, SHOW, DESCRIBE, EXPLAIN); the engine reads no file and reaches no network."""
    from iotpipe.local.demo import require_local_extra
    from iotpipe.local.sql import check_read_only, run_query

    text = check_read_only(read_sql(sql, file, command="iotpipe local query"))
    require_local_extra()
    app = get_app(ctx)
    names = app.stack.names
    result = run_query(
        app.aws, database=names.glue_database, table=names.glue_table, sql=text, max_rows=max_rows
    )
    out = app.out
    if out.json_mode:
        out.data(result.to_dict())
        return
    if out.mode == "csv":
        out.csv_rows(result.columns, result.rows)
    else:
        out.table(result.columns, result.rows, title=f"{result.engine}")
    out.info(
        f"{len(result.rows):,} row(s) in {result.seconds:.1f} s; read {result.objects_read} "
        f"object(s), {result.bytes_read:,} bytes (local engine: no Athena charge applies)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(local_app)
