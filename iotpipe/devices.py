"""The device fleet: register things with credentials, inspect them, update shadows, revoke.

A registered device is an IoT thing of the stack's thing type whose one active X.509 certificate
carries the stack's device policy, plus a shadow. Its credentials are written to
`<out-dir>/<thing>/` and nowhere else: the private key exists only in AWS's one-time response and
in that file (0600, in a 0700 directory); it is never printed, logged or kept in a result.

Registration is idempotent and crash-consistent. Each step is observable afterwards, so a re-run
finishes whatever an interrupted run left half-done: a thing without a certificate gets one; a
certificate whose credentials were written but which was never attached (the run stopped between
minting and attaching) is picked up from its `device.json` and attached, rather than minting
another; a device with an active certificate is left alone unless `rotate` is asked for.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotpipe.aws import Aws, Transient
from iotpipe.errors import AwsError, IotpipeError, UsageError
from iotpipe.naming import Names
from iotpipe.permissions import Grant, reads, writes

# AWS's patterns for thing names and thing attributes.
THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
ATTRIBUTE_NAME = re.compile(r"[a-zA-Z0-9_.,@/:#-]{1,128}")
ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")
# A thing with a thing type may carry up to 50 attributes.
MAX_ATTRIBUTES = 50

DEFAULT_CONCURRENCY = 16
# Aws keeps 32 pooled connections per client; more workers would only queue for them.
MAX_CONCURRENCY = 32
INITIAL_DESIRED_STATE: dict[str, Any] = {"reporting_interval_s": 60}
MQTT_PORT = 8883
ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"

CERTIFICATE_FILE = "certificate.pem.crt"
PRIVATE_KEY_FILE = "private.pem.key"
DEVICE_FILE = "device.json"

_NOT_FOUND = ("ResourceNotFoundException",)
# DetachThingPrincipal "is asynchronous. It might take several seconds for the detachment to
# propagate" (IoT API reference); meanwhile AWS refuses to delete the thing ("Cannot delete.
# Thing X is still attached to one or more principals") and the certificate ("Things must be
# detached before deletion (arn: ...)").
DETACH_PENDING = (
    Transient("thing-still-attached", "InvalidRequestException", "still attached"),
    Transient("certificate-still-attached", "DeleteConflictException", "must be detached"),
)


# Input ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceSpec:
    """One device to register: its thing name and the attributes to give the thing."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)
    # Where the name came from ("line 4 of fleet.csv"), for messages about it.
    origin: str = ""


# AWS allows a leading hyphen; iotpipe does not: every later command (`devices show -x`) would
# read such a name as an option, and the device could not be addressed.
THING_NAME_RULE = (
    "1-128 characters: letters, digits, colons, underscores and hyphens, not starting with a hyphen"
)


def check_thing_name(name: str, where: str = "") -> None:
    if not THING_NAME.fullmatch(name) or name.startswith("-"):
        place = f" ({where})" if where else ""
        raise UsageError(
            f"invalid device name {name!r}{place}: a device name is {THING_NAME_RULE}",
            hint="a name starting with a hyphen would read as an option in every later command"
            if name.startswith("-")
            else None,
        )


def parse_attribute(text: str, where: str = "") -> tuple[str, str]:
    """`key=value` into a checked (key, value) pair."""
    place = f" ({where})" if where else ""
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"attribute {text!r}{place} is not key=value")
    check_attribute(key, value, where)
    return key, value


def check_attribute(key: str, value: str, where: str = "") -> None:
    place = f" ({where})" if where else ""
    if not ATTRIBUTE_NAME.fullmatch(key):
        raise UsageError(
            f"invalid attribute name {key!r}{place}",
            hint="use 1-128 characters from a-z A-Z 0-9 _ . , @ / : # -",
        )
    if not ATTRIBUTE_VALUE.fullmatch(value):
        raise UsageError(
            f"invalid value {value!r} for attribute {key!r}{place}",
            hint="use up to 800 characters from a-z A-Z 0-9 _ . , @ / : # = [ ] -",
        )


def specs_from_names(names: Sequence[str], attributes: dict[str, str]) -> list[DeviceSpec]:
    specs = []
    for position, name in enumerate(names, start=1):
        where = f"argument {position}"
        check_thing_name(name, where)
        specs.append(DeviceSpec(name, dict(attributes), where))
    return check_unique(specs)


def numbered_names(prefix: str, count: int, start: int = 1) -> list[str]:
    """prefix0001, prefix0002, ...: four digits at least, so names stay the same as fleets grow."""
    return [f"{prefix}{number:04d}" for number in range(start, start + count)]


def specs_from_count(
    prefix: str, count: int, start: int, attributes: dict[str, str]
) -> list[DeviceSpec]:
    specs = []
    for name in numbered_names(prefix, count, start):
        check_thing_name(name, f"--prefix {prefix!r}")
        specs.append(DeviceSpec(name, dict(attributes), "--count"))
    return specs


def specs_from_csv(path: Path, attributes: dict[str, str]) -> list[DeviceSpec]:
    """Read `name,attr1,attr2,...` (a header row naming the attribute columns, then one device per
    line; an empty cell leaves that attribute out). Blank lines and lines starting with # are
    skipped. Every bad line is reported, by line number, before anything is registered."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"CSV file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read CSV file {path}: {exc}") from None
    lines = [line if not line.lstrip().startswith("#") else "" for line in text.splitlines()]
    reader = csv.reader(lines)
    problems: list[str] = []
    header: list[str] | None = None
    specs: list[DeviceSpec] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if header is None:
                header = cells
                problems.extend(_header_problems(header, path, line))
                if problems:
                    break
                continue
            if len(cells) != len(header):
                problems.append(
                    f"{path}:{line}: {len(cells)} field(s), the header has {len(header)}"
                )
                continue
            where = f"{path}:{line}"
            try:
                check_thing_name(cells[0], where)
                row_attributes = dict(attributes)
                for key, value in zip(header[1:], cells[1:], strict=True):
                    if value:
                        check_attribute(key, value, where)
                        row_attributes[key] = value
            except UsageError as exc:
                problems.append(f"{where}: {exc.message}")
                continue
            specs.append(DeviceSpec(cells[0], row_attributes, f"line {line}"))
    except csv.Error as exc:
        problems.append(f"{path}:{reader.line_num}: {exc}")
    if header is None and not problems:
        problems.append(f"{path}: no header row and no devices")
    if not problems:
        try:
            return check_unique(specs)
        except UsageError as exc:
            problems.append(f"{path}: {exc.message}")
    raise UsageError(
        f"{path} has {len(problems)} bad line(s):\n  " + "\n  ".join(problems[:50]),
        hint="expected a header row `name,<attribute>,...` then one device per line",
    )


def _header_problems(header: list[str], path: Path, line: int) -> list[str]:
    problems = []
    if header[0].lower() != "name":
        problems.append(f"{path}:{line}: the header's first column must be `name`")
    if len(header) - 1 > MAX_ATTRIBUTES:
        problems.append(f"{path}:{line}: more than {MAX_ATTRIBUTES} attribute columns")
    for key in header[1:]:
        if not ATTRIBUTE_NAME.fullmatch(key):
            problems.append(f"{path}:{line}: invalid attribute column name {key!r}")
    if len(set(header)) != len(header):
        problems.append(f"{path}:{line}: a column name appears twice")
    return problems


def check_unique(specs: list[DeviceSpec]) -> list[DeviceSpec]:
    seen: dict[str, DeviceSpec] = {}
    for spec in specs:
        if spec.name in seen:
            first = seen[spec.name]
            raise UsageError(
                f"device {spec.name!r} is given twice ({first.origin} and {spec.origin})",
                hint="each device may appear once per request",
            )
        seen[spec.name] = spec
    for spec in specs:
        if len(spec.attributes) > MAX_ATTRIBUTES:
            raise UsageError(f"device {spec.name!r} has more than {MAX_ATTRIBUTES} attributes")
    return specs


def parse_desired(text: str) -> dict[str, Any]:
    """The --desired argument: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"--desired is not valid JSON: {exc}",
            hint="e.g. --desired '{\"reporting_interval_s\": 30}'",
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            "--desired must be a JSON object", hint='e.g. {"reporting_interval_s": 30}'
        )
    return value


# Registration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisterOptions:
    out_dir: Path
    force: bool = False
    rotate: bool = False
    desired: dict[str, Any] = field(default_factory=lambda: dict(INITIAL_DESIRED_STATE))


@dataclass
class Registration:
    """What happened to one device. Never holds key material."""

    name: str
    status: str  # created | completed | exists | rotated | failed
    certificate_id: str | None = None
    directory: str | None = None
    note: str | None = None
    error: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # The hint goes with the error message, not in the record.
        return {k: v for k, v in asdict(self).items() if k != "hint"}


@dataclass(frozen=True)
class _Cert:
    arn: str
    id: str
    status: str


class Fleet:
    """The stack's devices in one account/region."""

    def __init__(self, aws: Aws, names: Names, *, basic_ingest: bool) -> None:
        self.aws = aws
        self.names = names
        self.basic_ingest = basic_ingest
        self._ats_endpoint: str | None = None
        self._data: Aws | None = None

    # Context ---------------------------------------------------------------------------------
    def topic(self, thing: str) -> str:
        topic = self.names.telemetry_topic(thing)
        # Basic Ingest sends straight to the rule, skipping the message broker's charge.
        return f"$aws/rules/{self.names.topic_rule}/{topic}" if self.basic_ingest else topic

    @property
    def ats_endpoint(self) -> str:
        if self._ats_endpoint is None:
            reply = self.aws.call(
                "iot",
                "describe_endpoint",
                resource="IoT data endpoint",
                endpointType="iot:Data-ATS",
            )
            self._ats_endpoint = str(reply["endpointAddress"])
        return self._ats_endpoint

    @property
    def data(self) -> Aws:
        """The IoT data plane (shadows): the account's ATS endpoint, unless every call is sent
        to one endpoint (--endpoint-url or boto3's AWS_ENDPOINT_URL variables)."""
        if self._data is None:
            if not (self.aws.endpoint_url or _endpoint_from_environment()):
                self.aws.use_endpoint("iot-data", f"https://{self.ats_endpoint}")
            self._data = self.aws
        return self._data

    def check_prerequisites(self) -> None:
        """The thing type and the device policy come from `iotpipe up`; fail clearly without."""
        names = self.names
        lookups = {
            f"thing type {names.thing_type}": (
                "describe_thing_type",
                {"thingTypeName": names.thing_type},
            ),
            f"IoT policy {names.device_policy}": (
                "get_policy",
                {"policyName": names.device_policy},
            ),
        }
        missing = [
            label
            for label, (operation, params) in lookups.items()
            if self.aws.call("iot", operation, resource=label, missing=_NOT_FOUND, **params) is None
        ]
        if missing:
            raise AwsError(
                f"the stack's device prerequisites are missing: {', '.join(missing)}",
                resource=f"stack {self.names.stack}",
                hint="run `iotpipe up` first",
            )
        # Resolve the endpoint once, before any worker needs it.
        _ = self.ats_endpoint, self.data

    def register_many(
        self,
        specs: Sequence[DeviceSpec],
        options: RegisterOptions,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        on_done: Callable[[Registration], None] | None = None,
    ) -> list[Registration]:
        """Register every device with a bounded pool; one device's failure stops no other.
        Results come back in the order of `specs`."""
        self.check_prerequisites()
        # A new output directory is private from the start; an existing one is the user's.
        options.out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        results: dict[str, Registration] = {}
        pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        try:
            futures = [pool.submit(self.register, spec, options) for spec in specs]
            for future in as_completed(futures):
                result = future.result()
                results[result.name] = result
                if on_done is not None:
                    on_done(result)
        finally:
            # On Ctrl-C, devices in flight finish their current call; queued ones never start.
            pool.shutdown(wait=True, cancel_futures=True)
        return [results[spec.name] for spec in specs]

    def register(self, spec: DeviceSpec, options: RegisterOptions) -> Registration:
        directory = options.out_dir / spec.name
        try:
            return self._register(spec, options, directory)
        except (IotpipeError, OSError) as exc:
            message = exc.message if isinstance(exc, IotpipeError) else f"device {spec.name}: {exc}"
            hint = exc.hint if isinstance(exc, IotpipeError) else None
            return Registration(
                spec.name, "failed", directory=str(directory), error=message, hint=hint
            )

    def _register(
        self, spec: DeviceSpec, options: RegisterOptions, directory: Path
    ) -> Registration:
        name = spec.name
        thing = self._describe_thing(name)
        created = thing is None
        if thing is None:
            self._call(
                "create_thing",
                name,
                thingName=name,
                thingTypeName=self.names.thing_type,
                attributePayload={"attributes": spec.attributes, "merge": False},
            )
            certs: list[_Cert] = []
        else:
            self._converge_thing(thing, spec)
            certs = self._certificates(name)
        active = [cert for cert in certs if cert.status == "ACTIVE"]

        if active and not options.rotate:
            for cert in active:
                self._ensure_policy(name, cert)
            self._ensure_shadow(name, options.desired, known_missing=False)
            note = None
            if not (directory / PRIVATE_KEY_FILE).exists():
                note = f"no credentials in {directory}; --rotate mints new ones"
            return Registration(name, "exists", active[0].id, str(directory), note=note)

        attached = {cert.arn for cert in certs}
        cert = self._pending_certificate(name, directory, attached)
        if cert is None:
            key_path = directory / PRIVATE_KEY_FILE
            replace = options.force or options.rotate
            # Checked before minting, so a refusal leaves no stray certificate behind.
            if key_path.exists() and not replace:
                raise UsageError(
                    f"device {name}: private key {key_path} already exists",
                    hint="pass --force to replace it (the old key stops working)",
                )
            cert = self._mint(name, directory, replace=replace)
        self._call("attach_policy", name, policyName=self.names.device_policy, target=cert.arn)
        self._call("attach_thing_principal", name, thingName=name, principal=cert.arn)
        # Only now, with the new certificate usable, are the old ones retired.
        retired = [old for old in certs if old.arn != cert.arn] if options.rotate else []
        for old in retired:
            self._retire(name, old)
        self._ensure_shadow(name, options.desired, known_missing=created)
        if created:
            status = "created"
        elif active:
            status = "rotated"
        else:
            status = "completed"
        note = f"retired {', '.join(c.id[:12] for c in retired)}" if retired else None
        return Registration(name, status, cert.id, str(directory), note=note)

    def _mint(self, name: str, directory: Path, *, replace: bool) -> _Cert:
        reply = self._call("create_keys_and_certificate", name, setAsActive=True)
        cert = _Cert(reply["certificateArn"], reply["certificateId"], "ACTIVE")
        info = {
            "thing_name": name,
            "client_id": name,
            "endpoint": self.ats_endpoint,
            "port": MQTT_PORT,
            "topic": self.topic(name),
            "certificate_id": cert.id,
            "certificate_arn": cert.arn,
            "certificate_file": CERTIFICATE_FILE,
            "private_key_file": PRIVATE_KEY_FILE,
            "root_ca_url": ROOT_CA_URL,
        }
        try:
            _make_private_dir(directory)
            _write_private(directory / CERTIFICATE_FILE, reply["certificatePem"], replace=True)
            _write_private(
                directory / PRIVATE_KEY_FILE, reply["keyPair"]["PrivateKey"], replace=replace
            )
            # Written last: it names the certificate, so a re-run can resume from here.
            _write_private(directory / DEVICE_FILE, json.dumps(info, indent=2) + "\n", replace=True)
        except (OSError, KeyboardInterrupt):
            # The key is gone with the failed (or interrupted) write: delete the certificate
            # nobody can use.
            with contextlib.suppress(IotpipeError):
                self._call("update_certificate", name, certificateId=cert.id, newStatus="INACTIVE")
                self._call("delete_certificate", name, certificateId=cert.id)
            raise
        return cert

    def _pending_certificate(self, name: str, directory: Path, attached: set[str]) -> _Cert | None:
        """A certificate whose credentials were written by an interrupted run but which never got
        attached to the thing: still active, and its key is on disk."""
        info = _read_device_file(directory)
        if info is None or info.get("thing_name") != name:
            return None
        if not (directory / PRIVATE_KEY_FILE).exists():
            return None
        cert_id = str(info.get("certificate_id", ""))
        if not cert_id:
            return None
        reply = self.aws.call(
            "iot",
            "describe_certificate",
            resource=f"device {name}",
            missing=_NOT_FOUND,
            certificateId=cert_id,
        )
        if reply is None:
            return None
        description = reply["certificateDescription"]
        cert = _Cert(description["certificateArn"], cert_id, description["status"])
        if cert.status != "ACTIVE" or cert.arn in attached:
            return None
        return cert

    def _retire(self, name: str, cert: _Cert) -> None:
        # REVOKED, not INACTIVE: anyone allowed iot:UpdateCertificate could re-activate an
        # inactive certificate, while "once a certificate is revoked, its status can't be
        # changed" (IoT developer guide, revoke-ca-cert.html).
        if cert.status != "REVOKED":
            self._call("update_certificate", name, certificateId=cert.id, newStatus="REVOKED")
        self._call("detach_thing_principal", name, thingName=name, principal=cert.arn)
        self._detach_policies(name, cert)

    def _converge_thing(self, thing: dict[str, Any], spec: DeviceSpec) -> None:
        thing_type = thing.get("thingTypeName")
        if thing_type not in (None, self.names.thing_type):
            raise AwsError(
                f"thing {spec.name} exists with thing type {thing_type}, not this stack's "
                f"{self.names.thing_type}",
                resource=f"device {spec.name}",
                hint="choose another name; a thing of another stack is never taken over",
            )
        current = thing.get("attributes") or {}
        changed = {k: v for k, v in spec.attributes.items() if current.get(k) != v}
        if thing_type == self.names.thing_type and not changed:
            return
        self._call(
            "update_thing",
            spec.name,
            thingName=spec.name,
            thingTypeName=self.names.thing_type,
            attributePayload={"attributes": changed, "merge": True},
        )

    def _ensure_policy(self, name: str, cert: _Cert) -> None:
        if self.names.device_policy not in self._policies_of(name, cert):
            self._call("attach_policy", name, policyName=self.names.device_policy, target=cert.arn)

    def _ensure_shadow(self, name: str, desired: dict[str, Any], *, known_missing: bool) -> None:
        if not known_missing and self.shadow(name) is not None:
            return
        self.update_desired(name, desired)

    # Inspection ------------------------------------------------------------------------------
    def list(
        self, attribute: tuple[str, str] | None = None, page_size: int = 250
    ) -> Iterator[dict[str, Any]]:
        """The stack's things (its thing type), across every page."""
        params: dict[str, Any] = {"thingTypeName": self.names.thing_type, "maxResults": page_size}
        if attribute is not None:
            params["attributeName"], params["attributeValue"] = attribute
        for thing in self.aws.paginate(
            "iot",
            "list_things",
            resource=f"things of {self.names.thing_type}",
            key="things",
            **params,
        ):
            yield {
                "name": thing["thingName"],
                "attributes": thing.get("attributes") or {},
                "version": thing.get("version"),
            }

    def show(self, name: str) -> dict[str, Any]:
        thing = self._describe_thing(name)
        if thing is None:
            raise AwsError(
                f"device {name} not found", hint="`iotpipe devices list` shows the fleet"
            )
        certificates = []
        for cert in self._certificates(name):
            certificates.append(
                {
                    "id": cert.id,
                    "status": cert.status,
                    "policy_attached": self.names.device_policy in self._policies_of(name, cert),
                }
            )
        return {
            "name": name,
            "thing_type": thing.get("thingTypeName"),
            "attributes": thing.get("attributes") or {},
            "topic": self.topic(name),
            "certificates": certificates,
            "shadow": self.shadow(name),
            "last_seen": self.last_seen(name),
        }

    def shadow(self, name: str) -> dict[str, Any] | None:
        reply = self.data.call(
            "iot-data",
            "get_thing_shadow",
            resource=f"shadow of {name}",
            missing=_NOT_FOUND,
            thingName=name,
        )
        if reply is None:
            return None
        return json.loads(reply["payload"].read())

    def update_desired(self, name: str, desired: dict[str, Any]) -> dict[str, Any]:
        payload = json.dumps({"state": {"desired": desired}})
        reply = self.data.call(
            "iot-data",
            "update_thing_shadow",
            resource=f"shadow of {name}",
            thingName=name,
            payload=payload,
        )
        return json.loads(reply["payload"].read())

    def require(self, name: str) -> dict[str, Any]:
        thing = self._describe_thing(name)
        if thing is None:
            raise AwsError(
                f"device {name} not found", hint="`iotpipe devices list` shows the fleet"
            )
        return thing

    def last_seen(self, name: str) -> dict[str, Any] | None:
        """The newest reading the processor recorded for the device, if any."""
        reply = self.aws.call(
            "dynamodb",
            "get_item",
            resource=f"table {self.names.device_state_table}",
            missing=_NOT_FOUND,
            TableName=self.names.device_state_table,
            Key={"device_id": {"S": name}},
            ProjectionExpression="ts, received_at",
        )
        item = (reply or {}).get("Item")
        if not item:
            return None
        return {key: _epoch_ms_iso(item[key]["N"]) for key in ("ts", "received_at") if key in item}

    # Revocation ------------------------------------------------------------------------------
    def certificates(self, name: str) -> list[dict[str, str]]:
        return [{"id": c.id, "status": c.status} for c in self._certificates(name)]

    def revoke(
        self, name: str, *, delete: bool = False, credentials: Path | None = None
    ) -> dict[str, Any]:
        """Revoke and detach every certificate of the device (and with `delete`, delete the
        certificates, the shadow and the thing); remove its credentials under `credentials`.
        Safe to repeat."""
        self.require(name)
        certs = self._certificates(name)
        for cert in certs:
            self._retire(name, cert)
        if delete:
            self._wait_detached(name, certs)
            for cert in certs:
                self.aws.call(
                    "iot",
                    "delete_certificate",
                    resource=f"device {name}",
                    retry_on=DETACH_PENDING,
                    missing=_NOT_FOUND,
                    certificateId=cert.id,
                )
            self.data.call(
                "iot-data",
                "delete_thing_shadow",
                resource=f"shadow of {name}",
                missing=_NOT_FOUND,
                thingName=name,
            )
            self.aws.call(
                "iot",
                "delete_thing",
                resource=f"device {name}",
                retry_on=DETACH_PENDING,
                missing=_NOT_FOUND,
                thingName=name,
            )
        removed = None
        if credentials is not None:
            removed = remove_credentials(credentials / name, name, {c.id for c in certs})
        return {
            "name": name,
            "certificates": [c.id for c in certs],
            "revoked": [c.id for c in certs if c.status != "REVOKED"],
            "deleted": delete,
            "credentials_removed": str(removed) if removed else None,
        }

    def _wait_detached(self, name: str, certs: list[_Cert]) -> None:
        """DetachThingPrincipal takes effect after a few seconds; the thing and certificates
        can be deleted only then."""
        arns = {cert.arn for cert in certs}

        def detached() -> bool:
            listed = self.aws.paginate(
                "iot",
                "list_thing_principals",
                resource=f"device {name}",
                key="principals",
                thingName=name,
            )
            return not arns.intersection(listed)

        self.aws.wait_for(
            detached, resource=f"device {name}", what="for its certificates to be detached"
        )

    # AWS helpers -----------------------------------------------------------------------------
    def _call(self, operation: str, name: str, **params: Any) -> Any:
        return self.aws.call("iot", operation, resource=f"device {name}", **params)

    def _describe_thing(self, name: str) -> dict[str, Any] | None:
        return self.aws.call(
            "iot", "describe_thing", resource=f"device {name}", missing=_NOT_FOUND, thingName=name
        )

    def _certificates(self, name: str) -> list[_Cert]:
        certs = []
        for arn in self.aws.paginate(
            "iot",
            "list_thing_principals",
            resource=f"device {name}",
            key="principals",
            thingName=name,
        ):
            if ":cert/" not in arn:
                continue  # only X.509 certificates are ours to manage
            cert_id = arn.rsplit("/", 1)[1]
            reply = self._call("describe_certificate", name, certificateId=cert_id)
            certs.append(_Cert(arn, cert_id, reply["certificateDescription"]["status"]))
        return certs

    def _policies_of(self, name: str, cert: _Cert) -> list[str]:
        return [
            policy["policyName"]
            for policy in self.aws.paginate(
                "iot",
                "list_attached_policies",
                resource=f"device {name}",
                key="policies",
                target=cert.arn,
            )
        ]

    def _detach_policies(self, name: str, cert: _Cert) -> None:
        for policy in self._policies_of(name, cert):
            self.aws.call(
                "iot",
                "detach_policy",
                resource=f"device {name}",
                missing=_NOT_FOUND,
                policyName=policy,
                target=cert.arn,
            )


# Files ---------------------------------------------------------------------------------------
def _make_private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    os.chmod(path, 0o700)


def _write_private(path: Path, text: str, *, replace: bool) -> None:
    """Write a 0600 file that is never readable by anyone else, not even for a moment: created
    exclusively with its final mode, then moved (or, without `replace`, linked) into place."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    descriptor = os.open(temporary, flags, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            # link() fails when the target exists: an existing key is never overwritten.
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def remove_credentials(directory: Path, name: str, certificate_ids: set[str]) -> Path | None:
    """Delete a revoked device's credential folder, if it is the one `register` wrote for one
    of these certificates (a folder of another device or certificate is left alone)."""
    info = _read_device_file(directory)
    if info is None or info.get("thing_name") != name:
        return None
    if info.get("certificate_id") not in certificate_ids:
        return None
    shutil.rmtree(directory)
    return directory


def _read_device_file(directory: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((directory / DEVICE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _endpoint_from_environment() -> bool:
    return bool(
        os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_IOT_DATA_PLANE")
    )


def _epoch_ms_iso(value: str) -> str:
    return datetime.fromtimestamp(int(float(value)) / 1000, tz=UTC).isoformat(timespec="seconds")


# IAM permissions of the device commands (iotpipe.permissions). Thing names are the user's and
# certificate ids random, so the account's things and certificates are the narrowest ARNs.
_THINGS_WHY = "thing names are the user's and certificate ids random; IAM offers no stack scope"


def _things(names: Names) -> list[str]:
    return [names.arn("iot", "thing/*")]


def _certificates(names: Names) -> list[str]:
    return [names.arn("iot", "cert/*")]


def _finding_grants(names: Names) -> list[Grant]:
    """A device, its certificates and their policies; the IoT data endpoint (shadows)."""
    return [
        reads(["iot:ListThings"], "*", why="IAM has no resource type for iot:ListThings"),
        reads(["iot:DescribeThing"], _things(names), why=_THINGS_WHY),
        reads(["iot:DescribeCertificate"], _certificates(names), why=_THINGS_WHY),
        reads(
            ["iot:ListThingPrincipals", "iot:ListAttachedPolicies", "iot:DescribeEndpoint"],
            "*",
            why="IAM has no resource type for these IoT actions",
        ),
    ]


def listing_grants(names: Names) -> list[Grant]:
    """`devices list` and `devices show`."""
    return [
        *_finding_grants(names),
        reads(["iot:GetThingShadow"], _things(names), why=_THINGS_WHY),
        # The device's last reading, from device state.
        reads(["dynamodb:GetItem"], names.device_state_table_arn),
    ]


def revoke_grants(names: Names) -> list[Grant]:
    """`devices revoke` (and `down --delete-data`, which revokes and deletes every device)."""
    return [
        *_finding_grants(names),
        writes(
            ["iot:UpdateCertificate", "iot:DeleteCertificate", "iot:DetachPolicy"],
            _certificates(names),
            why=_THINGS_WHY,
        ),
        writes(
            ["iot:DetachThingPrincipal"],
            "*",
            why="IAM has no resource type for iot:DetachThingPrincipal",
        ),
        writes(["iot:DeleteThing", "iot:DeleteThingShadow"], _things(names), why=_THINGS_WHY),
    ]


def grants(names: Names) -> list[Grant]:
    """Every `devices` command: register, list, show, shadow, revoke."""
    return [
        *listing_grants(names),
        *revoke_grants(names),
        reads(["iot:DescribeThingType"], names.arn("iot", f"thingtype/{names.thing_type}")),
        reads(["iot:GetPolicy"], names.arn("iot", f"policy/{names.device_policy}")),
        writes(
            ["iot:CreateThing", "iot:UpdateThing", "iot:UpdateThingShadow"],
            _things(names),
            why=_THINGS_WHY,
        ),
        writes(["iot:AttachPolicy"], _certificates(names), why=_THINGS_WHY),
        writes(
            ["iot:CreateKeysAndCertificate", "iot:AttachThingPrincipal"],
            "*",
            why="IAM has no resource type for these IoT actions",
        ),
    ]
