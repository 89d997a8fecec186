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
