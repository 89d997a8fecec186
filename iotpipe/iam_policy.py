"""The least-privilege IAM policy a person or CI role needs to run up / down / plan / status.

Every statement is scoped to the stack's own ARNs (from `Names`), mostly as "<stack>-*" patterns so
that a resource added to the stack later under the same prefix stays covered. `Resource: "*"` is
used only for the actions listed in `UNSCOPED_ACTIONS`, which AWS does not let a policy scope to a
resource; iam:PassRole is granted only for the stack's four service roles, each to its service.
"""

from __future__ import annotations

import json
from typing import Any

from iotpipe.engine.model import STACK_TAG
from iotpipe.errors import IotpipeError
from iotpipe.naming import Names
from iotpipe.resources.iam import POLICY_VERSION
from iotpipe.resources.lambda_ import POWERTOOLS_ACCOUNT

# Actions that support no resource-level permission in IAM (Resource must be "*"), and why the
# commands need them.
UNSCOPED_ACTIONS: dict[str, str] = {
    "sts:GetCallerIdentity": "the account id, which every ARN and the bucket name contain",
    "timestream:DescribeEndpoints": "the Timestream SDK discovers its endpoint before each call",
    "timestream:ListDatabases": "up checks whether the account may use Timestream at all",
    "lambda:CreateEventSourceMapping": "scoped instead by the lambda:FunctionArn condition",
    "lambda:ListEventSourceMappings": "finds the processor's Kinesis trigger",
    "cloudwatch:GetMetricData": "status reads the pipeline's health metrics",
    "kinesis:UpdateShardCount": "up converges the stream to the configured shard count",
    "kinesis:UpdateStreamMode": "up switches between provisioned and on-demand",
    "logs:DescribeLogGroups": "observes the stack's log groups (looked up by name prefix)",
    "sns:Unsubscribe": "up removes alert e-mails dropped from the config",
    "glue:CreateCrawler": "scoped instead by the aws:RequestTag condition on the stack tag",
    "kms:CreateKey": "scoped instead by the aws:RequestTag condition on the stack tag",
    "iot:ListThings": "down lists the stack's devices (the things of its thing type)",
    "iot:DescribeEndpoint": "down deletes device shadows at the account's IoT data endpoint",
    "iot:ListThingPrincipals": "down waits for a deleted device's certificates to be detached",
    "iot:DetachThingPrincipal": "down detaches a deleted device's certificates from it",
    "iot:ListAttachedPolicies": "down detaches the policies of a deleted device's certificates",
}
# Unscoped actions that carry a condition of their own, in their own statements.
_CONDITIONED = ("lambda:CreateEventSourceMapping", "glue:CreateCrawler", "kms:CreateKey")

# The service each of the stack's roles is passed to (iam:PassedToService).
ROLE_SERVICES: dict[str, str] = {
    "iot-rule": "iot.amazonaws.com",
    "processor": "lambda.amazonaws.com",
    "firehose": "firehose.amazonaws.com",
    "crawler": "glue.amazonaws.com",
}


def _statement(
    sid: str,
    actions: list[str],
    resources: list[str] | str,
    condition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": resources,
    }
    if condition:
        statement["Condition"] = condition
    return statement


def operator_policy(names: Names) -> dict[str, Any]:
    """The policy document for `names`' stack, account and region."""
    stack = names.stack
    prefix = f"{stack}-*"
    partition, region = names.partition, names.region
    function_arn = names.arn("lambda", f"function:{prefix}")
    glue = names.glue_database
    statements = [
        _statement(
            "ArchiveBucket",
            [
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:ListBucket",
                "s3:ListBucketVersions",
                "s3:GetBucketTagging",
                "s3:PutBucketTagging",
                "s3:GetEncryptionConfiguration",
                "s3:PutEncryptionConfiguration",
                "s3:GetBucketPublicAccessBlock",
                "s3:PutBucketPublicAccessBlock",
                "s3:GetBucketOwnershipControls",
                "s3:PutBucketOwnershipControls",
                "s3:GetBucketPolicy",
                "s3:PutBucketPolicy",
                "s3:DeleteBucketPolicy",
                "s3:GetLifecycleConfiguration",
                "s3:PutLifecycleConfiguration",
                # The archive is versioned (iotpipe.resources.s3).
                "s3:GetBucketVersioning",
                "s3:PutBucketVersioning",
            ],
            names.archive_bucket_arn,
        ),
        # `down --delete-data` removes objects. Whoever may set the bucket policy can grant
        # themselves object access anyway, so reading and writing objects is stated openly.
        _statement(
            "ArchiveObjects",
            ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"],
            f"{names.archive_bucket_arn}/*",
        ),
        _statement(
            "ReadingsStream",
            [
                "kinesis:CreateStream",
                "kinesis:DeleteStream",
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:ListShards",
                "kinesis:ListTagsForStream",
                "kinesis:AddTagsToStream",
                "kinesis:RemoveTagsFromStream",
                "kinesis:IncreaseStreamRetentionPeriod",
                "kinesis:DecreaseStreamRetentionPeriod",
            ],
            names.arn("kinesis", f"stream/{prefix}"),
        ),
        # The stream is encrypted with the AWS managed key alias/aws/kinesis, whose key id is
        # not known in advance.
        _statement(
            "ReadingsStreamEncryption",
            ["kinesis:StartStreamEncryption"],
            [names.arn("kinesis", f"stream/{prefix}"), names.arn("kms", "key/*")],
        ),
        _statement(
            "DeviceStateTable",
            [
                "dynamodb:CreateTable",
                "dynamodb:DeleteTable",
                "dynamodb:DescribeTable",
                "dynamodb:UpdateTable",
                "dynamodb:DescribeTimeToLive",
                "dynamodb:UpdateTimeToLive",
                "dynamodb:DescribeContinuousBackups",
                "dynamodb:UpdateContinuousBackups",
                "dynamodb:ListTagsOfResource",
                "dynamodb:TagResource",
                "dynamodb:UntagResource",
            ],
            names.arn("dynamodb", f"table/{prefix}"),
        ),
        # The alerts topic's customer managed key (iotpipe/resources/kms.py). Its id is random, so
        # the account's keys are the narrowest ARN. Reading, aliasing and turning rotation on
        # follow CreateKey at once, before a new key's tag may authorize anything (tags take up to
        # five minutes to count in KMS authorization); what changes or removes a key is allowed
        # only on a key carrying the stack's tag.
        _statement(
            "CreateAlertsKey",
            ["kms:CreateKey"],
            "*",
            {"StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack}},
        ),
        _statement(
            "AlertsKey",
            [
                "kms:DescribeKey",
                "kms:GetKeyPolicy",
                "kms:GetKeyRotationStatus",
                "kms:ListResourceTags",
                "kms:EnableKeyRotation",
            ],
            names.arn("kms", "key/*"),
        ),
        # CreateKey with tags needs kms:TagResource too; only the stack's own tag may be set.
        _statement(
            "TagAlertsKey",
            ["kms:TagResource"],
            names.arn("kms", "key/*"),
            {
                "StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack},
                "ForAllValues:StringEquals": {"aws:TagKeys": [STACK_TAG]},
            },
        ),
        _statement(
            "AlertsKeyLifecycle",
            [
                "kms:PutKeyPolicy",
                "kms:EnableKey",
                "kms:ScheduleKeyDeletion",
                "kms:CancelKeyDeletion",
            ],
            names.arn("kms", "key/*"),
            {"StringEquals": {f"aws:ResourceTag/{STACK_TAG}": stack}},
        ),
        # An alias action names both the alias (only the stack's) and the key it points to.
        _statement(
            "AlertsKeyAlias",
            ["kms:CreateAlias", "kms:DeleteAlias"],
            [names.arn("kms", f"alias/{names.alerts_topic}"), names.arn("kms", "key/*")],
        ),
        _statement(
            "AlertsTopic",
            [
                "sns:CreateTopic",
                "sns:DeleteTopic",
                "sns:GetTopicAttributes",
                "sns:SetTopicAttributes",
                "sns:ListSubscriptionsByTopic",
                "sns:Subscribe",
                "sns:ListTagsForResource",
                "sns:TagResource",
                "sns:UntagResource",
            ],
            names.arn("sns", prefix),
        ),
        _statement(
            "DeadLetterQueue",
            [
                "sqs:CreateQueue",
                "sqs:DeleteQueue",
                "sqs:GetQueueUrl",
                "sqs:GetQueueAttributes",
                "sqs:SetQueueAttributes",
                "sqs:ListQueueTags",
                "sqs:TagQueue",
                "sqs:UntagQueue",
            ],
            names.arn("sqs", prefix),
        ),
        _statement(
            "ProcessorFunction",
            [
                "lambda:CreateFunction",
                "lambda:DeleteFunction",
                "lambda:GetFunction",
                "lambda:GetFunctionConfiguration",
                "lambda:UpdateFunctionCode",
                "lambda:UpdateFunctionConfiguration",
                "lambda:ListTags",
                "lambda:TagResource",
                "lambda:UntagResource",
            ],
            function_arn,
        ),
        # The plan's GetLayerVersionByArn check, and CreateFunction/UpdateFunctionConfiguration
        # naming the layer, are authorized as lambda:GetLayerVersion on the layer version.
        _statement(
            "PowertoolsLayer",
            ["lambda:GetLayerVersion"],
            f"arn:{partition}:lambda:{region}:{POWERTOOLS_ACCOUNT}:layer:"
            "AWSLambdaPowertoolsPythonV3-*",
        ),
        # Event source mappings have ids, not names: scope them by the function they feed.
        _statement(
            "ProcessorTrigger",
            [
                "lambda:GetEventSourceMapping",
                "lambda:UpdateEventSourceMapping",
                "lambda:DeleteEventSourceMapping",
            ],
            names.arn("lambda", "event-source-mapping:*"),
            {"ArnLike": {"lambda:FunctionArn": function_arn}},
        ),
        # Lambda's tagging actions know no function condition: a mapping's tags are tagging only.
        _statement(
            "ProcessorTriggerTags",
            ["lambda:ListTags", "lambda:TagResource", "lambda:UntagResource"],
            names.arn("lambda", "event-source-mapping:*"),
        ),
        _statement(
            "CreateProcessorTrigger",
            ["lambda:CreateEventSourceMapping"],
            "*",
            {"ArnLike": {"lambda:FunctionArn": function_arn}},
        ),
        _statement(
            "ServiceRoles",
            [
                "iam:CreateRole",
                "iam:DeleteRole",
                "iam:GetRole",
                "iam:UpdateRole",
                "iam:UpdateAssumeRolePolicy",
                "iam:TagRole",
                "iam:UntagRole",
                "iam:PutRolePolicy",
                "iam:GetRolePolicy",
                "iam:DeleteRolePolicy",
                "iam:ListRolePolicies",
                "iam:ListAttachedRolePolicies",
                "iam:DetachRolePolicy",
            ],
            names.arn("iam", f"role/{prefix}", region=False),
        ),
        *[
            _statement(
                f"Pass{''.join(part.title() for part in role.split('-'))}Role",
                ["iam:PassRole"],
                names.role_arn(role),
                {"StringEquals": {"iam:PassedToService": service}},
            )
            for role, service in ROLE_SERVICES.items()
        ],
        _statement(
            "IotRuleAndDevicePolicy",
            [
                "iot:CreateTopicRule",
                "iot:ReplaceTopicRule",
                "iot:GetTopicRule",
                "iot:DeleteTopicRule",
                "iot:CreatePolicy",
                "iot:GetPolicy",
                "iot:DeletePolicy",
                "iot:CreatePolicyVersion",
                "iot:DeletePolicyVersion",
                "iot:ListPolicyVersions",
                "iot:ListTargetsForPolicy",
                "iot:CreateThingType",
                "iot:DescribeThingType",
                "iot:DeprecateThingType",
                "iot:DeleteThingType",
                "iot:ListTagsForResource",
                "iot:TagResource",
                "iot:UntagResource",
            ],
            [
                names.arn("iot", f"rule/{names.snake}_*"),
                names.arn("iot", f"policy/{prefix}"),
                names.arn("iot", f"thingtype/{prefix}"),
            ],
        ),
        # `down` detaches the device policy from the certificates it is attached to; certificate
        # ids are random, so the account's certificates are the narrowest scope AWS offers.
        _statement(
            "DetachDevicePolicy",
            ["iot:DetachPolicy"],
            [names.arn("iot", "cert/*")],
        ),
        # `down --delete-data` revokes and deletes the stack's devices; thing names are the
        # user's and certificate ids random, so the account's things and certificates are the
        # narrowest scope AWS offers.
        _statement(
            "DeleteStackDevices",
            [
                "iot:DescribeThing",
                "iot:DeleteThing",
                "iot:DeleteThingShadow",
                "iot:DescribeCertificate",
                "iot:UpdateCertificate",
                "iot:DeleteCertificate",
            ],
            [names.arn("iot", "thing/*"), names.arn("iot", "cert/*")],
        ),
        _statement(
            "Timeseries",
            [
                "timestream:CreateDatabase",
                "timestream:DescribeDatabase",
                "timestream:UpdateDatabase",
                "timestream:DeleteDatabase",
                "timestream:CreateTable",
                "timestream:DescribeTable",
                "timestream:UpdateTable",
                "timestream:DeleteTable",
            ],
            [
                names.arn("timestream", f"database/{names.timeseries_database}"),
                names.arn("timestream", f"database/{names.timeseries_database}/table/*"),
            ],
        ),
        # IAM lists database, table and scheduled query as the resource types of Timestream's
        # tagging actions; each is named for this stack only.
        _statement(
            "TimeseriesTags",
            [
                "timestream:ListTagsForResource",
                "timestream:TagResource",
                "timestream:UntagResource",
            ],
            [
                names.arn("timestream", f"database/{names.timeseries_database}"),
                names.arn("timestream", f"database/{names.timeseries_database}/table/*"),
                names.arn("timestream", f"scheduled-query/{prefix}"),
            ],
        ),
        _statement(
            "ArchiveDeliveryStream",
            [
                "firehose:CreateDeliveryStream",
                "firehose:DeleteDeliveryStream",
                "firehose:DescribeDeliveryStream",
                "firehose:UpdateDestination",
                "firehose:StartDeliveryStreamEncryption",
                "firehose:ListTagsForDeliveryStream",
                "firehose:TagDeliveryStream",
                "firehose:UntagDeliveryStream",
            ],
            names.arn("firehose", f"deliverystream/{prefix}"),
        ),
        _statement(
            "Catalog",
            [
                "glue:CreateDatabase",
                "glue:GetDatabase",
                "glue:UpdateDatabase",
                "glue:DeleteDatabase",
                "glue:CreateTable",
                "glue:GetTable",
                "glue:UpdateTable",
                "glue:DeleteTable",
                "glue:GetTags",
                "glue:TagResource",
                "glue:UntagResource",
            ],
            [
                names.arn("glue", "catalog"),
                names.arn("glue", f"database/{glue}"),
                names.arn("glue", f"table/{glue}/*"),
                # Deleting the database deletes its functions too (there are none).
                names.arn("glue", f"userDefinedFunction/{glue}/*"),
            ],
        ),
        _statement(
            "CreateArchiveCrawler",
            ["glue:CreateCrawler"],
            "*",
            {"StringEquals": {f"aws:RequestTag/{STACK_TAG}": stack}},
        ),
        _statement(
            "ArchiveCrawler",
            [
                "glue:GetCrawler",
                "glue:UpdateCrawler",
                "glue:StopCrawler",
                "glue:DeleteCrawler",
                "glue:GetTags",
                "glue:TagResource",
                "glue:UntagResource",
            ],
            names.arn("glue", f"crawler/{prefix}"),
        ),
        _statement(
            "QueryWorkgroup",
            [
                "athena:CreateWorkGroup",
                "athena:GetWorkGroup",
                "athena:UpdateWorkGroup",
                "athena:DeleteWorkGroup",
            ],
            names.arn("athena", f"workgroup/{names.workgroup}"),
        ),
        # IAM lists workgroup, data catalog and capacity reservation as the resource types of
        # Athena's tagging actions; each is named for this stack only.
        _statement(
            "QueryWorkgroupTags",
            ["athena:ListTagsForResource", "athena:TagResource", "athena:UntagResource"],
            [
                names.arn("athena", f"workgroup/{names.workgroup}"),
                names.arn("athena", f"datacatalog/{names.workgroup}"),
                names.arn("athena", f"capacity-reservation/{names.workgroup}"),
            ],
        ),
        _statement(
            "Alarms",
            [
                "cloudwatch:PutMetricAlarm",
                "cloudwatch:DescribeAlarms",
                "cloudwatch:DeleteAlarms",
                "cloudwatch:ListTagsForResource",
                "cloudwatch:TagResource",
                "cloudwatch:UntagResource",
            ],
            names.arn("cloudwatch", f"alarm:{prefix}"),
        ),
        _statement(
            "Dashboard",
            ["cloudwatch:GetDashboard", "cloudwatch:PutDashboard", "cloudwatch:DeleteDashboards"],
            names.arn("cloudwatch", f"dashboard/{names.dashboard}", region=False),
        ),
        _statement(
            "LogGroups",
            [
                "logs:CreateLogGroup",
                "logs:DeleteLogGroup",
                "logs:PutRetentionPolicy",
                "logs:ListTagsLogGroup",
                "logs:TagLogGroup",
                "logs:UntagLogGroup",
                "logs:ListTagsForResource",
                "logs:TagResource",
                "logs:UntagResource",
                "logs:CreateLogStream",
                "logs:DeleteLogStream",
                "logs:DescribeLogStreams",
            ],
            [
                names.arn("logs", f"log-group:/aws/lambda/{prefix}"),
                names.arn("logs", f"log-group:/aws/kinesisfirehose/{prefix}"),
            ],
        ),
        _statement(
            "Unscoped",
            [action for action in UNSCOPED_ACTIONS if action not in _CONDITIONED],
            "*",
        ),
    ]
    return {"Version": POLICY_VERSION, "Statement": statements}


# A customer managed policy holds at most 6,144 characters, whitespace not counted (IAM and AWS
# STS quotas, "IAM and STS character limits"); `aws iam create-policy` refuses a larger one.
# The emulator enforces the quota with its own count (aws_rules/iam.py), so the tests that create
# these documents there check this one.
MANAGED_POLICY_CHARACTERS = 6144


def policy_characters(document: dict[str, Any]) -> int:
    """The size IAM holds a policy document to: its characters, whitespace not counted."""
    return len("".join(json.dumps(document).split()))


def split_policy(document: dict[str, Any], limit: int = MANAGED_POLICY_CHARACTERS) -> list[dict]:
    """The document's statements, in order, as few documents as fit `limit` each."""
    documents: list[dict[str, Any]] = []
    for statement in document["Statement"]:
        if documents:
            candidate = {**documents[-1], "Statement": [*documents[-1]["Statement"], statement]}
            if policy_characters(candidate) <= limit:
                documents[-1] = candidate
                continue
        alone = {"Version": document["Version"], "Statement": [statement]}
        if policy_characters(alone) > limit:
            raise IotpipeError(f"internal: policy statement {statement['Sid']} exceeds {limit}")
        documents.append(alone)
    return documents


# Who needs which policy. Each job's policy is printed as customer managed policy documents.
JOBS: dict[str, str] = {
    "deploy": "plan, up, down and status: the person or CI role that deploys and tears down",
}


def job_policies(names: Names, jobs: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Each job's policy as documents that each fit a customer managed policy."""
    builders = {"deploy": operator_policy}
    return {job: split_policy(builders[job](names)) for job in (jobs or list(JOBS))}
