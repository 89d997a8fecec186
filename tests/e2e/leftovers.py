"""What is left of a stack in an account (resources tagged with it, resources named after it),
and taking a stack down until nothing is.

Both views are needed: the Resource Groups Tagging API sees every tagged resource but not what
cannot carry a tag (IoT rules and thing types, Glue tables, whose ownership iotpipe records
elsewhere), and names miss nothing the stack named. The same listings find the stacks an
interrupted run left (`make test-aws-clean`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import botocore.exceptions

from iotpipe.engine.model import STACK_TAG

Clients = Callable[[str], Any]

# AWS deletes a deprecated thing type only five minutes after its deprecation ("Delete a thing
# type", IoT developer guide), so `down` defers it; the emulator's AWS rules hold it to the same.
THING_TYPE_WAIT_SECONDS = 300

# The IAM actions the listings below call (beyond what `iam-policy`'s jobs grant); the README's
# "Testing against a real account" lists them with the journey's own.
LISTING_ACTIONS = (
    "tag:GetResources",
    "tag:GetTagValues",
    "kms:DescribeKey",
    "kms:ListAliases",
    "s3:ListAllMyBuckets",
    "kinesis:ListStreams",
    "dynamodb:ListTables",
    "sns:ListTopics",
    "sqs:ListQueues",
    "lambda:ListFunctions",
    "iam:ListRoles",
    "logs:DescribeLogGroups",
    "firehose:ListDeliveryStreams",
    "glue:GetDatabases",
    "glue:GetCrawlers",
    "glue:GetDatabase",
    "glue:GetCrawler",
    "athena:ListWorkGroups",
    "iot:ListTopicRules",
    "iot:ListPolicies",
    "iot:ListThingTypes",
    "iot:ListThings",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:ListDashboards",
    "application-autoscaling:DescribeScalableTargets",
)


def _pages(client: Any, operation: str, key: str, **params: Any) -> Iterator[Any]:
    if client.can_paginate(operation):
        for page in client.get_paginator(operation).paginate(**params):
            yield from page.get(key, [])
        return
    # Not in botocore's pagination model (Athena's ListWorkGroups): NextToken by hand.
    while True:
        page = getattr(client, operation)(**params)
        yield from page.get(key, [])
        if not page.get("NextToken"):
            return
        params = {**params, "NextToken": page["NextToken"]}


def _delivery_streams(client: Any) -> Iterator[str]:
    # ListDeliveryStreams has no paginator: it pages by the last name seen.
    params: dict[str, Any] = {}
    while True:
        page = client.list_delivery_streams(**params)
        yield from page["DeliveryStreamNames"]
        if not page.get("HasMoreDeliveryStreams") or not page["DeliveryStreamNames"]:
            return
        params = {"ExclusiveStartDeliveryStreamName": page["DeliveryStreamNames"][-1]}


def _buckets_of_region(s3: Any) -> Iterator[str]:
    # ListBuckets lists every region's; a stack's bucket name ends with its region.
    region = s3.meta.region_name
    return (b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].endswith(f"-{region}"))


# Each kind of resource a stack names, and how to list every name of that kind in the region.
LISTINGS: dict[str, Callable[[Clients], Iterator[str]]] = {
    "S3 bucket": lambda c: _buckets_of_region(c("s3")),
    "Kinesis stream": lambda c: _pages(c("kinesis"), "list_streams", "StreamNames"),
    "DynamoDB table": lambda c: _pages(c("dynamodb"), "list_tables", "TableNames"),
    "SNS topic": lambda c: (
        t["TopicArn"].rsplit(":", 1)[-1] for t in _pages(c("sns"), "list_topics", "Topics")
    ),
    "SQS queue": lambda c: (
        url.rsplit("/", 1)[-1] for url in _pages(c("sqs"), "list_queues", "QueueUrls")
    ),
    "Lambda function": lambda c: (
        f["FunctionName"] for f in _pages(c("lambda"), "list_functions", "Functions")
    ),
    "IAM role": lambda c: (r["RoleName"] for r in _pages(c("iam"), "list_roles", "Roles")),
    "log group": lambda c: (
        g["logGroupName"] for g in _pages(c("logs"), "describe_log_groups", "logGroups")
    ),
    "Firehose stream": lambda c: _delivery_streams(c("firehose")),
    "Glue database": lambda c: (
        d["Name"] for d in _pages(c("glue"), "get_databases", "DatabaseList")
    ),
    "Glue crawler": lambda c: (k["Name"] for k in _pages(c("glue"), "get_crawlers", "Crawlers")),
    "Athena workgroup": lambda c: (
        w["Name"] for w in _pages(c("athena"), "list_work_groups", "WorkGroups")
    ),
    "IoT rule": lambda c: (r["ruleName"] for r in _pages(c("iot"), "list_topic_rules", "rules")),
    "IoT policy": lambda c: (
        p["policyName"] for p in _pages(c("iot"), "list_policies", "policies")
    ),
    "IoT thing type": lambda c: (
        t["thingTypeName"] for t in _pages(c("iot"), "list_thing_types", "thingTypes")
    ),
    "IoT thing": lambda c: (t["thingName"] for t in _pages(c("iot"), "list_things", "things")),
    "CloudWatch alarm": lambda c: (
        a["AlarmName"]
        for a in _pages(
            c("cloudwatch"), "describe_alarms", "MetricAlarms", AlarmTypes=["MetricAlarm"]
        )
    ),
    "CloudWatch dashboard": lambda c: (
        d["DashboardName"] for d in _pages(c("cloudwatch"), "list_dashboards", "DashboardEntries")
    ),
    "KMS alias": lambda c: (a["AliasName"] for a in _pages(c("kms"), "list_aliases", "Aliases")),
    # The device-state table's capacity auto scaling, where it has one ("table/<table>").
    "Auto Scaling target": lambda c: (
        t["ResourceId"]
        for t in _pages(
            c("application-autoscaling"),
            "describe_scalable_targets",
            "ScalableTargets",
            ServiceNamespace="dynamodb",
        )
    ),
}


def name_pattern(stack: str) -> re.Pattern[str]:
    """`stack` as a whole word of a name, hyphenated or (Glue, IoT rules) with underscores."""
    words = [re.escape(word) for word in stack.split("-")]
    return re.compile(r"(?<![a-z0-9])" + "[-_]".join(words) + r"(?![a-z0-9])")


def named(clients: Clients, pattern: re.Pattern[str]) -> list[str]:
    """Every resource whose name `pattern` finds in, as "<kind> <name>"."""
    return [
        f"{kind} {name}"
        for kind, listing in LISTINGS.items()
        for name in listing(clients)
        if pattern.search(name)
    ]


@dataclass(frozen=True)
class Tagged:
    arns: list[str]
    # Customer managed keys KMS deletes only after a waiting period (7 days at least).
    keys_pending_deletion: list[str]
    # Listed by the tagging API, but gone from their own service.
    ghosts: list[str]


def _glue_gone(clients: Clients, arn: str) -> bool:
    kind, _, name = arn.split(":", 5)[5].partition("/")
    glue = clients("glue")
    calls = {
        "database": lambda: glue.get_database(Name=name),
        "crawler": lambda: glue.get_crawler(Name=name),
    }
    if kind not in calls:
        return False
    try:
        calls[kind]()
    except glue.exceptions.EntityNotFoundException:
        return True
    return False


# Resources whose tags the tagging API can still list once they are deleted, and how to ask
# their own service: moto's Glue never drops a deleted database's or crawler's tags (AWS's
# tagging API lags a deletion too, which the callers wait out).
GONE_PROBES: dict[str, Callable[[Clients, str], bool]] = {":glue:": _glue_gone}


def tagged(clients: Clients, stack: str) -> Tagged:
    """Resources carrying the stack's tag; keys waiting out their deletion and tags of deleted
    resources are listed apart."""
    tagging, kms = clients("resourcegroupstaggingapi"), clients("kms")
    arns, pending, ghosts = [], [], []
    for resource in _pages(
        tagging,
        "get_resources",
        "ResourceTagMappingList",
        TagFilters=[{"Key": STACK_TAG, "Values": [stack]}],
    ):
        arn = resource["ResourceARN"]
        if ":kms:" in arn and ":key/" in arn and _pending_deletion(kms, arn):
            pending.append(arn)
        elif any(part in arn and gone(clients, arn) for part, gone in GONE_PROBES.items()):
            ghosts.append(arn)
        else:
            arns.append(arn)
    return Tagged(sorted(arns), sorted(pending), sorted(ghosts))


def _pending_deletion(kms: Any, arn: str) -> bool:
    try:
        state = kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"]
    except botocore.exceptions.ClientError as exc:
        # The tagging API may still list a key KMS has finished deleting.
        return exc.response.get("Error", {}).get("Code") == "NotFoundException"
    return state in ("PendingDeletion", "PendingReplicaDeletion")


def stack_tag_values(clients: Clients) -> list[str]:
    """Every value of the stack tag in the region: the stacks that have (or had) resources."""
    tagging = clients("resourcegroupstaggingapi")
    return sorted(set(_pages(tagging, "get_tag_values", "TagValues", Key=STACK_TAG)))


@dataclass(frozen=True)
class Leftovers:
    tagged: Tagged
    named: list[str]

    @property
    def empty(self) -> bool:
        return not self.tagged.arns and not self.named

    def lines(self) -> list[str]:
        return [f"tagged: {arn}" for arn in self.tagged.arns] + [
            f"named: {name}" for name in self.named
        ]


def of_stack(clients: Clients, stack: str) -> Leftovers:
    return Leftovers(tagged(clients, stack), named(clients, name_pattern(stack)))


def take_down(down: Callable[[], dict[str, Any]], wait: Callable[[float, str], None]) -> None:
    """Run `down` (`iotpipe down --delete-data --yes --output json`, returning its document)
    again after AWS's wait for as long as it defers a step (the deprecated thing type)."""
    for _ in range(3):
        deferred = [s["name"] for s in down()["steps"] if s["action"] == "deferred"]
        if not deferred:
            return
        wait(THING_TYPE_WAIT_SECONDS + 5, f"AWS deletes {', '.join(deferred)} only then")
    raise AssertionError(f"`down --delete-data` still defers {deferred} after three runs")
