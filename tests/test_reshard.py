"""Resharding: the step planner and AWS's rules, `iotpipe reshard`, `up` after a config change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe.resharding import (
    ReshardRefused,
    ScalingHistory,
    ShardLimits,
    plan_reshard,
    recommend,
    reshard_steps,
    scaling_operations,
)

STREAM = "test-readings"
ROOMY = ShardLimits(shard_limit=500, open_shards=0)


def history(operations: int) -> ScalingHistory:
    return ScalingHistory(operations=operations, closed_shards=operations, method="given")


# Step planner --------------------------------------------------------------------------------


def test_scaling_up_doubles_at_most_per_step() -> None:
    assert reshard_steps(1, 4) == [2, 4]


def test_scaling_down_halves_at_least_per_step() -> None:
    assert reshard_steps(8, 1) == [4, 2, 1]


def test_every_step_stays_within_double_and_half() -> None:
    for current, target in [(3, 20), (20, 3), (7, 100), (100, 7), (5, 6), (6, 5)]:
        steps = reshard_steps(current, target)
        assert steps[-1] == target
        before = current
        for count in steps:
            assert before / 2 <= count <= before * 2, (current, target, steps)
            before = count
    assert reshard_steps(3, 20) == [6, 12, 20]


def test_no_change_needs_no_step() -> None:
    assert reshard_steps(4, 4) == []


def test_plan_within_quota_and_limits() -> None:
    plan = plan_reshard(STREAM, 1, 4, history(3), ROOMY)
    assert plan.steps == [2, 4]
    assert plan.operations_left_after == 5


def test_24_hour_quota_refused_with_the_reason() -> None:
    with pytest.raises(ReshardRefused) as refused:
        plan_reshard(STREAM, 1, 8, history(8), ROOMY)
    message = refused.value.message
    assert "needs 3 UpdateShardCount operation(s) (1 -> 2 -> 4 -> 8)" in message
    assert "8 of AWS's 10 per rolling 24 hours have already run" in message
    # Two operations are left: 1 -> 2 -> 4 is what fits today.
    assert refused.value.hint == "--target 4 fits in what is left today"


def test_quota_exhausted_says_when_to_retry() -> None:
    with pytest.raises(ReshardRefused) as refused:
        plan_reshard(STREAM, 2, 3, history(10), ROOMY)
    assert "24 hours" in (refused.value.hint or "")


def test_account_shard_limit_refused() -> None:
    limits = ShardLimits(shard_limit=10, open_shards=8)  # 4 of them this stream's
    with pytest.raises(ReshardRefused) as refused:
        plan_reshard(STREAM, 4, 8, history(0), limits)
    assert "above its shard limit of 10" in refused.value.message
    assert plan_reshard(STREAM, 4, 6, history(0), limits).steps == [6]


def test_per_stream_maximum_refused() -> None:
    with pytest.raises(ReshardRefused, match="10,000 shards per stream"):
        plan_reshard(STREAM, 8_000, 12_000, history(0), ShardLimits(50_000, 8_000))


def _shard(shard_id: int, *parents: int, closed: bool) -> dict:
    entry: dict = {
        "ShardId": f"shardId-{shard_id:012d}",
        "SequenceNumberRange": {"StartingSequenceNumber": "1"},
    }
    if closed:
        entry["SequenceNumberRange"]["EndingSequenceNumber"] = "2"
    for key, parent in zip(("ParentShardId", "AdjacentParentShardId"), parents, strict=False):
        entry[key] = f"shardId-{parent:012d}"
    return entry


def test_operations_counted_from_shard_lineage() -> None:
    # 1 -> 2 -> 4: shard 0 split into 1, 2; each of those split again into 3..6.
    shards = [
        _shard(0, closed=True),
        _shard(1, 0, closed=True),
        _shard(2, 0, closed=True),
        *[_shard(n, 1 if n < 5 else 2, closed=False) for n in (3, 4, 5, 6)],
    ]
    assert scaling_operations(shards) == (2, 3)
    # A merge (two parents) deepens the chain from its deeper parent.
    merged = [*shards[:3], _shard(3, 1, 2, closed=False)]
    assert scaling_operations(merged) == (2, 3)
    assert scaling_operations([_shard(0, closed=False)]) == (0, 0)


def test_recommendation_arithmetic() -> None:
    rec = recommend(2_500.0, 900_000.0, 0.25, datapoints=1440)
    assert (rec.shards_for_records, rec.shards_for_bytes, rec.target) == (4, 2, 4)
    assert any("ceil(2,500.0 x 1.25 / 1,000 per shard) = 4" in line for line in rec.explanation())
    assert recommend(0.0, 0.0, 0.25, datapoints=0).target == 1


# Against the emulator ------------------------------------------------------------------------


def _kinesis(endpoint: str):
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


def _open_shards(endpoint: str) -> int:
    shards = _kinesis(endpoint).list_shards(StreamName=STREAM)["Shards"]
    return sum(1 for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"])


def test_reshard_to_4_from_a_one_shard_stream(cli, endpoint: str, faults) -> None:
    assert cli("up", "--yes").exit_code == 0
    assert _open_shards(endpoint) == 1
    faults.calls.clear()

    result = cli("reshard", "--target", "4", "--yes")

    assert result.exit_code == 0, result
    assert _open_shards(endpoint) == 4
    updates = [c for c in faults.calls if c == ("kinesis", "UpdateShardCount")]
    assert len(updates) == 2  # 1 -> 2 -> 4
    # Only the shard count changes, and the config that would revert it is named.
    assert {o for s, o in faults.mutating_calls} == {"UpdateShardCount"}
    assert "set [stream] shards = 4" in result.stderr
    assert "1 -> 2" in result.stdout and "2 -> 4" in result.stdout


def test_dry_run_prints_the_steps_only(cli, endpoint: str, faults) -> None:
    assert cli("up", "--yes").exit_code == 0
    faults.calls.clear()

    result = cli("reshard", "--target", "8", "--dry-run", "--output", "json")

    assert result.exit_code == 0, result
    assert result.json["steps"] == [2, 4, 8]
    assert result.json["applied"] is False
    assert faults.mutating_calls == []
    assert _open_shards(endpoint) == 1


def test_reshard_refuses_without_confirmation(cli, endpoint: str) -> None:
    assert cli("up", "--yes").exit_code == 0
    result = cli("reshard", "--target", "2")
    assert result.exit_code == 2  # no terminal to ask on: bad usage
    assert "--yes" in result.stderr
    assert _open_shards(endpoint) == 1


def test_quota_counted_from_the_streams_history(cli, endpoint: str) -> None:
    assert cli("up", "--yes").exit_code == 0
    # Five doublings then four halvings through AWS directly: nine operations in the lineage.
    kinesis = _kinesis(endpoint)
    for count in [2, 4, 8, 16, 32, 16, 8, 4, 2]:
        kinesis.update_shard_count(
            StreamName=STREAM, TargetShardCount=count, ScalingType="UNIFORM_SCALING"
        )

    result = cli("reshard", "--target", "8", "--yes")

    assert result.exit_code == 1
    assert "needs 2 UpdateShardCount operation(s)" in result.stderr
    assert "9 of AWS's 10 per rolling 24 hours" in result.stderr
    assert "--target 4 fits" in result.stderr
    assert _open_shards(endpoint) == 2


def test_on_demand_config_is_refused_naming_the_setting(cli, tmp_path: Path) -> None:
    config = tmp_path / "on-demand.toml"
    config.write_text('[stack]\nname = "test"\n[stream]\nmode = "on_demand"\n')
    result = cli("reshard", "--target", "2", config=config)
    assert result.exit_code == 2
    assert "[stream] mode" in result.stderr


def test_target_or_recommend_required(cli) -> None:
    assert cli("reshard").exit_code == 2
    assert cli("reshard", "--target", "2", "--recommend").exit_code == 2


def test_up_after_a_config_change_reshards_in_steps(cli, endpoint: str, faults, tmp_path) -> None:
    assert cli("up", "--yes").exit_code == 0
    config = tmp_path / "four.toml"
    config.write_text('[stack]\nname = "test"\n[stream]\nshards = 4\n')
    plan = cli("plan", "-o", "json", config=config).json
    (stream,) = [s for s in plan["steps"] if s["kind"] == "kinesis.stream"]
    assert stream["changes"] == [
        {"field": "shard_count", "old": 1, "new": 4, "paths": [{"path": [], "old": 1, "new": 4}]}
    ]
    assert "1 -> 2 -> 4" in stream["note"]
    faults.calls.clear()

    result = cli("up", "--yes", config=config)

    assert result.exit_code == 0, result
    assert _open_shards(endpoint) == 4
    assert faults.calls.count(("kinesis", "UpdateShardCount")) == 2
    assert cli("up", "--yes", config=config).exit_code == 0
    assert "nothing changed" in cli("up", "--yes", config=config).stdout


def test_recommend_from_cloudwatch_peak(cli, endpoint: str) -> None:
    assert cli("up", "--yes").exit_code == 0
    cloudwatch = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    dimensions = [{"Name": "StreamName", "Value": STREAM}]
    # A quiet day with one busy minute: 150,000 records (2,500/s) of 600 bytes each.
    for minutes_ago, records in [(300, 6_000), (120, 150_000), (30, 12_000)]:
        timestamp = now - timedelta(minutes=minutes_ago)
        cloudwatch.put_metric_data(
            Namespace="AWS/Kinesis",
            MetricData=[
                {
                    "MetricName": "IncomingRecords",
                    "Dimensions": dimensions,
                    "Timestamp": timestamp,
                    "Value": records,
                },
                {
                    "MetricName": "IncomingBytes",
                    "Dimensions": dimensions,
                    "Timestamp": timestamp,
                    "Value": records * 600,
                },
            ],
        )

    result = cli("reshard", "--recommend", "--dry-run", "--output", "json")

    assert result.exit_code == 0, result
    rec = result.json["recommendation"]
    assert rec["peak_records_per_second"] == pytest.approx(2_500)
    # ceil(2,500 x 1.25 / 1,000) = 4 for records; ceil(1.5 MB/s x 1.25 / 1 MiB) = 2 for bytes.
    assert (rec["shards_for_records"], rec["shards_for_bytes"], rec["target"]) == (4, 2, 4)
    assert result.json["steps"] == [2, 4]

    table = cli("reshard", "--recommend", "--dry-run")
    assert "ceil(2,500.0 x 1.25 / 1,000 per shard) = 4" in table.stdout


def test_up_is_held_to_the_same_quota(cli, endpoint: str, tmp_path) -> None:
    assert cli("up", "--yes").exit_code == 0
    kinesis = _kinesis(endpoint)
    for count in [2, 4, 8, 16, 32, 16, 8, 4, 2]:
        kinesis.update_shard_count(
            StreamName=STREAM, TargetShardCount=count, ScalingType="UNIFORM_SCALING"
        )
    config = tmp_path / "eight.toml"
    config.write_text('[stack]\nname = "test"\n[stream]\nshards = 8\n')

    result = cli("up", "--yes", config=config)

    assert result.exit_code == 1
    assert "9 of AWS's 10 per rolling 24 hours" in result.stderr
    assert _open_shards(endpoint) == 2


def test_a_stream_on_demand_in_aws_is_refused(cli, endpoint: str) -> None:
    assert cli("up", "--yes").exit_code == 0
    kinesis = _kinesis(endpoint)
    arn = kinesis.describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"][
        "StreamARN"
    ]
    kinesis.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})

    result = cli("reshard", "--target", "2", "--yes")

    assert result.exit_code == 1
    assert "on-demand in AWS" in result.stderr


def test_every_step_is_one_the_emulator_accepts(cli, endpoint, faults) -> None:
    # The emulator holds UpdateShardCount to AWS's limits (double / half per call): a call past
    # them fails, so these pass only if each planned step stays inside them.
    assert cli("up", "--yes").exit_code == 0
    with pytest.raises(ClientError, match="cannot scale up over double"):
        _kinesis(endpoint).update_shard_count(
            StreamName=STREAM, TargetShardCount=4, ScalingType="UNIFORM_SCALING"
        )

    up = cli("reshard", "--target", "7", "--yes")
    assert up.exit_code == 0, up
    assert _open_shards(endpoint) == 7
    down = cli("reshard", "--target", "2", "--yes")
    assert down.exit_code == 0, down
    assert _open_shards(endpoint) == 2
    # 1 -> 2 -> 4 -> 7, then 7 -> 4 -> 2.
    assert faults.calls.count(("kinesis", "UpdateShardCount")) == 5


def test_the_daily_quota_is_refused_before_aws_refuses_it(cli, endpoint, faults) -> None:
    assert cli("up", "--yes").exit_code == 0
    kinesis = _kinesis(endpoint)
    for count in [2, 1] * 5:
        kinesis.update_shard_count(
            StreamName=STREAM, TargetShardCount=count, ScalingType="UNIFORM_SCALING"
        )
    # AWS (and the emulator) now refuse an 11th scaling within 24 hours.
    with pytest.raises(ClientError) as refused:
        kinesis.update_shard_count(
            StreamName=STREAM, TargetShardCount=2, ScalingType="UNIFORM_SCALING"
        )
    assert refused.value.response["Error"]["Code"] == "LimitExceededException"
    faults.calls.clear()

    result = cli("reshard", "--target", "2", "--yes")

    assert result.exit_code == 1
    assert "10 of AWS's 10 per rolling 24 hours have already run" in result.stderr
    assert "once the oldest operation is more than 24 hours old" in result.stderr
    assert ("kinesis", "UpdateShardCount") not in faults.calls
