"""KMS: a key pending deletion, or disabled, refuses what AWS refuses in that state.

moto enables, rotates and re-schedules a key pending deletion without complaint. AWS's key-state
table (KMS developer guide, "Key states of AWS KMS keys",
https://docs.aws.amazon.com/kms/latest/developerguide/key-state.html) and the API reference
errors of EnableKey, EnableKeyRotation and ScheduleKeyDeletion refuse them:
KMSInvalidStateException ("the state of the specified resource is not valid for this request")
for a key pending deletion, DisabledException ("the specified KMS key is not enabled") for
rotation on a disabled key. So an `up` after `down` must cancel the deletion first. AWS's exact
message texts are not documented; the ones below are descriptive.
"""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, before


def _key(call: Call) -> Any | None:
    from moto.kms.models import kms_backends

    backend = kms_backends[call.account_id][call.region]
    try:
        return backend.describe_key(call.params["KeyId"])
    except Exception:  # an unknown key: moto answers NotFoundException itself
        return None


@before("kms", "EnableKey", "EnableKeyRotation", "ScheduleKeyDeletion")
def refuse_while_pending_deletion(call: Call) -> None:
    key = _key(call)
    if key is not None and key.key_state == "PendingDeletion":
        raise AwsRefusal("KMSInvalidStateException", f"{key.arn} is pending deletion.")


@before("kms", "EnableKeyRotation")
def refuse_rotation_while_disabled(call: Call) -> None:
    key = _key(call)
    if key is not None and key.key_state == "Disabled":
        raise AwsRefusal("DisabledException", f"{key.arn} is disabled.")
