"""`iotpipe demo`: the whole pipeline end to end on an embedded AWS emulator, offline."""

from __future__ import annotations

from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.errors import IotpipeError


class ReadingsLost(IotpipeError):
    """The demo's accounting found readings that reached no sink and no quarantine."""


def demo(
    ctx: typer.Context,
    devices: Annotated[int, typer.Option(min=1, max=1000, help="Devices to register.")] = 20,
    readings: Annotated[
        int, typer.Option(min=1, max=200_000, help="Readings to send through the pipeline.")
    ] = 2000,
) -> None:
    """Run up, register devices, send readings through the pipeline and query the archive, all
    on an embedded AWS emulator: no AWS account, no network, no Docker."""
    from iotpipe.local.demo import run_demo

    app = get_app(ctx)
    out = app.out
    summary = run_demo(
        devices=devices, readings=readings, progress=lambda text: out.err.print(f"• {text}")
    )
    if out.json_mode:
        out.data(summary.to_dict())
    else:
        out.table(
            summary.query_columns,
            summary.query_rows,
            title=f"Archive query ({summary.query_engine}): {summary.query_sql}",
        )
        timeseries = summary.timeseries_records
        out.key_values(
            [
                ("readings sent", f"{summary.sent:,} ({summary.malformed_sent} malformed)"),
                (
                    "stored: archive (S3 via Firehose)",
                    f"{summary.archived:,} lines in {summary.archive_objects} object(s)",
                ),
                ("stored: device state (DynamoDB)", f"{summary.device_state_items:,} items"),
                (
                    "stored: time series (Timestream)",
                    "disabled" if timeseries is None else f"{timeseries:,} records",
                ),
                ("quarantined (S3 quarantine/)", f"{summary.quarantined:,}"),
                ("rejected by the IoT rule (S3 iot-errors/)", f"{summary.rule_errors:,}"),
                ("lost", f"{summary.lost:,}"),
                ("processor invocations", f"{summary.invocations:,}"),
                ("end to end (publish -> archived)", f"{summary.pipeline_seconds:.1f} s"),
                ("demo total (incl. up and devices)", f"{summary.seconds:.1f} s"),
            ],
            title="Demo summary",
            aside=True,
        )
    if summary.lost:
        raise ReadingsLost(
            f"{summary.lost} reading(s) reached neither a sink nor the quarantine",
            hint="the processor's log shows why; this is a bug worth reporting",
        )
    if not out.json_mode:
        out.success("0 readings lost")


def register(app: typer.Typer) -> None:
    app.command()(demo)
