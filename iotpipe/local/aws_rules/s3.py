"""S3: PutBucketLifecycleConfiguration refuses transitions earlier than S3's documented minimums.

S3 is a rest-xml service whose moto responses do not go through `BaseResponse.call_action`, so
this module cannot use `@before`: it wraps moto's backend method instead, which moto's S3
response handler calls with the parsed rules and whose `S3ClientError`s it answers as S3 does
(`<Error><Code>InvalidArgument</Code>...`, HTTP 400).

Source: S3 user guide, "Transitioning objects using Amazon S3 Lifecycle", Constraints
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-transition-general-considerations.html)
and the API reference's Transition type ("If the specified storage class is STANDARD_IA or
ONEZONE_IA, valid values are positive integers greater than 30",
https://docs.aws.amazon.com/AmazonS3/latest/API/API_Transition.html):

- objects stay 30 days in S3 Standard before a transition to STANDARD_IA or ONEZONE_IA. S3's text,
  as quoted in CloudFormation and Terraform failures: "'Days' in Transition action must be greater
  than or equal to 30 for storageClass 'STANDARD_IA'" (InvalidArgument);
- one rule may not move objects from STANDARD_IA/ONEZONE_IA on to a Glacier class less than 30
  days later (Standard-IA bills 30 days at least). The guide states the rule; S3's exact text for
  it could not be verified, so the message below is ours, in S3's style;
- an expiration must come after every transition of its rule: "'Days' in the Expiration action
  for filter '(prefix=...)' must be greater than 'Days' in the Transition action" (as quoted in
  CDK and Terraform failures).
"""

from __future__ import annotations

from typing import Any

from moto.s3.exceptions import S3ClientError
from moto.s3.models import S3Backend

from iotpipe.local.aws_rules import registry

INFREQUENT_ACCESS = ("STANDARD_IA", "ONEZONE_IA")
AFTER_INFREQUENT_ACCESS = ("GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")
MINIMUM_DAYS = 30


class LifecycleRefusal(S3ClientError):
    """S3's InvalidArgument answer to a lifecycle rule it will not store."""

    def __init__(self, message: str) -> None:
        super().__init__("InvalidArgument", message)


def _listed(value: Any) -> list[dict[str, Any]]:
    # moto parses the XML with xmltodict: one element is a dict, several a list.
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _days(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _filter_text(rule: dict[str, Any]) -> str:
    """The rule's filter as S3 writes it in messages: '(prefix=readings/)'."""
    found = rule.get("Filter") or {}
    prefix = found.get("Prefix", rule.get("Prefix")) if isinstance(found, dict) else None
    return f"(prefix={prefix or ''})"


def check_lifecycle_rules(rules: list[dict[str, Any]]) -> None:
    """Raise S3's refusal for the first rule that breaks a minimum, as S3 checks them."""
    for rule in rules:
        transitions = [
            (_days(t.get("Days")), t.get("StorageClass"))
            for t in _listed(rule.get("Transition"))
            if _days(t.get("Days")) is not None
        ]
        for days, storage_class in transitions:
            if storage_class in INFREQUENT_ACCESS and days < MINIMUM_DAYS:
                raise LifecycleRefusal(
                    f"'Days' in Transition action must be greater than or equal to "
                    f"{MINIMUM_DAYS} for storageClass '{storage_class}'"
                )
        for ia_days, ia_class in transitions:
            if ia_class not in INFREQUENT_ACCESS:
                continue
            for days, storage_class in transitions:
                if storage_class in AFTER_INFREQUENT_ACCESS and days - ia_days < MINIMUM_DAYS:
                    raise LifecycleRefusal(
                        f"'Days' in the Transition action for StorageClass '{storage_class}' for "
                        f"filter '{_filter_text(rule)}' must be {MINIMUM_DAYS} days more than "
                        f"'Days' in the Transition action for StorageClass '{ia_class}'"
                    )
        expiration = rule.get("Expiration") or {}
        expire_days = _days(expiration.get("Days")) if isinstance(expiration, dict) else None
        if expire_days is not None and any(expire_days <= days for days, _ in transitions):
            raise LifecycleRefusal(
                f"'Days' in the Expiration action for filter '{_filter_text(rule)}' must be "
                "greater than 'Days' in the Transition action"
            )


_original = S3Backend.put_bucket_lifecycle_configuration


def _put_bucket_lifecycle_configuration(
    self: S3Backend, bucket_name: str, rules: list[dict[str, Any]]
) -> None:
    if registry.enabled:
        check_lifecycle_rules(rules)
    return _original(self, bucket_name, rules)


S3Backend.put_bucket_lifecycle_configuration = _put_bucket_lifecycle_configuration  # type: ignore[method-assign]
