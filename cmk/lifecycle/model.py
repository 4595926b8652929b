"""What the lifecycle commands know about vaults, identities and grants: our own frozen types,
filled by :mod:`cmk.adapters.vaults`, :mod:`cmk.adapters.authorization` and
:mod:`cmk.adapters.accounts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from cmk.resource_id import VaultId

__all__ = [
    "KEY_DATA_ACTIONS",
    "AccessPolicy",
    "AccountIdentity",
    "Grant",
    "GrantKind",
    "RoleGrant",
    "VaultRecord",
]

#: The data action behind each key permission the account's identity needs.
KEY_DATA_ACTIONS: dict[str, str] = {
    "get": "Microsoft.KeyVault/vaults/keys/read",
    "wrapKey": "Microsoft.KeyVault/vaults/keys/wrap/action",
    "unwrapKey": "Microsoft.KeyVault/vaults/keys/unwrap/action",
}


@dataclass(frozen=True)
class AccessPolicy:
    """One legacy access policy entry of a vault (key permissions only)."""

    object_id: str
    tenant_id: str
    key_permissions: frozenset[str]  # as Key Vault spells them: get, wrapKey, all, ...


@dataclass(frozen=True)
class VaultRecord:
    """A Key Vault or Managed HSM as ARM describes it."""

    vault_id: VaultId
    vault_url: str  # normalized, no trailing slash
    location: str
    tenant_id: str
    soft_delete: bool
    purge_protection: bool
    retention_days: int | None
    rbac_authorization: bool  # always True for a Managed HSM (local RBAC)
    access_policies: tuple[AccessPolicy, ...] = ()
    network_default_action: str = "Allow"
    network_bypass: str = "AzureServices"

    @property
    def is_managed_hsm(self) -> bool:
        return self.vault_id.is_managed_hsm

    def key_scope(self, key_name: str) -> str:
        """The ARM scope of one key: ``{vault id}/keys/{name}``."""
        return f"{self.vault_id}/keys/{key_name}"


@dataclass(frozen=True)
class RoleGrant:
    """A role assignment held by a principal, with the role definition's data actions and
    control-plane actions."""

    assignment_id: str
    role_name: str
    scope: str
    principal_id: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...] = ()
    condition: str | None = None
    actions: tuple[str, ...] = ()
    not_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountIdentity:
    """The managed identities of an account: the system-assigned principal (if any) and the
    user-assigned ones by lowercase client id -> principal (object) id."""

    type: str
    system_principal_id: str | None = None
    tenant_id: str | None = None
    user_assigned: dict[str, str] = field(default_factory=dict)

    def principal_for(self, client_id: str | None) -> str | None:
        """The object id of the identity that unwraps the key: the named user-assigned one,
        or the system-assigned one when none is named."""
        if client_id:
            return self.user_assigned.get(client_id.lower())
        return self.system_principal_id


class GrantKind(StrEnum):
    ROLE_ASSIGNMENT = "role assignment"
    ACCESS_POLICY = "access policy"


@dataclass(frozen=True)
class Grant:
    """One thing that gives an identity key permissions: revoking it may cut the account off."""

    kind: GrantKind
    id: str  # role assignment id, or "{vault id}/accessPolicies/{object id}"
    scope: str
    principal_id: str
    permissions: frozenset[str]  # of get / wrapKey / unwrapKey
    role_name: str | None = None

    def __str__(self) -> str:
        if self.kind is GrantKind.ROLE_ASSIGNMENT:
            return f"role assignment {self.id} ({self.role_name}) at scope {self.scope}"
        return f"access policy for object {self.principal_id} in vault {self.scope}"
