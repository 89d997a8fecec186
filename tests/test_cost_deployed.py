"""The cost model counts what `up` deploys: alarms, the processor's custom metrics, the crawler's
schedule. Each test deploys a stack to the emulator and compares it with the estimate's lines."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pytest

from iotpipe.config import load_config
from iotpipe.cost import Choices, cost_report, crawler_runs_per_day, emitted_metrics, load_prices
from tests.processor_events import LambdaContext, emf_metrics, kinesis_event, message
from tests.support import client, write_config

from processor import clients, handler  # isort: skip

pytestmark = pytest.mark.usefixtures("processor_source")

TODAY = date(2025, 7, 1)


def deploy(cli, path: Path) -> None:
    result = cli("up", "--yes", config=path)
    assert result.exit_code == 0, result


def line(report, service: str, starts: str):
    return next(
        i for i in report.configured.items if i.service == service and i.item.startswith(starts)
    )


def run_deployed_processor(endpoint: str, monkeypatch, capsys) -> str:
    """One batch (a reading and a malformed record) through the handler, with the deployed
    function's environment: what it printed (logs and any embedded-metric-format blob)."""
    function = client(endpoint, "lambda").get_function_configuration(FunctionName="test-processor")
    for name, value in function["Environment"]["Variables"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    clients.CLIENTS.clear()
    logs = io.StringIO()
    monkeypatch.setattr(handler.logger.registered_handler, "stream", logs)
    capsys.readouterr()
    try:
        event = kinesis_event(message("pump-1"), b"not json")
        assert handler.lambda_handler(event, LambdaContext()) == {"batchItemFailures": []}
    finally:
        clients.CLIENTS.clear()
    return capsys.readouterr().out + logs.getvalue()


def test_the_default_processor_emits_no_custom_metric_and_logs_every_count(
    cli, endpoint, config_file, monkeypatch, capsys
) -> None:
    deploy(cli, config_file)
    out = run_deployed_processor(endpoint, monkeypatch, capsys)
    assert '{"_aws"' not in out  # no embedded-metric-format blob: nothing published
    summary = next(json.loads(line) for line in out.splitlines() if "batch processed" in line)
    assert (summary["records"], summary["valid"], summary["quarantined"]) == (2, 1, 1)
    config = load_config(config_file)
    assert emitted_metrics(config) == []
    metrics = line(cost_report(config, load_prices(), TODAY), "CloudWatch", "custom metrics")
    assert metrics.quantity == 0


@pytest.mark.parametrize("timeseries", [False, True])
def test_the_deployed_processor_emits_the_metrics_cost_counts(
    cli, endpoint, tmp_path, monkeypatch, capsys, timeseries
) -> None:
    chosen = ["ReadingsQuarantined", "TimeSeriesWritten", "BatchAgeMs"]
    path = write_config(
        tmp_path / "c.toml",
        processor={"custom_metrics": chosen},
        timeseries={"enabled": timeseries},
    )
    deploy(cli, path)
    emitted = emf_metrics(run_deployed_processor(endpoint, monkeypatch, capsys))
    config = load_config(path)
    # TimeSeriesWritten only with the time-series sink on.
    expected = [name for name in chosen if timeseries or name != "TimeSeriesWritten"]
    assert sorted(emitted) == sorted(emitted_metrics(config)) == sorted(expected)
    metrics = line(cost_report(config, load_prices(), TODAY), "CloudWatch", "custom metrics")
    assert metrics.quantity == len(emitted)


def test_the_deployed_crawler_schedule_is_the_one_priced(cli, endpoint, config_file) -> None:
    deploy(cli, config_file)
    crawler = client(endpoint, "glue").get_crawler(Name="test-archive-crawler")["Crawler"]
    schedule = crawler["Schedule"]["ScheduleExpression"]
    config = load_config(config_file)
    assert Choices.of(config).crawler_runs_per_day == crawler_runs_per_day(schedule) == 1 / 7
    glue = line(cost_report(config, load_prices(), TODAY), "Glue", "crawler")
    assert glue.quantity == pytest.approx(30.4 / 7 * 2 * 10 / 60)


def scaling_targets(endpoint: str) -> dict[str, tuple[int, int]]:
    found = client(endpoint, "application-autoscaling").describe_scalable_targets(
        ServiceNamespace="dynamodb", ResourceIds=["table/test-device-state"]
    )["ScalableTargets"]
    return {t["ScalableDimension"]: (t["MinCapacity"], t["MaxCapacity"]) for t in found}


def scaling_alarms(endpoint: str) -> list[str]:
    found = client(endpoint, "cloudwatch").describe_alarms(
        AlarmNamePrefix="TargetTracking-table/test-device-state-"
    )["MetricAlarms"]
    return [a["AlarmName"] for a in found]


def test_the_deployed_capacity_and_alarms_are_the_ones_priced(cli, endpoint, config_file) -> None:
    deploy(cli, config_file)
    config = load_config(config_file)
    sizing = config.sizing
    table = client(endpoint, "dynamodb").describe_table(TableName="test-device-state")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PROVISIONED"
    assert Choices.of(config).state_capacity == "provisioned"
    writes = (sizing.state_min_write_capacity, sizing.state_max_write_capacity)
    # Writes are scaled; the processor reads nothing, so reads are one fixed unit.
    assert (sizing.state_min_read_capacity, sizing.state_max_read_capacity) == (1, 1)
    assert scaling_targets(endpoint) == {"dynamodb:table:WriteCapacityUnits": writes}
    policies = client(endpoint, "application-autoscaling").describe_scaling_policies(
        ServiceNamespace="dynamodb", ResourceId="table/test-device-state"
    )["ScalingPolicies"]
    assert sorted(
        (
            p["TargetTrackingScalingPolicyConfiguration"]["TargetValue"],
            p["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
                "PredefinedMetricType"
            ],
        )
        for p in policies
    ) == [(70.0, "DynamoDBWriteCapacityUtilization")]
    # The table starts at the minimum of the range; auto scaling moves it from there.
    assert table["ProvisionedThroughput"]["WriteCapacityUnits"] == writes[0]
    assert table["ProvisionedThroughput"]["ReadCapacityUnits"] == 1
    report = cost_report(config, load_prices(), TODAY)
    stack_alarms = client(endpoint, "cloudwatch").describe_alarms(AlarmNamePrefix="test-")
    assert line(report, "CloudWatch", "alarms").quantity == len(stack_alarms["MetricAlarms"])
    assert line(report, "CloudWatch", "alarms of auto scaling").quantity == len(
        scaling_alarms(endpoint)
    )
    assert line(report, "DynamoDB", "provisioned write capacity").quantity == writes[0] * 730
    assert line(report, "DynamoDB", "provisioned read capacity").quantity == 730
    # A second up changes nothing: auto scaling's own changes to the capacity are not drift.
    plan = cli("plan", "--output", "json")
    assert set(plan.json["summary"]) == {"no-change"}, plan.json["summary"]


def test_a_fixed_capacity_has_no_auto_scaling_and_on_demand_none_at_all(
    cli, endpoint, tmp_path
) -> None:
    fixed = write_config(
        tmp_path / "fixed.toml",
        device_state={"min_read_capacity": 2, "max_read_capacity": 2},
    )
    deploy(cli, fixed)
    assert set(scaling_targets(endpoint)) == {"dynamodb:table:WriteCapacityUnits"}
    assert len(scaling_alarms(endpoint)) == 4
    table = client(endpoint, "dynamodb").describe_table(TableName="test-device-state")["Table"]
    assert table["ProvisionedThroughput"]["ReadCapacityUnits"] == 2
    report = cost_report(load_config(fixed), load_prices(), TODAY)
    assert line(report, "DynamoDB", "provisioned read capacity").quantity == 2 * 730
    assert line(report, "CloudWatch", "alarms of auto scaling").quantity == 4

    on_demand = write_config(tmp_path / "od.toml", device_state={"capacity": "on_demand"})
    deploy(cli, on_demand)
    table = client(endpoint, "dynamodb").describe_table(TableName="test-device-state")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    # AWS would keep the targets (and bill their alarms) after the switch: up removes them.
    assert scaling_targets(endpoint) == {}
    assert scaling_alarms(endpoint) == []
    report = cost_report(load_config(on_demand), load_prices(), TODAY)
    items = [i.item for i in report.configured.items]
    assert "state writes (one per device per batch)" in items
    assert not any(item.startswith(("provisioned", "alarms of auto scaling")) for item in items)
    plan = cli("plan", "--output", "json", config=on_demand)
    assert set(plan.json["summary"]) == {"no-change"}, plan.json["summary"]


def test_down_with_delete_data_removes_the_tables_auto_scaling(cli, endpoint, config_file) -> None:
    deploy(cli, config_file)
    assert scaling_targets(endpoint)
    kept = cli("down", "--yes")
    assert kept.exit_code == 0, kept
    # Kept with the table, whose capacity it keeps low.
    assert set(scaling_targets(endpoint)) == {"dynamodb:table:WriteCapacityUnits"}
    result = cli("down", "--yes", "--delete-data")
    assert result.exit_code == 0, result
    assert scaling_targets(endpoint) == {}
    assert scaling_alarms(endpoint) == []


def test_a_switch_to_on_demand_aws_refuses_today_is_deferred(
    cli, endpoint, tmp_path, config_file, faults
) -> None:
    deploy(cli, config_file)
    on_demand = write_config(tmp_path / "od.toml", device_state={"capacity": "on_demand"})
    # What DynamoDB answers within a day of the table's last switch to on-demand.
    faults.fail(
        "dynamodb",
        "UpdateTable",
        "LimitExceededException",
        "Subscriber limit exceeded: Update to PayPerRequest mode are limited to once in 1 day(s).",
    )
    deferred = cli("up", "--yes", "--output", "json", config=on_demand)
    assert deferred.exit_code == 0, deferred
    actions = {(s["kind"], s["name"]): s["action"] for s in deferred.json["steps"]}
    assert actions[("dynamodb.table", "test-device-state")] == "deferred"
    assert "run `iotpipe up` again tomorrow" in " ".join(deferred.stderr.split())
    assert "Traceback" not in deferred.stderr
    # The next day's run finishes the switch.
    deploy(cli, on_demand)
    table = client(endpoint, "dynamodb").describe_table(TableName="test-device-state")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert scaling_targets(endpoint) == {}
