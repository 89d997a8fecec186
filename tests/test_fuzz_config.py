"""Hypothesis-generated configs: every bad one exits 2 naming a field, with no AWS call."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotpipe.config import Config, parse_config
from iotpipe.errors import ConfigError

SECTIONS = {name: field.annotation.model_fields for name, field in Config.model_fields.items()}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
)
known_keys = st.sampled_from(
    [(section, key) for section, fields in SECTIONS.items() for key in fields]
)
unknown_keys = st.tuples(
    st.sampled_from([*SECTIONS, "bogus"]), st.text(alphabet="abcdefxyz_", min_size=1, max_size=12)
)


@st.composite
def configs(draw) -> dict:
    data: dict = {}
    for section, key in draw(st.lists(st.one_of(known_keys, unknown_keys), max_size=6)):
        value = draw(scalars)
        if value is not None:  # TOML has no null: an absent key
            data.setdefault(section, {})[key] = value
    return data


def _paths(data: dict) -> set[str]:
    return {f"{section}.{key}" for section, values in data.items() for key in values} | set(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_any_config_is_either_valid_or_rejected_naming_a_given_field(data: dict) -> None:
    try:
        config = parse_config(data, source="iotpipe.toml")
    except ConfigError as exc:
        assert exc.exit_code == 2
        named = [line.strip().split(":")[0] for line in exc.message.splitlines()[1:]]
        assert named, exc.message
        given_paths = _paths(data)
        for path in named:
            # The path named is one the user wrote (or its section, for cross-field rules).
            assert any(path == p or path.startswith(p + ".") for p in given_paths), (path, data)
        return
    sizing = config.sizing
    assert sizing.shards >= 1
    assert math.isfinite(sizing.peak_bytes_per_second)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 2**63 else json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def _toml(data: dict) -> str:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(configs())
def test_the_cli_never_shows_a_traceback_for_a_generated_config(cli, faults, tmp_path, data):
    path: Path = tmp_path / "fuzz.toml"
    path.write_text(_toml(data))
    faults.calls.clear()
    result = cli("validate", config=path)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.exit_code in (0, 2), result
    if result.exit_code == 2:
        assert "error:" in result.stderr
    assert faults.calls == []


def _scalar_kind(annotation) -> type | None:
    """int, float or bool for a field that holds one (optionally or None), else None."""
    for kind in (bool, int, float):
        if annotation is kind or annotation == kind | None:
            return kind
    return None


numeric_or_boolean_keys = st.sampled_from(
    [
        (section, key)
        for section, fields in SECTIONS.items()
        for key, field in fields.items()
        if _scalar_kind(field.annotation) is not None
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    numeric_or_boolean_keys,
    st.one_of(
        st.integers(-(10**6), 10**6).map(str),
        st.sampled_from(["true", "false", "1.5", "0", " 30 ", "1e3"]),
    ),
)
def test_a_string_is_never_read_as_a_number_or_a_boolean(key, text: str) -> None:
    section, name = key
    try:
        parse_config({section: {name: text}}, source="iotpipe.toml")
    except ConfigError as exc:
        assert f"{section}.{name}:" in exc.message, exc.message
        return
    raise AssertionError(f"{section}.{name} = {text!r} was accepted")
