"""`iotpipe reshard`: change the readings stream's shard count safely, within AWS's rules."""

from __future__ import annotations

from typing import Annotated, Any, cast

import typer

from iotpipe.app import App
from iotpipe.commands.common import YesOption, get_app
from iotpipe.engine.reconcile import settle
from iotpipe.errors import AwsError, UsageError
from iotpipe.resharding import (
    MAX_SCALING_OPERATIONS_PER_DAY,
    Recommendation,
    ReshardPlan,
    plan_for_stream,
    read_peaks,
    recommend,
)
from iotpipe.resources.kinesis import ReadingsStream


def reshard(
    ctx: typer.Context,
    target: Annotated[
        int | None, typer.Option("--target", min=1, help="The shard count to reach.")
    ] = None,
    recommend_target: Annotated[
        bool,
        typer.Option(
            "--recommend",
            help="Compute the target from the last 24 h of traffic plus [stream] headroom.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the steps and change nothing.")
    ] = False,
    yes: YesOption = False,
) -> None:
    """Change the stream's shard count in steps AWS accepts (at most double / half each)."""
    app = get_app(ctx)
    if (target is None) == (not recommend_target):
        raise UsageError("give either --target N or --recommend", hint="iotpipe reshard --help")
    config = app.config
    if config.stream.mode != "provisioned":
        raise UsageError(
            f'{app.config_path}: [stream] mode is "{config.stream.mode}": an on-demand stream '
            "scales itself and has no shard count to set",
            hint='set [stream] mode = "provisioned" and run `iotpipe up` to manage shards',
        )
    out, aws = app.out, app.aws
    stack = app.stack
    stream = ReadingsStream(stack, stack.names.readings_stream)
    observed = stream.read(aws)
    if observed is None:
        raise AwsError("does not exist", resource=stream.label, hint="run `iotpipe up` first")
    if observed["mode"] != "PROVISIONED":
        raise AwsError(
            "is on-demand in AWS: it has no shard count to set",
            resource=stream.label,
            hint='`iotpipe up` with [stream] mode = "provisioned" switches it back',
        )
    if observed.raw["StreamStatus"] != "ACTIVE":
        out.info(f"waiting for {stream.name} to become ACTIVE ({observed.raw['StreamStatus']})")
        observed = settle(aws, stream, observed)

    recommendation: Recommendation | None = None
    if recommend_target:
        peak_records, peak_bytes, points = read_peaks(aws, stream.name)
        recommendation = recommend(peak_records, peak_bytes, config.stream.headroom, points)
        if points == 0:
            out.warn(
                f"no IncomingRecords data for {stream.name} in the last 24 h: the stream was idle "
                "(or its metrics are not yet published); recommending the minimum"
            )
    # The usage check above guarantees --target when there is no recommendation.
    goal = recommendation.target if recommendation else cast(int, target)
    plan = plan_for_stream(aws, stream.name, observed["shard_count"], goal)
    configured = config.sizing.shards
    report = {
        **plan.to_dict(),
        "recommendation": recommendation.to_dict() if recommendation else None,
        "configured_shards": configured,
        "dry_run": dry_run,
        "applied": False,
    }

    if not out.json_mode:
        if recommendation:
            out.info("Recommendation:")
            for line in recommendation.explanation():
                out.info(f"  {line}")
        _show_plan(app, plan)
    if not plan.steps:
        _finish(
            app, report, f"{stream.name} already has {plan.target} open shard(s); nothing to do"
        )
        _config_note(app, plan.target, configured)
        return
    if dry_run:
        _finish(app, report, "dry run: nothing was changed")
        _config_note(app, plan.target, configured)
        return

    out.confirm(
        f"Change {stream.name} from {plan.current} to {plan.target} shards "
        f"({len(plan.steps)} UpdateShardCount operation(s))?",
        yes=yes,
    )
    with out.progress("resharding", total=len(plan.steps)) as progress:
        previous = [plan.current]

        def on_step(count: int, event: str) -> None:
            if event == "start":
                progress.current(f"{previous[0]} -> {count} shards, waiting for ACTIVE")
            else:
                progress.advance(f"{stream.name}: {previous[0]} -> {count} shards, ACTIVE")
                previous[0] = count

        stream.apply_reshard(aws, plan, on_step=on_step)
    report["applied"] = True
    _finish(app, report, f"{stream.name} now has {plan.target} open shard(s)")
    _config_note(app, plan.target, configured)


def _show_plan(app: App, plan: ReshardPlan) -> None:
    out = app.out
    rows = []
    count = plan.current
    for index, step in enumerate(plan.steps, start=1):
        rows.append((index, f"{count} -> {step}", "UpdateShardCount UNIFORM_SCALING"))
        count = step
    # As CSV the steps are the result, none included.
    if rows or out.csv_mode:
        out.table(["step", "shards", "operation"], rows, title=f"Reshard {plan.stream}")
    out.info(
        f"scaling operations in the last 24 h: {plan.history.operations} of "
        f"{MAX_SCALING_OPERATIONS_PER_DAY} ({plan.history.method}); "
        f"{max(plan.operations_left_after, 0)} left after this change"
    )
    if plan.steps:
        out.info(
            f"account shards: {plan.limits.open_shards} open of a {plan.limits.shard_limit} limit"
        )


def _finish(app: App, report: dict[str, Any], message: str) -> None:
    if app.out.json_mode:
        app.out.data(report)
    else:
        app.out.success(message)


def _config_note(app: App, target: int, configured: int) -> None:
    if target != configured:
        app.out.warn(
            f"{app.config_path} asks for {configured} shard(s): the next `iotpipe up` would "
            f"reshard back to it; set [stream] shards = {target} to keep {target}"
        )


def register(app: typer.Typer) -> None:
    app.command()(reshard)
