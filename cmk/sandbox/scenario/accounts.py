"""Cognitive Services accounts of a scenario: one, or ``count`` of them from a name
template with ``{i}``, with their identities and customer-managed key binding.

A binding names a vault, key and version index (``latest`` by default) and the identity
that reads it (``system`` or a user-assigned identity's name). Unless
``grantKeyAccess`` is false, that identity gets the access CMK needs: the
:data:`KEY_ACCESS_ROLE` on the key in an RBAC vault or managed HSM, else an access
policy with :data:`KEY_ACCESS_PERMISSIONS`.
"""

from __future__ import annotations

import uuid
from typing import Any

from cmk.sandbox.scenario.context import ScenarioContext
from cmk.sandbox.world import (
    AccountIdentity,
    AccountState,
    Encryption,
    KeyState,
    KeyVersionState,
    Principal,
    Subscription,
    UserAssignedIdentity,
    VaultKind,
    VaultState,
)

KEY_ACCESS_ROLE = "Key Vault Crypto Service Encryption User"
KEY_ACCESS_PERMISSIONS = frozenset({"get", "wrapKey", "unwrapKey"})

KeyBinding = tuple[VaultState, KeyState, KeyVersionState]


def add_accounts(ctx: ScenarioContext, item: dict[str, Any], path: str) -> None:
    """The account or accounts of ``$.accounts[i]``."""
    s = ctx.sub(item["subscription"], f"{path}.subscription")
    if s is None:
        return
    location = ctx.location(item["location"], f"{path}.location")
    encryption = item.get("encryption")
    binding = resolve_binding(ctx, encryption, f"{path}.encryption") if encryption else None
    identity = item.get("identity", {})
    uais: list[UserAssignedIdentity] = []
    for j, name in enumerate(identity.get("userAssigned", [])):
        uai = ctx.identities.get(name.lower())
        if uai is None:
            ctx.problem(f"{path}.identity.userAssigned[{j}]", f"unknown identity {name!r}")
        else:
            uais.append(uai)
    count = item.get("count")
    template: str = item["name"]
    if count is not None and "{i" not in template:
        ctx.problem(f"{path}.name", "with 'count', the name must contain {i}")
        return
    for i in range(1, (count or 1) + 1):
        try:
            name = template.format(i=i) if count is not None else template
        except (ValueError, KeyError, IndexError) as exc:
            ctx.problem(f"{path}.name", f"bad name template {template!r}: {exc}")
            return
        add_account(
            ctx,
            item,
            s=s,
            location=location,
            name=name,
            binding=binding,
            identity=identity,
            uais=uais,
            path=path,
        )


def resolve_binding(
    ctx: ScenarioContext, encryption: dict[str, Any], path: str
) -> KeyBinding | None:
    """The vault, key and version an ``encryption`` object names."""
    vault = ctx.vaults.get(encryption["vault"].lower())
    if vault is None:
        ctx.problem(f"{path}.vault", f"unknown vault {encryption['vault']!r}")
        return None
    key = vault.keys.get(encryption["key"].lower())
    if key is None or not key.versions:
        ctx.problem(f"{path}.key", f"vault {vault.name} has no key {encryption['key']!r}")
        return None
    index = encryption.get("version", "latest")
    if index == "latest":
        index = -1
    if not -len(key.versions) <= index < len(key.versions):
        ctx.problem(f"{path}.version", f"index {index} out of range: key has {len(key.versions)}")
        return None
    return vault, key, key.versions[index]


def add_account(
    ctx: ScenarioContext,
    item: dict[str, Any],
    *,
    s: Subscription,
    location: str,
    name: str,
    binding: KeyBinding | None,
    identity: dict[str, Any],
    uais: list[UserAssignedIdentity],
    path: str,
) -> None:
    """One account named ``name``."""
    system = (
        Principal(str(uuid.uuid4()), str(uuid.uuid4()), s.tenant_id, name)
        if identity.get("system", False)
        else None
    )
    account = AccountState(
        subscription_id=s.subscription_id,
        resource_group=item.get("resourceGroup", "rg-ai"),
        name=name,
        location=location,
        kind=item.get("kind", "AIServices"),
        sku=item.get("sku", "S0"),
        tags=dict(item.get("tags", {})),
        identity=AccountIdentity(
            system=system, user_assigned={u.resource_id.lower(): u for u in uais}
        ),
        lro_seconds=float(item.get("lroSeconds", 0.0)),
        custom_subdomain=name.lower(),
        created=ctx.now,
    )
    if account.resource_id.lower() in ctx.world.accounts:
        ctx.problem(f"{path}.name", f"duplicate account {name!r}")
        return
    if system is not None:
        ctx.world.principals[system.object_id] = system
        ctx.account_principals[name.lower()] = system
    if binding is not None:
        bind_key(ctx, account, binding, item["encryption"], uais=uais, path=path)
    ctx.world.accounts[account.resource_id.lower()] = account


def bind_key(
    ctx: ScenarioContext,
    account: AccountState,
    binding: KeyBinding,
    encryption: dict[str, Any],
    *,
    uais: list[UserAssignedIdentity],
    path: str,
) -> None:
    """Bind the account to the key version, and give its identity access to the key."""
    vault, key, version = binding
    who = encryption.get("identity", "system")
    if who == "system":
        principal = account.identity.system
        if principal is None:
            ctx.problem(f"{path}.encryption.identity", "the account has no system identity")
            return
        client_id = None
    else:
        uai = next((u for u in uais if u.principal.display_name.lower() == who.lower()), None)
        if uai is None:
            ctx.problem(
                f"{path}.encryption.identity",
                f"{who!r} is not among the account's user-assigned identities",
            )
            return
        principal, client_id = uai.principal, uai.principal.client_id
    account.encryption = Encryption(
        key_source="Microsoft.KeyVault",
        key_vault_uri=f"{vault.url}/",
        key_name=key.name,
        key_version=version.version,
        identity_client_id=client_id,
    )
    account.binding_history.append((ctx.now, version.version))
    if encryption.get("grantKeyAccess", True):
        grant_key_access(ctx, vault, key, principal)


def grant_key_access(
    ctx: ScenarioContext, vault: VaultState, key: KeyState, principal: Principal
) -> None:
    """What CMK needs of the key: the role on it (RBAC vaults, managed HSMs) or an access
    policy."""
    if vault.enable_rbac_authorization or vault.kind is VaultKind.MANAGED_HSM:
        scope = f"{vault.resource_id}/keys/{key.name}"
        # user-assigned identities are shared by many accounts: grant once
        if (principal.object_id, scope) not in ctx.key_grants:
            ctx.key_grants.add((principal.object_id, scope))
            ctx.world.grant(principal.object_id, scope, KEY_ACCESS_ROLE)
    else:
        vault.access_policies.setdefault(principal.object_id, set()).update(KEY_ACCESS_PERMISSIONS)
