"""ARM ``Microsoft.KeyVault/vaults`` and ``Microsoft.KeyVault/managedHSMs`` (read side) for
:mod:`cmk.sandbox.arm.service`: what ``KeyVaultManagementClient.vaults.get`` /
``.list_by_subscription`` and ``.managed_hsms.get`` / ``.list_by_subscription`` read.

Shapes follow ``specification/keyvault/resource-manager/Microsoft.KeyVault`` in
Azure/azure-rest-api-specs (``Vault``/``VaultProperties``, ``ManagedHsm``/
``ManagedHsmProperties``; examples ``getVault.json``, ``ManagedHsm_Get.json``):

* ``GET /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}``
  and ``.../managedHSMs/{name}`` — 404 ``ResourceNotFound`` with ARM's message;
* ``GET /subscriptions/{s}[/resourceGroups/{rg}]/providers/Microsoft.KeyVault/vaults`` and
  ``.../managedHSMs`` — ``{"value": [...]}`` (one page).

Under a resource group that does not exist, both answer 404 ``ResourceGroupNotFound``
(``Vaults_Get`` / ``Vaults_ListByResourceGroup``: ARM answers for the group before the
provider is asked).

``enablePurgeProtection`` is left out while purge protection is off, as Key Vault answers
(it is ``null`` until enabled, and can never be disabled again). Access policies come from
:attr:`VaultState.access_policies` (this tenant, key permissions only); RBAC vaults answer
``enableRbacAuthorization: true`` and an empty list. The caller needs
``Microsoft.KeyVault/vaults/read`` (``managedHSMs/read``) on the resource.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from cmk.sandbox.arm.cognitive.accounts import ArmError
from cmk.sandbox.platform.context import TokenClaims
from cmk.sandbox.world import VaultKind, VaultState, World

Authorize = Callable[[TokenClaims, str, str], None]
Handler = Callable[[web.Request, TokenClaims, dict[str, Any], bytes], web.Response]
Json = Callable[[int, object], web.Response]
#: 404 ``ResourceGroupNotFound`` unless (subscription, group) exists
#: (:func:`cmk.sandbox.arm.resources.require_group`, which imports this module).
RequireGroup = Callable[[str, str], None]

_NAME = r"[^/]+"
_TYPES = r"(?P<type>vaults|managedHSMs)"
VAULT = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})"
    rf"/providers/Microsoft\.KeyVault/{_TYPES}/(?P<name>{_NAME})/?$",
    re.IGNORECASE,
)
VAULT_LIST = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})(?:/resourceGroups/(?P<rg>{_NAME}))?"
    rf"/providers/Microsoft\.KeyVault/{_TYPES}/?$",
    re.IGNORECASE,
)
READ = {
    "vaults": "Microsoft.KeyVault/vaults/read",
    "managedhsms": "Microsoft.KeyVault/managedHSMs/read",
}


def _kind(type_segment: str) -> VaultKind:
    return VaultKind.VAULT if type_segment.lower() == "vaults" else VaultKind.MANAGED_HSM


def _network_acls(vault: VaultState) -> dict[str, Any]:
    return {
        "bypass": vault.network_bypass,
        "defaultAction": vault.network_default_action,
        "ipRules": [],
        "virtualNetworkRules": [],
    }


def _common(vault: VaultState) -> dict[str, Any]:
    props: dict[str, Any] = {
        "tenantId": vault.tenant_id,
        "enableSoftDelete": vault.soft_delete,
        "softDeleteRetentionInDays": vault.retention_days,
        "networkAcls": _network_acls(vault),
        "provisioningState": "Succeeded",
        "publicNetworkAccess": "Enabled",
    }
    if vault.purge_protection:
        props["enablePurgeProtection"] = True
    return props


def vault_sku(vault: VaultState) -> dict[str, str]:
    """The ``sku`` of a vault (``properties.sku``: family ``A``, ``standard``/``premium``) or
    of a Managed HSM (top-level ``sku``: family ``B``, ``Standard_B1``), from the world: ARM
    and Resource Graph answer the same one."""
    if vault.kind is VaultKind.MANAGED_HSM:
        return {"family": "B", "name": "Standard_B1"}
    return {"family": "A", "name": vault.sku}


def vault_json(vault: VaultState) -> dict[str, Any]:
    """A vault or Managed HSM as ARM returns it."""
    props = _common(vault)
    body: dict[str, Any] = {
        "id": vault.resource_id,
        "name": vault.name,
        "location": vault.location,
        "tags": {},
    }
    if vault.kind is VaultKind.MANAGED_HSM:
        props.update(
            {
                "hsmUri": f"{vault.url}/",
                "initialAdminObjectIds": [],
                "statusMessage": "The Managed HSM is provisioned and ready to use.",
                "securityDomainProperties": {
                    "activationStatus": "Active",
                    "activationStatusMessage": "Your HSM has been activated and can be used "
                    "for cryptographic operations.",
                },
            }
        )
        return {
            **body,
            "type": "Microsoft.KeyVault/managedHSMs",
            "sku": vault_sku(vault),
            "properties": props,
        }
    props.update(
        {
            "sku": vault_sku(vault),
            "vaultUri": f"{vault.url}/",
            "enabledForDeployment": False,
            "enabledForDiskEncryption": False,
            "enabledForTemplateDeployment": False,
            "enableRbacAuthorization": vault.enable_rbac_authorization,
            "accessPolicies": [
                {
                    "tenantId": vault.tenant_id,
                    "objectId": object_id,
                    "permissions": {"keys": sorted(perms), "secrets": [], "certificates": []},
                }
                for object_id, perms in sorted(vault.access_policies.items())
            ],
        }
    )
    return {**body, "type": "Microsoft.KeyVault/vaults", "properties": props}


class KeyVaultArm:
    """The two routes, over one world; ``authorize`` is ARM's RBAC check (403 on failure)."""

    def __init__(
        self, world: World, authorize: Authorize, reply: Json, require_group: RequireGroup
    ) -> None:
        self.world = world
        self.authorize = authorize
        self.reply = reply
        self.require_group = require_group

    def routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        return [(VAULT, self.get), (VAULT_LIST, self.list)]

    def _vaults(self, sub: str, rg: str | None, kind: VaultKind) -> list[VaultState]:
        found = [
            v
            for v in self.world.vaults.values()
            if v.kind is kind
            and v.subscription_id.lower() == sub.lower()
            and (rg is None or v.resource_group.lower() == rg.lower())
        ]
        return sorted(found, key=lambda v: v.name)

    def get(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        kind = _kind(groups["type"])
        name = groups["name"].lower()
        vault = next(
            (v for v in self._vaults(groups["sub"], groups["rg"], kind) if v.name == name), None
        )
        canonical = "vaults" if kind is VaultKind.VAULT else "managedHSMs"
        scope = (
            f"/subscriptions/{groups['sub']}/resourceGroups/{groups['rg']}"
            f"/providers/Microsoft.KeyVault/{canonical}/{groups['name']}"
        )
        self.authorize(claims, READ[canonical.lower()], scope)
        self.require_group(groups["sub"], groups["rg"])
        if vault is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.KeyVault/{canonical}/{groups['name']}' under resource "
                f"group '{groups['rg']}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return self.reply(200, vault_json(vault))

    def list(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        kind = _kind(groups["type"])
        canonical = "vaults" if kind is VaultKind.VAULT else "managedHSMs"
        action = READ[canonical.lower()]
        if groups["rg"]:
            self.require_group(groups["sub"], groups["rg"])
        found = [
            vault_json(v)
            for v in self._vaults(groups["sub"], groups["rg"], kind)
            if self.world.rbac_allows(claims.principal.object_id, action, v.resource_id)
        ]
        return self.reply(200, {"value": found})


def require_get(request: web.Request) -> None:
    if request.method.upper() != "GET":
        raise ArmError(
            405,
            "MethodNotAllowed",
            f"The requested resource does not support http method '{request.method.upper()}'.",
        )
