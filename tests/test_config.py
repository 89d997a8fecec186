"""The config: defaults, derived sizing, and bad input rejected by field with no AWS call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotpipe.config import Config, example_config_text, parse_config
from iotpipe.errors import ConfigError


def test_defaults_size_one_shard_for_half_a_million_readings_a_day() -> None:
    sizing = Config().sizing
    assert sizing.average_readings_per_second == pytest.approx(5.787, abs=1e-3)
    assert sizing.peak_readings_per_second == pytest.approx(57.87, abs=1e-2)
    assert sizing.shards == 1
    assert sizing.lambda_batch_size == 500


def test_hundredfold_volume_is_sized_by_the_records_limit() -> None:
    config = parse_config({"volume": {"readings_per_day": 50_000_000}})
    sizing = config.sizing
    # 578.7/s average, 5,787/s at a 10x peak, +25% headroom = 7,234/s over 1,000 records/s/shard.
    assert sizing.shards_for_records == 8
    assert sizing.shards_for_bytes == 3
    assert sizing.shards == 8


def test_a_fixed_shard_count_wins_over_the_derived_one() -> None:
    assert parse_config({"stream": {"shards": 3}}).sizing.shards == 3


def test_example_config_is_valid_and_equals_the_defaults() -> None:
    import tomllib

    parsed = parse_config(tomllib.loads(example_config_text()))
    assert parsed == Config()


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"volume": {"readings_per_day": "lots"}}, "volume.readings_per_day", "valid integer"),
        ({"volume": {"readings_per_day": 0}}, "volume.readings_per_day", "greater than or equal"),
        ({"stream": {"mode": "turbo"}}, "stream.mode", "provisioned"),
        ({"stack": {"name": "Bad_Name"}}, "stack.name", "starting with a letter"),
        ({"stack": {"colour": "red"}}, "stack.colour", "unknown key"),
        ({"extra_section": {}}, "extra_section", "unknown key"),
        ({"processor": {"memory_mb": 64}}, "processor.memory_mb", "greater than or equal"),
        ({"processor": {"maximum_record_age_seconds": 5}}, "processor", "maximum_record_age"),
        ({"archive": {"transition_to_glacier_days": 30}}, "archive", "glacier"),
        ({"alerts": {"emails": ["not-an-email"]}}, "alerts.emails.0", "an email address"),
        (
            {"alerts": {"archive_freshness_seconds": 900}},
            "alerts.archive_freshness_seconds (900) must be more than archive.buffer_seconds (900)",
            "always fire",
        ),
    ],
)
def test_invalid_fields_are_named_with_the_reason(data: dict, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="iotpipe.toml")
    message = caught.value.message
    assert f"{field}" in message
    assert reason.lower() in message.lower()
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "text",
    [
        '[stack]\nname = "ok-name"\n[volume]\nreadings_per_day = -5\n',
        '[stream]\nshards = "two"\n',
        "[stack\nname = broken toml",
        "[unknown]\nkey = 1\n",
    ],
)
@pytest.mark.parametrize("command", ["validate", "plan", "up --yes", "status", "down --yes"])
def test_bad_config_exits_2_without_any_aws_call(cli, faults, tmp_path: Path, text, command):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = cli(*command.split(), config=path)
    assert result.exit_code == 2, result
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert faults.calls == []


def test_missing_config_file_says_how_to_make_one(cli, faults, tmp_path: Path) -> None:
    result = cli("plan", config=tmp_path / "absent.toml")
    assert result.exit_code == 2
    assert "iotpipe init" in result.stderr
    assert faults.calls == []


def test_init_writes_the_example_and_refuses_to_overwrite(cli, tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    assert cli("init", config=path).exit_code == 0
    assert path.read_text() == example_config_text()
    again = cli("init", config=path)
    assert again.exit_code == 2
    assert "--force" in again.stderr
    assert cli("init", "--force", config=path).exit_code == 0


def test_validate_json_has_the_sizing(cli) -> None:
    result = cli("validate", "--output", "json")
    assert result.exit_code == 0, result
    assert result.json["sizing"]["shards"] == 1
    assert result.json["config"]["stack"]["name"] == "test"


def test_python_dash_m_is_the_same_program(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[stack]\nname = "via-module"\n')
    result = subprocess.run(
        [sys.executable, "-m", "iotpipe", "validate", "--config", str(config), "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"via-module"' in result.stdout


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        # S3 bucket naming rules: the archive bucket is <stack>-archive-<account>-<region>.
        ({"stack": {"name": "xn--sensors"}}, "stack.name", "'xn--'"),
        ({"stack": {"name": "sthree-sensors"}}, "stack.name", "'sthree-'"),
        ({"stack": {"name": "amzn-s3-demo-x"}}, "stack.name", "'amzn-s3-demo-'"),
        # S3 lifecycle minimums: 30 days in Standard before Standard-IA, 30 in Standard-IA.
        ({"archive": {"transition_to_ia_days": 1}}, "archive.transition_to_ia_days", "30 days"),
        (
            {"archive": {"transition_to_ia_days": 40, "transition_to_glacier_days": 60}},
            "archive.transition_to_glacier_days",
            "use 70 or more",
        ),
        # CloudWatch Logs accepts only its own list of retention periods.
        ({"processor": {"log_retention_days": 10}}, "processor.log_retention_days", "3653"),
        ({"archive": {"log_retention_days": 366}}, "archive.log_retention_days", "365"),
        (
            {"stream": {"mode": "on_demand", "shards": 4}},
            "stream.shards",
            'mode = "provisioned"',
        ),
        # No silent coercion: a quoted number or boolean is refused, with the fix.
        ({"processor": {"memory_mb": "256"}}, "processor.memory_mb", "without quotes"),
        ({"processor": {"bisect_on_error": "false"}}, "processor.bisect_on_error", "boolean"),
        ({"volume": {"peak_factor": "10"}}, "volume.peak_factor", "without quotes"),
        (
            {"device_state": {"point_in_time_recovery": 1}},
            "device_state.point_in_time_recovery",
            "boolean",
        ),
        ({"stream": {"retention_hours": 24.0}}, "stream.retention_hours", "integer"),
    ],
)
def test_config_that_aws_would_refuse_later_is_refused_now(data, field, reason) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="iotpipe.toml")
    message = caught.value.message
    assert f"{field}:" in message, message
    assert reason.lower() in message.lower(), message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("days", [400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653])
def test_every_retention_cloudwatch_logs_accepts_is_accepted(days: int) -> None:
    config = parse_config({"processor": {"log_retention_days": days}})
    assert config.processor.log_retention_days == days


def test_an_integer_where_a_float_is_expected_is_still_a_number() -> None:
    # TOML writes 10 for 10.0: strict mode keeps an int for a float field (no string involved).
    assert parse_config({"volume": {"peak_factor": 10}}).volume.peak_factor == 10.0


def test_values_past_default_quotas_are_warnings_not_errors(cli, config_file: Path) -> None:
    config_file.write_text(
        '[stack]\nname = "test"\nregion = "eu-central-1"\n'
        "[stream]\nshards = 1200\n[processor]\nparallelization_factor = 2\n"
    )
    result = cli("validate", "--output", "json")
    assert result.exit_code == 0, result
    warnings = result.json["warnings"]
    assert any(w.startswith("stream.shards:") and "1,000" in w for w in warnings), warnings
    assert any(
        w.startswith("processor.parallelization_factor:") and "2,400" in w for w in warnings
    ), warnings
    assert "warning:" in result.stderr
    # Defaults are well inside every quota.
    assert parse_config({}).quota_warnings() == []
