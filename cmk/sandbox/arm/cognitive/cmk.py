"""The customer-managed-key rules of the Cognitive Services resource provider (DESIGN §1).

An encryption change is checked twice, as the RP does: :func:`validate_request` at once
(the request alone shows the problem, a ``400``), and :func:`check_key` when the
long-running update completes (the RP reaches Key Vault with the account's identity; the
operation then fails with the returned error). :func:`bind` makes a checked binding the
account's. The error codes and their meaning are listed in
:mod:`cmk.sandbox.arm.cognitive.accounts`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from cmk.sandbox.arm.cognitive.bodies import (
    KEY_VAULT,
    MICROSOFT_MANAGED,
    iso,
    new_etag,
    normal_location,
)
from cmk.sandbox.arm.cognitive.identity import encryption_principal, tenant_of
from cmk.sandbox.arm.errors import ArmError, bad_request
from cmk.sandbox.world import AccountState, Encryption, World

KEY_PERMISSIONS = ("get", "wrapKey", "unwrapKey")


def vault_host(uri: str) -> str | None:
    """The host of a ``https://<vault host>/`` key vault URI; None for any other URI."""
    parts = urlsplit(uri.strip())
    if parts.scheme.lower() != "https" or not parts.hostname or parts.path.strip("/"):
        return None
    return parts.hostname.lower()


def parse_encryption(raw: object) -> Encryption:
    if not isinstance(raw, dict):
        raise bad_request("InvalidRequestContent", "'encryption' must be an object.")
    source = raw.get("keySource") or MICROSOFT_MANAGED
    if not isinstance(source, str) or source.lower() not in (
        MICROSOFT_MANAGED.lower(),
        KEY_VAULT.lower(),
    ):
        raise bad_request(
            "InvalidKeySource",
            f"The keySource '{source}' is not supported. Supported values: "
            f"'{MICROSOFT_MANAGED}', '{KEY_VAULT}'.",
        )
    if source.lower() == MICROSOFT_MANAGED.lower():
        return Encryption()
    props = raw.get("keyVaultProperties")
    if not isinstance(props, dict):
        props = {}
    uri, name = props.get("keyVaultUri"), props.get("keyName")
    version, client_id = props.get("keyVersion"), props.get("identityClientId")
    if not isinstance(uri, str) or not uri or not isinstance(name, str) or not name:
        raise bad_request(
            "InvalidKeyVaultProperties",
            "keyVaultProperties.keyVaultUri and keyVaultProperties.keyName are required when "
            "keySource is Microsoft.KeyVault.",
        )
    if vault_host(uri) is None:
        raise bad_request(
            "InvalidKeyVaultProperties",
            f"The keyVaultUri '{uri}' is not a valid key vault URI such as "
            "'https://myvault.vault.azure.net/'.",
        )
    return Encryption(
        key_source=KEY_VAULT,
        key_vault_uri=uri,
        key_name=name,
        key_version=(version or None) if isinstance(version, str) else None,
        identity_client_id=(client_id or None) if isinstance(client_id, str) else None,
    )


def validate_request(account: AccountState, target: Encryption) -> None:
    """The synchronous checks of an encryption change (400 answers)."""
    if target.key_source != KEY_VAULT:
        return
    if account.identity.type == "None":
        raise bad_request(
            "AccountIdentityRequired",
            "A managed identity is required to use customer-managed keys. Assign a "
            "system-assigned or user-assigned identity to the account first.",
        )
    if encryption_principal(account, target) is None:
        if target.identity_client_id:
            raise bad_request(
                "IdentityNotFound",
                f"The identity with client id '{target.identity_client_id}' is not assigned "
                "to the account.",
            )
        raise bad_request(
            "AccountIdentityRequired",
            "The account has no system-assigned identity; set "
            "keyVaultProperties.identityClientId to one of its user-assigned identities.",
        )
    current = account.encryption
    if (
        current.key_source == KEY_VAULT
        and current.key_vault_uri
        and vault_host(current.key_vault_uri) != vault_host(target.key_vault_uri or "")
    ):
        raise bad_request(
            "KeyVaultChangeNotSupported",
            f"The key vault cannot be changed from '{current.key_vault_uri}' to "
            f"'{target.key_vault_uri}'. A key can only be changed to another key in the "
            "same key vault.",
        )


def latest_version(world: World, target: Encryption) -> str | None:
    """The current version of the key ``target`` names (what an unversioned binding gets)."""
    vault = world.vault_by_host(vault_host(target.key_vault_uri or "") or "")
    key = vault.keys.get((target.key_name or "").lower()) if vault else None
    latest = key.latest() if key else None
    return latest.version if latest else None


def check_key(
    world: World, account: AccountState, target: Encryption, allowed_sizes: frozenset[int]
) -> ArmError | None:
    """The Key Vault side of an encryption change; None when the binding is usable."""
    if target.key_source != KEY_VAULT:
        return None
    uri = target.key_vault_uri or ""
    vault = world.vault_by_host(vault_host(uri) or "")
    if vault is None:
        return bad_request("KeyVaultNotFound", f"The key vault '{uri}' could not be found.")
    tenant = tenant_of(world, account.subscription_id)
    if vault.tenant_id.lower() != tenant.lower():
        return bad_request(
            "KeyVaultTenantMismatch",
            f"The key vault '{uri}' belongs to tenant '{vault.tenant_id}'; the account's "
            f"tenant is '{tenant}'. Key vault and account must be in the same tenant.",
        )
    if normal_location(vault.location) != normal_location(account.location):
        return bad_request(
            "KeyVaultRegionMismatch",
            f"The key vault '{uri}' is in region '{vault.location}'; the account is in "
            f"'{account.location}'. Key vault and account must be in the same region.",
        )
    if not (vault.soft_delete and vault.purge_protection):
        return bad_request(
            "KeyVaultPurgeProtectionRequired",
            f"The key vault '{uri}' must have soft delete and purge protection enabled.",
        )
    principal = encryption_principal(account, target)
    name = target.key_name or ""
    denied = bad_request(
        "KeyVaultAccessDenied",
        f"The managed identity '{principal.object_id if principal else ''}' of the account "
        f"cannot access key '{name}' in key vault '{uri}'. It needs get, wrapKey and "
        "unwrapKey permissions on the key, and the vault must allow trusted Azure services.",
    )
    if vault.network_default_action.lower() == "deny" and vault.network_bypass != "AzureServices":
        return denied
    if principal is None or not all(
        world.key_access(principal.object_id, vault, name, perm) for perm in KEY_PERMISSIONS
    ):
        return denied
    key = vault.keys.get(name.lower())
    version = key.version(target.key_version) if key and target.key_version else None
    if key is not None and not target.key_version:
        version = key.latest()
    if version is None:
        return bad_request(
            "KeyNotFound",
            f"The key '{name}' (version '{target.key_version or 'latest'}') was not found in "
            f"key vault '{uri}'.",
        )
    now = world.clock.now()
    if not version.enabled:
        return bad_request("KeyDisabled", f"The key version '{version.version}' is disabled.")
    if version.expires is not None and version.expires <= now:
        return bad_request(
            "KeyExpired", f"The key version '{version.version}' expired at {iso(version.expires)}."
        )
    if version.not_before is not None and version.not_before > now:
        return bad_request(
            "KeyNotYetValid",
            f"The key version '{version.version}' is not valid before {iso(version.not_before)}.",
        )
    if version.kty not in ("RSA", "RSA-HSM") or version.size not in allowed_sizes:
        sizes = ", ".join(str(s) for s in sorted(allowed_sizes))
        return bad_request(
            "UnsupportedKeyType",
            f"The key '{name}' is {version.kty} {version.size or ''}; only RSA or RSA-HSM keys "
            f"of size {sizes} are supported.",
        )
    if not {"wrapKey", "unwrapKey"} <= set(version.key_ops):
        return bad_request(
            "KeyOperationNotPermitted",
            f"The key '{name}' must permit the wrapKey and unwrapKey operations.",
        )
    return None


def bind(world: World, account: AccountState, target: Encryption) -> None:
    """Make ``target`` the account's encryption, recording a version change."""
    before = account.encryption.key_version
    account.encryption = target
    account.etag = new_etag()
    if target.key_version != before:
        account.binding_history.append((world.clock.now(), target.key_version))
