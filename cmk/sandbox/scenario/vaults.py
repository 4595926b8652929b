"""Key vaults and managed HSMs of a scenario, with their keys, versions, rotation policies
and access policies.

Key versions are made by :func:`~cmk.sandbox.keyvault.model.add_key_version` (the one
Key Vault's REST front end uses, without its event), so a seeded version looks the same
as one created over HTTP.
"""

from __future__ import annotations

from typing import Any

from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.scenario.context import ScenarioContext
from cmk.sandbox.world import RotationPolicy, VaultKind, VaultState

VAULT_SUFFIX = {
    ("vault", "public"): "vault.azure.net",
    ("vault", "china"): "vault.azure.cn",
    ("vault", "usgovernment"): "vault.usgovcloudapi.net",
    ("managedhsm", "public"): "managedhsm.azure.net",
    ("managedhsm", "china"): "managedhsm.azure.cn",
    ("managedhsm", "usgovernment"): "managedhsm.usgovcloudapi.net",
}


def add_vault(ctx: ScenarioContext, item: dict[str, Any], path: str) -> None:
    """A vault (``$.vaults[i]``) and its keys."""
    s = ctx.sub(item["subscription"], f"{path}.subscription")
    if s is None:
        return
    kind = item.get("kind", "vault")
    vault = VaultState(
        name=item["name"].lower(),
        kind=VaultKind(kind),
        subscription_id=s.subscription_id,
        resource_group=item.get("resourceGroup", "rg-keys"),
        location=ctx.location(item["location"], f"{path}.location"),
        tenant_id=s.tenant_id,
        dns_suffix=VAULT_SUFFIX[(kind, item.get("cloud", "public"))],
        soft_delete=item.get("softDelete", True),
        purge_protection=item.get("purgeProtection", True),
        retention_days=item.get("retentionDays", 90),
        enable_rbac_authorization=item.get("rbac", True),
        sku=item.get("sku", "premium"),
    )
    network = item.get("network", {})
    vault.network_default_action = network.get("defaultAction", "Allow")
    vault.network_bypass = network.get("bypass", "AzureServices")
    if vault.host in ctx.world.vaults:
        ctx.problem(f"{path}.name", f"duplicate vault {vault.name!r}")
    ctx.world.vaults[vault.host] = vault
    ctx.vaults[vault.name] = vault
    for j, key in enumerate(item.get("keys", [])):
        add_key(ctx, vault, key, f"{path}.keys[{j}]")


def add_key(ctx: ScenarioContext, vault: VaultState, item: dict[str, Any], path: str) -> None:
    """A key (``$.vaults[i].keys[j]``): its versions, oldest first, and rotation policy."""
    name = item["name"]
    if name.lower() in vault.keys:
        ctx.problem(f"{path}.name", f"duplicate key {name!r} in vault {vault.name}")
        return
    kty = item.get("kty", "RSA")
    for k, version in enumerate(item.get("versions") or [{}]):
        vpath = f"{path}.versions[{k}]"
        add_key_version(
            ctx.world,
            vault,
            name,
            kty=kty,
            size=version.get("size", item.get("size", 2048)),
            curve=item.get("curve"),
            key_ops=version.get("keyOps", item.get("keyOps")),
            enabled=version.get("enabled", True),
            not_before=ctx.when(version.get("nbf"), f"{vpath}.nbf"),
            expires=ctx.when(version.get("exp"), f"{vpath}.exp"),
            created=ctx.when(version.get("created"), f"{vpath}.created") or ctx.now,
            tags=dict(item.get("tags", {})),
            emit=False,
        )
    policy = item.get("rotationPolicy")
    if policy is not None:
        vault.keys[name.lower()].rotation_policy = RotationPolicy(
            expiry_time=policy.get("expiryTime"),
            lifetime_actions=list(policy.get("lifetimeActions", [])),
            id=f"{vault.url}/keys/{name}/rotationpolicy",
            created=ctx.now,
            updated=ctx.now,
        )


def add_access_policies(ctx: ScenarioContext, item: dict[str, Any], path: str) -> None:
    """The access policies of a vault (``$.vaults[i].accessPolicies``); run after accounts,
    whose system identities they may name."""
    for j, policy in enumerate(item.get("accessPolicies", [])):
        pid = ctx.principal(policy["principal"], f"{path}.accessPolicies[{j}]")
        vault = ctx.vaults.get(item["name"].lower())
        if pid and vault:
            vault.access_policies.setdefault(pid, set()).update(policy["keys"])
