"""The CMK preflight: every requirement of DESIGN §1 for one account and one key, and whether
it holds. Pure: :func:`preflight` takes :class:`Facts` (read by :mod:`cmk.lifecycle.check`)
and returns one :class:`Requirement` per rule, each failure with its fix.

``holds`` is True, False, or None when it cannot be verified from ARM (a Managed HSM's
local RBAC, the tenant of an account that has only user-assigned identities): None is
shown as a warning and does not block.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cmk.keyid import KeyId
from cmk.lifecycle import fixes
from cmk.lifecycle.access import KeyAccess
from cmk.lifecycle.model import AccountIdentity, VaultRecord
from cmk.policy import KeyVersion, ReasonCode, VersionPolicy, evaluate
from cmk.resource_id import AccountId

__all__ = ["Facts", "Requirement", "preflight"]


@dataclass(frozen=True)
class Requirement:
    """One rule: its name, whether it holds, what was found, and how to fix a failure."""

    name: str
    holds: bool | None
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.holds is False


@dataclass(frozen=True)
class Facts:
    """What was read about one account and one key (None: not found / not applicable)."""

    account_id: AccountId
    location: str
    identity: AccountIdentity
    identity_client_id: str | None
    key: KeyId  # as asked: versioned or versionless
    version: KeyVersion | None  # the version to bind (None: key not found)
    vault: VaultRecord | None
    access: KeyAccess | None  # None: no identity to check
    in_scope: bool
    bound_key: KeyId | None = None  # the account's current key (switch: same vault only)


_KEY_RULES: dict[ReasonCode, str] = {
    ReasonCode.DISABLED: "key enabled",
    ReasonCode.NOT_YET_VALID: "key valid now (nbf)",
    ReasonCode.EXPIRED: "key not expired (exp)",
    ReasonCode.EXPIRING: "key not expired (exp)",
    ReasonCode.KEY_TYPE: "key type RSA / RSA-HSM",
    ReasonCode.KEY_SIZE: "key size allowed",
    ReasonCode.KEY_OPS: "key operations wrapKey, unwrapKey",
    ReasonCode.PURGEABLE: "key recoveryLevel not purgeable",
    ReasonCode.DIFFERENT_VAULT: "same vault as the current key",
}


def _key_fix(code: ReasonCode, facts: Facts, version: KeyVersion) -> str:
    vault, name = facts.key.vault_name, facts.key.name
    if code is ReasonCode.DISABLED:
        return fixes.enable_version(vault, name, version.version)
    if code in (ReasonCode.NOT_YET_VALID, ReasonCode.EXPIRED, ReasonCode.EXPIRING):
        return fixes.rotate(facts.key)
    if code in (ReasonCode.KEY_TYPE, ReasonCode.KEY_SIZE, ReasonCode.KEY_OPS):
        return fixes.new_key_version(vault, name)
    if code is ReasonCode.PURGEABLE and facts.vault is not None:
        return fixes.purge_protection(facts.vault)
    if code is ReasonCode.DIFFERENT_VAULT and facts.bound_key is not None:
        return (
            f"a key can only be changed to another key in the same vault: pick a key in "
            f"{facts.bound_key.vault_url}, or `cmk disable` and then `cmk enable` the new vault"
        )
    return ""


def _key_rules(facts: Facts, policy: VersionPolicy, now: datetime) -> list[Requirement]:
    version = facts.version
    if version is None:
        # In a vault that does not exist there is no key to create yet: the vault comes first.
        fix = (
            "create the vault first (see 'vault found')"
            if facts.vault is None
            else fixes.new_key_version(facts.key.vault_name, facts.key.name)
        )
        return [
            Requirement(
                "key exists",
                False,
                f"no enabled, valid version of {facts.key} was found",
                fix,
            )
        ]
    verdict = evaluate(version, policy, now, facts.bound_key)
    failed = {reason.code: reason for reason in verdict.reasons}
    rules: dict[str, Requirement] = {}
    for code, name in _KEY_RULES.items():
        if code is ReasonCode.DIFFERENT_VAULT and facts.bound_key is None:
            continue
        reason = failed.get(code)
        if reason is not None:
            rules[name] = Requirement(name, False, reason.message, _key_fix(code, facts, version))
        elif name not in rules:
            rules[name] = Requirement(name, True, _key_detail(code, version, facts))
    return list(rules.values())


def _key_detail(code: ReasonCode, version: KeyVersion, facts: Facts) -> str:
    if code is ReasonCode.KEY_TYPE or code is ReasonCode.KEY_SIZE:
        return f"{version.kty} {version.size} bits"
    if code is ReasonCode.KEY_OPS:
        return f"key_ops {', '.join(sorted(version.key_ops))}"
    if code is ReasonCode.PURGEABLE:
        return f"recoveryLevel {version.recovery_level}"
    if code in (ReasonCode.EXPIRED, ReasonCode.EXPIRING):
        return f"expires {version.expires.isoformat() if version.expires else 'never'}"
    if code is ReasonCode.DIFFERENT_VAULT and facts.bound_key is not None:
        return f"both in {facts.bound_key.vault_url}"
    return f"version {version.version}"


def _vault_rules(facts: Facts) -> list[Requirement]:
    vault = facts.vault
    if vault is None:
        fix = fixes.vault_missing(facts.key.vault_name, facts.location)
        return [
            Requirement("vault found", False, f"no vault resource for {facts.key.vault_url}", fix)
        ]
    region_ok = vault.location.replace(" ", "").lower() == facts.location.lower()
    tenant = facts.identity.tenant_id
    denies = vault.network_default_action.lower() == "deny"
    bypass = vault.network_bypass.lower() == "azureservices"
    return [
        Requirement(
            "vault soft delete",
            vault.soft_delete,
            f"soft delete {'on' if vault.soft_delete else 'off'}"
            + (f", {vault.retention_days} days" if vault.retention_days else ""),
            "" if vault.soft_delete else fixes.soft_delete(vault),
        ),
        Requirement(
            "vault purge protection",
            vault.purge_protection,
            f"purge protection {'on' if vault.purge_protection else 'off'}",
            "" if vault.purge_protection else fixes.purge_protection(vault),
        ),
        Requirement(
            "same region",
            region_ok,
            f"vault in {vault.location}, account in {facts.location}",
            "" if region_ok else f"use a vault in {facts.location}; keys cannot move vaults",
        ),
        Requirement(
            "same tenant",
            None if tenant is None else tenant == vault.tenant_id,
            f"vault tenant {vault.tenant_id}, account identity tenant {tenant or 'not reported'}",
            "" if tenant in (None, vault.tenant_id) else "use a vault in the account's tenant",
        ),
        Requirement(
            "firewall allows trusted services",
            not denies or bypass,
            f"default action {vault.network_default_action}, bypass {vault.network_bypass}",
            fixes.firewall(vault) if denies and not bypass else "",
        ),
    ]


#: The requirement that the account's identity may use the key.
KEY_ACCESS = "identity has get, wrapKey, unwrapKey"


def _identity_rules(facts: Facts) -> list[Requirement]:
    named = facts.identity_client_id
    principal = facts.identity.principal_for(named)
    what = f"user-assigned identity {named}" if named else "system-assigned identity"
    rules = [
        Requirement(
            "managed identity",
            principal is not None,
            f"{what}: principal {principal}" if principal else f"the account has no {what}",
            ""
            if principal
            else fixes.identity(facts.account_id.name, facts.account_id.resource_group, named),
        )
    ]
    access, vault = facts.access, facts.vault
    if principal is None or access is None or vault is None:
        return rules
    name = KEY_ACCESS
    fix = fixes.key_access(vault, facts.key.name, principal)
    if access.holds is None:
        detail = "a Managed HSM authorizes keys with its local RBAC, not visible in ARM; verify"
        rules.append(Requirement(name, None, detail, fix))
    elif access.holds:
        via = "; ".join(str(grant) for grant in access.grants)
        rules.append(Requirement(name, True, f"via {via}"))
    else:
        rules.append(Requirement(name, False, f"missing {', '.join(access.missing)}", fix))
    return rules


def preflight(facts: Facts, policy: VersionPolicy, now: datetime) -> tuple[Requirement, ...]:
    """Every requirement for binding ``facts.account_id`` to ``facts.key``."""
    scope = Requirement(
        "vault in CMK_VAULT_ALLOWLIST",
        facts.in_scope,
        f"{facts.key.vault_url} {'is' if facts.in_scope else 'is not'} rotated by cmk-rotator",
        "" if facts.in_scope else f"add {facts.key.vault_url} to CMK_VAULT_ALLOWLIST",
    )
    return (
        *_vault_rules(facts),
        *_key_rules(facts, policy, now),
        *_identity_rules(facts),
        scope,
    )
