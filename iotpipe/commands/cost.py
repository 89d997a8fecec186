"""`iotpipe cost`: the monthly estimate of the configured pipeline, and what each choice saves."""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer
from pydantic import ValidationError

from iotpipe.commands.common import get_app
from iotpipe.config import Config, VolumeSection
from iotpipe.cost import Assumptions, LineItem, cost_report, load_prices
from iotpipe.errors import UsageError


def with_volume(config: Config, **overrides: int | None) -> Config:
    """`config` with the given [volume] fields replaced; a bad value names its option."""
    changed = {name: value for name, value in overrides.items() if value is not None}
    for name, value in changed.items():
        if value <= 0:
            raise UsageError(
                f"--{name.replace('_', '-')} must be a positive whole number, not {value}"
            )
    try:
        volume = VolumeSection.model_validate({**config.volume.model_dump(), **changed})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-")
        raise UsageError(f"{option}: {err['msg']}") from None
    return config.model_copy(update={"volume": volume})


def _money(value: float) -> str:
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


def _unit_price(price: float, per: float) -> str:
    text = f"${price:.10f}".rstrip("0").rstrip(".")
    return {1: text, 1000: f"{text} per 1,000", 1e6: f"{text} per million"}.get(per, text)


def _quantity(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.3g}"


def _rows(items: list[LineItem]) -> list[tuple[str, ...]]:
    return [
        (
            item.service,
            item.item,
            _quantity(item.quantity),
            item.unit,
            _unit_price(item.unit_price, item.price_per),
            _money(item.monthly_cost),
        )
        for item in items
    ]


def cost(
    ctx: typer.Context,
    readings_per_day: Annotated[
        int | None, typer.Option(help="Price this many readings a day instead of [volume]'s.")
    ] = None,
    devices: Annotated[int | None, typer.Option(help="Price this many devices.")] = None,
    bytes_per_reading: Annotated[
        int | None, typer.Option(help="Price readings of this many bytes.")
    ] = None,
    queries_per_day: Annotated[
        int | None, typer.Option(help="Athena queries a day (each scans a day of the archive).")
    ] = None,
) -> None:
    """Estimate the monthly cost of the configured pipeline (us-east-1 list prices)."""
    app = get_app(ctx)
    config = with_volume(
        app.config,
        readings_per_day=readings_per_day,
        devices=devices,
        bytes_per_reading=bytes_per_reading,
    )
    assumptions = Assumptions()
    if queries_per_day is not None:
        if queries_per_day < 0:
            raise UsageError(f"--queries-per-day must be zero or more, not {queries_per_day}")
        assumptions = Assumptions(athena_queries_per_day=queries_per_day)
    prices = load_prices()
    report = cost_report(config, prices, date.today(), assumptions)
    out = app.out
    age = f"prices taken {report.prices_taken.isoformat()} ({report.price_age_days} days ago)"
    if report.prices_stale:
        out.warn(f"{age}: AWS may have changed them since; check the pricing pages")
    if out.json_mode:
        out.data(report.to_dict())
        return
    if config.stack.region != prices.region:
        out.warn(f"prices are {prices.region} list prices; the stack is in {config.stack.region}")
    volume = config.volume
    out.info(
        f"{volume.readings_per_day:,} readings/day from {volume.devices:,} devices, "
        f"{volume.bytes_per_reading} bytes each; {age}"
    )
    columns = ["service", "item", "quantity", "unit", "unit price", "monthly"]
    # The line items are the result (the CSV of --output csv); the other tables explain them.
    out.table(columns, _rows(report.configured.items), title="Monthly estimate (list prices)")
    if report.configured.allowances:
        out.table(
            columns,
            _rows(report.configured.allowances),
            title="AWS Always Free allowances it would use (per account or organization, shared)",
            aside=True,
        )
    out.table(
        ["optimisation", "in use", "saves per month", "why"],
        [
            (s.optimisation, "yes" if s.in_use else "no", _money(s.monthly_saving), s.why)
            for s in report.savings
        ],
        title="What each choice saves against the naive one",
        aside=True,
    )
    configured, naive = report.configured, report.naive
    out.key_values(
        [
            ("configured pipeline", _money(configured.total)),
            ("naive choices", _money(naive.total)),
            ("saving", _money(naive.total - configured.total)),
            ("configured, after Always Free allowances", _money(configured.total_after_allowances)),
            ("naive, after Always Free allowances", _money(naive.total_after_allowances)),
        ],
        title="Monthly total (USD)",
        aside=True,
    )
    out.info("Assumptions: " + "; ".join(report.assumptions) + ".")


def register(app: typer.Typer) -> None:
    app.command()(cost)
