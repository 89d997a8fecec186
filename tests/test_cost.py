"""`iotpipe cost`: the arithmetic pinned on worked examples, and the command's contract."""

from __future__ import annotations

import json
from datetime import date, timedelta
from importlib import resources

import pytest

from iotpipe.config import Config, distinct_devices_per_batch
from iotpipe.cost import (
    Choices,
    chunked_units,
    cost_report,
    crawler_runs_per_day,
    estimate,
    load_prices,
    tiered,
)
from iotpipe.errors import ConfigError
from tests.support import write_config

PRICES = json.loads(
    resources.files("iotpipe").joinpath("data", "prices-us-east-1.json").read_text()
)["services"]
TODAY = date(2025, 7, 1)


def price(service: str, name: str) -> float:
    return PRICES[service]["prices"][name]


def config(timeseries: bool = False, **volume: int) -> Config:
    return Config.model_validate({"volume": volume, "timeseries": {"enabled": timeseries}})


def line(estimate_, service: str, starts: str):
    return next(i for i in estimate_.items if i.service == service and i.item.startswith(starts))


def test_default_500k_a_day_line_items_match_hand_arithmetic():
    report = cost_report(config(), load_prices(), TODAY)
    default, naive = report.configured, report.naive
    readings_a_month = 500_000 * 30.4
    # One provisioned shard covers a 58 readings/s peak: 730 shard-hours.
    assert line(default, "Kinesis Data Streams", "shard-hours").monthly_cost == pytest.approx(
        730 * price("kinesis", "shard_hour")
    )
    # 1,000 devices connected for 730 hours.
    assert line(default, "IoT Core", "connectivity").monthly_cost == pytest.approx(
        1_000 * 730 * 60 / 1e6 * price("iot_core", "connection_minutes_per_million")
    )
    assert line(default, "IoT Core", "messaging").monthly_cost == 0
    assert line(naive, "IoT Core", "messaging").monthly_cost == pytest.approx(
        readings_a_month / 1e6 * 1.00
    )
    # On-demand: stream-hours plus every 300-byte record counted as 1 KB, in and out.
    on_demand_gb = readings_a_month * 1024 / 1024**3
    assert sum(
        i.monthly_cost for i in naive.items if i.service == "Kinesis Data Streams"
    ) == pytest.approx(
        730 * price("kinesis", "on_demand_stream_hour")
        + on_demand_gb
        * (
            price("kinesis", "on_demand_ingested_per_gb")
            + price("kinesis", "on_demand_retrieved_per_gb")
        )
    )
    # Hourly crawler: 24 runs a day of 2 DPUs for the 10-minute minimum.
    assert line(naive, "Glue", "crawler").monthly_cost == pytest.approx(
        24 * 30.4 * 2 * 10 / 60 * price("glue", "crawler_dpu_hour")
    )
    # One Firehose record per reading is billed as 5 KB.
    assert line(naive, "Firehose", "data ingested").monthly_cost == pytest.approx(
        readings_a_month * 5120 / 1024**3 * price("firehose", "ingested_per_gb")
    )
    # 17,280 batches a day (a 5 s window on one shard); arm64 at 256 MB.
    lam = line(default, "Lambda", "compute")
    assert lam.quantity == pytest.approx(17_280 * 30.4 * 0.065 * 0.25)
    assert lam.unit_price == price("lambda", "gb_second_arm64")


def test_default_and_naive_totals_at_500k_a_day():
    report = cost_report(config(), load_prices(), TODAY)
    assert report.configured.total == 31.08
    assert report.naive.total == 181.85
    # Always Free covers the dashboard, 10 of the 16 alarms, logs, Lambda, the alerts key's
    # requests and the device state's provisioned capacity (25 WCU, 25 RCU).
    assert report.configured.total_after_allowances == 22.2
    assert report.naive.total_after_allowances == 174.6
    savings = {s.optimisation: s.monthly_saving for s in report.savings}
    assert savings == {
        "Basic Ingest": 15.2,
        "provisioned shards": 19.78,
        "aggregated Firehose records": 1.96,
        "one state write per device per batch": 0.0,
        "conditional state writes (no read first)": 1.16,
        "provisioned device-state capacity": 4.6,
        "device-side batching": 4.49,
        "arm64 processor": 0.03,
        "weekly crawler": 106.37,
        "custom metrics only as chosen": 2.7,
    }
    # Every optimisation but device-side batching, which is off by default.
    assert {s.optimisation for s in report.savings if not s.in_use} == {"device-side batching"}


def test_timestream_adds_its_writes_and_storage():
    report = cost_report(config(timeseries=True), load_prices(), TODAY)
    assert report.configured.total == 38.64
    assert report.naive.total == 189.71
    assert report.configured.by_service()["Timestream"] == pytest.approx(7.56, abs=0.005)


def test_default_and_naive_totals_at_100x():
    report = cost_report(config(readings_per_day=50_000_000, devices=100_000), load_prices(), TODAY)
    assert report.configured.total == 1349.45
    assert report.naive.total == 3729.79
    with_ts = cost_report(
        config(timeseries=True, readings_per_day=50_000_000, devices=100_000), load_prices(), TODAY
    )
    assert with_ts.configured.total == 2098.58
    assert with_ts.naive.total == 4479.22
    # Past a billion messages a month IoT messaging drops to the second tier.
    messages = 50_000_000 * 30.4
    assert line(report.naive, "IoT Core", "messaging").monthly_cost == pytest.approx(
        1e9 / 1e6 * 1.00 + (messages - 1e9) / 1e6 * 0.80
    )
    assert line(report.configured, "Kinesis Data Streams", "shard-hours").quantity == 8 * 730


def test_state_writes_shrink_when_devices_repeat_within_a_batch():
    few_devices = cost_report(
        config(readings_per_day=50_000_000, devices=1_000), load_prices(), TODAY
    )
    saving = next(s for s in few_devices.savings if s.optimisation.startswith("one state write"))
    # A third of the write capacity one write per reading would need.
    assert saving.monthly_saving > 250
    sizing = config(readings_per_day=50_000_000, devices=1_000).sizing
    assert sizing.state_writes_per_second == pytest.approx(189.05, abs=0.01)
    assert sizing.state_min_write_capacity == 271  # 189 writes a second at 70%
    # At the default volume a device rarely repeats within a batch: both fit the minimum
    # capacity, and the saving is nil.
    default = cost_report(config(), load_prices(), TODAY)
    default_saving = next(s for s in default.savings if s.optimisation.startswith("one state"))
    assert default_saving.monthly_saving == 0
    # 125 devices per shard, ~362 readings per batch: most devices appear, some twice.
    assert distinct_devices_per_batch(361.7, 125) == pytest.approx(118.0, abs=0.5)
    assert distinct_devices_per_batch(5, 1_000_000) == pytest.approx(5, abs=0.01)
    assert distinct_devices_per_batch(0.5, 1) == 0.5


def test_device_state_capacity_provisioned_and_on_demand_are_both_priced():
    prices = load_prices()
    wcu_hour, rcu_hour = (
        price("dynamodb", "write_capacity_unit_hour"),
        price("dynamodb", "read_capacity_unit_hour"),
    )
    default = cost_report(config(), prices, TODAY)
    assert Choices.of(Config()).state_capacity == "provisioned"
    # Auto scaling keeps 9 units (5.7 writes a second at 70%) all month, the range's minimum.
    writes = line(default.configured, "DynamoDB", "provisioned write capacity")
    assert writes.quantity == pytest.approx(9 * 730)
    assert writes.monthly_cost == pytest.approx(9 * 730 * wcu_hour)
    # The processor reads nothing: one read unit, fixed (for `devices show` and `simulate`).
    reads = line(default.configured, "DynamoDB", "provisioned read capacity")
    assert "fixed at 1" in reads.item
    assert reads.monthly_cost == pytest.approx(1 * 730 * rcu_hour)
    # The scaled capacity (writes) brings the four alarms of its target-tracking policy.
    assert line(default.configured, "CloudWatch", "alarms of auto scaling").quantity == 4
    # 25 WCU and 25 RCU are Always Free: the state costs nothing after the allowances.
    credits = {i.meter: i.monthly_cost for i in default.configured.allowances}
    assert credits["dynamodb.write_capacity_unit_hours"] == pytest.approx(-writes.monthly_cost)
    assert credits["dynamodb.read_capacity_unit_hours"] == pytest.approx(-reads.monthly_cost)
    # One allowance of 10 alarms for the stack's 12 and auto scaling's 4, not one each.
    alarm_credits = [i for i in default.configured.allowances if i.meter == "cloudwatch.alarms"]
    assert sum(i.quantity for i in alarm_credits) == 10
    # On demand: per request, no capacity, no auto scaling alarms.
    on_demand = Config.model_validate({"device_state": {"capacity": "on_demand"}})
    report = cost_report(on_demand, prices, TODAY)
    items = [i.item for i in report.configured.items]
    assert not any(i.startswith(("provisioned", "alarms of auto scaling")) for i in items)
    od_writes = line(report.configured, "DynamoDB", "state writes")
    assert od_writes.quantity == pytest.approx(5.707 * 86_400 * 30.4, rel=1e-3)
    saving = next(s for s in report.savings if s.optimisation.startswith("provisioned device"))
    assert not saving.in_use
    assert saving.monthly_saving == pytest.approx(
        report.configured.total - default.configured.total
    )
    assert saving.monthly_saving == 4.6


def test_conditional_writes_save_the_read_before_each_write():
    prices = load_prices()
    rcu_hour = price("dynamodb", "read_capacity_unit_hour")
    default = cost_report(config(), prices, TODAY)
    saving = next(s for s in default.savings if s.optimisation.startswith("conditional state"))
    assert saving.in_use
    # Reading first would need 9 read units (5.7 strongly consistent reads a second at 70%),
    # scaled with their 4 alarms, instead of 1 fixed unit.
    assert saving.monthly_saving == pytest.approx(
        (9 - 1) * 730 * rcu_hour + 4 * price("cloudwatch", "standard_alarm_month"), abs=0.01
    )
    on_demand = Config.model_validate({"device_state": {"capacity": "on_demand"}})
    report = cost_report(on_demand, prices, TODAY)
    assert not any(i.item.startswith("state reads") for i in report.configured.items)
    saving = next(s for s in report.savings if s.optimisation.startswith("conditional state"))
    reads = 5.707 * 86_400 * 30.4
    assert saving.monthly_saving == pytest.approx(
        reads / 1e6 * price("dynamodb", "read_request_units_per_million"), abs=0.01
    )


def test_a_fixed_capacity_is_priced_without_auto_scaling():
    fixed = Config.model_validate(
        {"device_state": {"min_write_capacity": 20, "max_write_capacity": 20}}
    )
    report = cost_report(fixed, load_prices(), TODAY)
    writes = line(report.configured, "DynamoDB", "provisioned write capacity")
    assert writes.quantity == 20 * 730
    assert "fixed at 20" in writes.item
    # Neither writes nor reads are scaled: no target-tracking alarms.
    assert not any(i.item.startswith("alarms of auto scaling") for i in report.configured.items)


def test_always_free_allowances_cover_at_most_what_is_used():
    small = cost_report(config(), load_prices(), TODAY).configured
    credits = {i.meter: i for i in small.allowances}
    assert credits["cloudwatch.dashboards"].monthly_cost == pytest.approx(-3.0)
    assert credits["cloudwatch.alarms"].quantity == 10  # of 12 and 4: six are paid for
    assert credits["cloudwatch.alarms"].monthly_cost == pytest.approx(-1.0)
    # 525,312 requests a month sit inside the first million: all free.
    requests = line(small, "Lambda", "requests")
    assert credits["lambda.requests"].monthly_cost == pytest.approx(-requests.monthly_cost)
    # Storage worth less than a cent earns no line.
    assert "dynamodb.storage_gb_month" not in credits
    assert small.total_after_allowances == pytest.approx(
        small.total + sum(i.monthly_cost for i in small.allowances), abs=0.01
    )
    big = cost_report(config(readings_per_day=50_000_000, devices=100_000), load_prices(), TODAY)
    credits = {i.meter: i for i in big.configured.allowances}
    assert credits["lambda.requests"].quantity == 1_000_000
    assert credits["lambda.requests"].monthly_cost == pytest.approx(-0.20)
    # ~243,000 GB-seconds: still inside the 400,000 allowance.
    compute = line(big.configured, "Lambda", "compute")
    assert compute.quantity < 400_000
    assert credits["lambda.gb_seconds"].monthly_cost == pytest.approx(-compute.monthly_cost)
    # Allowances are not services: nothing outside them is discounted.
    assert {i.meter.split(".")[0] for i in big.configured.allowances} <= {
        "lambda",
        "cloudwatch",
        "dynamodb",
        "sns",
        "sqs",
        "kms",
    }


def test_arithmetic_helpers():
    assert tiered(1.5e9, [[1e9, 1.0], [4e9, 0.8], [None, 0.7]], 1e6) == pytest.approx(1400)
    assert tiered(6e9, [[1e9, 1.0], [4e9, 0.8], [None, 0.7]], 1e6) == pytest.approx(4900)
    # 250 readings of 300 bytes in requests of 100: two 30,000-byte requests and one 15,000.
    assert chunked_units(250, 300, 100, 1024) == 30 + 30 + 15


@pytest.mark.parametrize(
    ("schedule", "runs"),
    [
        ("cron(0 3 * * ? *)", 1),
        ("cron(0 * * * ? *)", 24),
        ("cron(0/15 * * * ? *)", 96),
        ("cron(0 8-17 * * ? *)", 10),
        ("cron(0 3 ? * MON-FRI *)", 5 / 7),
        ("cron(30 1,13 ? * SUN *)", 2 / 7),
        ("cron(0 3 1 * ? *)", 1 / 30.4),
    ],
)
def test_crawler_runs_per_day(schedule, runs):
    assert crawler_runs_per_day(schedule) == pytest.approx(runs)


def test_the_crawler_runs_weekly_by_default_and_a_chosen_schedule_is_priced():
    run_dpu_hours = 2 * 10 / 60
    weekly = cost_report(Config(), load_prices(), TODAY)
    crawler = line(weekly.configured, "Glue", "crawler")
    assert crawler.quantity == pytest.approx(30.4 / 7 * run_dpu_hours)
    assert next(s for s in weekly.savings if s.optimisation == "weekly crawler").in_use
    daily = Config.model_validate({"catalog": {"crawler_schedule": "cron(0 3 * * ? *)"}})
    report = cost_report(daily, load_prices(), TODAY)
    assert line(report.configured, "Glue", "crawler").quantity == pytest.approx(
        30.4 * run_dpu_hours
    )
    assert not next(s for s in report.savings if s.optimisation == "weekly crawler").in_use
    assert report.configured.total - weekly.configured.total == pytest.approx(
        30.4 * 6 / 7 * run_dpu_hours * price("glue", "crawler_dpu_hour"), abs=0.01
    )


def test_an_unreadable_crawler_schedule_names_the_field():
    with pytest.raises(ConfigError, match=r"catalog\.crawler_schedule"):
        crawler_runs_per_day("cron(every day)")


def test_options_change_the_line_items():
    prices = load_prices()
    no_ts = Config()
    base = config(timeseries=True)
    parquet = Config.model_validate({"archive": {"format": "parquet"}})
    with_ts = estimate(base, prices, Choices.of(base))
    without_ts = estimate(no_ts, prices, Choices.of(no_ts))
    assert any(i.service == "Timestream" for i in with_ts.items)
    assert not any(i.service == "Timestream" for i in without_ts.items)
    # Less the time-series sink (the processor emits no custom metric by default).
    assert without_ts.total == pytest.approx(
        with_ts.total - with_ts.by_service()["Timestream"], abs=0.01
    )
    assert any(
        i.item == "format conversion" for i in estimate(parquet, prices, Choices.of(parquet)).items
    )
    messaging = Config.model_validate({"iot": {"basic_ingest": False}})
    report = cost_report(messaging, prices, TODAY)
    assert not next(s for s in report.savings if s.optimisation == "Basic Ingest").in_use
    assert line(report.configured, "IoT Core", "messaging").monthly_cost == pytest.approx(15.2)


def test_custom_metrics_are_the_ones_the_config_lists():
    prices = load_prices()
    metric = price("cloudwatch", "custom_metric_month")
    default = cost_report(Config(), prices, TODAY)
    assert line(default.configured, "CloudWatch", "custom metrics").quantity == 0
    # Publishing every count is the naive choice: 9 metrics, 10 with the time-series sink.
    assert line(default.naive, "CloudWatch", "custom metrics").quantity == 9
    saving = next(s for s in default.savings if s.optimisation == "custom metrics only as chosen")
    assert saving.monthly_saving == pytest.approx(9 * metric)
    chosen = ["ReadingsQuarantined", "ReadingsFailed", "TimeSeriesWritten"]
    two = Config.model_validate({"processor": {"custom_metrics": chosen}})
    report = cost_report(two, prices, TODAY)
    # TimeSeriesWritten is never emitted with the time-series sink off: not priced.
    assert line(report.configured, "CloudWatch", "custom metrics").quantity == 2
    assert report.configured.total == pytest.approx(default.configured.total + 2 * metric)
    three = Config.model_validate(
        {"processor": {"custom_metrics": chosen}, "timeseries": {"enabled": True}}
    )
    assert line(cost_report(three, prices, TODAY).configured, "CloudWatch", "custom").quantity == 3


def test_prices_say_how_old_they_are():
    prices = load_prices()
    assert not prices.is_stale(prices.taken + timedelta(days=180))
    assert prices.is_stale(prices.taken + timedelta(days=181))
    assert all(source.startswith("https://aws.amazon.com/") for source in prices.sources.values())


def test_cost_json_breakdown(cli):
    result = cli("cost", "--output", "json")
    assert result.exit_code == 0, result
    data = result.json
    assert data["totals"] == {
        "configured": 31.08,
        "naive": 181.85,
        "saving": 150.77,
        "configured_after_always_free": 22.2,
        "naive_after_always_free": 174.6,
    }
    assert data["price_age_days"] == (date.today() - load_prices().taken).days
    for item in data["line_items"]:
        assert set(item) >= {"service", "item", "quantity", "unit", "unit_price", "monthly_cost"}
    assert sum(i["monthly_cost"] for i in data["line_items"]) == pytest.approx(31.08, abs=0.005)
    assert all(i["monthly_cost"] < 0 for i in data["always_free_allowances"])
    assert {s["optimisation"] for s in data["savings"]} >= {"Basic Ingest", "weekly crawler"}
    if data["prices_stale"]:
        assert "prices taken" in result.stderr


def test_cost_overrides_and_table(cli):
    result = cli("cost", "--readings-per-day", "50000000", "--devices", "100000")
    assert result.exit_code == 0, result
    assert "$1,349.45" in result.stdout
    assert "$3,729.79" in result.stdout
    assert "Always Free" in result.stdout
    assert "Basic Ingest" in result.stdout


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--readings-per-day", "0"], "--readings-per-day"),
        (["--devices=-5"], "--devices"),
        (["--bytes-per-reading", "0"], "--bytes-per-reading"),
        (["--bytes-per-reading", "10"], "--bytes-per-reading"),
        (["--devices", "20000000"], "--devices"),
        (["--queries-per-day=-1"], "--queries-per-day"),
    ],
)
def test_bad_overrides_exit_2_naming_the_option(cli, faults, args, option):
    faults.calls.clear()
    result = cli("cost", *args)
    assert result.exit_code == 2, result
    assert option in result.stderr
    assert "Traceback" not in result.stderr
    assert faults.calls == []


def test_validate_shows_the_monthly_total(cli):
    result = cli("validate", "--output", "json")
    assert result.exit_code == 0, result
    assert result.json["monthly_cost_usd"] == 31.08
    assert result.json["monthly_cost_after_always_free_usd"] == 22.2
    table = cli("validate")
    assert "$31.08 at list prices, $22.20 after" in table.stdout


@pytest.mark.parametrize(
    ("device_state", "says"),
    [
        (
            {"capacity": "on_demand", "max_write_capacity": 50},
            'max_write_capacity: only with capacity = "provisioned"',
        ),
        (
            {"min_read_capacity": 10, "max_read_capacity": 5},
            "min_read_capacity (10) is more than max_read_capacity (5)",
        ),
        ({"target_utilization": 95}, "device_state.target_utilization"),
        ({"capacity": "autoscaled"}, "device_state.capacity"),
    ],
)
def test_capacity_settings_that_cannot_work_are_refused_by_name(
    cli, tmp_path, faults, device_state, says
):
    path = write_config(tmp_path / "bad.toml", device_state=device_state)
    faults.calls.clear()
    result = cli("cost", config=path)
    assert result.exit_code == 2, result
    assert says in " ".join(result.stderr.split())
    assert faults.calls == []
