"""The cost model prices the storage classes the deployed lifecycle really uses."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from iotpipe.config import load_config
from iotpipe.cost import STEADY_STATE_DAYS, archive_storage_tiers, cost_report, load_prices
from tests.support import client, write_config

BUCKET = "test-archive-123456789012-us-east-1"

pytestmark = pytest.mark.usefixtures("processor_source")


@pytest.mark.parametrize(
    "archive",
    [{}, {"transition_to_ia_days": 45, "transition_to_glacier_days": 200}],
)
def test_cost_storage_classes_are_the_deployed_lifecycles(
    cli, endpoint: str, tmp_path: Path, archive: dict
) -> None:
    config_path = write_config(tmp_path / "c.toml", archive=archive)
    result = cli("up", "--yes", config=config_path)
    assert result.exit_code == 0, result
    rules = client(endpoint, "s3").get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    tiering = next(r for r in rules if r["ID"] == "readings-tiering")
    deployed = [(t["Days"], t["StorageClass"]) for t in tiering["Transitions"]]

    # A reading is in S3 Standard until the first transition, then in each deployed class.
    config = load_config(config_path)
    tiers = archive_storage_tiers(config)
    expected, start, current = [], 0, "STANDARD"
    for days, storage_class in deployed:
        expected.append((current, start, days))
        start, current = days, storage_class
    expected.append((current, start, STEADY_STATE_DAYS))
    assert tiers == expected

    # And the estimate's S3 storage lines are those classes, priced as those classes.
    prices = load_prices()
    items = cost_report(config, prices, date.today()).configured.items
    storage = [i for i in items if i.service == "S3" and i.unit == "GB-month" and i.quantity]
    assert [i.item.split("(")[1].split(",")[0] for i in storage] == [c for c, _, _ in tiers]
    class_prices = {
        "STANDARD": "standard_gb_month",
        "STANDARD_IA": "standard_ia_gb_month",
        "GLACIER_IR": "glacier_ir_gb_month",
    }
    assert [i.unit_price for i in storage] == [prices("s3", class_prices[c]) for c, _, _ in tiers]
    transitions = [i for i in items if i.item.startswith("lifecycle transitions to")]
    assert len(transitions) == len(deployed)


def test_queries_over_older_data_pay_s3s_retrieval() -> None:
    from iotpipe.config import Config

    prices = load_prices()
    items = cost_report(Config(), prices, date.today()).configured.items
    retrieval = next(i for i in items if i.item.startswith("retrieval from S3 Standard-IA"))
    assert retrieval.unit == "GB"
    assert retrieval.unit_price == prices("s3", "standard_ia_retrieval_per_gb") == 0.01
    assert retrieval.monthly_cost > 0
