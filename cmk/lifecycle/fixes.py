"""How to fix each failed requirement: the ``az`` command (or the step) an operator runs.

Pure text builders; ``vault`` names a vault or Managed HSM, ``key`` a key name.
"""

from __future__ import annotations

from cmk.keyid import KeyId
from cmk.lifecycle.model import VaultRecord

ENCRYPTION_ROLE = "Key Vault Crypto Service Encryption User"
HSM_ENCRYPTION_ROLE = "Managed HSM Crypto Service Encryption User"


def _update(vault: VaultRecord, flags: str) -> str:
    name = vault.vault_id.name
    if vault.is_managed_hsm:
        return f"az keyvault update-hsm --hsm-name {name} {flags}"
    return f"az keyvault update --name {name} {flags}"


def soft_delete(vault: VaultRecord) -> str:
    return _update(vault, "--enable-soft-delete true") + " (soft delete cannot be undone)"


def purge_protection(vault: VaultRecord) -> str:
    return _update(vault, "--enable-purge-protection true") + " (it cannot be disabled again)"


def firewall(vault: VaultRecord) -> str:
    return _update(vault, "--bypass AzureServices") + " (allow trusted Microsoft services)"


def key_access(vault: VaultRecord, key: str, principal_id: str) -> str:
    """The grant that gives ``principal_id`` get / wrapKey / unwrapKey on the key."""
    if vault.is_managed_hsm:
        return (
            f"az keyvault role assignment create --hsm-name {vault.vault_id.name} --role "
            f'"{HSM_ENCRYPTION_ROLE}" --assignee-object-id {principal_id} --scope /keys/{key}'
        )
    if not vault.rbac_authorization:
        return (
            f"az keyvault set-policy --name {vault.vault_id.name} --object-id {principal_id}"
            " --key-permissions get wrapKey unwrapKey"
        )
    return (
        f'az role assignment create --role "{ENCRYPTION_ROLE}" --assignee-object-id '
        f"{principal_id} --assignee-principal-type ServicePrincipal --scope "
        f"{vault.key_scope(key)}"
    )


def vault_missing(vault_name: str, location: str) -> str:
    """How to find a vault that was not found, or to create it as the app requires."""
    return (
        "check the vault's name, and that its subscription is one cmk reads"
        f" (CMK_SUBSCRIPTIONS): az keyvault show --name {vault_name}; or create it (soft"
        f" delete and purge protection on): az keyvault create --name {vault_name}"
        f" --resource-group <group> --location {location} --enable-purge-protection true"
        " --enable-rbac-authorization true"
    )


def new_key_version(vault_name: str, key: str, kty: str = "RSA-HSM", size: int = 2048) -> str:
    return (
        f"az keyvault key create --vault-name {vault_name} --name {key} --kty {kty}"
        f" --size {size} --ops wrapKey unwrapKey  (a new version with the right shape)"
    )


def enable_version(vault_name: str, key: str, version: str) -> str:
    return (
        f"az keyvault key set-attributes --vault-name {vault_name} --name {key}"
        f" --version {version} --enabled true"
    )


def rotate(key: KeyId) -> str:
    """A fresh version of ``key``: ``cmk rotate`` creates it (rotation policy, else the same
    parameters), checks it against the policy and moves every account bound to the key,
    which ``az keyvault key rotate`` alone leaves on the old version."""
    return f"cmk rotate {key.versionless()}  (a fresh version; bound accounts follow it)"


def identity(account_name: str, resource_group: str, client_id: str | None) -> str:
    if client_id:
        return (
            f"assign the user-assigned identity with client id {client_id} to the account: "
            f"az cognitiveservices account identity assign --name {account_name} "
            f"--resource-group {resource_group} --user-assigned-identities <identity id>"
        )
    return (
        f"az cognitiveservices account identity assign --name {account_name} "
        f"--resource-group {resource_group}  (a system-assigned identity; `cmk enable`"
        " creates one itself for an account without CMK)"
    )
