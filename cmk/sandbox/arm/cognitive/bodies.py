"""A Cognitive Services account as the resource provider shows it: the JSON of GET, list
and PUT/PATCH answers (also the rows Resource Graph indexes), and the names and forms
the RP writes (key sources, resource type, times, locations, etags).

``properties.encryption`` is omitted while the account uses Microsoft-managed keys, as the
service does (hashicorp/terraform-provider-azurerm#28368).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from cmk.sandbox.world import AccountState, Encryption

MICROSOFT_MANAGED = "Microsoft.CognitiveServices"
KEY_VAULT = "Microsoft.KeyVault"
ACCOUNT_TYPE = "Microsoft.CognitiveServices/accounts"


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def normal_location(location: str) -> str:
    """ARM's form of a region name: ``West Europe`` -> ``westeurope``."""
    return location.replace(" ", "").lower()


def account_key(subscription_id: str, resource_group: str, name: str) -> str:
    """The lower-case resource id the world indexes an account by."""
    return (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/{ACCOUNT_TYPE}/{name}"
    ).lower()


def new_etag() -> str:
    """The etag an account gets on every write."""
    return uuid.uuid4().hex[:16]


def identity_json(account: AccountState) -> dict[str, Any]:
    identity = account.identity
    body: dict[str, Any] = {"type": identity.type}
    if identity.system is not None:
        body["principalId"] = identity.system.object_id
        body["tenantId"] = identity.system.tenant_id
    if identity.user_assigned:
        body["userAssignedIdentities"] = {
            uami.resource_id: {
                "principalId": uami.principal.object_id,
                "clientId": uami.principal.client_id,
            }
            for uami in identity.user_assigned.values()
        }
    return body


def encryption_json(encryption: Encryption) -> dict[str, Any] | None:
    if encryption.key_source == MICROSOFT_MANAGED and not encryption.key_vault_uri:
        return None
    body: dict[str, Any] = {"keySource": encryption.key_source}
    if encryption.key_source == KEY_VAULT:
        props = {
            "keyVaultUri": encryption.key_vault_uri,
            "keyName": encryption.key_name,
            "keyVersion": encryption.key_version,
            "identityClientId": encryption.identity_client_id,
        }
        body["keyVaultProperties"] = {k: v for k, v in props.items() if v is not None}
    return body


def endpoint_of(account: AccountState) -> str:
    if account.custom_subdomain:
        return f"https://{account.custom_subdomain}.cognitiveservices.azure.com/"
    return f"https://{account.location}.api.cognitive.microsoft.com/"


def properties_json(account: AccountState) -> dict[str, Any]:
    props: dict[str, Any] = {
        "provisioningState": account.provisioning_state,
        "endpoint": endpoint_of(account),
        "internalId": hashlib.md5(
            account.resource_id.lower().encode(), usedforsecurity=False
        ).hexdigest(),
        "dateCreated": iso(account.created),
        "publicNetworkAccess": "Enabled",
    }
    if account.custom_subdomain:
        props["customSubDomainName"] = account.custom_subdomain
    encryption = encryption_json(account.encryption)
    if encryption is not None:
        props["encryption"] = encryption
    return props


def account_json(account: AccountState) -> dict[str, Any]:
    """The account as the RP returns it (GET, list, PUT/PATCH bodies)."""
    return {
        "id": account.resource_id,
        "name": account.name,
        "type": ACCOUNT_TYPE,
        "etag": f'"{account.etag}"',
        "location": account.location,
        "kind": account.kind,
        "sku": {"name": account.sku},
        "tags": dict(account.tags),
        "identity": identity_json(account),
        "properties": properties_json(account),
    }
