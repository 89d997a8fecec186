"""Devices as AWS treats them: revocation is for good, detaching takes effect later, and `down`
keeps the fleet (with what it needs) unless --delete-data, which revokes and deletes it.

The emulator holds IoT to AWS's rules here (iotpipe/local/aws_rules/iot.py): DetachThingPrincipal
takes effect seconds later, a thing type is deleted only five minutes after its deprecation and
never while things use it, and a revoked certificate cannot be re-activated.
"""

from __future__ import annotations

from pathlib import Path

import botocore.exceptions
import pytest

from iotpipe.aws import Aws
from iotpipe.simulate import active_devices, load_devices
from tests.support import client

THING_TYPE = "test-sensor"
POLICY = "test-device"


@pytest.fixture
def iot(endpoint: str):
    return client(endpoint, "iot")


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    return tmp_path / "devices"


@pytest.fixture
def stack_with_devices(cli, processor_source, creds):
    """A deployed stack with two registered devices."""
    assert cli("up", "--yes").exit_code == 0
    registered = cli("devices", "register", "pump-1", "pump-2", "--yes", "--out-dir", str(creds))
    assert registered.exit_code == 0, registered
    return ["pump-1", "pump-2"]


def statuses(iot) -> dict[str, str]:
    return {c["certificateId"]: c["status"] for c in iot.list_certificates()["certificates"]}


def things(iot) -> list[str]:
    return sorted(t["thingName"] for t in iot.list_things()["things"])


def test_revoked_certificate_cannot_be_reactivated_and_its_credentials_are_removed(
    cli, iot, stack_with_devices, creds
):
    revoked = cli("devices", "revoke", "pump-1", "--yes", "--out-dir", str(creds))

    assert revoked.exit_code == 0, revoked
    [cert_id] = [c for c, s in statuses(iot).items() if s != "ACTIVE"]
    assert statuses(iot)[cert_id] == "REVOKED"
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        iot.update_certificate(certificateId=cert_id, newStatus="ACTIVE")
    assert refused.value.response["Error"]["Code"] == "CertificateStateException"
    assert not (creds / "pump-1").exists()
    assert (creds / "pump-2" / "private.pem.key").exists()


def test_revoke_delete_waits_for_the_asynchronous_detach(cli, iot, stack_with_devices, creds):
    deleted = cli("devices", "revoke", "pump-1", "--delete", "--yes", "--out-dir", str(creds))

    assert deleted.exit_code == 0, deleted
    assert things(iot) == ["pump-2"]
    assert list(statuses(iot).values()) == ["ACTIVE"]


def test_simulate_never_uses_a_revoked_devices_credentials(
    cli, endpoint, stack_with_devices, creds, tmp_path
):
    # Revoked with another --out-dir, so the credentials stay where simulate looks.
    elsewhere = str(tmp_path / "elsewhere")
    assert cli("devices", "revoke", "pump-1", "--yes", "--out-dir", elsewhere).exit_code == 0
    devices = load_devices(creds)
    assert [d.thing_name for d in devices] == ["pump-1", "pump-2"]

    usable, left_out = active_devices(Aws(region="us-east-1", endpoint_url=endpoint), devices)

    assert [d.thing_name for d in usable] == ["pump-2"]
    assert left_out == ["pump-1 (certificate revoked)"]


def test_plan_names_the_registered_devices(cli, stack_with_devices):
    plan = cli("plan", "-v", "--output", "json")

    assert plan.exit_code == 0, plan
    [thing_type] = [s for s in plan.json["steps"] if s["kind"] == "iot.thing-type"]
    assert thing_type["action"] == "no-change"
    assert "registered devices: pump-1, pump-2" in thing_type["note"]


def test_down_keeps_the_devices_and_the_thing_type_and_policy_they_need(
    cli, iot, stack_with_devices
):
    result = cli("down", "--yes", "--output", "json")

    assert result.exit_code == 0, result
    steps = result.json["steps"]
    kept = {(s["kind"], s["name"]): s["note"] for s in steps if s["action"] == "keep"}
    assert "2 device(s): pump-1, pump-2" in kept[("iot.devices", THING_TYPE)]
    assert ("iot.thing-type", THING_TYPE) in kept
    assert ("iot.policy", POLICY) in kept
    assert "pump-1" in result.stderr and "--delete-data" in result.stderr
    assert things(iot) == ["pump-1", "pump-2"]
    assert sorted(statuses(iot).values()) == ["ACTIVE", "ACTIVE"]
    assert iot.describe_thing_type(thingTypeName=THING_TYPE)["thingTypeMetadata"].get(
        "deprecated"
    ) in (None, False)


def test_down_delete_data_revokes_and_deletes_the_devices_and_leaves_the_type_for_later(
    cli, iot, stack_with_devices, creds, aws_clock
):
    plan = cli("down", "--yes", "--delete-data", "--devices-dir", str(creds))

    assert plan.exit_code == 0, plan
    assert things(iot) == []
    assert statuses(iot) == {}
    assert list(creds.iterdir()) == []
    assert iot.list_policies()["policies"] == []
    # Deprecated, and deletable only five minutes later: said plainly, not waited for.
    assert iot.describe_thing_type(thingTypeName=THING_TYPE)["thingTypeMetadata"]["deprecated"]
    assert "run `iotpipe down` again" in plan.stderr

    aws_clock.advance(301)
    again = cli("down", "--yes", "--delete-data", "--output", "json")
    assert again.exit_code == 0, again
    assert [(s["kind"], s["action"]) for s in again.json["steps"]] == [("iot.thing-type", "delete")]
    with pytest.raises(botocore.exceptions.ClientError):
        iot.describe_thing_type(thingTypeName=THING_TYPE)


def test_up_after_a_down_that_left_the_type_deprecated_takes_it_back_into_use(
    cli, iot, stack_with_devices, creds
):
    assert cli("down", "--yes", "--delete-data", "--devices-dir", str(creds)).exit_code == 0
    assert cli("up", "--yes").exit_code == 0
    registered = cli("devices", "register", "pump-3", "--yes", "--out-dir", str(creds))
    assert registered.exit_code == 0, registered


# The rules themselves, straight against the emulator.
def test_thing_types_are_deleted_only_unused_and_five_minutes_after_deprecation(iot, aws_clock):
    iot.create_thing_type(thingTypeName="kind")
    iot.create_thing(thingName="t1", thingTypeName="kind")

    def delete_refused() -> str:
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            iot.delete_thing_type(thingTypeName="kind")
        return refused.value.response["Error"]["Code"]

    assert delete_refused() == "InvalidRequestException"  # not deprecated
    iot.deprecate_thing_type(thingTypeName="kind")
    assert delete_refused() == "InvalidRequestException"  # a thing uses it
    with pytest.raises(botocore.exceptions.ClientError):
        iot.create_thing(thingName="t2", thingTypeName="kind")
    iot.delete_thing(thingName="t1")
    assert delete_refused() == "InvalidRequestException"  # deprecated moments ago
    aws_clock.advance(300)
    iot.delete_thing_type(thingTypeName="kind")


def test_a_detached_certificate_stays_listed_for_a_few_seconds(iot, aws_clock):
    iot.create_thing(thingName="t1")
    cert = iot.create_keys_and_certificate(setAsActive=False)
    iot.attach_thing_principal(thingName="t1", principal=cert["certificateArn"])
    iot.detach_thing_principal(thingName="t1", principal=cert["certificateArn"])

    assert iot.list_thing_principals(thingName="t1")["principals"] == [cert["certificateArn"]]
    for delete in (
        lambda: iot.delete_thing(thingName="t1"),
        lambda: iot.delete_certificate(certificateId=cert["certificateId"]),
    ):
        with pytest.raises(botocore.exceptions.ClientError):
            delete()
    aws_clock.advance(10)
    assert iot.list_thing_principals(thingName="t1")["principals"] == []
    iot.delete_certificate(certificateId=cert["certificateId"])
    iot.delete_thing(thingName="t1")
