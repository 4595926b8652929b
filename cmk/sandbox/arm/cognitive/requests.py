"""The write requests of the Cognitive Services resource provider: a PATCH (or PUT) body
applied to an account, and a PUT that creates one.

Both apply what takes effect at once (identity, tags, sku) and return the encryption the
account should move to when that needs a long-running update, after the synchronous CMK
checks (:func:`~cmk.sandbox.arm.cognitive.cmk.validate_request`). A failed check leaves the
account's identity as it was.
"""

from __future__ import annotations

import copy
from typing import Any

from cmk.sandbox.arm.cognitive.bodies import new_etag, normal_location
from cmk.sandbox.arm.cognitive.cmk import parse_encryption, validate_request
from cmk.sandbox.arm.cognitive.identity import apply_identity
from cmk.sandbox.arm.errors import ArmError, bad_request
from cmk.sandbox.world import AccountState, Encryption, World

#: Provisioning states in which ARM refuses another write.
BUSY_STATES = ("Updating", "Creating", "Accepted", "Deleting")


def request_conflict(account: AccountState) -> ArmError:
    """ARM's answer to a write while the account is not in a terminal state
    (Azure/bicep-types-az#2419)."""
    return ArmError(
        409,
        "RequestConflict",
        f"Cannot modify resource with id '{account.resource_id}' because the resource "
        "entity provisioning state is not terminal. Please wait for the provisioning "
        "state to become terminal and then retry the request.",
    )


def apply_patch(world: World, account: AccountState, body: dict[str, Any]) -> Encryption | None:
    """Apply a PATCH body's immediate changes. Returns the encryption to move to in a
    long-running update, or None when everything took effect (the etag then changes)."""
    if not isinstance(body, dict):
        raise bad_request("InvalidRequestContent", "The request content was invalid.")
    identity = body.get("identity")
    properties = body.get("properties")
    if properties is not None and not isinstance(properties, dict):
        raise bad_request("InvalidRequestContent", "'properties' must be an object.")
    target: Encryption | None = None
    if isinstance(properties, dict) and properties.get("encryption") is not None:
        target = parse_encryption(properties["encryption"])
    before = copy.deepcopy(account.identity)
    if isinstance(identity, dict):
        apply_identity(world, account, identity)
    if target is not None and target != account.encryption:
        try:
            validate_request(account, target)
        except ArmError:
            account.identity = before
            raise
    if isinstance(body.get("tags"), dict):
        account.tags = {str(k): str(v) for k, v in body["tags"].items()}
    sku = body.get("sku")
    if isinstance(sku, dict) and isinstance(sku.get("name"), str):
        account.sku = sku["name"]
    if target is None or target == account.encryption:
        account.etag = new_etag()
        return None
    return target


def check_location(existing: AccountState, resource_group: str, name: str, location: str) -> None:
    """A PUT may not move an account to another region (names as the request spells them)."""
    if normal_location(existing.location) != normal_location(location):
        raise bad_request(
            "InvalidResourceLocation",
            f"The resource '{name}' already exists in location "
            f"'{existing.location}' in resource group '{resource_group}'. A resource "
            "with the same name cannot be created in location "
            f"'{location}'. Please select a new resource name.",
        )


def new_account(
    world: World,
    subscription_id: str,
    resource_group: str,
    name: str,
    *,
    location: str,
    body: dict[str, Any],
) -> tuple[AccountState, Encryption | None]:
    """The account a PUT creates (not yet in the world), and the encryption it asks for
    when that differs from Microsoft-managed keys."""
    sku = body.get("sku") if isinstance(body.get("sku"), dict) else {}
    props = body.get("properties") if isinstance(body.get("properties"), dict) else {}
    assert isinstance(sku, dict) and isinstance(props, dict)
    account = AccountState(
        subscription_id=subscription_id,
        resource_group=resource_group,
        name=name,
        location=normal_location(location),
        kind=str(body.get("kind") or "AIServices"),
        sku=str(sku.get("name") or "S0"),
        tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()},
        custom_subdomain=props.get("customSubDomainName"),
        created=world.clock.now(),
    )
    target = parse_encryption(props["encryption"]) if props.get("encryption") else None
    if isinstance(body.get("identity"), dict):
        apply_identity(world, account, body["identity"])
    if target is not None and target != account.encryption:
        validate_request(account, target)
    if target is None or target == account.encryption:
        return account, None
    return account, target
