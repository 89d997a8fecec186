"""IoT Core: detaching a certificate from a thing takes effect later; thing types are deleted
only when no thing uses them and five minutes after deprecation; a revoked certificate stays
revoked.

moto already refuses DeleteThing while principals are attached (`Cannot delete. Thing X is
still attached to one or more principals`) and DeleteCertificate while the certificate is ACTIVE
or attached, with AWS's texts; the rules below add what it finishes at once or never checks.
"""

from __future__ import annotations

from typing import Any

from iotpipe.local.aws_rules import AwsRefusal, Call, after, before, clock, lock

# DetachThingPrincipal (IoT API reference): "This call is asynchronous. It might take several
# seconds for the detachment to propagate." Until then the principal is still listed, DeleteThing
# answers as for an attached principal (aws-connected-device-framework #76, aws-greengrass-nucleus
# #319 retry it) and DeleteCertificate answers DeleteConflictException.
DETACH_SECONDS = 5.0
# Delete a thing type (IoT developer guide, delete-thing-types.html): "You can delete thing types
# only after they have been deprecated ... Before you can delete a thing type, wait for five
# minutes after you deprecate it." DeleteThingType API reference: "You cannot delete a thing type
# if it has things associated with it." Both are InvalidRequestException; AWS's exact message
# texts for these two refusals are not documented, so the ones below are descriptive.
DEPRECATION_SECONDS = 300.0


def _backend(call: Call) -> Any:
    from moto.iot.models import iot_backends

    return iot_backends[call.account_id][call.region]


def _type_name(thing: Any) -> str | None:
    return thing.thing_type.thing_type_name if thing.thing_type is not None else None


def _detaching(call: Call) -> dict[tuple[str, str], float]:
    """(thing, principal ARN) -> when the detachment takes effect; expired entries dropped."""
    pending = call.state.setdefault("detaching", {})
    now = clock.now()
    for key in [k for k, until in pending.items() if until <= now]:
        del pending[key]
    return pending


@after("iot", "DetachThingPrincipal")
def detach_later(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        key = (call.params["thingName"], call.params["principal"])
        _detaching(call)[key] = clock.now() + DETACH_SECONDS


@after("iot", "AttachThingPrincipal")
def attach_cancels_detach(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        _detaching(call).pop((call.params["thingName"], call.params["principal"]), None)


@after("iot", "ListThingPrincipals")
def list_principals_still_detaching(call: Call, reply: dict[str, Any]) -> dict[str, Any] | None:
    with lock():
        still = [p for (thing, p) in _detaching(call) if thing == call.params["thingName"]]
    if not still:
        return None
    listed = reply.get("principals", [])
    return {**reply, "principals": listed + [p for p in still if p not in listed]}


@before("iot", "DeleteThing")
def refuse_thing_while_detaching(call: Call) -> None:
    name = call.params["thingName"]
    with lock():
        attached = any(thing == name for thing, _ in _detaching(call))
    if attached:
        raise AwsRefusal(
            "InvalidRequestException",
            f"Cannot delete. Thing {name} is still attached to one or more principals",
            409,
        )


@before("iot", "DeleteCertificate")
def refuse_certificate_while_detaching(call: Call) -> None:
    certificate_id = call.params["certificateId"]
    with lock():
        arns = [p for _, p in _detaching(call) if p.endswith(f"cert/{certificate_id}")]
    if arns:
        raise AwsRefusal(
            "DeleteConflictException",
            f"Things must be detached before deletion (arn: {arns[0]})",
            409,
        )


# Revoke a client certificate (IoT developer guide, revoke-ca-cert.html): "Once a certificate is
# revoked, it's status can't be changed." The refusal is CertificateStateException (the
# UpdateCertificate API reference lists it); its exact text is not documented.
@before("iot", "UpdateCertificate")
def revoked_stays_revoked(call: Call) -> None:
    certificate = _backend(call).certificates.get(call.params["certificateId"])
    revoked = certificate is not None and certificate.status == "REVOKED"
    if revoked and call.params["newStatus"] != "REVOKED":
        raise AwsRefusal(
            "CertificateStateException",
            f"Certificate {call.params['certificateId']} is REVOKED; its status cannot be changed.",
            406,
        )


@after("iot", "DeprecateThingType")
def remember_deprecation(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        deprecated = call.state.setdefault("deprecated", {})
        if call.params.get("undoDeprecate"):
            deprecated.pop(call.params["thingTypeName"], None)
        else:
            deprecated.setdefault(call.params["thingTypeName"], clock.now())


@before("iot", "DeleteThingType")
def thing_type_deletable(call: Call) -> None:
    name = call.params["thingTypeName"]
    backend = _backend(call)
    thing_type = next((t for t in backend.thing_types.values() if t.thing_type_name == name), None)
    if thing_type is None:
        return  # moto answers ResourceNotFoundException
    if not thing_type.metadata.get("deprecated"):
        raise AwsRefusal(
            "InvalidRequestException",
            f"Thing type {name} must be deprecated before it can be deleted.",
        )
    users = [t.thing_name for t in backend.things.values() if _type_name(t) == name]
    if users:
        raise AwsRefusal(
            "InvalidRequestException",
            f"Cannot delete thing type {name}: things are associated with it "
            f"({', '.join(sorted(users)[:3])}).",
        )
    with lock():
        since = call.state.get("deprecated", {}).get(name)
    if since is not None and clock.now() - since < DEPRECATION_SECONDS:
        raise AwsRefusal(
            "InvalidRequestException",
            f"Thing type {name} was deprecated less than 5 minutes ago; it can be deleted "
            "5 minutes after deprecation.",
        )


@after("iot", "DeleteThingType")
def forget_deprecation(call: Call, reply: dict[str, Any]) -> None:
    with lock():
        call.state.get("deprecated", {}).pop(call.params["thingTypeName"], None)


# DeprecateThingType (IoT API reference): "You can not associate new things with deprecated thing
# type." moto lets CreateThing use one. (The message text is descriptive, not AWS's.)
@before("iot", "CreateThing")
def no_new_things_of_deprecated_type(call: Call) -> None:
    name = call.params.get("thingTypeName")
    if not name:
        return
    backend = _backend(call)
    thing_type = next((t for t in backend.thing_types.values() if t.thing_type_name == name), None)
    if thing_type is not None and thing_type.metadata.get("deprecated"):
        raise AwsRefusal(
            "InvalidRequestException",
            f"Can not create a new thing with deprecated thing type: {name}",
        )
