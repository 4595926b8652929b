"""Key Vault and Managed HSM resources in ARM: find the vault behind a key id and read what the
CMK preflight needs (soft delete, purge protection, retention, RBAC or access policies,
network ACLs, location, tenant) through ``azure.mgmt.keyvault.aio.KeyVaultManagementClient``.

A key id names the vault by host only, so :meth:`KeyVaultResources.find` lists the vaults
(``vaults.list_by_subscription`` or ``managed_hsms.list_by_subscription``) of the
subscriptions it is given, in order, and reads the one whose URI matches with ``get``.
One management client per subscription, from a factory, closed by :meth:`close`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from azure.mgmt.keyvault.aio import KeyVaultManagementClient
from azure.mgmt.keyvault.models import ManagedHsm, Vault

from cmk.adapters._errors import azure_errors
from cmk.adapters._sdk import text_of
from cmk.errors import NotFound
from cmk.keyid import KeyId, parse_vault_url
from cmk.lifecycle.model import AccessPolicy, VaultRecord
from cmk.resource_id import VaultId

__all__ = ["KeyVaultResources", "hsm_record", "vault_record"]

ClientFactory = Callable[[str], KeyVaultManagementClient]


def vault_record(vault: Vault) -> VaultRecord:
    """Our :class:`VaultRecord` for an SDK ``Vault``."""
    props = vault.properties
    acls = props.network_acls
    policies = tuple(
        AccessPolicy(
            object_id=entry.object_id.lower(),
            tenant_id=entry.tenant_id.lower(),
            key_permissions=frozenset(
                text_of(p, "") for p in (entry.permissions.keys_property or [])
            ),
        )
        for entry in props.access_policies or []
    )
    return VaultRecord(
        vault_id=VaultId.parse(vault.id),
        vault_url=parse_vault_url(props.vault_uri or ""),
        location=vault.location or "",
        tenant_id=str(props.tenant_id).lower(),
        soft_delete=props.enable_soft_delete is not False,
        purge_protection=props.enable_purge_protection is True,
        retention_days=props.soft_delete_retention_in_days,
        rbac_authorization=props.enable_rbac_authorization is True,
        access_policies=policies,
        network_default_action=text_of(acls.default_action if acls else None, "Allow"),
        network_bypass=text_of(acls.bypass if acls else None, "AzureServices"),
    )


def hsm_record(hsm: ManagedHsm) -> VaultRecord:
    """Our :class:`VaultRecord` for an SDK ``ManagedHsm`` (local RBAC, no access policies)."""
    props = hsm.properties
    assert props is not None
    acls = props.network_acls
    return VaultRecord(
        vault_id=VaultId.parse(hsm.id),
        vault_url=parse_vault_url(props.hsm_uri or ""),
        location=hsm.location or "",
        tenant_id=str(props.tenant_id or "").lower(),
        soft_delete=props.enable_soft_delete is not False,
        purge_protection=props.enable_purge_protection is True,
        retention_days=props.soft_delete_retention_in_days,
        rbac_authorization=True,
        network_default_action=text_of(acls.default_action if acls else None, "Allow"),
        network_bypass=text_of(acls.bypass if acls else None, "AzureServices"),
    )


class KeyVaultResources:
    """Vault and Managed HSM resources over ARM (``client_for(subscription)`` per subscription)."""

    def __init__(self, client_for: ClientFactory) -> None:
        self._client_for = client_for
        self._clients: dict[str, KeyVaultManagementClient] = {}

    def client(self, subscription_id: str) -> KeyVaultManagementClient:
        key = subscription_id.lower()
        if key not in self._clients:
            self._clients[key] = self._client_for(key)
        return self._clients[key]

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def get(self, vault_id: VaultId) -> VaultRecord:
        """Read one vault or Managed HSM by resource id (NotFound if it does not exist)."""
        client = self.client(vault_id.subscription_id)
        with azure_errors(f"reading {vault_id}"):
            if vault_id.is_managed_hsm:
                hsm = await client.managed_hsms.get(vault_id.resource_group, vault_id.name)
                if hsm is None:
                    raise NotFound(f"Managed HSM {vault_id} does not exist")
                return hsm_record(hsm)
            vault = await client.vaults.get(vault_id.resource_group, vault_id.name)
            return vault_record(vault)

    async def find(self, key: KeyId, subscriptions: Sequence[str]) -> VaultRecord:
        """The vault (or Managed HSM) holding ``key``, searched in ``subscriptions`` in order."""
        searched: list[str] = []
        for subscription in dict.fromkeys(s.lower() for s in subscriptions):
            searched.append(subscription)
            found = await self._find_in(key, subscription)
            if found is not None:
                return await self.get(found)
        raise NotFound(
            f"no {'Managed HSM' if key.is_managed_hsm else 'key vault'} named {key.vault_name}"
            f" is visible in subscription(s) {', '.join(searched) or '(none)'}; add its"
            " subscription to CMK_SUBSCRIPTIONS and grant the caller Reader on it"
        )

    async def _find_in(self, key: KeyId, subscription: str) -> VaultId | None:
        client = self.client(subscription)
        with azure_errors(f"listing the vaults of subscription {subscription}"):
            if key.is_managed_hsm:
                async for hsm in client.managed_hsms.list_by_subscription():
                    uri = hsm.properties.hsm_uri if hsm.properties else None
                    if uri and parse_vault_url(uri) == key.vault_url:
                        return VaultId.parse(hsm.id)
                return None
            async for vault in client.vaults.list_by_subscription():
                if vault.properties.vault_uri and (
                    parse_vault_url(vault.properties.vault_uri) == key.vault_url
                ):
                    return VaultId.parse(vault.id)
        return None
