"""The root command: global options, and the mapping of errors to exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from iotpipe import __version__
from iotpipe.app import App, OutputFormat
from iotpipe.config import DEFAULT_CONFIG_PATH, region_problem
from iotpipe.errors import INTERRUPTED_EXIT_CODE, Cancelled, IotpipeError
from iotpipe.output import Output

_app: App | None = None

app = typer.Typer(
    name="iotpipe",
    help="Provision and operate an AWS IoT data pipeline: IoT Core -> Kinesis -> Lambda -> "
    "DynamoDB / Timestream / Firehose -> S3 -> Glue -> Athena.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts quote config sections like `[stream] mode`: not rich markup.
    rich_markup_mode=None,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _checked_region(region: str | None) -> str | None:
    """--region is an AWS region, or the command stops here (exit 2), before any AWS call."""
    problem = None if region is None else region_problem(region)
    if problem:
        raise typer.BadParameter(problem)
    return region


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"iotpipe {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Config file.", envvar="IOTPIPE_CONFIG")
    ] = DEFAULT_CONFIG_PATH,
    profile: Annotated[str | None, typer.Option(help="AWS profile to use.")] = None,
    region: Annotated[
        str | None,
        typer.Option(
            help="AWS region (default: the config's stack.region).", callback=_checked_region
        ),
    ] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(help="Send every AWS call to this endpoint (e.g. a local emulator)."),
    ] = None,
    output: Annotated[
        OutputFormat,
        typer.Option("--output", "-o", help="table, json, or csv (a command's table as CSV)."),
    ] = OutputFormat.table,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail.")] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    global _app
    ctx.obj = _app = App(
        config_path=config,
        profile=profile,
        region=region,
        endpoint_url=endpoint_url,
        output=output.value,
        verbose=verbose,
    )


def _register_commands() -> None:
    from iotpipe.commands import (
        cost,
        demo,
        devices,
        down,
        iam_policy,
        init,
        local,
        plan,
        query,
        reshard,
        simulate,
        status,
        up,
        validate,
    )

    for module in (
        init,
        validate,
        plan,
        up,
        status,
        down,
        reshard,
        query,
        devices,
        cost,
        iam_policy,
        simulate,
        demo,
        local,
    ):
        module.register(app)


_register_commands()

# Global options, and whether each takes a value. Like the AWS CLI, they may follow the subcommand.
_GLOBAL_OPTIONS = {
    "--config": True,
    "-c": True,
    "--profile": True,
    "--region": True,
    "--endpoint-url": True,
    "--output": True,
    "-o": True,
    "--verbose": False,
    "-v": False,
    "-vv": False,
}


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options found after the subcommand to the front, where click expects them."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in _GLOBAL_OPTIONS:
            takes_value = _GLOBAL_OPTIONS[name] and "=" not in arg
            front.append(arg)
            if takes_value and i + 1 < len(argv):
                front.append(argv[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


def run(argv: list[str]) -> int:
    """Run the CLI on `argv`; return the exit code (expected failures never show a traceback)."""
    global _app
    _app = None
    args = hoist_global_options(argv)
    command = typer.main.get_command(app)
    try:
        # The command is invoked here, not through `app()`: typer's entry point turns Ctrl-C into
        # a silent `Exit(130)` before any handler of ours could say what it means.
        with command.make_context("iotpipe", args) as ctx:
            result = command.invoke(ctx)
    except Cancelled as exc:
        _output().notice(exc.message)
        return exc.exit_code
    except IotpipeError as exc:
        _output().error(exc.message, exc.hint)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:
        # Usage errors (unknown command or option, bad value): click's own message, exit 2.
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        _output().notice(
            "interrupted: run the same command again to continue; what is already done is kept "
            "and is not done twice"
        )
        return INTERRUPTED_EXIT_CODE
    return result if isinstance(result, int) else 0


def _output() -> Output:
    return _app.out if _app is not None else Output()


def main() -> None:
    if not sys.stdout.isatty():
        # Rich wraps at 80 columns when piped; plans and tables read better wider.
        os.environ.setdefault("COLUMNS", "160")
    try:
        code = run(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`iotpipe devices list | head`): stop quietly. stdout is pointed
        # at /dev/null so that the interpreter's last flush does not fail again (Python docs,
        # signal module, "Note on SIGPIPE").
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    except Exception as exc:
        # A bug, not a user's mistake: one line that says so, the traceback only with -v.
        output = _output()
        output.error(
            f"internal error: {type(exc).__name__}: {exc}",
            hint="this is a bug in iotpipe; please report it with the command line "
            "(-v prints the traceback)",
        )
        if output.verbose:
            traceback.print_exc()
        code = 1
    sys.exit(code)
