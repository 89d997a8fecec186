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


def privilege(action: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the service, the action's entry) in IAM's service reference; StopIteration if unknown."""
    prefix, name = action.split(":", 1)
    service = next(s for s in parliament.iam_definition if s["prefix"] == prefix)
    return service, next(p for p in service["privileges"] if p["privilege"] == name)


def required_resource_types(action: str) -> list[str]:
    """The resource types IAM's service reference gives `action` ("" for none)."""
    _, entry = privilege(action)
    return [r["resource_type"] for r in entry["resource_types"] if r["resource_type"]]


def access_level(action: str) -> str:
    """IAM's access level of `action`: Read, List, Write, Tagging or Permissions management."""
    return privilege(action)[1]["access_level"]
