"""Every resource of the stack declares a field table the engine can run: each desired field has
a reader and a writer, each write sets a field, and no resource updates itself outside the table.

The stacks are built for every shape the config can give them (every sink on, Parquet, on-demand
stream and table, e-mail alerts); no AWS call is made (the account and Timestream's availability
are handed in).
"""

from __future__ import annotations

from typing import Any

import pytest

from iotpipe.aws import Aws
from iotpipe.config import parse_config
from iotpipe.context import StackContext
from iotpipe.engine.model import Resource, desired_problems, field_table_problems
from iotpipe.stack import build_resources, build_teardown_resources

SHAPES: dict[str, dict[str, Any]] = {
    "default": {},
    "every sink": {"timeseries": {"enabled": True}},
    "parquet archive": {"archive": {"format": "parquet"}},
    "on-demand": {
        "stream": {"mode": "on_demand"},
        "device_state": {"capacity": "on_demand"},
    },
    "alerts by e-mail": {"alerts": {"emails": ["ops@example.com"]}},
}


def _resources(shape: dict[str, Any]) -> list[Resource]:
    config = parse_config({"stack": {"name": "plant-7"}, **shape})
    ctx = StackContext(config, Aws(region="us-east-1"), "123456789012", timeseries_usable=True)
    return [*build_resources(ctx, prewarm=False), *build_teardown_resources(ctx, prewarm=False)]


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_every_desired_field_has_a_reader_and_a_writer(shape: dict[str, Any]) -> None:
    problems = [p for r in _resources(shape) for p in desired_problems(r)]
    assert problems == []


def test_every_resource_class_declares_a_sound_table_and_no_update_of_its_own() -> None:
    classes = {type(r) for shape in SHAPES.values() for r in _resources(shape)}
    assert len(classes) >= 20
    for cls in classes:
        assert field_table_problems(cls) == [], cls.__name__
        # The engine dispatches the writes: a resource's own update() would bypass the table.
        assert not hasattr(cls, "update"), f"{cls.__name__} updates itself"


def test_a_desired_field_the_table_lacks_fails_the_check() -> None:
    stream = next(r for r in _resources({}) if r.kind == "kinesis.stream")

    class Wider(type(stream)):  # type: ignore[misc]
        def desired(self) -> dict[str, Any]:
            return {**super().desired(), "consumers": ["audit"]}

    wider = Wider(stream.ctx, stream.name)
    assert desired_problems(wider) == [
        f"{stream.key}: wants 'consumers' but declares no Field for it"
    ]
