"""All terminal output: messages, tables, plans, progress, confirmations and JSON.

With `--output json` stdout carries only the JSON document; every diagnostic goes to stderr.
Core modules never print: they return values, and commands hand them to this module.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from iotpipe.engine.model import Action, Plan, Step
from iotpipe.errors import Aborted

_ACTION_STYLE = {
    Action.CREATE: ("+", "green"),
    Action.UPDATE: ("~", "yellow"),
    Action.REPLACE: ("-/+", "magenta"),
    Action.DELETE: ("-", "red"),
    Action.NOOP: ("=", "dim"),
    Action.KEEP: ("k", "cyan"),
    Action.SKIP: ("!", "yellow"),
    Action.DEFER: ("...", "yellow"),
}
_STATE_STYLE = {
    "in sync": "green",
    "drifted": "yellow",
    "missing": "red",
    "unavailable": "yellow",
}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class Output:
    def __init__(self, mode: str = "table", verbose: int = 0) -> None:
        self.mode = mode
        self.verbose = verbose
        # file=None makes rich look up sys.stdout/sys.stderr at write time (tests capture them).
        self.out = Console(highlight=False, soft_wrap=False)
        self.err = Console(stderr=True, highlight=False)

    @property
    def json_mode(self) -> bool:
        return self.mode == "json"

    @property
    def _diag(self) -> Console:
        """Where human messages go: stderr in json mode, so stdout stays parseable."""
        return self.err if self.mode != "table" else self.out

    # Messages --------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self._diag.print(escape(message))

    def detail(self, message: str) -> None:
        if self.verbose:
            self.err.print(f"[dim]{escape(message)}[/dim]")

    def success(self, message: str) -> None:
        self._diag.print(f"[green]{escape(message)}[/green]")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(f"[red]error:[/red] {escape(message)}")
        if hint:
            self.err.print(f"[dim]hint:[/dim] {escape(hint)}")

    # Data ------------------------------------------------------------------------------------
    def data(self, value: Any) -> None:
        """Print a JSON document on stdout (json mode's only output)."""
        sys.stdout.write(json.dumps(_jsonable(value), indent=2, sort_keys=False) + "\n")
        sys.stdout.flush()

    def csv_rows(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Rows as CSV on stdout (header first; None as an empty field)."""
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        sys.stdout.flush()

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
    ) -> None:
        table = Table(title=title, show_lines=False, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*[escape("" if v is None else str(v)) for v in row])
        self._diag.print(table)

    def key_values(self, pairs: Sequence[tuple[str, Any]], *, title: str | None = None) -> None:
        self.table(["setting", "value"], [(k, v) for k, v in pairs], title=title)

    def plan(self, plan: Plan, *, title: str = "Plan", unchanged: bool = True) -> None:
        """The plan as a table; `unchanged=False` leaves out the no-change rows (unless -v)."""
        show_all = unchanged or self.verbose > 0
        steps = [s for s in plan.steps if show_all or s.action is not Action.NOOP]
        rows = []
        for step in steps:
            symbol, style = _ACTION_STYLE[step.action]
            detail = "\n".join(
                [*(str(c) for c in step.changes), *([step.note] if step.note else [])]
            )
            rows.append(
                (
                    f"[{style}]{symbol} {step.action}[/{style}]",
                    escape(step.resource.kind),
                    escape(step.resource.name),
                    escape(detail),
                )
            )
        if rows:
            table = Table(title=title, header_style="bold")
            for column in ("action", "kind", "name", "changes"):
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(*row)
            self._diag.print(table)
        summary = ", ".join(f"{n} {action}" for action, n in plan.counts().items())
        self._diag.print(f"[bold]{escape(summary or 'nothing to do')}[/bold]")

    def status_lines(self, lines: Sequence[Any]) -> None:
        table = Table(title="Resources", header_style="bold")
        for column in ("kind", "name", "state", "drift"):
            table.add_column(column, overflow="fold")
        for line in lines:
            style = _STATE_STYLE.get(line.state, "white")
            table.add_row(
                escape(line.resource.kind),
                escape(line.resource.name),
                f"[{style}]{line.state}[/{style}]",
                escape("\n".join(str(c) for c in line.changes)),
            )
        self._diag.print(table)

    # Interaction -----------------------------------------------------------------------------
    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask on a terminal; refuse without one unless --yes was given."""
        if yes:
            return
        if not sys.stdin.isatty():
            raise Aborted(
                "refusing to change AWS without confirmation (no terminal to ask on)",
                hint="re-run with --yes",
            )
        self.err.print(f"{escape(question)} [bold]\\[y/N][/bold] ", end="")
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise Aborted("cancelled; nothing was changed")

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[ProgressHandle]:
        """A progress bar on stderr; without a terminal, one plain line per finished item."""
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[current]}"),
            console=self.err,
            transient=True,
            disable=not self.err.is_terminal,
        )
        with progress:
            task = progress.add_task(description, total=total, current="")
            yield ProgressHandle(self, progress, task)

    @contextmanager
    def waiting(self, text: str) -> Iterator[Callable[[str], None]]:
        """A spinner on stderr while something runs; yields a function that updates its text."""
        if not self.err.is_terminal:
            yield lambda _: None
            return
        with self.err.status(escape(text)) as status:
            yield lambda new: status.update(escape(new))


class ProgressHandle:
    def __init__(self, output: Output, progress: Progress, task: Any) -> None:
        self._output = output
        self._progress = progress
        self._task = task

    def current(self, text: str) -> None:
        self._progress.update(self._task, current=text)

    def advance(self, text: str | None = None) -> None:
        self._progress.update(self._task, advance=1)
        if text and self._progress.disable:
            # No bar to watch (CI logs, pipes): say what finished, as it finishes.
            self._output.err.print(escape(text), highlight=False)
        elif text:
            self._output.detail(text)

    def step_event(self, step: Step, event: str, error: BaseException | str | None) -> None:
        """Adapter for the engine's progress callback."""
        label = f"{step.action} {step.resource.kind} {step.resource.name}"
        if event == "start":
            self.current(label)
        elif event == "waiting":
            # A long wait inside a step: on the bar, or as a line of its own without one.
            self.current(f"{label}: {error}")
            if self._progress.disable:
                self._output.err.print(escape(f"{label}: {error}"), highlight=False)
        elif event == "done":
            self.advance(f"done: {label}")
        elif event == "skipped":
            self.advance(f"skipped: {step.resource.kind} {step.resource.name}")
        else:
            self._output.detail(f"failed: {label}: {error}")
