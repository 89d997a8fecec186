"""`iotpipe local ...`: the embedded emulator and its data plane, for interactive use."""

from __future__ import annotations

import shlex
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
    """Start the emulator and run the stack's data plane in it until Ctrl-C: it starts once `up`
    has run against it, follows later `up`s (and a `down`), and says when Firehose delivers.
    Runs on the default config until the --config file exists. Exits 1 at once when the port is
    taken."""
    from iotpipe.local.demo import require_local_extra
    from iotpipe.local.serve import LocalServer, follow_config_file, next_steps

    require_local_extra()
    app = get_app(ctx)
    out = app.out
    config_path = app.config_path.resolve()
    stop = threading.Event()

    def on_event(text: str) -> None:
        out.err.print(f"• {text}", markup=False, emoji=False, highlight=False)

    def shell_line(text: str) -> None:
        # Never wrapped, never styled: these lines are pasted into a shell.
        console = out.out if out.mode == "table" else out.err
        console.print(f"  {text}", soft_wrap=True, markup=False, emoji=False, highlight=False)

    with LocalServer(follow_config_file(config_path), port=port, on_event=on_event) as server:
        out.info(f"emulator listening on {server.endpoint_url}")
        out.info("in another terminal, set (dummy credentials: the emulator takes any):")
        for name, value in {**server.exports(), "IOTPIPE_CONFIG": str(config_path)}.items():
            shell_line(f"export {name}={shlex.quote(value)}")
        config_exists = config_path.exists()
        if not config_exists:
            out.info(
                f"no config file at {config_path} yet: serving the defaults (stack "
                f"{server.config.stack.name!r}) until `iotpipe init` writes it"
            )
        out.info("then run:")
        for step in next_steps(config_exists=config_exists):
            shell_line(step)
        out.info(
            "readings reach the archive when Firehose delivers its buffer ([archive] "
            "buffer_seconds, 900 s by default); this console says when"
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
    if not out.query_result(result, title=result.engine):
        return
    out.info(
        f"{len(result.rows):,} row(s) in {result.seconds:.1f} s; read {result.objects_read} "
        f"object(s), {result.bytes_read:,} bytes (local engine: no Athena charge applies)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(local_app)
