"""All terminal output: messages, tables, plans, progress, confirmations and JSON.

With `--output json` stdout carries only the JSON document, with `--output csv` only the
command's table as CSV; every diagnostic goes to stderr. Data (names, shadows, query rows) is
printed verbatim: never read as rich markup or emoji codes. Core modules never print: they return
values, and commands hand them to this module.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from iotpipe.engine.model import ABSENT, Action, Change, Plan, Step
from iotpipe.errors import Cancelled, UsageError

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


def _change_rows(changes: Sequence[Change]) -> list[tuple[str, str, str, str]]:
    """(field, path, old, new) per difference, values as JSON (empty where a side is absent);
    one empty row when there is no change, so that every step or resource has a row."""
    rows = [
        (change.field, d.path_text(), _csv_value(d.old), _csv_value(d.new))
        for change in changes
        for d in change.paths()
    ]
    return rows or [("", "", "", "")]


def _csv_value(value: Any) -> str:
    return "" if value is ABSENT else json.dumps(_jsonable(value), sort_keys=True)


class Output:
    def __init__(self, mode: str = "table", verbose: int = 0) -> None:
        self.mode = mode
        self.verbose = verbose
        # NO_COLOR (https://no-color.org) means plain text: rich would drop only the colours and
        # keep bold and dim; without a terminal rich writes no ANSI codes by itself.
        color_system = None if os.environ.get("NO_COLOR") else "auto"
        # file=None makes rich look up sys.stdout/sys.stderr at write time (tests capture them).
        # No emoji codes: `:x:` in a device name is data. Data is passed as Text, never markup.
        self.out = Console(highlight=False, soft_wrap=False, emoji=False, color_system=color_system)
        self.err = Console(stderr=True, highlight=False, emoji=False, color_system=color_system)

    @property
    def json_mode(self) -> bool:
        return self.mode == "json"

    @property
    def csv_mode(self) -> bool:
        return self.mode == "csv"

    @property
    def _diag(self) -> Console:
        """Where human messages go: stderr in json and csv mode, so stdout stays parseable."""
        return self.err if self.mode != "table" else self.out

    # Messages --------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self._diag.print(Text(message))

    def detail(self, message: str) -> None:
        if self.verbose:
            self.err.print(Text(message, style="dim"))

    def success(self, message: str) -> None:
        self._diag.print(Text(message, style="green"))

    def warn(self, message: str) -> None:
        self.err.print(Text.assemble(("warning:", "yellow"), " ", message))

    def error(self, message: str, hint: str | None = None) -> None:
        self.err.print(Text.assemble(("error:", "red"), " ", message))
        if hint:
            self.err.print(Text.assemble(("hint:", "dim"), " ", hint))

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

    def query_result(self, result: Any, *, title: str | None = None) -> bool:
        """A query's rows in the chosen format (its whole result as JSON in json mode); returns
        whether a summary line may follow (not in json mode)."""
        if self.json_mode:
            self.data(result.to_dict())
            return False
        if self.mode == "csv":
            self.csv_rows(result.columns, result.rows)
        else:
            self.table(result.columns, result.rows, title=title)
        return True

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        title: str | None = None,
        aside: bool = False,
    ) -> None:
        """The command's table; with --output csv, as CSV on stdout.

        `aside`: a table beside the command's result (a summary, what a question is about): with
        --output csv it is shown on stderr, so that stdout holds one CSV document.
        """
        if self.csv_mode and not aside:
            self.csv_rows(columns, rows)
            return
        self._print_table(columns, [["" if v is None else str(v) for v in r] for r in rows], title)

    def key_values(
        self, pairs: Sequence[tuple[str, Any]], *, title: str | None = None, aside: bool = False
    ) -> None:
        self.table(["setting", "value"], [(k, v) for k, v in pairs], title=title, aside=aside)

    def _print_table(
        self, columns: Sequence[str], rows: Sequence[Sequence[str | Text]], title: str | None
    ) -> None:
        """A rendered table on the diagnostics console; every cell verbatim."""
        table = Table(
            title=None if title is None else Text(title), show_lines=False, header_style="bold"
        )
        for column in columns:
            table.add_column(Text(column), overflow="fold")
        for row in rows:
            table.add_row(*[cell if isinstance(cell, Text) else Text(cell) for cell in row])
        self._diag.print(table)

    def plan(self, plan: Plan, *, title: str = "Plan", unchanged: bool = True) -> None:
        """The plan as a table; `unchanged=False` leaves out the no-change rows (unless -v).

        Each change is shown by path inside its value, long values cut to what changed; -v
        shows whole values. With --output csv: one row per difference.
        """
        show_all = unchanged or self.verbose > 0
        steps = [s for s in plan.steps if show_all or s.action is not Action.NOOP]
        if self.csv_mode:
            self.csv_rows(
                ["action", "kind", "name", "field", "path", "old", "new", "note"],
                [
                    (str(step.action), step.resource.kind, step.resource.name, *row, step.note)
                    for step in steps
                    for row in _change_rows(step.changes)
                ],
            )
        elif steps:
            rows = []
            for step in steps:
                symbol, style = _ACTION_STYLE[step.action]
                detail = [*self._change_lines(step.changes), *([step.note] if step.note else [])]
                rows.append(
                    (
                        Text(f"{symbol} {step.action}", style=style),
                        step.resource.kind,
                        step.resource.name,
                        "\n".join(detail),
                    )
                )
            self._print_table(("action", "kind", "name", "changes"), rows, title)
        summary = ", ".join(f"{n} {action}" for action, n in plan.counts().items())
        self._diag.print(Text(summary or "nothing to do", style="bold"))

    def status_lines(self, lines: Sequence[Any]) -> None:
        """Each resource's state; with --output csv, one row per difference of a drifted one."""
        if self.csv_mode:
            self.csv_rows(
                ["kind", "name", "state", "field", "path", "old", "new"],
                [
                    (line.resource.kind, line.resource.name, line.state, *row)
                    for line in lines
                    for row in _change_rows(line.changes)
                ],
            )
            return
        rows = [
            (
                line.resource.kind,
                line.resource.name,
                Text(line.state, style=_STATE_STYLE.get(line.state, "white")),
                "\n".join(self._change_lines(line.changes)),
            )
            for line in lines
        ]
        self._print_table(("kind", "name", "state", "drift"), rows, "Resources")

    def _change_lines(self, changes: Sequence[Change]) -> list[str]:
        return [line for change in changes for line in change.lines(whole=self.verbose > 0)]

    # Interaction -----------------------------------------------------------------------------
    def confirm(self, question: str, *, yes: bool) -> None:
        """Ask on a terminal; without one, a missing --yes is bad usage (exit 2).

        Any answer but y/yes (an empty line, end of input) cancels: `Cancelled`, exit 1.
        """
        if yes:
            return
        if not sys.stdin.isatty():
            raise UsageError(
                "refusing to change AWS without confirmation (no terminal to ask on)",
                hint="re-run with --yes",
            )
        self.err.print(Text.assemble(question, " ", ("[y/N]", "bold"), " "), end="")
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise Cancelled("cancelled: nothing was changed")

    def notice(self, message: str) -> None:
        """A plain line on stderr, not labelled an error: cancelled, interrupted."""
        self.err.print(Text(message))

    @contextmanager
    def progress(self, description: str, total: int) -> Iterator[ProgressHandle]:
        """A progress bar on stderr; without a terminal, one plain line per finished item."""
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[current]}", markup=False),
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
        with self.err.status(Text(text)) as status:
            yield lambda new: status.update(Text(new))


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
            self._output.err.print(Text(text))
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
                self._output.err.print(Text(f"{label}: {error}"))
        elif event == "done":
            self.advance(f"done: {label}")
        elif event == "skipped":
            self.advance(f"skipped: {step.resource.kind} {step.resource.name}")
        else:
            self._output.detail(f"failed: {label}: {error}")
