"""What the terminal shows: data verbatim, `--output csv`, plans by path, plain text off a
terminal, sorted device lists and config rules in words."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
import typer

from iotpipe.aws import Aws, add_client_hook
from iotpipe.cli import app as typer_app
from iotpipe.cli import run
from iotpipe.commands.common import NO_TABLE_COMMANDS
from iotpipe.config import ConfigError, parse_config
from iotpipe.context import StackContext
from iotpipe.devices import specs_from_csv
from iotpipe.engine.model import Action, Change, Plan, Step
from iotpipe.output import Output
from iotpipe.stack import build_resources
from tests.test_query import athena, seed_results  # noqa: F401 (athena is a fixture)

THING_TYPE = "test-sensor"
# Values rich would read as emoji codes or markup if it were given them as markup.
TRICKY = ["a:b:c", ":x:", ":thumbs_up:", "[bold]loud[/bold]", "[red]"]
BOX = "━┃┏┡│"


@pytest.fixture
def iot(endpoint: str):
    client = boto3.client("iot", endpoint_url=endpoint, region_name="us-east-1")
    client.create_thing_type(thingTypeName=THING_TYPE)
    return client


def _thing(iot, name: str, **attributes: str) -> None:
    iot.create_thing(
        thingName=name,
        thingTypeName=THING_TYPE,
        attributePayload={"attributes": attributes},
    )


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


# Data is printed verbatim --------------------------------------------------------------------


def test_table_cells_titles_and_headers_are_never_markup_or_emoji(capsys) -> None:
    out = Output()
    out.table(["[bold]name", ":x:"], [[value, value] for value in TRICKY], title=":x: [red]t")
    out.info(":x: [bold]info")
    out.warn(":thumbs_up: [red]warn")

    printed = capsys.readouterr()
    for value in [*TRICKY, "[bold]name", ":x: [red]t", ":x: [bold]info", ":thumbs_up: [red]warn"]:
        assert value in printed.out + printed.err
    assert "❌" not in printed.out + printed.err and "👍" not in printed.out + printed.err


def test_device_names_attributes_and_shadows_print_verbatim(cli, iot, endpoint: str) -> None:
    _thing(iot, "a:b:c", note="[bold]x[/bold]")
    _thing(iot, ":x:", note=":thumbs_up:")
    shadow = {"state": {"reported": {"label": "[red]hot[/red] :fire:"}}}
    boto3.client("iot-data", endpoint_url=endpoint, region_name="us-east-1").update_thing_shadow(
        thingName=":x:", payload=json.dumps(shadow)
    )

    listed = cli("devices", "list")
    shown = cli("devices", "show", ":x:")
    printed = cli("devices", "shadow", ":x:")

    assert listed.exit_code == shown.exit_code == printed.exit_code == 0, (listed, shown, printed)
    assert "a:b:c" in listed.stdout and ":x:" in listed.stdout
    assert "note=[bold]x[/bold]" in listed.stdout and "note=:thumbs_up:" in listed.stdout
    assert "Device :x:" in shown.stdout and "[red]hot[/red] :fire:" in shown.stdout
    assert "[red]hot[/red] :fire:" in printed.stdout
    everything = listed.stdout + shown.stdout + printed.stdout
    assert "❌" not in everything and "👍" not in everything and "🔥" not in everything


def test_query_rows_print_verbatim(cli, endpoint: str, athena) -> None:  # noqa: F811
    seed_results(endpoint, [[":x:", "21.5", "1"], ["[bold]d-2[/bold]", "22.0", "2"]])

    result = cli("query", "SELECT device_id, temperature, seq FROM readings")

    assert result.exit_code == 0, result
    assert ":x:" in result.stdout and "[bold]d-2[/bold]" in result.stdout
    assert "❌" not in result.stdout


# --output csv --------------------------------------------------------------------------------


def _leaf_commands(group: Any, prefix: str = "") -> set[str]:
    names = set()
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        if hasattr(command, "commands"):  # a group: `devices`, `local`
            names |= _leaf_commands(command, f"{path} ")
        else:
            names.add(path)
    return names


# Commands whose table `--output csv` prints (each has a test below or in test_query.py /
# test_local_sql.py).
TABLE_COMMANDS = {
    "validate",
    "plan",
    "up",
    "down",
    "status",
    "reshard",
    "query",
    "cost",
    "demo",
    "devices register",
    "devices list",
    "devices show",
    "devices revoke",
    "local query",
}


def test_every_command_either_prints_its_table_as_csv_or_refuses_csv() -> None:
    commands = _leaf_commands(typer.main.get_command(typer_app))
    # A new command decides: its table as CSV (listed here, with a test), or in NO_TABLE_COMMANDS.
    assert commands == TABLE_COMMANDS | NO_TABLE_COMMANDS, commands ^ (
        TABLE_COMMANDS | NO_TABLE_COMMANDS
    )
    assert not TABLE_COMMANDS & NO_TABLE_COMMANDS


@pytest.mark.parametrize(
    ("command", "arguments"),
    [
        ("init", []),
        ("iam-policy", ["--account-id", "123456789012"]),
        ("simulate", []),
        ("devices shadow", ["pump-1"]),
        ("local serve", ["--port", "0"]),
    ],
)
def test_csv_is_refused_where_a_command_prints_no_table(
    cli, faults, tmp_path: Path, command: str, arguments: list[str]
) -> None:
    config = tmp_path / "fresh.toml"  # `init` would write it

    result = cli(*command.split(), *arguments, "--output", "csv", config=config)

    assert result.exit_code == 2, result
    assert f"`iotpipe {command}` prints no table: --output csv does not apply" in result.stderr
    assert "--output json" in result.stderr
    assert result.stdout == ""
    assert faults.calls == [] and not config.exists()


def test_devices_list_as_csv_is_sorted_and_reads_back_as_a_registration_file(
    cli, iot, tmp_path: Path
) -> None:
    _thing(iot, "pump-2", site="north")
    _thing(iot, "pump-1", site="south", floor="3")
    _thing(iot, "gauge-9")

    result = cli("devices", "list", "--output", "csv")

    assert result.exit_code == 0, result
    assert _rows(result.stdout) == [
        ["name", "floor", "site"],
        ["gauge-9", "", ""],
        ["pump-1", "3", "south"],
        ["pump-2", "", "north"],
    ]
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(result.stdout)
    specs = specs_from_csv(fleet, {})
    assert [(s.name, s.attributes) for s in specs] == [
        ("gauge-9", {}),
        ("pump-1", {"floor": "3", "site": "south"}),
        ("pump-2", {"site": "north"}),
    ]


@pytest.mark.parametrize(
    ("argv", "header"),
    [
        (["validate"], ["setting", "value"]),
        (["cost"], ["service", "item", "quantity", "unit", "unit price", "monthly"]),
        (["plan"], ["action", "kind", "name", "field", "path", "old", "new", "note"]),
        (["status"], ["kind", "name", "state", "field", "path", "old", "new"]),
        (["down", "--yes"], ["action", "kind", "name", "field", "path", "old", "new", "note"]),
    ],
)
def test_each_table_command_prints_one_csv_document_on_stdout(
    cli, argv: list[str], header: list[str]
) -> None:
    result = cli(*argv, "--output", "csv")

    assert result.exit_code in (0, 1), result  # status: the empty account is unhealthy
    rows = _rows(result.stdout)
    assert rows[0] == header
    assert all(len(row) == len(header) for row in rows)
    assert not any(c in result.stdout for c in BOX)


def test_cost_csv_is_the_line_items_and_the_rest_goes_to_stderr(cli) -> None:
    result = cli("cost", "--output", "csv")

    assert result.exit_code == 0, result
    services = {row[0] for row in _rows(result.stdout)[1:]}
    assert {"Kinesis Data Streams", "Lambda"} <= services or len(services) >= 5, services
    assert "Monthly total (USD)" in result.stderr and "readings/day" in result.stderr


def test_device_show_and_register_as_csv(cli, iot, endpoint: str, tmp_path: Path) -> None:
    _thing(iot, "pump-1", site="north")
    boto3.client("iot", endpoint_url=endpoint, region_name="us-east-1").create_policy(
        policyName="test-device", policyDocument=json.dumps({"Version": "2012-10-17"})
    )

    shown = cli("devices", "show", "pump-1", "--output", "csv")
    registered = cli(
        "devices", "register", "pump-7", "--yes", "--out-dir", str(tmp_path), "--output", "csv"
    )

    assert shown.exit_code == 0, shown
    assert ["device", "pump-1"] in _rows(shown.stdout) and ["attributes", "site=north"] in _rows(
        shown.stdout
    )
    assert registered.exit_code == 0, registered
    rows = _rows(registered.stdout)
    assert rows[0] == ["device", "status", "certificate", "note"]
    assert [row[:2] for row in rows[1:]] == [["pump-7", "created"]]
    # The question's summary and the status counts are for the person: on stderr.
    assert "Device registration" in registered.stderr and "Summary" in registered.stderr


def test_reshard_steps_as_csv(cli, endpoint: str) -> None:
    boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1").create_stream(
        StreamName="test-readings", ShardCount=1, StreamModeDetails={"StreamMode": "PROVISIONED"}
    )

    planned = cli("reshard", "--target", "4", "--dry-run", "--output", "csv")
    nothing = cli("reshard", "--target", "1", "--dry-run", "--output", "csv")

    assert planned.exit_code == 0, planned
    assert _rows(planned.stdout) == [
        ["step", "shards", "operation"],
        ["1", "1 -> 2", "UpdateShardCount UNIFORM_SCALING"],
        ["2", "2 -> 4", "UpdateShardCount UNIFORM_SCALING"],
    ]
    assert "dry run" in planned.stderr
    assert nothing.exit_code == 0, nothing
    assert _rows(nothing.stdout) == [["step", "shards", "operation"]]


# plan: the exact change inside a long value ---------------------------------------------------

PROCESSOR_ROLE = "test-processor"


def _processor_role(endpoint: str, config_file: Path):
    from iotpipe.config import load_config

    ctx = StackContext(load_config(config_file), Aws(region="us-east-1", endpoint_url=endpoint))
    return next(r for r in build_resources(ctx) if r.key == f"iam.role/{PROCESSOR_ROLE}")


def _widened_in_aws(endpoint: str, config_file: Path) -> tuple[int, str]:
    """Create the processor role as `up` would, with one Action added to a statement in AWS;
    returns the statement's index and the Action."""
    role = _processor_role(endpoint, config_file)
    want = role.desired()
    policy = json.loads(json.dumps(want["policy"]))
    index = next(i for i, s in enumerate(policy["Statement"]) if isinstance(s["Action"], list))
    policy["Statement"][index]["Action"].append("s3:DeleteBucket")
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_role(
        RoleName=PROCESSOR_ROLE,
        AssumeRolePolicyDocument=json.dumps(want["trust_policy"]),
        Description=want["description"],
        Tags=[{"Key": k, "Value": v} for k, v in want["tags"].items()],
    )
    iam.put_role_policy(
        RoleName=PROCESSOR_ROLE, PolicyName=role.policy_name, PolicyDocument=json.dumps(policy)
    )
    return index, "s3:DeleteBucket"


def test_plan_names_the_action_added_to_a_role_policy(cli, endpoint: str, config_file) -> None:
    index, action = _widened_in_aws(endpoint, config_file)

    table = cli("plan")
    as_json = cli("plan", "--output", "json")

    assert table.exit_code == 0, table
    # `up` takes the Action out again: the line says where, in full.
    assert f"policy.Statement[{index}].Action" in table.stdout
    assert f'- "{action}"' in table.stdout
    step = next(s for s in as_json.json["steps"] if s["name"] == PROCESSOR_ROLE)
    assert step["action"] == "update"
    change = next(c for c in step["changes"] if c["field"] == "policy")
    assert {"field", "old", "new", "paths"} <= change.keys()
    assert change["paths"] == [
        {
            "path": [
                "Statement",
                index,
                "Action",
                len(change["new"]["Statement"][index]["Action"]),
            ],
            "old": action,
        }
    ]


def test_a_long_string_shows_where_it_changed_not_two_equal_prefixes() -> None:
    rule = "SELECT *, topic(3) AS device_id, timestamp() AS received_at FROM "
    old = rule + "'$aws/rules/test_telemetry/dt/sensors/+/telemetry'"
    new = rule + "'$aws/rules/test_telemetry/dt/pumps/+/telemetry'"

    [line] = Change("sql", old, new).lines()

    shown_old, shown_new = line.removeprefix("sql: ").split(" -> ")
    assert "dt/sensors/+" in shown_old and "dt/pumps/+" in shown_new
    assert shown_old != shown_new
    assert Change("sql", old, new).lines(whole=True) == [
        f"sql: {json.dumps(old)} -> {json.dumps(new)}"
    ]


def test_environment_variables_and_layers_are_diffed_by_path() -> None:
    layer = (
        "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64"
    )
    environment_old = {"LOG_LEVEL": "INFO", "STATE_TABLE": "test-device-state", "TTL_DAYS": "30"}
    environment_new = {**environment_old, "LOG_LEVEL": "DEBUG", "SINK": "timestream"}
    del environment_new["TTL_DAYS"]

    assert Change("environment", environment_old, environment_new).lines() == [
        'environment.LOG_LEVEL: "INFO" -> "DEBUG"',
        'environment.SINK: + "timestream"',
        'environment.TTL_DAYS: - "30"',
    ]
    [line] = Change("layers", [f"{layer}:7"], [f"{layer}:12"]).lines()
    assert line.startswith("layers[0]: ") and line.endswith(
        'x86_64:7" -> ..."thonV3-python311-x86_64:12"'
    )


def test_an_added_statement_is_listed_action_by_action() -> None:
    first = {"Effect": "Allow", "Action": ["kinesis:GetRecords"], "Resource": "arn:aws:kinesis:*"}
    actions = ["iam:PassRole", "iam:CreateRole", "iam:AttachRolePolicy", "iam:PutRolePolicy"]
    added = {"Effect": "Allow", "Action": [*actions, "sts:AssumeRole"], "Resource": "*"}
    change = Change("policy", {"Statement": [first]}, {"Statement": [first, added]})

    lines = change.lines()

    # Too long for one line: every Action on its own.
    assert 'policy.Statement[1].Action[3]: + "iam:PutRolePolicy"' in lines
    assert 'policy.Statement[1].Action[4]: + "sts:AssumeRole"' in lines
    assert 'policy.Statement[1].Resource: + "*"' in lines
    short = Change(
        "policy", {"Statement": [first]}, {"Statement": [first, {**added, "Action": actions[:2]}]}
    )
    assert 'policy.Statement[1].Action: + ["iam:PassRole", "iam:CreateRole"]' in short.lines()
    assert change.lines(whole=True) == [
        f"policy.Statement[1]: + {json.dumps(added, sort_keys=True)}"
    ]


def test_tags_others_added_are_no_difference() -> None:
    change = Change("tags", {"iotpipe:stack": "old", "team": "ops"}, {"iotpipe:stack": "new"}, True)

    assert change.lines() == ['tags["iotpipe:stack"]: "old" -> "new"']


def test_plan_with_v_prints_whole_values(capsys) -> None:
    old_sql, new_sql = "SELECT " + "a, " * 40 + "b FROM x", "SELECT " + "a, " * 40 + "c FROM x"

    class Rule:
        kind, name = "iot.topic_rule", "test_telemetry"

    step = Step(Action.UPDATE, Rule(), [Change("sql", old_sql, new_sql)])  # type: ignore[arg-type]
    Output(verbose=0).plan(Plan([step]))
    short = capsys.readouterr().out
    Output(verbose=1).plan(Plan([step]))
    whole = capsys.readouterr().out

    assert old_sql not in short.replace("\n", "")
    flat = "".join(line.strip(" │┃") for line in whole.splitlines())
    assert old_sql in flat and new_sql in flat


# Plain text off a terminal, or with NO_COLOR ---------------------------------------------------


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _errors_on(monkeypatch, stream: io.StringIO, tmp_path: Path) -> str:
    monkeypatch.setattr("sys.stdout", stream)
    monkeypatch.setattr("sys.stderr", stream)
    code = run(["validate", "--config", str(tmp_path / "missing.toml")])
    assert code == 2
    return stream.getvalue()


def test_error_text_has_ansi_only_on_a_terminal_without_no_color(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    assert "\x1b[" in _errors_on(monkeypatch, _Terminal(), tmp_path)

    piped = _errors_on(monkeypatch, io.StringIO(), tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    no_color = _errors_on(monkeypatch, _Terminal(), tmp_path)

    for text in (piped, no_color):
        assert "\x1b" not in text
        assert "error: config file" in text and "hint: run `iotpipe init`" in text


# devices list is sorted; config rules in words -------------------------------------------------


def test_devices_list_is_sorted_whatever_order_aws_returns(cli, iot) -> None:
    for name in ("pump-1", "gauge-3", "pump-10", "alpha"):
        _thing(iot, name)

    def backwards(parsed: dict[str, Any], **_: Any) -> None:
        parsed["things"] = sorted(parsed.get("things", []), key=lambda t: t["thingName"])[::-1]

    def attach(service: str, client: Any) -> None:
        if service == "iot":
            client.meta.events.register("after-call.iot.ListThings", backwards)

    remove = add_client_hook(attach)
    try:
        table = cli("devices", "list")
        as_json = cli("devices", "list", "--output", "json")
    finally:
        remove()

    expected = ["alpha", "gauge-3", "pump-1", "pump-10"]
    assert [d["name"] for d in as_json.json["devices"]] == expected
    positions = [table.stdout.index(f" {name} ") for name in expected]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (
            {"stack": {"name": "My_Stack"}},
            "stack.name: must be 3-24 characters: lowercase letters, digits and hyphens, "
            "starting with a letter",
        ),
        ({"stack": {"name": "ab"}}, "3-24 characters"),
        ({"stack": {"app": "Sensors!"}}, "stack.app: must be 1-32 characters: lowercase letters"),
        ({"catalog": {"crawler_schedule": "daily"}}, "e.g. cron(0 3 * * ? *) (got 'daily')"),
        ({"alerts": {"emails": ["ops"]}}, "alerts.emails.0: must be an email address"),
    ],
)
def test_config_rules_are_said_in_words_not_as_a_regular_expression(data, words) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="iotpipe.toml")

    message = caught.value.message
    assert words in message
    for regex in ("^", "$", "{1,", "[a-z", "\\d", "\\(", "pattern"):
        assert regex not in message, message
