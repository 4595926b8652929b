"""Cognitive Services accounts put straight into a world, as scenarios and tests do: no
request, no CMK checks, no long-running operation."""

from __future__ import annotations

from collections.abc import Sequence

from cmk.sandbox.arm.cognitive.bodies import normal_location
from cmk.sandbox.arm.cognitive.identity import tenant_of
from cmk.sandbox.world import AccountState, Encryption, Principal, UserAssignedIdentity, World


def seed_account(
    world: World,
    subscription_id: str,
    resource_group: str,
    name: str,
    location: str,
    *,
    kind: str = "AIServices",
    system_identity: bool = True,
    user_assigned: Sequence[UserAssignedIdentity] = (),
    encryption: Encryption | None = None,
    lro_seconds: float = 0.0,
    tags: dict[str, str] | None = None,
) -> AccountState:
    """Add an account to the world directly — no request, no CMK checks (scenarios and
    tests). A system-assigned identity gets a new principal; user-assigned ones are added
    to the world's principals. The initial key version starts ``binding_history``."""
    tenant = tenant_of(world, subscription_id)
    account = AccountState(
        subscription_id=subscription_id,
        resource_group=resource_group,
        name=name,
        location=normal_location(location),
        kind=kind,
        tags=dict(tags or {}),
        lro_seconds=lro_seconds,
        created=world.clock.now(),
    )
    if system_identity:
        account.identity.system = world.add_principal(Principal.new(name, tenant))
    for uami in user_assigned:
        world.add_principal(uami.principal)
        account.identity.user_assigned[uami.resource_id.lower()] = uami
    if encryption is not None:
        account.encryption = encryption
        if encryption.key_version:
            account.binding_history.append((world.clock.now(), encryption.key_version))
    world.accounts[account.resource_id.lower()] = account
    return account
