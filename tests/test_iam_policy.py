"""`iotpipe iam-policy`: per-job policies assembled from the code's declarations, that IAM accepts
and that name this stack's resources and nothing of a neighbour stack's."""

from __future__ import annotations

import ast
import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest

from iotpipe.aws import Aws
from iotpipe.config import load_config
from iotpipe.context import StackContext
from iotpipe.iam_policy import (
    EMULATOR_ONLY_ACTIONS,
    IMPLICIT_ACTIONS,
    JOBS,
    MANAGED_POLICY_CHARACTERS,
    job_policies,
    job_policy,
    policy_characters,
)
from iotpipe.permissions import reads, writes
from iotpipe.stack import build_teardown_resources
from tests.permission_audit import iam_action
from tests.policy_lint import access_level, parliament_findings, privilege, required_resource_types
from tests.support import client

ACCOUNT = "123456789012"
ROOT = Path(__file__).resolve().parent.parent


def context(tmp_path: Path, stack: str = "plant-7", region: str = "us-east-1") -> StackContext:
    path = tmp_path / f"{stack}-{region}.toml"
    path.write_text(f'[stack]\nname = "{stack}"\nregion = "{region}"\n')
    config = load_config(path)
    return StackContext(config, Aws(region=region), ACCOUNT, timeseries_usable=True)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def merged(documents: list[dict[str, Any]]) -> dict[str, Any]:
    statements = [statement for document in documents for statement in document["Statement"]]
    return {"Version": documents[0]["Version"], "Statement": statements}


def granted(policy: dict[str, Any]) -> set[str]:
    return {action for statement in policy["Statement"] for action in statement["Action"]}


@pytest.fixture
def policies(tmp_path: Path) -> dict[str, dict[str, Any]]:
    ctx = context(tmp_path)
    return {job: job_policy(ctx, job) for job in JOBS}


@pytest.mark.parametrize(
    ("stack", "region"),
    [("plant-7", "us-east-1"), ("a" * 24, "ap-southeast-4")],
    ids=["default", "longest-stack-name"],
)
def test_every_document_is_a_policy_aws_accepts(endpoint, tmp_path, stack, region):
    ctx = context(tmp_path, stack, region)
    iam = client(endpoint, "iam")
    for job, documents in job_policies(ctx).items():
        # Together the documents grant exactly the job's policy.
        assert merged(documents) == job_policy(ctx, job)
        for number, document in enumerate(documents, start=1):
            assert policy_characters(document) <= MANAGED_POLICY_CHARACTERS
            sids = [statement["Sid"] for statement in document["Statement"]]
            assert len(sids) == len(set(sids)) and all(
                re.fullmatch(r"[A-Za-z0-9]+", s) for s in sids
            )
            assert parliament_findings(document) == [], json.dumps(document, indent=1)
            # The emulator holds CreatePolicy to IAM's size quota, as AWS does.
            iam.create_policy(PolicyName=f"{job}-{number}", PolicyDocument=json.dumps(document))


def test_a_document_too_large_for_one_policy_is_refused_by_the_emulator(endpoint, policies):
    deploy = policies["deploy"]
    assert policy_characters(deploy) > MANAGED_POLICY_CHARACTERS
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client(endpoint, "iam").create_policy(
            PolicyName="deploy", PolicyDocument=json.dumps(deploy)
        )
    assert refused.value.response["Error"]["Code"] == "LimitExceeded"


def test_every_action_exists_and_none_is_a_wildcard(policies):
    for policy in policies.values():
        for action in granted(policy):
            assert "*" not in action, action
            # Raises StopIteration for an action IAM's service reference does not define.
            required_resource_types(action)


def test_resource_star_only_for_actions_iam_cannot_scope(policies):
    for policy in policies.values():
        for statement in policy["Statement"]:
            if statement["Resource"] == "*":
                for action in statement["Action"]:
                    assert required_resource_types(action) == [], action


def test_a_wildcard_resource_must_say_why():
    with pytest.raises(ValueError, match="reason"):
        writes(["iot:DeleteThing"], "arn:aws:iot:us-east-1:123456789012:thing/*")
    with pytest.raises(ValueError, match="reason"):
        reads(["iot:ListThings"], "*")
    assert reads(["iot:ListThings"], "*", why="no resource type").resources == ("*",)


def test_read_only_grants_only_reading(policies):
    for action in granted(policies["read-only"]):
        assert access_level(action) in {"Read", "List"}, action


def test_jobs_grant_what_their_commands_need(policies):
    operate, deploy, read_only = policies["operate"], policies["deploy"], policies["read-only"]
    assert {"iot:CreateThing", "iot:CreateKeysAndCertificate", "iot:AttachThingPrincipal"} <= (
        granted(operate)
    )
    assert {"athena:StartQueryExecution", "kinesis:DescribeLimits"} <= granted(operate)
    assert {"kinesis:UpdateShardCount", "cloudwatch:GetMetricStatistics"} <= granted(operate)
    assert "kinesis:CreateStream" not in granted(operate)
    assert "iot:CreateThing" not in granted(deploy) | granted(read_only)
    assert "iot:DeleteThing" in granted(deploy)  # down --delete-data
    assert {"iot:ListThings", "iot:GetThingShadow"} <= granted(read_only)


def test_pass_role_only_for_the_stacks_roles_each_to_its_service(policies):
    passing = [s for s in policies["deploy"]["Statement"] if "iam:PassRole" in s["Action"]]
    passed = {
        (role, s["Condition"]["StringEquals"]["iam:PassedToService"])
        for s in passing
        for role in as_list(s["Resource"])
    }
    assert all(s["Action"] == ["iam:PassRole"] for s in passing)
    arn = f"arn:aws:iam::{ACCOUNT}:role/plant-7-"
    assert passed == {
        (f"{arn}iot-rule", "iot.amazonaws.com"),
        (f"{arn}processor", "lambda.amazonaws.com"),
        (f"{arn}firehose", "firehose.amazonaws.com"),
        (f"{arn}crawler", "glue.amazonaws.com"),
    }


def test_deleting_needs_the_stacks_tag_where_iam_supports_it(policies):
    conditioned = {
        action
        for statement in policies["deploy"]["Statement"]
        if "aws:ResourceTag/iotpipe:stack" in json.dumps(statement.get("Condition", {}))
        for action in statement["Action"]
    }
    assert {"dynamodb:DeleteTable", "kinesis:DeleteStream", "iam:DeleteRole"} <= conditioned
    for action in conditioned:
        assert "aws:ResourceTag/${TagKey}" in condition_keys(action), action


def condition_keys(action: str) -> set[str]:
    service, entry = privilege(action)
    keys: set[str] = set()
    for resource_type in entry["resource_types"]:
        keys |= set(resource_type["condition_keys"])
        name = resource_type["resource_type"].rstrip("*")
        keys |= {
            k for r in service["resources"] if r["resource"] == name for k in r["condition_keys"]
        }
    return keys


# Resources whose ids AWS chooses (or that a user names), the account's one Glue catalog, which
# Glue authorizes every database and table action on, and the account's one service-linked role
# of DynamoDB auto scaling: no stack can own these.
ACCOUNT_WIDE = (
    "thing/*",
    "cert/*",
    "key/*",
    "event-source-mapping:*",
    ":catalog",
    "scalable-target/*",
    "/AWSServiceRoleForApplicationAutoScaling_DynamoDBTable",
)


def _matches(pattern: str, arn: str) -> bool:
    # IAM's ARN wildcards: * any run of characters, ? one character.
    return fnmatch.fnmatchcase(arn, pattern.replace("[", "[[]"))


def _named_arns(ctx: StackContext) -> set[str]:
    """Every ARN a stack's own declarations name exactly (no wildcard)."""
    resources = build_teardown_resources(ctx, prewarm=False)
    return {
        arn
        for resource in resources
        for grant in resource.grants()
        for arn in grant.resources
        if "*" not in arn
    }


def test_no_statement_matches_a_neighbour_stacks_resources(tmp_path, policies):
    own = context(tmp_path)
    # The neighbours the issue names, and every stack whose name is a hyphen-prefix of one of
    # this stack's resource names (the only way an exact name could be another stack's too).
    neighbours = {"plant-7-dev", "plant-72", "plant-7-archive", "plant-7-processor"}
    for arn in _named_arns(own):
        name = re.split(r"[:/]", arn)[-1]
        parts = name.split("-")
        neighbours |= {"-".join(parts[:n]) for n in range(1, len(parts))}
    neighbours = {n for n in neighbours if re.fullmatch(r"[a-z][a-z0-9-]{2,23}", n)}
    neighbours.discard("plant-7")
    assert len(neighbours) > 5
    for neighbour in sorted(neighbours):
        theirs = _named_arns(context(tmp_path, neighbour))
        for job, policy in policies.items():
            for statement in policy["Statement"]:
                for pattern in as_list(statement["Resource"]):
                    if pattern == "*" or pattern.endswith(ACCOUNT_WIDE):
                        continue
                    hit = [arn for arn in theirs if _matches(pattern, arn)]
                    assert not hit, f"{job} {statement['Sid']} {pattern} matches {neighbour}: {hit}"


def test_account_wide_resources_only_where_ids_are_not_known(policies):
    for policy in policies.values():
        for statement in policy["Statement"]:
            for pattern in as_list(statement["Resource"]):
                if "*" in pattern and pattern != "*":
                    # The stack's own names before the wildcard, or ids AWS picks.
                    assert (
                        pattern.endswith(ACCOUNT_WIDE)
                        or "plant-7" in pattern
                        or ("plant_7" in pattern or "AWSLambdaPowertools" in pattern)
                    ), pattern


def test_implicit_and_emulator_only_lists_stay_true(policies):
    everything = set().union(*(granted(policy) for policy in policies.values()))
    assert set(IMPLICIT_ACTIONS) <= everything, set(IMPLICIT_ACTIONS) - everything
    assert not set(EMULATOR_ONLY_ACTIONS) & everything


# One source per fact: the actions are declared by the modules that make the calls.
ACTION_LITERAL = re.compile(r"^[a-z0-9-]+:[A-Z][A-Za-z0-9]+$")
CALL_METHODS = {"call", "pages", "paginate"}
# A resource's own calls to its service (iotpipe.engine.model.Resource).
RESOURCE_CALLS = {"call", "find", "make", "remove"}


def _action_literals(tree: ast.AST) -> set[str]:
    """Every IAM action written out as a string ("svc:Action") in `tree`."""
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ACTION_LITERAL.match(node.value)
    }


def _kind_prefix(node: ast.AST) -> str | None:
    """The service of a resource class (its `kind = "service.thing"`), else None."""
    for statement in getattr(node, "body", []):
        if (
            isinstance(statement, ast.Assign)
            and [t.id for t in statement.targets if isinstance(t, ast.Name)] == ["kind"]
            and isinstance(statement.value, ast.Constant)
        ):
            return str(statement.value.value).split(".", 1)[0]
    return None


def _calls(node: ast.AST, service: str | None) -> list[tuple[str, str]]:
    """(service, operation) of every call by literal name under `node`: `aws.call("svc", "op")`
    (and pages/paginate), a write `call("svc", "op", ...)`, a `Tagging("svc", "list", "tag")`,
    and a resource's own `self.call(aws, "op")` / `r.find(aws, "op")` (make, remove) on its kind's
    service."""
    found = []
    for child in ast.walk(node):
        if not isinstance(child, ast.Call):
            continue
        func, args = child.func, child.args
        literal = [a.value for a in args if isinstance(a, ast.Constant)]
        method = func.attr if isinstance(func, ast.Attribute) else None
        name = func.id if isinstance(func, ast.Name) else None
        if method in RESOURCE_CALLS and len(args) >= 2 and isinstance(args[0], ast.Name):
            if service and isinstance(args[1], ast.Constant):
                found.append((service, args[1].value))
        elif (method in CALL_METHODS or name == "call") and len(args) >= 2:
            if all(isinstance(a, ast.Constant) for a in args[:2]):
                found.append((args[0].value, args[1].value))
        elif name == "Tagging" and len(args) >= 3 and isinstance(args[0], ast.Constant):
            found += [(args[0].value, op) for op in literal[1:3] if isinstance(op, str)]
    return found


def _module_facts(path: Path) -> tuple[set[str], set[str]]:
    """(IAM actions of the calls the module makes by literal name, actions it declares)."""
    tree = ast.parse(path.read_text())
    session = botocore.session.get_session()
    declared = _action_literals(tree)
    prefixes = {p for node in tree.body if (p := _kind_prefix(node))}
    # Module-level helpers of a one-service module call on that service.
    only = next(iter(prefixes)) if len(prefixes) == 1 else None
    found = []
    for node in tree.body:
        found += _calls(node, _kind_prefix(node) or only)
    calls = set()
    for service, operation in found:
        model = session.get_service_model(service)
        name = next(op for op in model.operation_names if botocore.xform_name(op) == operation)
        calls.add(iam_action(service, name))
    return calls, declared


def test_every_call_is_declared_in_the_module_that_makes_it():
    modules = [
        *(ROOT / "iotpipe" / "resources").glob("*.py"),
        *(ROOT / "iotpipe" / name for name in ("devices.py", "health.py", "resharding.py")),
        ROOT / "iotpipe" / "athena_query.py",
        ROOT / "iotpipe" / "simulate.py",
    ]
    checked = 0
    for path in modules:
        calls, declared = _module_facts(path)
        # The emulator-only Publish of `simulate` is granted by no job.
        missing = calls - declared - set(EMULATOR_ONLY_ACTIONS)
        assert not missing, f"{path.name} calls {sorted(missing)} without declaring them"
        checked += len(calls)
    assert checked > 150


def test_the_policy_module_lists_no_action_of_its_own():
    source = (ROOT / "iotpipe" / "iam_policy.py").read_text()
    tree = ast.parse(source)
    implicit = set(IMPLICIT_ACTIONS) | set(EMULATOR_ONLY_ACTIONS)
    assert _action_literals(tree) == implicit


def test_cli_prints_every_jobs_documents_for_a_given_account(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--account-id", "210987654321", "--output", "json")
    assert result.exit_code == 0, result
    assert set(result.json) == set(JOBS)
    resources = [
        r for s in merged(result.json["deploy"])["Statement"] for r in as_list(s["Resource"])
    ]
    assert "arn:aws:kinesis:us-east-1:210987654321:stream/test-readings" in resources
    assert faults.calls == []


def test_cli_asks_sts_for_the_account_when_not_given(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--job", "operate")
    assert result.exit_code == 0, result
    assert ("sts", "GetCallerIdentity") in faults.calls
    resources = [r for s in merged(result.json)["Statement"] for r in as_list(s["Resource"])]
    assert f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/test-device-state" in resources


def test_cli_help_says_which_job_to_give_whom(cli):
    result = cli("iam-policy", "--help")
    assert result.exit_code == 0
    for job in JOBS:
        assert f"{job}:" in result.stdout


def test_cli_rejects_an_unknown_job(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--job", "admin")
    assert result.exit_code == 2, result
    assert "--job" in result.stderr and "deploy" in result.stderr
    assert faults.calls == []


def test_cli_rejects_a_malformed_account_id(cli, faults):
    faults.calls.clear()
    result = cli("iam-policy", "--account-id", "12345")
    assert result.exit_code == 2, result
    assert "--account-id" in result.stderr
    assert faults.calls == []
