"""Application Auto Scaling of the device-state table's provisioned capacity.

DynamoDB auto scaling is, per capacity dimension (the table's write or read capacity units), a
scalable target (minimum and maximum units) and a target-tracking policy on DynamoDB's
utilisation metric. Application Auto Scaling creates four CloudWatch alarms for each such policy
(AlarmHigh, AlarmLow, ProvisionedCapacityHigh and ProvisionedCapacityLow, named
`TargetTracking-table/<table>-...`), bills them as standard alarms and deletes them with the policy;
`iotpipe cost` prices them. A dimension whose minimum equals its maximum is fixed: the table's own
capacity, no target, no alarms.

The settings belong to the table: `resources/dynamodb.py` observes and changes them as one of its
fields, so that a switch to on-demand, a table kept by `down` and a deleted table all keep them
consistent (DynamoDB keeps a table's scalable targets when it switches to on-demand or is
deleted, "Managing throughput capacity automatically with DynamoDB auto scaling").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from iotpipe.aws import Transient
from iotpipe.permissions import Grant, reads, writes

if TYPE_CHECKING:
    from iotpipe.aws import Aws
    from iotpipe.config import Config
    from iotpipe.naming import Names

SERVICE = "application-autoscaling"
NAMESPACE = "dynamodb"
ALARMS_PER_POLICY = 4
# Each capacity dimension: the table's throughput field, the scalable dimension and the metric
# its target-tracking policy follows (Application Auto Scaling API reference, PutScalingPolicy:
# PredefinedMetricSpecification).
DIMENSIONS: dict[str, tuple[str, str, str]] = {
    "writes": (
        "WriteCapacityUnits",
        "dynamodb:table:WriteCapacityUnits",
        "DynamoDBWriteCapacityUtilization",
    ),
    "reads": (
        "ReadCapacityUnits",
        "dynamodb:table:ReadCapacityUnits",
        "DynamoDBReadCapacityUtilization",
    ),
}
NOT_FOUND = ("ObjectNotFoundException",)
# "If you call the RegisterScalableTarget API operation to create a scalable target, there might
# be a brief delay until the operation achieves eventual consistency" (API reference): a policy put
# right after is refused with this text (quoted in hashicorp/terraform #10737). A change while
# another is pending answers ConcurrentUpdateException (API reference, Common errors).
NOT_YET_REGISTERED = Transient(
    "scalable-target-not-yet-visible", "ObjectNotFoundException", "No scalable target registered"
)
CONCURRENT_UPDATE = Transient("scalable-target-updating", "ConcurrentUpdateException")
# Application Auto Scaling acts through this service-linked role, which it creates on the first
# RegisterScalableTarget of a DynamoDB table with the caller's iam:CreateServiceLinkedRole
# (Application Auto Scaling user guide, "Service-linked roles").
LINKED_ROLE_SERVICE = "dynamodb.application-autoscaling.amazonaws.com"
LINKED_ROLE_NAME = "AWSServiceRoleForApplicationAutoScaling_DynamoDBTable"


def capacity_ranges(config: Config) -> dict[str, tuple[int, int]]:
    """(minimum, maximum) units of each dimension of a provisioned table ({} on demand)."""
    if config.device_state.capacity != "provisioned":
        return {}
    sizing = config.sizing
    return {
        "writes": (sizing.state_min_write_capacity, sizing.state_max_write_capacity),
        "reads": (sizing.state_min_read_capacity, sizing.state_max_read_capacity),
    }


def scaled(config: Config) -> dict[str, dict[str, Any]]:
    """The dimensions auto scaling manages, with their range and target utilisation."""
    target = float(config.device_state.target_utilization)
    return {
        dimension: {"min": low, "max": high, "target_utilization": target}
        for dimension, (low, high) in capacity_ranges(config).items()
        if low < high
    }


def fixed_throughput(config: Config) -> dict[str, int]:
    """The table's own capacity for the dimensions that are not scaled (minimum = maximum)."""
    return {
        DIMENSIONS[dimension][0]: low
        for dimension, (low, high) in capacity_ranges(config).items()
        if low == high
    }


def initial_throughput(config: Config) -> dict[str, int]:
    """ProvisionedThroughput for a table becoming provisioned: each dimension at its minimum."""
    return {DIMENSIONS[d][0]: low for d, (low, _) in capacity_ranges(config).items()}


def alarm_count(config: Config) -> int:
    """The CloudWatch alarms Application Auto Scaling keeps for the config's policies."""
    return ALARMS_PER_POLICY * len(scaled(config))


def policy_name(table: str, dimension: str) -> str:
    return f"{table}-{dimension}-capacity"


def _resource_id(table: str) -> str:
    return f"table/{table}"


def observe(aws: Aws, table: str, label: str) -> dict[str, Any]:
    """Application Auto Scaling's answers about the table: its scalable targets and policies."""
    found = aws.call(
        SERVICE,
        "describe_scalable_targets",
        resource=label,
        ServiceNamespace=NAMESPACE,
        ResourceIds=[_resource_id(table)],
    )
    policies = aws.call(
        SERVICE,
        "describe_scaling_policies",
        resource=label,
        ServiceNamespace=NAMESPACE,
        ResourceId=_resource_id(table),
    )
    return {
        "ScalableTargets": found.get("ScalableTargets", []),
        "ScalingPolicies": policies.get("ScalingPolicies", []),
    }


def registered(table: str, answers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The table's registered dimensions (from `observe`'s answers): range, our policy's target
    (None without it) and the names of every policy on the dimension."""
    by_dimension = {scalable: name for name, (_, scalable, _) in DIMENSIONS.items()}
    policies = answers["ScalingPolicies"]
    found: dict[str, dict[str, Any]] = {}
    for target in answers["ScalableTargets"]:
        dimension = by_dimension.get(target["ScalableDimension"])
        if dimension is None or target.get("ResourceId") != _resource_id(table):
            continue
        on_target = [
            p for p in policies if p.get("ScalableDimension") == target["ScalableDimension"]
        ]
        ours = next(
            (p for p in on_target if p.get("PolicyName") == policy_name(table, dimension)), None
        )
        tracking = (ours or {}).get("TargetTrackingScalingPolicyConfiguration") or {}
        found[dimension] = {
            "min": target["MinCapacity"],
            "max": target["MaxCapacity"],
            "target_utilization": tracking.get("TargetValue"),
            "policies": [p["PolicyName"] for p in on_target],
        }
    return found


def settings(table: str, answers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The registered settings in the shape `scaled` gives (without the policy names)."""
    return {
        dimension: {k: v for k, v in spec.items() if k != "policies"}
        for dimension, spec in registered(table, answers).items()
    }


def apply(
    aws: Aws,
    table: str,
    label: str,
    want: dict[str, dict[str, Any]],
    have: dict[str, dict[str, Any]],
) -> None:
    """Register (or change) the wanted dimensions and remove the others.

    The table must be provisioned before a target is registered for it."""
    for dimension in have.keys() - want.keys():
        remove(aws, table, label, dimension, have[dimension])
    for dimension, spec in want.items():
        current = have.get(dimension) or {}
        _, scalable, metric = DIMENSIONS[dimension]
        if (current.get("min"), current.get("max")) != (spec["min"], spec["max"]):
            aws.call(
                SERVICE,
                "register_scalable_target",
                resource=label,
                retry_on=(CONCURRENT_UPDATE,),
                ServiceNamespace=NAMESPACE,
                ResourceId=_resource_id(table),
                ScalableDimension=scalable,
                MinCapacity=spec["min"],
                MaxCapacity=spec["max"],
            )
        if current.get("target_utilization") != spec["target_utilization"]:
            aws.call(
                SERVICE,
                "put_scaling_policy",
                resource=label,
                retry_on=(NOT_YET_REGISTERED, CONCURRENT_UPDATE),
                PolicyName=policy_name(table, dimension),
                ServiceNamespace=NAMESPACE,
                ResourceId=_resource_id(table),
                ScalableDimension=scalable,
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    "TargetValue": spec["target_utilization"],
                    "PredefinedMetricSpecification": {"PredefinedMetricType": metric},
                },
            )


def remove(aws: Aws, table: str, label: str, dimension: str, observed: dict[str, Any]) -> None:
    """Delete a dimension's policies (and so their alarms), then its scalable target."""
    _, scalable, _ = DIMENSIONS[dimension]
    for name in observed.get("policies", []):
        aws.call(
            SERVICE,
            "delete_scaling_policy",
            resource=label,
            retry_on=(CONCURRENT_UPDATE,),
            missing=NOT_FOUND,
            PolicyName=name,
            ServiceNamespace=NAMESPACE,
            ResourceId=_resource_id(table),
            ScalableDimension=scalable,
        )
    aws.call(
        SERVICE,
        "deregister_scalable_target",
        resource=label,
        retry_on=(CONCURRENT_UPDATE,),
        missing=NOT_FOUND,
        ServiceNamespace=NAMESPACE,
        ResourceId=_resource_id(table),
        ScalableDimension=scalable,
    )


def grants(names: Names) -> list[Grant]:
    """Observing and changing the table's auto scaling, and what AWS checks on the way."""
    table = names.device_state_table
    return [
        reads(
            [
                "application-autoscaling:DescribeScalableTargets",
                "application-autoscaling:DescribeScalingPolicies",
            ],
            "*",
            why="IAM has no resource type for Application Auto Scaling's Describe actions",
        ),
        # Only DynamoDB tables' capacity, the one kind of target the stack registers.
        writes(
            [
                "application-autoscaling:RegisterScalableTarget",
                "application-autoscaling:PutScalingPolicy",
                "application-autoscaling:DeleteScalingPolicy",
                "application-autoscaling:DeregisterScalableTarget",
            ],
            names.arn("application-autoscaling", "scalable-target/*"),
            condition={
                "StringEquals": {
                    "application-autoscaling:service-namespace": NAMESPACE,
                    "application-autoscaling:scalable-dimension": sorted(
                        scalable for _, scalable, _ in DIMENSIONS.values()
                    ),
                }
            },
            why="scalable target ids are random; the condition keeps them to DynamoDB tables",
        ),
        # The first registration creates the service-linked role with the caller's permission.
        writes(
            ["iam:CreateServiceLinkedRole"],
            names.arn(
                "iam",
                f"role/aws-service-role/{LINKED_ROLE_SERVICE}/{LINKED_ROLE_NAME}",
                region=False,
            ),
            condition={"StringEquals": {"iam:AWSServiceName": LINKED_ROLE_SERVICE}},
        ),
        # The policies' alarms, which Application Auto Scaling names with random ids after their
        # kind (AlarmHigh, AlarmLow, ProvisionedCapacityHigh, ProvisionedCapacityLow).
        writes(
            ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"],
            [
                names.arn("cloudwatch", f"alarm:TargetTracking-table/{table}-{kind}*")
                for kind in ("Alarm", "ProvisionedCapacity")
            ],
            why="Application Auto Scaling names a policy's alarms with random ids",
        ),
    ]
