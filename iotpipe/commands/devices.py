"""`iotpipe devices ...`: register, list, show, shadow and revoke the stack's devices."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from iotpipe.app import App
from iotpipe.commands.common import YesOption, get_app
from iotpipe.devices import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    DeviceSpec,
    Fleet,
    RegisterOptions,
    Registration,
    parse_attribute,
    parse_desired,
    specs_from_count,
    specs_from_csv,
    specs_from_names,
)
from iotpipe.errors import UsageError

devices = typer.Typer(
    name="devices",
    help="Register and operate the stack's devices (things, certificates, shadows).",
    no_args_is_help=True,
)

# A per-device table is shown up to this many devices; beyond it, the summary and failures only.
_DEVICE_TABLE_LIMIT = 50


def _fleet(app: App) -> Fleet:
    stack = app.stack
    return Fleet(stack.aws, stack.names, basic_ingest=app.config.iot.basic_ingest)


def _attributes(values: list[str] | None) -> dict[str, str]:
    return dict(parse_attribute(v, "--attribute") for v in values or [])


def _specs(
    names: list[str] | None,
    count: int | None,
    prefix: str | None,
    start: int,
    from_csv: Path | None,
    attributes: dict[str, str],
) -> list[DeviceSpec]:
    if (count is None) != (prefix is None):
        raise UsageError(
            "--count and --prefix go together", hint="e.g. --count 20 --prefix sensor-"
        )
    sources = [bool(names), count is not None, from_csv is not None]
    if sum(sources) != 1:
        raise UsageError(
            "give the devices one way: NAME..., --count N --prefix P, or --from-csv FILE"
        )
    if from_csv is not None:
        return specs_from_csv(from_csv, attributes)
    if count is not None and prefix is not None:
        return specs_from_count(prefix, count, start, attributes)
    return specs_from_names(names or [], attributes)


@devices.command("register")
def register_devices(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Thing names to register.")] = None,
    count: Annotated[
        int | None,
        typer.Option(min=1, max=100_000, help="Register N devices named <prefix>0001, ..."),
    ] = None,
    prefix: Annotated[str | None, typer.Option(help="Name prefix for --count.")] = None,
    start: Annotated[int, typer.Option(min=0, help="First number for --count.")] = 1,
    from_csv: Annotated[
        Path | None,
        typer.Option(
            "--from-csv",
            help="CSV file: a header row `name,<attribute>,...` (attribute names as columns), then "
            "one device per line; an empty cell omits that attribute; blank lines and lines "
            "starting with # are skipped. Bad lines are reported by line number.",
        ),
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option(
            "--attribute", "-a", help="key=value attribute for every device (repeatable)."
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option(help="Credentials go to <out-dir>/<thing>/ (directories 0700).")
    ] = Path("devices"),
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing private key file of a device being given new credentials.",
        ),
    ] = False,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Give existing devices a new certificate and key (replacing their files); the new "
            "certificate is active before the old one is deactivated and detached.",
        ),
    ] = False,
    concurrency: Annotated[
        int, typer.Option(min=1, max=MAX_CONCURRENCY, help="Devices registered in parallel.")
    ] = DEFAULT_CONCURRENCY,
    yes: YesOption = False,
) -> None:
    """Register devices: thing, active certificate with the device policy, initial shadow.

    Idempotent: a device that already has an active certificate is reported as existing and
    gets nothing new unless --rotate. A device left half-registered by an interrupted run is
    completed. Private keys are written only to files (0600) and never printed.
    """
    app = get_app(ctx)
    out = app.out
    specs = _specs(names, count, prefix, start, from_csv, _attributes(attribute))
    # The config is checked before AWS is touched (it decides the stack and topics).
    config = app.config
    action = "Rotate credentials of" if rotate else "Register"
    shown = ", ".join(s.name for s in specs[:5]) + (", ..." if len(specs) > 5 else "")
    if not out.json_mode:
        out.key_values(
            [
                ("stack", config.stack.name),
                ("devices", f"{len(specs)}: {shown}"),
                ("credentials", str(out_dir / "<thing>")),
                (
                    "existing devices",
                    "new certificate, old one retired" if rotate else "left alone",
                ),
            ],
            title="Device registration",
            aside=True,
        )
    out.confirm(f"{action} {len(specs)} device(s) in stack {config.stack.name!r}?", yes=yes)

    fleet = _fleet(app)
    options = RegisterOptions(out_dir=out_dir, force=force, rotate=rotate)
    started = time.monotonic()
    with out.progress("registering", total=len(specs)) as progress:

        def on_done(result: Registration) -> None:
            progress.advance(f"{result.name}: {result.status}")

        results = fleet.register_many(specs, options, concurrency=concurrency, on_done=on_done)
    seconds = time.monotonic() - started
    counts = Counter(r.status for r in results)
    failed = [r for r in results if r.status == "failed"]

    if out.json_mode:
        out.data(
            {
                "devices": [r.to_dict() for r in results],
                "summary": dict(counts),
                "seconds": round(seconds, 2),
            }
        )
    else:
        # As CSV the table is the command's result: every device, however many.
        if len(results) <= _DEVICE_TABLE_LIMIT or out.csv_mode:
            out.table(
                ["device", "status", "certificate", "note"],
                [
                    (r.name, r.status, (r.certificate_id or "")[:12], r.error or r.note or "")
                    for r in results
                ],
                title="Devices",
            )
        out.table(
            ["status", "devices"],
            sorted(counts.items()),
            title="Summary",
            aside=True,
        )
    for result in failed:
        out.error(result.error or result.name, result.hint)
    if failed:
        raise typer.Exit(1)
    if not out.json_mode:
        out.success(
            f"{len(results)} device(s) in {seconds:.1f} s; credentials are in {out_dir}/<thing>/ "
            "(private keys readable only by you)"
        )


@devices.command("list")
def list_devices(
    ctx: typer.Context,
    attribute: Annotated[
        str | None, typer.Option("--attribute", "-a", help="Only devices with this key=value.")
    ] = None,
) -> None:
    """List the stack's devices by name (every page), optionally filtered by one attribute.

    With --output csv: a `name` column and one column per attribute, the format
    `devices register --from-csv` reads.
    """
    app = get_app(ctx)
    wanted = parse_attribute(attribute, "--attribute") if attribute else None
    things = sorted(_fleet(app).list(wanted), key=lambda thing: thing["name"])
    if app.out.json_mode:
        app.out.data({"devices": things, "count": len(things)})
        return
    if app.out.csv_mode:
        keys = sorted({key for thing in things for key in thing["attributes"]})
        app.out.table(
            ["name", *keys], [[t["name"], *(t["attributes"].get(k) for k in keys)] for t in things]
        )
        return
    app.out.table(
        ["device", "attributes"],
        [(t["name"], _pairs(t["attributes"])) for t in things],
        title=f"Devices ({len(things)})",
    )


@devices.command()
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Thing name.")]) -> None:
    """A device's attributes, certificates, shadow, and when the pipeline last heard from it."""
    app = get_app(ctx)
    _check_name(name)
    detail = _fleet(app).show(name)
    if app.out.json_mode:
        app.out.data(detail)
        return
    last_seen = detail["last_seen"]
    app.out.key_values(
        [
            ("device", detail["name"]),
            ("thing type", detail["thing_type"]),
            ("attributes", _pairs(detail["attributes"])),
            ("topic", detail["topic"]),
            (
                "certificates",
                "\n".join(
                    f"{c['id'][:12]} {c['status']}"
                    + ("" if c["policy_attached"] else " (no device policy)")
                    for c in detail["certificates"]
                )
                or "none",
            ),
            ("shadow", _json(detail["shadow"]) if detail["shadow"] else "none"),
            (
                "last seen",
                f"{last_seen.get('ts')} (received {last_seen.get('received_at')})"
                if last_seen
                else "never",
            ),
        ],
        title=f"Device {name}",
    )


@devices.command()
def shadow(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Thing name.")],
    desired: Annotated[
        str | None,
        typer.Option(
            help="Set the desired state (a JSON object), e.g. '{\"reporting_interval_s\": 30}'."
        ),
    ] = None,
    yes: YesOption = False,
) -> None:
    """Print the device's shadow, or update its desired state with --desired."""
    app = get_app(ctx)
    _check_name(name)
    state = parse_desired(desired) if desired is not None else None
    fleet = _fleet(app)
    if state is None:
        fleet.require(name)
        document = fleet.shadow(name)
    else:
        app.out.confirm(f"Set the desired state of {name} to {_json(state)}?", yes=yes)
        fleet.require(name)
        document = fleet.update_desired(name, state)
    if app.out.json_mode:
        app.out.data({"name": name, "shadow": document})
    elif document is None:
        app.out.info(f"{name} has no shadow")
    else:
        app.out.info(_json(document))


@devices.command()
def revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Thing name.")],
    delete: Annotated[
        bool,
        typer.Option("--delete", help="Also delete the certificates, the shadow and the thing."),
    ] = False,
    out_dir: Annotated[
        Path, typer.Option(help="Where `register` wrote credentials: <out-dir>/<thing>/ goes.")
    ] = Path("devices"),
    yes: YesOption = False,
) -> None:
    """Revoke the device's certificates (for good: a revoked certificate cannot be re-activated),
    detach them from the thing and from policies, and remove its credential folder.

    Without --delete the thing stays (register it again for new credentials); certificates
    revoked earlier are no longer attached to it and are not deleted by a later --delete.
    """
    app = get_app(ctx)
    _check_name(name)
    fleet = _fleet(app)
    fleet.require(name)
    certificates = fleet.certificates(name)
    what = f"revoke and detach {len(certificates)} certificate(s) of {name}"
    if delete:
        what += ", then delete them, its shadow and the thing"
    if not app.out.json_mode:
        app.out.table(
            ["certificate", "status"],
            [(c["id"], c["status"]) for c in certificates],
            title=f"Revoke {name}",
        )
    app.out.confirm(f"This will {what}. Continue?", yes=yes)
    result = fleet.revoke(name, delete=delete, credentials=out_dir)
    if app.out.json_mode:
        app.out.data(result)
    else:
        removed = result["credentials_removed"]
        app.out.success(
            f"revoked {name}: {len(result['certificates'])} certificate(s) revoked and detached"
            + ("; thing deleted" if delete else "")
            + (f"; credentials {removed} removed" if removed else "")
        )


def _check_name(name: str) -> None:
    specs_from_names([name], {})


def _pairs(attributes: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def register(app: typer.Typer) -> None:
    app.add_typer(devices, name="devices")
