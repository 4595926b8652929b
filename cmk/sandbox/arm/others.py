"""GET of the resources the world holds without a resource provider of its own, for
:mod:`cmk.sandbox.arm.service`: user-assigned identities and Event Grid custom topics, the
same resources (and ``properties``) the generic list and Resource Graph show
(:func:`cmk.sandbox.arm.resources.other_resources`).

* ``GET /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/
  userAssignedIdentities/{name}`` — ``Identity`` of ``ManagedIdentity.json``
  (``UserAssignedIdentities_Get``): ``id``, ``name``, ``type``, ``location``, ``tags``,
  ``properties`` with ``tenantId``, ``principalId``, ``clientId``; what ``az identity show``
  and ``az resource show --ids`` read;
* ``GET .../providers/Microsoft.EventGrid/topics/{name}`` — ``Topic`` of ``EventGrid.json``
  (``Topics_Get``): ``sku`` ``Basic``, ``kind`` ``Azure``, ``identity`` ``None``,
  ``properties`` with ``provisioningState``, ``endpoint``, ``inputSchema`` (left out for a
  sandbox topic that accepts both schemas, which Azure's topics do not),
  ``publicNetworkAccess``, ``inboundIpRules``, ``disableLocalAuth``.

The caller needs ``{type}/read`` on the resource (403 ``AuthorizationFailed`` before
anything else); an unknown name is 404 ``ResourceNotFound`` with ARM's message, in a group
that does not exist 404 ``ResourceGroupNotFound``. Only an
identity some account names exists in the sandbox (that is how the world knows it).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from cmk.sandbox.arm.cognitive.accounts import ArmError
from cmk.sandbox.arm.keyvault import Authorize, Handler, Json, require_get
from cmk.sandbox.arm.resources import Resource, other_resources, require_group
from cmk.sandbox.platform.context import TokenClaims
from cmk.sandbox.world import World

_NAME = r"[^/]+"
_GROUP = rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME})/providers"
IDENTITY_TYPE = "Microsoft.ManagedIdentity/userAssignedIdentities"
TOPIC_TYPE = "Microsoft.EventGrid/topics"
IDENTITY = re.compile(
    rf"{_GROUP}/Microsoft\.ManagedIdentity/userAssignedIdentities/(?P<name>{_NAME})/?$",
    re.IGNORECASE,
)
TOPIC = re.compile(rf"{_GROUP}/Microsoft\.EventGrid/topics/(?P<name>{_NAME})/?$", re.IGNORECASE)


def resource_json(resource: Resource) -> dict[str, Any]:
    """The resource as its provider's GET answers it."""
    body: dict[str, Any] = {
        "id": resource.id,
        "name": resource.name,
        "type": resource.type,
        "location": resource.location,
        "tags": resource.tags,
        "properties": dict(resource.properties or {}),
    }
    if resource.type == TOPIC_TYPE:
        body |= {
            "sku": {"name": "Basic"},
            "kind": "Azure",
            "identity": {"type": "None", "principalId": None, "tenantId": None},
        }
    return body


class OtherResourcesArm:
    """The two routes, over one world; ``authorize`` is ARM's RBAC check (403 on failure)."""

    def __init__(self, world: World, authorize: Authorize, reply: Json) -> None:
        self.world = world
        self.authorize = authorize
        self.reply = reply

    def routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        return [(IDENTITY, self.identity), (TOPIC, self.topic)]

    def identity(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        return self._get(request, claims, groups, IDENTITY_TYPE)

    def topic(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        return self._get(request, claims, groups, TOPIC_TYPE)

    def _get(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], rtype: str
    ) -> web.Response:
        require_get(request)
        resource_id = (
            f"/subscriptions/{groups['sub']}/resourceGroups/{groups['rg']}/providers/"
            f"{rtype}/{groups['name']}"
        )
        self.authorize(claims, f"{rtype}/read", resource_id)
        require_group(self.world, groups["sub"], groups["rg"])
        found = next(
            (r for r in other_resources(self.world) if r.id.lower() == resource_id.lower()),
            None,
        )
        if found is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource '{rtype}/{groups['name']}' under resource group "
                f"'{groups['rg']}' was not found. For more details please go to "
                "https://aka.ms/ARMResourceNotFoundFix",
            )
        return self.reply(200, resource_json(found))
