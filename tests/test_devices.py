"""`iotpipe devices ...` against the moto server: registration, idempotency, rotation, revocation,
failure isolation, crash recovery, and input rejected before any AWS call."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import boto3
import pytest

from iotpipe.aws import Aws
from iotpipe.devices import Fleet
from iotpipe.naming import Names
from tests.faults import Faults

STACK = "test"
THING_TYPE = "test-sensor"
POLICY = "test-device"
ACCOUNT = "123456789012"


@pytest.fixture
def iot(endpoint: str):
    return boto3.client("iot", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def iot_data(endpoint: str):
    return boto3.client("iot-data", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def stack_iot(iot) -> None:
    """The thing type and device policy that `iotpipe up` provides."""
    iot.create_thing_type(thingTypeName=THING_TYPE)
    iot.create_policy(
        policyName=POLICY,
        policyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "iot:Connect",
                        "Resource": "arn:aws:iot:us-east-1:123456789012:client/"
                        "${iot:Connection.Thing.ThingName}",
                    }
                ],
            }
        ),
    )


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "creds"


@pytest.fixture
def register(cli, out_dir: Path, stack_iot):
    """`iotpipe devices register ARGS... --yes --out-dir <tmp>`; checks no key leaks to output."""

    def invoke(*args: str):
        result = cli("devices", "register", *args, "--yes", "--out-dir", str(out_dir))
        assert "PRIVATE KEY" not in result.stdout + result.stderr
        return result

    return invoke


def things(iot) -> set[str]:
    names = set()
    for page in iot.get_paginator("list_things").paginate():
        names.update(t["thingName"] for t in page["things"])
    return names


def certificates_of(iot, thing: str) -> list[dict]:
    principals = iot.list_thing_principals(thingName=thing)["principals"]
    return [
        iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])["certificateDescription"]
        for arn in principals
    ]


def policies_of(iot, cert_arn: str) -> list[str]:
    return [p["policyName"] for p in iot.list_attached_policies(target=cert_arn)["policies"]]


def all_certificates(iot) -> dict[str, str]:
    return {c["certificateId"]: c["status"] for c in iot.list_certificates()["certificates"]}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_registered(iot, iot_data, out_dir: Path, name: str) -> dict:
    certs = certificates_of(iot, name)
    assert [c["status"] for c in certs] == ["ACTIVE"], name
    assert policies_of(iot, certs[0]["certificateArn"]) == [POLICY]
    shadow = json.loads(iot_data.get_thing_shadow(thingName=name)["payload"].read())
    assert shadow["state"]["desired"] == {"reporting_interval_s": 60}
    device_dir = out_dir / name
    assert mode(device_dir) == 0o700
    assert mode(device_dir / "private.pem.key") == 0o600
    assert (device_dir / "private.pem.key").read_text().startswith("-----BEGIN RSA PRIVATE KEY")
    assert (device_dir / "certificate.pem.crt").read_text().startswith("-----BEGIN CERTIFICATE")
    info = json.loads((device_dir / "device.json").read_text())
    assert "PRIVATE KEY" not in json.dumps(info)
    assert info["certificate_id"] == certs[0]["certificateId"]
    assert info["client_id"] == info["thing_name"] == name
    assert info["endpoint"].endswith("-ats.iot.us-east-1.amazonaws.com")
    # [iot] basic_ingest defaults to true: publish straight to the rule.
    assert info["topic"] == f"$aws/rules/test_telemetry/dt/sensors/{name}/telemetry"
    return certs[0]


def test_register_named_counted_and_csv_devices(register, iot, iot_data, out_dir, tmp_path):
    named = register("hall-1", "hall-2", "hall:3", "--attribute", "site=berlin")
    assert named.exit_code == 0, named
    counted = register("--count", "20", "--prefix", "sensor-")
    assert counted.exit_code == 0, counted
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text(
        "name,site,floor\n"
        "# the roof sensors\n"
        "roof-1,hamburg,7\n"
        "roof-2,hamburg,\n"
        "\n"
        "roof-3,munich,1\nroof-4,munich,2\nroof-5,munich,3\n"
    )
    from_csv = register("--from-csv", str(csv_file))
    assert from_csv.exit_code == 0, from_csv

    expected = (
        {"hall-1", "hall-2", "hall:3"}
        | {f"sensor-{i:04d}" for i in range(1, 21)}
        | {f"roof-{i}" for i in range(1, 6)}
    )
    assert things(iot) == expected
    for name in expected:
        assert_registered(iot, iot_data, out_dir, name)
        assert iot.describe_thing(thingName=name)["thingTypeName"] == THING_TYPE
    assert len(all_certificates(iot)) == len(expected)
    assert mode(out_dir) == 0o700
    assert iot.describe_thing(thingName="hall-2")["attributes"] == {"site": "berlin"}
    assert iot.describe_thing(thingName="roof-1")["attributes"] == {"site": "hamburg", "floor": "7"}
    assert iot.describe_thing(thingName="roof-2")["attributes"] == {"site": "hamburg"}


def test_rerun_creates_nothing_and_makes_no_change(register, cli, iot, out_dir, faults: Faults):
    assert register("a-1", "a-2", "a-3").exit_code == 0
    before = all_certificates(iot)
    key = (out_dir / "a-1" / "private.pem.key").read_text()
    faults.calls.clear()

    again = cli(
        "devices", "register", "a-1", "a-2", "a-3", "--yes", "--out-dir", str(out_dir),
        "--output", "json",
    )  # fmt: skip

    assert again.exit_code == 0, again
    assert [d["status"] for d in again.json["devices"]] == ["exists"] * 3
    assert faults.mutating_calls == []
    assert all_certificates(iot) == before
    assert (out_dir / "a-1" / "private.pem.key").read_text() == key


def test_rotate_leaves_exactly_one_active_certificate(register, iot, iot_data, out_dir, aws_clock):
    assert register("pump-7").exit_code == 0
    old = certificates_of(iot, "pump-7")[0]
    old_key = (out_dir / "pump-7" / "private.pem.key").read_text()

    rotated = register("pump-7", "--rotate")

    assert rotated.exit_code == 0, rotated
    aws_clock.advance(10)  # DetachThingPrincipal takes effect seconds later
    new = assert_registered(iot, iot_data, out_dir, "pump-7")
    assert new["certificateId"] != old["certificateId"]
    assert all_certificates(iot) == {
        old["certificateId"]: "REVOKED",
        new["certificateId"]: "ACTIVE",
    }
    assert policies_of(iot, old["certificateArn"]) == []
    assert (out_dir / "pump-7" / "private.pem.key").read_text() != old_key


def test_revoke_revokes_and_detaches_then_delete_removes_everything(register, cli, iot, aws_clock):
    assert register("valve-1").exit_code == 0
    cert = certificates_of(iot, "valve-1")[0]

    revoked = cli("devices", "revoke", "valve-1", "--yes")

    assert revoked.exit_code == 0, revoked
    aws_clock.advance(10)  # DetachThingPrincipal takes effect seconds later
    assert iot.list_thing_principals(thingName="valve-1")["principals"] == []
    assert all_certificates(iot) == {cert["certificateId"]: "REVOKED"}
    assert policies_of(iot, cert["certificateArn"]) == []

    assert register("valve-1", "--force").exit_code == 0
    second = certificates_of(iot, "valve-1")[0]
    deleted = cli("devices", "revoke", "valve-1", "--delete", "--yes", "--output", "json")
    assert deleted.exit_code == 0, deleted
    assert deleted.json["revoked"] == [second["certificateId"]]
    assert "valve-1" not in things(iot)
    assert second["certificateId"] not in all_certificates(iot)


def test_revoke_without_terminal_or_yes_refuses_before_any_change(register, cli, iot):
    assert register("valve-2").exit_code == 0
    refused = cli("devices", "revoke", "valve-2")
    assert refused.exit_code == 2  # no terminal to ask on: bad usage
    assert "--yes" in refused.stderr
    assert [c["status"] for c in certificates_of(iot, "valve-2")] == ["ACTIVE"]


def test_one_failing_device_does_not_stop_the_others(register, iot, faults: Faults):
    faults.fail("iot", "CreateThing", "InvalidRequestException", "injected refusal", times=1)

    result = register("--count", "6", "--prefix", "f-", "--concurrency", "3")

    assert result.exit_code == 1
    assert "injected refusal" in result.stderr
    assert len(things(iot)) == 5
    failed = set(f"f-{i:04d}" for i in range(1, 7)) - things(iot)
    assert len(failed) == 1 and failed.pop() in result.stderr

    rerun = register("--count", "6", "--prefix", "f-")
    assert rerun.exit_code == 0, rerun
    assert len(things(iot)) == 6
    assert len(all_certificates(iot)) == 6


def test_interrupted_registration_is_completed_not_skipped(register, iot, out_dir, faults):
    # The thing exists but the run stopped before it got a certificate.
    faults.fail("iot", "CreateKeysAndCertificate", "InjectedCrash", times=1)
    assert register("half-1").exit_code == 1
    assert iot.list_thing_principals(thingName="half-1")["principals"] == []

    rerun = register("half-1", "--output", "json")

    assert rerun.exit_code == 0, rerun
    assert rerun.json["devices"][0]["status"] == "completed"
    assert [c["status"] for c in certificates_of(iot, "half-1")] == ["ACTIVE"]


def test_minted_but_unattached_certificate_is_resumed_not_reminted(register, iot, out_dir, faults):
    # Credentials were written, then the run stopped before attaching the certificate.
    faults.fail("iot", "AttachThingPrincipal", "InjectedCrash", times=1)
    assert register("half-2").exit_code == 1
    minted = json.loads((out_dir / "half-2" / "device.json").read_text())["certificate_id"]

    assert register("half-2").exit_code == 0

    assert [c["certificateId"] for c in certificates_of(iot, "half-2")] == [minted]
    assert all_certificates(iot) == {minted: "ACTIVE"}


def test_existing_key_file_is_never_overwritten_without_force(register, cli, iot, out_dir):
    assert register("k-1").exit_code == 0
    assert cli("devices", "revoke", "k-1", "--yes").exit_code == 0
    key = (out_dir / "k-1" / "private.pem.key").read_text()

    refused = register("k-1")

    assert refused.exit_code == 1
    assert "already exists" in refused.stderr and "--force" in refused.stderr
    assert (out_dir / "k-1" / "private.pem.key").read_text() == key
    assert len(all_certificates(iot)) == 1  # nothing minted for a refusal


def test_missing_thing_type_or_policy_fails_with_a_hint(cli, out_dir, faults):
    result = cli("devices", "register", "x-1", "--yes", "--out-dir", str(out_dir))
    assert result.exit_code == 1
    assert "test-sensor" in result.stderr and "test-device" in result.stderr
    assert "iotpipe up" in result.stderr
    assert not [c for c in faults.mutating_calls if c[0] == "iot"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["devices", "register", "ok-1", "bad name"], "invalid device name 'bad name'"),
        (["devices", "register", "x" * 129], "invalid device name"),
        (["devices", "register", "d-1", "d-2", "d-1"], "'d-1' is given twice"),
        (["devices", "register", "--count", "3"], "--count and --prefix go together"),
        (["devices", "register", "--prefix", "p-"], "--count and --prefix go together"),
        (["devices", "register", "--count", "2", "--prefix", "bad/"], "invalid device name"),
        (["devices", "register"], "give the devices one way"),
        (["devices", "register", "a-1", "--count", "2", "--prefix", "p"], "one way"),
        (["devices", "register", "a-1", "--attribute", "nokey"], "is not key=value"),
        (["devices", "register", "a-1", "--attribute", "k=bad value"], "invalid value"),
        (["devices", "register", "--from-csv", "missing.csv"], "not found"),
        (["devices", "shadow", "a-1", "--desired", "{not json"], "--desired is not valid JSON"),
        (["devices", "shadow", "a-1", "--desired", "[1, 2]"], "must be a JSON object"),
        (["devices", "show", "no spaces"], "invalid device name"),
        (["devices", "revoke", "no/slash", "--yes"], "invalid device name"),
        (["devices", "list", "--attribute", "nokey"], "is not key=value"),
    ],
)
def test_bad_input_exits_2_before_any_aws_call(cli, faults: Faults, args, message):
    result = cli(*args, "--yes") if args[1] == "register" else cli(*args)
    assert result.exit_code == 2, result
    assert message in result.stderr
    assert faults.calls == []


def test_bad_csv_lines_are_all_reported_by_line_number(cli, tmp_path, faults: Faults):
    csv_file = tmp_path / "fleet.csv"
    csv_file.write_text(
        "name,site\n"
        "good-1,berlin\n"
        "bad name,berlin\n"
        "good-2,berlin,extra\n"
        "good-3,bad value\n"
        "good-1,again\n"
    )
    result = cli("devices", "register", "--from-csv", str(csv_file), "--yes")
    assert result.exit_code == 2
    assert f"{csv_file}:3: invalid device name 'bad name'" in result.stderr
    assert f"{csv_file}:4: 3 field(s), the header has 2" in result.stderr
    assert f"{csv_file}:5: invalid value 'bad value'" in result.stderr
    assert faults.calls == []

    csv_file.write_text("name,site\ndup-1,a\ndup-1,b\n")
    duplicate = cli("devices", "register", "--from-csv", str(csv_file), "--yes")
    assert duplicate.exit_code == 2
    assert "'dup-1' is given twice (line 2 and line 3)" in duplicate.stderr

    csv_file.write_text("device,site\nx-1,a\n")
    header = cli("devices", "register", "--from-csv", str(csv_file), "--yes")
    assert header.exit_code == 2
    assert f"{csv_file}:1: the header's first column must be `name`" in header.stderr
    assert faults.calls == []


def test_register_refuses_without_terminal_or_yes(cli, stack_iot, iot, faults: Faults):
    result = cli("devices", "register", "n-1")
    assert result.exit_code == 2  # no terminal to ask on: bad usage
    assert "--yes" in result.stderr
    assert faults.calls == []
    assert things(iot) == set()


def test_list_filters_by_attribute_and_outputs_json(register, cli, tmp_path):
    assert register("--count", "4", "--prefix", "east-", "-a", "zone=east").exit_code == 0
    assert register("--count", "3", "--prefix", "west-", "-a", "zone=west").exit_code == 0

    everything = cli("devices", "list", "--output", "json")
    east = cli("devices", "list", "--attribute", "zone=east", "--output", "json")
    table = cli("devices", "list", "-a", "zone=west")

    assert everything.json["count"] == 7
    assert sorted(d["name"] for d in east.json["devices"]) == [f"east-{i:04d}" for i in range(1, 5)]
    assert east.json["devices"][0]["attributes"] == {"zone": "east"}
    assert "west-0003" in table.stdout and "east-0001" not in table.stdout


def test_list_reads_every_page(register, endpoint, faults: Faults):
    assert register("--count", "23", "--prefix", "p-").exit_code == 0
    aws = Aws(endpoint_url=endpoint, region="us-east-1")
    fleet = Fleet(aws, Names(STACK, "sensors", "us-east-1", ACCOUNT), basic_ingest=False)
    faults.calls.clear()

    listed = [d["name"] for d in fleet.list(page_size=5)]

    assert sorted(listed) == [f"p-{i:04d}" for i in range(1, 24)]
    assert faults.calls.count(("iot", "ListThings")) == 5


def test_show_reports_certificate_shadow_and_last_seen(register, cli, endpoint):
    assert register("s-1", "--attribute", "site=kiel").exit_code == 0
    never = cli("devices", "show", "s-1", "--output", "json").json
    assert never["last_seen"] is None

    dynamodb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    dynamodb.create_table(
        TableName="test-device-state",
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.put_item(
        TableName="test-device-state",
        Item={
            "device_id": {"S": "s-1"},
            "ts": {"N": "1767225600000"},
            "received_at": {"N": "1767225601000"},
        },
    )
    shown = cli("devices", "show", "s-1", "--output", "json")

    assert shown.exit_code == 0, shown
    detail = shown.json
    assert detail["attributes"] == {"site": "kiel"}
    assert [c["status"] for c in detail["certificates"]] == ["ACTIVE"]
    assert detail["certificates"][0]["policy_attached"] is True
    assert detail["shadow"]["state"]["desired"] == {"reporting_interval_s": 60}
    assert detail["last_seen"] == {
        "ts": "2026-01-01T00:00:00+00:00",
        "received_at": "2026-01-01T00:00:01+00:00",
    }
    table = cli("devices", "show", "s-1")
    assert "2026-01-01T00:00:00+00:00" in table.stdout and "ACTIVE" in table.stdout
    missing = cli("devices", "show", "nobody")
    assert missing.exit_code == 1 and "device nobody not found" in missing.stderr


def test_shadow_prints_and_updates_desired_state(register, cli, iot_data):
    assert register("sh-1").exit_code == 0

    updated = cli(
        "devices", "shadow", "sh-1", "--desired", '{"reporting_interval_s": 5}', "--yes",
        "--output", "json",
    )  # fmt: skip
    shown = cli("devices", "shadow", "sh-1", "--output", "json")

    assert updated.exit_code == 0, updated
    assert shown.json["shadow"]["state"]["desired"] == {"reporting_interval_s": 5}
    stored = json.loads(iot_data.get_thing_shadow(thingName="sh-1")["payload"].read())
    assert stored["state"]["desired"] == {"reporting_interval_s": 5}


def test_existing_attributes_converge_and_foreign_things_are_not_taken_over(register, iot):
    assert register("c-1", "-a", "site=a", "-a", "floor=1").exit_code == 0
    assert register("c-1", "-a", "site=b").exit_code == 0
    assert iot.describe_thing(thingName="c-1")["attributes"] == {"site": "b", "floor": "1"}

    iot.create_thing_type(thingTypeName="other-sensor")
    iot.create_thing(thingName="theirs", thingTypeName="other-sensor")
    result = register("theirs", "c-2")

    assert result.exit_code == 1
    assert "thing theirs exists with thing type other-sensor" in result.stderr
    assert iot.list_thing_principals(thingName="theirs")["principals"] == []
    assert [c["status"] for c in certificates_of(iot, "c-2")] == ["ACTIVE"]


def test_shadows_go_to_the_accounts_ats_endpoint_unless_one_endpoint_is_given(monkeypatch):
    names = Names(STACK, "sensors", "us-east-1", ACCOUNT)
    monkeypatch.setattr(Fleet, "ats_endpoint", property(lambda self: "abc123-ats.iot.example"))

    direct = Fleet(Aws(region="us-east-1"), names, basic_ingest=False)
    emulated = Fleet(
        Aws(region="us-east-1", endpoint_url="http://127.0.0.1:1"), names, basic_ingest=False
    )

    assert direct.data.client("iot-data").meta.endpoint_url == "https://abc123-ats.iot.example"
    assert emulated.data.client("iot-data").meta.endpoint_url == "http://127.0.0.1:1"
    assert direct.topic("t-1") == "dt/sensors/t-1/telemetry"


def test_a_failed_credentials_write_leaves_no_usable_certificate(register, iot, out_dir):
    (out_dir / "w-1" / "private.pem.key").mkdir(parents=True)  # cannot be replaced by a file

    result = register("w-1", "--force")

    assert result.exit_code == 1
    assert "device w-1:" in result.stderr
    assert all_certificates(iot) == {}
    assert iot.list_thing_principals(thingName="w-1")["principals"] == []


def test_an_interrupt_while_writing_credentials_leaves_no_usable_certificate(
    register, iot, out_dir, monkeypatch
):
    from iotpipe import devices

    original = devices._write_private

    def interrupted(path: Path, text: str, *, replace: bool) -> None:
        if path.name == "private.pem.key":
            raise KeyboardInterrupt  # Ctrl-C between minting and saving the key
        original(path, text, replace=replace)

    monkeypatch.setattr(devices, "_write_private", interrupted)
    result = register("i-1")

    assert result.exit_code == 130
    assert all_certificates(iot) == {}
    assert iot.list_thing_principals(thingName="i-1")["principals"] == []
