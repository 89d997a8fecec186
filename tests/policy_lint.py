"""Lint an IAM policy document with parliament (reused by every test that checks a policy)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from typing import Any

with warnings.catch_warnings():
    # parliament imports pkg_resources, which warns about its own deprecation.
    warnings.simplefilter("ignore")
    import parliament


def parliament_findings(policy: dict[str, Any], *, ignore: Iterable[str] = ()) -> list[str]:
    """Every finding parliament reports on `policy`, as "ISSUE: detail" (empty when clean)."""
    skipped = set(ignore)
    analysed = parliament.analyze_policy_string(json.dumps(policy))
    return [f"{f.issue}: {f.detail}" for f in analysed.findings if f.issue not in skipped]


def required_resource_types(action: str) -> list[str]:
    """The resource types IAM's service reference gives `action` ("" for none)."""
    prefix, name = action.split(":", 1)
    service = next(s for s in parliament.iam_definition if s["prefix"] == prefix)
    privilege = next(p for p in service["privileges"] if p["privilege"] == name)
    return [r["resource_type"] for r in privilege["resource_types"] if r["resource_type"]]
