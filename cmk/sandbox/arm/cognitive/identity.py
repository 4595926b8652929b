"""The managed identities of a Cognitive Services account, as the resource provider
handles them: an ``identity`` request object applied to the account, and which principal
reads the customer-managed key (the system-assigned one, or the user-assigned identity
``keyVaultProperties.identityClientId`` names).
"""

from __future__ import annotations

from typing import Any

from cmk.sandbox.arm.errors import bad_request
from cmk.sandbox.world import AccountState, Encryption, Principal, UserAssignedIdentity, World

IDENTITY_TYPES = frozenset(
    {"none", "systemassigned", "userassigned", "systemassigned,userassigned"}
)


def tenant_of(world: World, subscription_id: str) -> str:
    """The tenant of a subscription; the world's tenant for one the world does not know."""
    subscription = world.subscriptions.get(subscription_id.lower())
    return subscription.tenant_id if subscription else world.tenant_id


def encryption_principal(account: AccountState, target: Encryption) -> Principal | None:
    """The identity the RP uses to reach the key of ``target``; None when there is none."""
    if target.identity_client_id:
        wanted = target.identity_client_id.lower()
        for uami in account.identity.user_assigned.values():
            if uami.principal.client_id.lower() == wanted:
                return uami.principal
        return None
    return account.identity.system


def apply_identity(world: World, account: AccountState, raw: dict[str, Any]) -> None:
    """Apply an ``identity`` request object (type and userAssignedIdentities)."""
    kind = str(raw.get("type") or "None").replace(" ", "").lower()
    if kind not in IDENTITY_TYPES:
        raise bad_request(
            "InvalidIdentityType", f"The identity type '{raw.get('type')}' is not supported."
        )
    identity = account.identity
    if "systemassigned" in kind:
        if identity.system is None:
            principal = Principal.new(account.name, tenant_of(world, account.subscription_id))
            identity.system = world.add_principal(principal)
    else:
        identity.system = None
    if "userassigned" not in kind:
        identity.user_assigned = {}
        return
    requested = raw.get("userAssignedIdentities")
    if not isinstance(requested, dict) or not requested:
        if not identity.user_assigned:
            raise bad_request(
                "InvalidIdentity",
                "userAssignedIdentities is required when the identity type includes UserAssigned.",
            )
        return
    for resource_id, value in requested.items():
        key = str(resource_id).lower()
        if value is None:
            identity.user_assigned.pop(key, None)
        elif key not in identity.user_assigned:
            identity.user_assigned[key] = UserAssignedIdentity(
                str(resource_id), user_assigned_principal(world, account, str(resource_id))
            )


def user_assigned_principal(world: World, account: AccountState, resource_id: str) -> Principal:
    """The principal of a user-assigned identity: the one other accounts already share, or
    a new one in the account's tenant."""
    key = resource_id.lower()
    for other in world.accounts.values():
        uami = other.identity.user_assigned.get(key)
        if uami is not None:
            return uami.principal
    name = resource_id.rstrip("/").rsplit("/", 1)[-1]
    return world.add_principal(Principal.new(name, tenant_of(world, account.subscription_id)))
