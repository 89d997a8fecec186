"""`iotpipe simulate`: publish simulated readings as registered devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from iotpipe.commands.common import get_app


def simulate(
    ctx: typer.Context,
    devices_dir: Annotated[
        Path,
        typer.Option("--devices-dir", help="Where `devices register` wrote the credentials."),
    ] = Path("devices"),
    readings: Annotated[int, typer.Option(min=1, help="How many readings to send.")] = 100,
    rate: Annotated[
        float | None, typer.Option(min=0.01, help="Readings per second (default: no limit).")
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            "--ca-file",
            help="CA bundle that signs the MQTT endpoint (default: the system's, which has "
            "Amazon Root CA 1).",
        ),
    ] = None,
) -> None:
    """Send readings: over MQTT/TLS with each device's certificate to AWS IoT Core, or to the
    emulator's IoT data plane when --endpoint-url / AWS_ENDPOINT_URL points at one."""
    from iotpipe.simulate import HttpPublisher, MqttPublisher, load_devices
    from iotpipe.simulate import simulate as run_simulation

    app = get_app(ctx)
    out = app.out
    devices = load_devices(devices_dir)
    endpoint = app.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        publisher = HttpPublisher(app.aws)
        target = f"the IoT data plane at {endpoint}"
    else:
        publisher = MqttPublisher(devices, ca_file=ca_file)
        target = f"{devices[0].endpoint}:{devices[0].port} over MQTT/TLS"
    out.info(f"sending {readings:,} readings from {len(devices)} device(s) to {target}")
    with out.progress("publishing", total=readings) as progress:
        result = run_simulation(
            devices, publisher, readings=readings, rate=rate, on_sent=lambda _: progress.advance()
        )
    if out.json_mode:
        out.data(result.to_dict())
    else:
        out.success(f"sent {result.sent:,} readings in {result.seconds:.1f} s")


def register(app: typer.Typer) -> None:
    app.command()(simulate)
