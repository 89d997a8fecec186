"""`iotpipe validate`: check the config and show the sizing derived from it."""

from __future__ import annotations

import typer

from iotpipe.commands.common import get_app
from iotpipe.cost import monthly_estimate


def validate(ctx: typer.Context) -> None:
    """Validate the config and print the derived sizing (shards, batch sizes)."""
    app = get_app(ctx)
    config = app.config
    sizing = config.sizing
    monthly = monthly_estimate(config)
    warnings = config.quota_warnings()
    for warning in warnings:
        app.out.warn(warning)
    if app.out.json_mode:
        app.out.data(
            {
                "valid": True,
                "config": config.model_dump(),
                "sizing": sizing.model_dump(),
                "warnings": warnings,
                "monthly_cost_usd": monthly.total,
                "monthly_cost_after_always_free_usd": monthly.total_after_allowances,
            }
        )
        return
    app.out.success(f"{app.config_path} is valid (stack {config.stack.name!r})")
    app.out.key_values(
        [
            ("readings per day", f"{config.volume.readings_per_day:,}"),
            ("average readings/s", sizing.average_readings_per_second),
            ("peak readings/s", sizing.peak_readings_per_second),
            ("peak bytes/s", sizing.peak_bytes_per_second),
            (
                "shards needed for records / bytes",
                f"{sizing.shards_for_records} / {sizing.shards_for_bytes}",
            ),
            ("stream mode", config.stream.mode),
            ("shards", sizing.shards if config.stream.mode == "provisioned" else "on-demand"),
            (
                "processor batch size / window",
                f"{sizing.lambda_batch_size} / {sizing.lambda_batching_window_seconds} s",
            ),
            ("processor invocations per day", f"{sizing.expected_batches_per_day:,.0f}"),
            ("archive MB per day (raw)", sizing.archive_mb_per_day),
            (
                "estimated monthly cost",
                f"${monthly.total:,.2f} at list prices, ${monthly.total_after_allowances:,.2f} "
                "after AWS's Always Free allowances (`iotpipe cost` for the breakdown)",
            ),
        ],
        title="Derived sizing",
    )


def register(app: typer.Typer) -> None:
    app.command()(validate)
