"""Which ARM scopes exist in the sandbox, for :mod:`cmk.sandbox.arm.service` and the resource
providers: resource groups and resources, as the world holds them.

* :func:`~cmk.sandbox.arm.resources.require_group` — ARM's 404 ``ResourceGroupNotFound``
  ("Resource group '{rg}' could not be found.", the answer of ``ResourceGroups_Get`` in
  ``resources.json`` of ``specification/resources/resource-manager/Microsoft.Resources`` and
  of every request under a group that does not exist: ``Accounts_ListByResourceGroup``,
  ``Vaults_ListByResourceGroup``, ``Accounts_Get``, ``Vaults_Get``). The sandbox has no
  resource group of its own: a group exists while it holds a resource
  (:func:`cmk.sandbox.arm.resources.resources`), as ``GET /subscriptions/{s}/resourcegroups``
  lists them.
* :func:`require_scope` — that a role assignment's scope (``{scope}`` of
  ``RoleAssignments_Create``: a subscription, resource group, resource, or a vault's key) is
  one the world holds: 404 ``ResourceGroupNotFound`` or ``ResourceNotFound`` with ARM's
  message otherwise.
"""

from __future__ import annotations

import re

from cmk.sandbox.arm.errors import ArmError
from cmk.sandbox.arm.resources import require_group, resources
from cmk.sandbox.world import VaultKind, World

_NAME = r"[^/]+"
_GROUP = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})"
    rf"(?:/providers/(?P<namespace>{_NAME})/(?P<type>{_NAME})/(?P<name>{_NAME})(?P<child>/.*)?)?$",
    re.IGNORECASE,
)
_SUBSCRIPTION = re.compile(rf"^/subscriptions/{_NAME}$", re.IGNORECASE)
_KEY = re.compile(rf"^/keys/(?P<key>{_NAME})$", re.IGNORECASE)


def not_found(path: str, group: str) -> ArmError:
    """ARM's 404 ``ResourceNotFound`` for a resource of a group (``path``: its id after
    ``/providers/``, such as ``Microsoft.KeyVault/vaults/kv/keys/k``)."""
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{path}' under resource group '{group}' was not found. "
        "For more details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


def require_scope(world: World, scope: str) -> None:
    """That ``scope`` (no trailing slash; its subscription already checked) is a subscription,
    a resource group, a resource of the world, or a key of one of its vaults."""
    if _SUBSCRIPTION.match(scope):
        return
    match = _GROUP.match(scope)
    if match is None:
        raise ArmError(
            400,
            "InvalidScope",
            f"The scope '{scope}' is not valid for a role assignment in the sandbox: it must be a "
            "subscription, a resource group, a resource, or a key of a vault.",
        )
    sub, rg = match["sub"], match["rg"]
    require_group(world, sub, rg)
    if match["namespace"] is None:
        return
    rtype, name = f"{match['namespace']}/{match['type']}", match["name"]
    resource_id = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{rtype}/{name}".lower()
    if not any(r.id.lower() == resource_id for r in resources(world)):
        raise not_found(f"{rtype}/{name}", rg)
    child = match["child"]
    if not child:
        return
    key = _KEY.match(child)
    vault = next(
        (
            v
            for v in world.vaults.values()
            if v.kind is VaultKind.VAULT and v.resource_id.lower() == resource_id
        ),
        None,
    )
    if key is None or vault is None or key["key"].lower() not in vault.keys:
        raise not_found(f"{rtype}/{name}{child}", rg)
