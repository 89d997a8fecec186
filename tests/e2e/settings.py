"""The throwaway stack of one end-to-end run: its name, its test-sized config and what it costs.

Nothing here calls AWS: `make test-aws` prints all of it before it asks to go on.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from dataclasses import dataclass

from iotpipe.config import Config, parse_config
from iotpipe.cost import MINUTES_PER_MONTH, Choices, estimate, load_prices
from tests.e2e.leftovers import LISTING_ACTIONS

# Set by `make test-aws` (tests/e2e/aws.py) for the journey's pytest, after its checks.
TARGET_VARIABLE = "IOTPIPE_E2E_TARGET"
STACK_VARIABLE = "IOTPIPE_E2E_STACK"
# Every run's stack is named PREFIX + six random hex digits; `make test-aws-clean` removes what
# carries such a name (Glue and IoT rules write it with underscores).
PREFIX = "iotpipe-e2e-"
STACK_PATTERN = re.compile(r"(?<![a-z0-9])iotpipe[-_]e2e[-_][0-9a-f]{6}(?![a-z0-9])")
DEVICES = 3
# What a run on AWS holds its resources for, at most: up (IAM propagation, the delivery stream,
# the function) about 5 min, traffic and queries 5, the reshard 3, down 5, AWS's five minutes
# before a deprecated thing type may be deleted, and the second down.
EXPECTED_MINUTES = 45
# The reshard step of the journey doubles the stream: the run is priced at its widest.
WIDEST_SHARDS = 2

# The journey's own calls besides the commands' (which `iam-policy`'s deploy and operate jobs
# cover): the listings that prove nothing is left, and the alarm drill.
JOURNEY_ACTIONS = (
    *LISTING_ACTIONS,
    "cloudwatch:SetAlarmState",
    "cloudwatch:DescribeAlarmHistory",
)


def new_stack_name() -> str:
    return PREFIX + secrets.token_hex(3)


def stack_name_problem(name: str) -> str | None:
    """Why `name` cannot be an end-to-end stack's name (it must be one clean can find)."""
    if STACK_PATTERN.fullmatch(name) and name.startswith(PREFIX):
        return None
    return f"{name!r} is not {PREFIX}<6 hex digits> (e.g. {PREFIX}0a1b2c)"


def device_prefix(stack: str) -> str:
    """Devices are named after the stack too, so nothing of theirs can outlive it unnoticed."""
    return f"{stack}-d-"


def config_text(stack: str, region: str, *, emulator: bool, shards: int = 1) -> str:
    """The stack's config: the pipeline as `up` builds it, with test-sized settings.

    Firehose delivers 60 s after the first reading on AWS. The emulator's local delivery waits in
    real seconds, so there it delivers at once (0 s, which AWS accepts too).
    """
    buffer_seconds = 0 if emulator else 60
    return f"""\
[stack]
name = "{stack}"
region = "{region}"

[volume]
readings_per_day = 10000
devices = {DEVICES}

[stream]
shards = {shards}
retention_hours = 24

[processor]
batching_window_seconds = 0
log_retention_days = 1

[device_state]
ttl_days = 1

[archive]
buffer_mb = 1
buffer_seconds = {buffer_seconds}
quarantine_expire_days = 1
athena_results_expire_days = 1
noncurrent_version_expire_days = 1
log_retention_days = 1

[catalog]
bytes_scanned_cutoff_mb = 10

[alerts]
# Longer than the whole run: the archive's last delivery stays fresh for `status`.
archive_freshness_seconds = 3600
"""


def config_of(text: str) -> Config:
    return parse_config(tomllib.loads(text), source="the end-to-end config")


@dataclass(frozen=True)
class RunCost:
    monthly: float
    minutes: int
    region_priced: str

    @property
    def run(self) -> float:
        return self.monthly * self.minutes / MINUTES_PER_MONTH

    def summary(self) -> str:
        return (
            f"about ${self.run:.2f}: the cost model's ${self.monthly:,.2f} a month at "
            f"{self.region_priced} list prices for this config at its widest "
            f"({WIDEST_SHARDS} shards), prorated to {self.minutes} minutes"
        )


def run_cost(stack: str, region: str, minutes: int = EXPECTED_MINUTES) -> RunCost:
    """What one run on AWS costs, from `iotpipe.cost` (list prices, no free tier)."""
    config = config_of(config_text(stack, region, emulator=False, shards=WIDEST_SHARDS))
    prices = load_prices()
    monthly = estimate(config, prices, Choices.of(config)).total
    return RunCost(monthly=monthly, minutes=minutes, region_priced=prices.region)
