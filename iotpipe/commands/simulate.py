"""`iotpipe simulate`: publish simulated readings as registered devices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from iotpipe.commands.common import get_app
from iotpipe.errors import UsageError

# How long `simulate` against an emulator waits for the pipeline to show the readings.
CONFIRM_SECONDS = 10.0


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
    readings_per_message: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1000,
            help="Readings each device sends in one message (default: [volume] "
            "readings_per_message; 1 sends each reading as it is taken).",
        ),
    ] = None,
) -> None:
    """Send readings: over MQTT/TLS with each device's certificate to AWS IoT Core, or to the
    emulator's IoT data plane when --endpoint-url / AWS_ENDPOINT_URL points at one."""
    from iotpipe.simulate import (
        HttpPublisher,
        MqttPublisher,
        active_devices,
        confirm_device_state,
        load_devices,
    )
    from iotpipe.simulate import simulate as run_simulation

    app = get_app(ctx)
    out = app.out
    devices = load_devices(devices_dir)
    endpoint = app.endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        # The emulator's data plane takes any publish; AWS IoT Core refuses a certificate that is
        # not ACTIVE at connect ("Devices cannot use a certificate that is not in the ACTIVE
        # state to reconnect", UpdateCertificate API reference), so only here is it checked.
        devices, left_out = active_devices(app.aws, devices)
        if left_out:
            out.warn(f"not publishing as {len(left_out)} device(s): {', '.join(left_out)}")
        if not devices:
            raise UsageError(
                f"no device under {devices_dir} has an active certificate",
                hint="register devices with `iotpipe devices register --out-dir DIR`",
            )
    if endpoint:
        publisher = HttpPublisher(app.aws)
        target = f"the IoT data plane at {endpoint}"
        accepted_by = "the IoT data plane"
    else:
        publisher = MqttPublisher(devices, ca_file=ca_file)
        target = f"{devices[0].endpoint}:{devices[0].port} over MQTT/TLS"
        accepted_by = "AWS IoT Core"  # each publish waited for its PUBACK
    # Devices batch as the config says (publishing over MQTT needs no config file).
    per_message = readings_per_message or (
        app.config.volume.readings_per_message if app.config_path.is_file() else 1
    )
    out.info(f"sending {readings:,} readings from {len(devices)} device(s) to {target}")
    with out.progress("publishing", total=readings) as progress:
        result = run_simulation(
            devices,
            publisher,
            readings=readings,
            rate=rate,
            on_sent=lambda _: progress.advance(),
            readings_per_message=per_message,
        )
    if endpoint and result.newest:
        # The emulator's pipeline (`local serve`) can be asked what it made of the readings;
        # on AWS the CLI's identity may not read the device state, so the summary stops at IoT.
        table = app.stack.names.device_state_table
        with out.progress(
            f"waiting for the pipeline: device state in {table}", total=len(result.newest)
        ) as progress:
            seen = [0]

            def advance(confirmed: int) -> None:
                for _ in range(confirmed - seen[0]):
                    progress.advance()
                seen[0] = max(seen[0], confirmed)

            confirm_device_state(
                app.aws, table, result, timeout_seconds=CONFIRM_SECONDS, on_poll=advance
            )
    if out.json_mode:
        out.data(result.to_dict())
    else:
        out.success(result.summary(accepted_by))


def register(app: typer.Typer) -> None:
    app.command()(simulate)
