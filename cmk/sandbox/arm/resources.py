"""What ARM answers before a client touches a resource: ``Microsoft.Resources``
subscriptions, tenants, resource groups and the generic resource list, for
:mod:`cmk.sandbox.arm.service`. ``az login`` lists subscriptions and tenants; ``az group``,
``az resource list`` and the SDKs' ``ResourceManagementClient`` read the rest.

Shapes follow ``specification/resources/resource-manager/Microsoft.Resources`` in
Azure/azure-rest-api-specs (``subscriptions/stable/2022-12-01/subscriptions.json``:
``Subscription``, ``TenantIdDescription``; ``resources/stable/2021-04-01/resources.json``:
``ResourceGroup``, ``GenericResourceExpanded``):

* ``GET /subscriptions`` — the subscriptions of the caller's tenant on which the caller
  holds any role assignment (at, above or inside the subscription: ARM shows a
  subscription to whoever can see something in it);
* ``GET /subscriptions/{s}`` — one of those; a subscription the caller cannot see is
  403 ``AuthorizationFailed`` (ARM's exact answer here is not documented);
* ``GET /tenants`` — the caller's home tenant (a managed identity sees one tenant). Its
  display name and domain are the sandbox's own (``Sandbox``, ``sandbox.onmicrosoft.com``);
* ``GET|HEAD /subscriptions/{s}/resourcegroups[/{rg}]`` — resource groups, derived from
  the world: every group holding a vault, Managed HSM, account or user-assigned identity,
  located where its first resource (by name) is; each filtered by
  ``Microsoft.Resources/subscriptions/resourceGroups/read``; ``$filter`` a tag filter
  (:func:`cmk.sandbox.arm.filters.group_filter`; the groups carry no tags);
* ``GET /subscriptions/{s}[/resourceGroups/{rg}]/resources`` — every resource the caller
  may read (``{type}/read`` on it), ``$filter`` as :mod:`cmk.sandbox.arm.filters`
  evaluates it; ``$expand`` with any of ``createdTime``, ``changedTime`` and
  ``provisioningState`` adds those ``GenericResourceExpanded`` fields (other ``$expand``
  terms are ignored: what ARM answers to them is not documented); ``$top`` truncates; one
  page, no ``nextLink``; a group that does not exist is 404 ``ResourceGroupNotFound``
  (:func:`require_group`, which the resource providers' routes under a group use too);
* ``GET /subscriptions/{s}/providers[/{namespace}]`` — ``Providers_List`` / ``Providers_Get``
  for the emulated namespaces, and ``GET /subscriptions/{s}/locations`` —
  ``Subscriptions_ListLocations`` (:mod:`cmk.sandbox.arm.providers`); each to whoever sees
  the subscription, as ``GET /subscriptions/{s}``.

Every route accepts the api-versions of :data:`API_VERSIONS` (the Microsoft.Resources spec
folders) and answers any other with ARM's 400 ``InvalidApiVersionParameter`` naming them.

The resources are the world's vaults and Managed HSMs, Cognitive Services accounts (with
their ``identity``), the user-assigned identities accounts name and the Event Grid custom
topics (:func:`resources`); Resource Graph's ``Resources`` table shows the same set. Only
accounts record when they were created and changed (``createdTime``: created;
``changedTime``: the last key-version binding, else created); the other kinds carry
``provisioningState`` alone when expanded, since the world keeps no time for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from cmk.sandbox.arm.cognitive.accounts import ArmError, identity_json
from cmk.sandbox.arm.filters import Filter, group_filter, resource_filter
from cmk.sandbox.arm.keyvault import require_get, vault_sku
from cmk.sandbox.arm.providers import Providers
from cmk.sandbox.eventgrid.service import EventGrid, Topic
from cmk.sandbox.platform.context import TokenClaims
from cmk.sandbox.world import Subscription, VaultKind, World

Authorize = Callable[[TokenClaims, str, str], None]
Handler = Callable[[web.Request, TokenClaims, dict[str, Any], bytes], web.Response]
Json = Callable[[int, object], web.Response]

_NAME = r"[^/]+"
SUBSCRIPTIONS = re.compile(r"^/subscriptions/?$", re.IGNORECASE)
TENANTS = re.compile(r"^/tenants/?$", re.IGNORECASE)
SUBSCRIPTION = re.compile(rf"^/subscriptions/(?P<sub>{_NAME})/?$", re.IGNORECASE)
GROUPS = re.compile(rf"^/subscriptions/(?P<sub>{_NAME})/resourcegroups/?$", re.IGNORECASE)
GROUP = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})/resourcegroups/(?P<rg>{_NAME})/?$", re.IGNORECASE
)
RESOURCES = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})(?:/resourcegroups/(?P<rg>{_NAME}))?/resources/?$",
    re.IGNORECASE,
)
PROVIDERS = re.compile(rf"^/subscriptions/(?P<sub>{_NAME})/providers/?$", re.IGNORECASE)
PROVIDER = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})/providers/(?P<namespace>{_NAME})/?$", re.IGNORECASE
)
LOCATIONS = re.compile(rf"^/subscriptions/(?P<sub>{_NAME})/locations/?$", re.IGNORECASE)
SUBSCRIPTION_READ = "Microsoft.Resources/subscriptions/read"
GROUP_READ = "Microsoft.Resources/subscriptions/resourceGroups/read"
GROUP_TYPE = "Microsoft.Resources/resourceGroups"
TENANT_DISPLAY_NAME = "Sandbox"
TENANT_DOMAIN = "sandbox.onmicrosoft.com"
#: The api-versions of these routes: the version folders of
#: ``specification/resources/resource-manager/Microsoft.Resources/resources`` (``resources.json``:
#: resource groups, the generic list) and ``.../Microsoft.Resources/subscriptions``
#: (``subscriptions.json``: subscriptions, tenants) in Azure/azure-rest-api-specs, as their
#: ``readme.md`` tags list them (commits 01fd66f3 and 1311a1c7). ARM checks all of these
#: routes against one list for the namespace (its ``InvalidApiVersionParameter`` message names
#: the same versions for ``/subscriptions`` and for resource groups), so each route accepts the
#: union. ARM's own list is longer — it also holds the versions of the namespace's other types
#: (deployments, tags, ...) and legacy forms such as ``2014-04`` — which the sandbox does not
#: serve. az CLI uses 2024-11-01 (resources) and 2022-12-01 (subscriptions); azure-mgmt-resource
#: 2025-03-01 and 2022-12-01; @azure/arm-resources-subscriptions 2022-12-01.
API_VERSIONS: tuple[str, ...] = tuple(
    sorted(
        {
            # resources/
            "2015-11-01", "2016-02-01", "2016-07-01", "2016-09-01", "2017-05-10",
            "2018-02-01", "2018-05-01", "2019-03-01", "2019-05-01", "2019-05-10",
            "2019-07-01", "2019-08-01", "2019-10-01", "2020-06-01", "2020-08-01",
            "2020-10-01", "2021-01-01", "2021-04-01", "2022-09-01", "2023-07-01",
            "2024-03-01", "2024-07-01", "2024-11-01", "2025-03-01", "2025-04-01",
            "2025-08-01-preview",
            # subscriptions/
            "2016-06-01", "2018-06-01", "2019-06-01", "2019-11-01", "2020-01-01",
            "2022-12-01",
        },
        reverse=True,
    )
)  # fmt: skip
#: The ``GenericResourceExpanded`` fields ``$expand`` may ask for, by lower name.
EXPANDABLE = {"createdtime": "createdTime", "changedtime": "changedTime",
              "provisioningstate": "provisioningState"}  # fmt: skip


@dataclass(frozen=True)
class Resource:
    """A resource as the generic list shows it, with what RBAC needs to filter it."""

    id: str
    name: str
    type: str
    location: str
    subscription_id: str
    resource_group: str
    extra: tuple[tuple[str, Any], ...] = ()
    #: What Resource Graph shows as the row's ``properties`` (None: the kind has its own
    #: row builder in :mod:`cmk.sandbox.resourcegraph.service`).
    properties: dict[str, Any] | None = None
    created: datetime | None = None
    changed: datetime | None = None
    provisioning_state: str = "Succeeded"

    @property
    def tags(self) -> dict[str, str]:
        tags: dict[str, str] = dict(self.extra).get("tags", {})
        return tags

    def filter_fields(self) -> dict[str, str]:
        """What a ``$filter`` reads (:mod:`cmk.sandbox.arm.filters`)."""
        return {
            "location": self.location,
            "resourcetype": self.type,
            "name": self.name,
            "resourcegroup": self.resource_group,
        }

    def json(
        self, expand: frozenset[str] = frozenset(), *, with_tags: bool = True
    ) -> dict[str, Any]:
        """The ``GenericResourceExpanded`` body, with the ``$expand`` fields asked for
        (without ``tags`` for a tag filter's answer, as the spec says)."""
        body = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "location": self.location,
            **{k: v for k, v in self.extra if with_tags or k != "tags"},
        }
        if "createdTime" in expand and self.created is not None:
            body["createdTime"] = _timestamp(self.created)
        if "changedTime" in expand and self.changed is not None:
            body["changedTime"] = _timestamp(self.changed)
        if "provisioningState" in expand:
            body["provisioningState"] = self.provisioning_state
        return body


def _timestamp(when: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as ARM writes ``date-time`` fields."""
    return when.isoformat().replace("+00:00", "Z")


def event_grid_topics(world: World) -> list[Topic]:
    """The custom topics of the Event Grid services serving ``world`` (those that
    attached themselves to it: :meth:`EventGrid.attach`)."""
    return [
        topic
        for grid in world.event_grids
        if isinstance(grid, EventGrid)
        for topic in list(grid.topics.values())
    ]


def resources(world: World) -> Iterator[Resource]:
    """Every resource of the world the generic list knows (vaults, HSMs, accounts, the
    user-assigned identities accounts name, and Event Grid custom topics)."""
    for vault in world.vaults.values():
        kind = "vaults" if vault.kind is VaultKind.VAULT else "managedHSMs"
        yield Resource(
            vault.resource_id,
            vault.name,
            f"Microsoft.KeyVault/{kind}",
            vault.location,
            vault.subscription_id,
            vault.resource_group,
            # A Managed HSM's sku is top-level (a vault's is inside its properties).
            ((("sku", vault_sku(vault)),) if vault.kind is VaultKind.MANAGED_HSM else ())
            + (("tags", {}),),
        )
    for account in world.accounts.values():
        identity = identity_json(account) if account.identity.type != "None" else None
        yield Resource(
            account.resource_id,
            account.name,
            "Microsoft.CognitiveServices/accounts",
            account.location,
            account.subscription_id,
            account.resource_group,
            (
                ("kind", account.kind),
                ("sku", {"name": account.sku}),
                ("tags", dict(account.tags)),
                *((("identity", identity),) if identity else ()),
            ),
            created=account.created,
            changed=max([account.created, *(when for when, _ in account.binding_history)]),
            provisioning_state=account.provisioning_state,
        )
    yield from other_resources(world)


def other_resources(world: World) -> Iterator[Resource]:
    """The resources Resource Graph has no row builder of its own for: the user-assigned
    identities accounts name (located with the first account naming them) and the Event
    Grid custom topics; each with its ``properties``."""
    identities: dict[str, Resource] = {}
    for account in world.accounts.values():
        for uami in account.identity.user_assigned.values():
            parts = uami.resource_id.split("/")
            if len(parts) < 9 or uami.resource_id.lower() in identities:
                continue
            identities[uami.resource_id.lower()] = Resource(
                uami.resource_id,
                parts[-1],
                "Microsoft.ManagedIdentity/userAssignedIdentities",
                account.location,
                parts[2],
                parts[4],
                (("tags", {}),),
                {
                    "tenantId": uami.principal.tenant_id,
                    "principalId": uami.principal.object_id,
                    "clientId": uami.principal.client_id,
                },
            )
    yield from identities.values()
    for topic in event_grid_topics(world):
        parts = topic.resource_id.split("/")
        properties: dict[str, Any] = {"provisioningState": "Succeeded", "endpoint": topic.endpoint}
        if topic.input_schema is not None:
            properties["inputSchema"] = topic.input_schema
        properties |= {
            "publicNetworkAccess": "Enabled",
            "inboundIpRules": [],
            "disableLocalAuth": False,
        }
        yield Resource(
            topic.resource_id,
            topic.name,
            "Microsoft.EventGrid/topics",
            topic.region,
            parts[2],
            parts[4],
            (("tags", {}),),
            properties,
        )


def group_exists(world: World, subscription_id: str, group: str) -> bool:
    """Whether the subscription has a resource group of that name (any case)."""
    sub, rg = subscription_id.lower(), group.lower()
    return any(
        r.subscription_id.lower() == sub and r.resource_group.lower() == rg
        for r in resources(world)
    )


def require_group(world: World, subscription_id: str, group: str) -> None:
    """ARM's 404 ``ResourceGroupNotFound`` unless the group exists."""
    if not group_exists(world, subscription_id, group):
        raise ArmError(
            404, "ResourceGroupNotFound", f"Resource group '{group}' could not be found."
        )


def _sees_subscription(world: World, principal_id: str, subscription_id: str) -> bool:
    """Whether any role assignment of the principal is at, above or inside the subscription."""
    scope = f"/subscriptions/{subscription_id}".lower()
    for assignment in world.role_assignments:
        if assignment.principal_id != principal_id:
            continue
        held = assignment.scope.lower().rstrip("/")
        if held in ("", scope) or held.startswith(scope + "/") or scope.startswith(held + "/"):
            return True
    return False


def subscription_json(subscription: Subscription) -> dict[str, Any]:
    return {
        "id": f"/subscriptions/{subscription.subscription_id}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": subscription.subscription_id,
        "tenantId": subscription.tenant_id,
        "displayName": subscription.display_name,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def tenant_json(tenant_id: str) -> dict[str, Any]:
    return {
        "id": f"/tenants/{tenant_id}",
        "tenantId": tenant_id,
        "countryCode": "US",
        "displayName": TENANT_DISPLAY_NAME,
        "domains": [TENANT_DOMAIN],
        "tenantCategory": "Home",
        "defaultDomain": TENANT_DOMAIN,
        "tenantType": "AAD",
    }


def require_api_version(api_version: str) -> None:
    """ARM's 400 ``InvalidApiVersionParameter`` unless ``api_version`` is one of
    :data:`API_VERSIONS` (the message lists them newest first, as ARM does)."""
    if api_version not in API_VERSIONS:
        raise ArmError(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{api_version}' is invalid. The supported versions are "
            f"'{','.join(API_VERSIONS)}'.",
        )


def _parse_expand(text: str) -> frozenset[str]:
    """``createdTime,changedTime,provisioningState`` -> those field names (any case);
    other terms are dropped."""
    terms = (EXPANDABLE.get(term.strip().lower()) for term in text.split(","))
    return frozenset(term for term in terms if term)


class ResourcesArm:
    """The routes, over one world; ``authorize`` is ARM's RBAC check (403 on failure)."""

    def __init__(self, world: World, authorize: Authorize, reply: Json) -> None:
        self.world = world
        self.authorize = authorize
        self.reply = reply
        self.providers = Providers(world, API_VERSIONS)

    def tenant_routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        """Routes outside any subscription (no subscription check, no per-subscription meter)."""
        return [(SUBSCRIPTIONS, self.list_subscriptions), (TENANTS, self.list_tenants)]

    def serves(self, path: str) -> bool:
        """Whether ``path`` is one of these routes (their api-versions are
        :data:`API_VERSIONS`)."""
        routes = (*self.tenant_routes(), *self.routes())
        return any(pattern.match(path) for pattern, _ in routes)

    def routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        """Routes inside a subscription (checked and metered by ARM's pipeline)."""
        return [
            (SUBSCRIPTION, self.get_subscription),
            (GROUPS, self.list_groups),
            (GROUP, self.get_group),
            (RESOURCES, self.list_resources),
            (PROVIDERS, self.list_providers),
            (PROVIDER, self.get_provider),
            (LOCATIONS, self.list_locations),
        ]

    # --- tenant level ------------------------------------------------------------------
    def list_subscriptions(
        self, request: web.Request, claims: TokenClaims, _groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        principal = claims.principal
        with self.world.lock:
            visible = [
                subscription_json(s)
                for s in sorted(self.world.subscriptions.values(), key=lambda s: s.display_name)
                if s.tenant_id.lower() == principal.tenant_id.lower()
                and _sees_subscription(self.world, principal.object_id, s.subscription_id)
            ]
        return self.reply(200, {"value": visible})

    def list_tenants(
        self, request: web.Request, claims: TokenClaims, _groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        return self.reply(200, {"value": [tenant_json(claims.principal.tenant_id)]})

    # --- subscription level -------------------------------------------------------------
    def get_subscription(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        subscription = self._visible_subscription(claims, groups["sub"])
        return self.reply(200, subscription_json(subscription))

    def _visible_subscription(self, claims: TokenClaims, subscription_id: str) -> Subscription:
        """The subscription, if the caller holds any role assignment at, above or inside it
        (or ``subscriptions/read`` on it); else 403 ``AuthorizationFailed``."""
        subscription = self.world.subscriptions[subscription_id.lower()]
        if not _sees_subscription(
            self.world, claims.principal.object_id, subscription.subscription_id
        ):
            self.authorize(claims, SUBSCRIPTION_READ, f"/subscriptions/{subscription_id}")
        return subscription

    def list_providers(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        """``Providers_List`` (``$expand`` and ``$top`` are ignored)."""
        require_get(request)
        subscription = self._visible_subscription(claims, groups["sub"])
        return self.reply(200, {"value": self.providers.list_all(subscription.subscription_id)})

    def get_provider(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        """``Providers_Get`` (``$expand`` is ignored)."""
        require_get(request)
        subscription = self._visible_subscription(claims, groups["sub"])
        return self.reply(
            200, self.providers.get(groups["namespace"], subscription.subscription_id)
        )

    def list_locations(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        """``Subscriptions_ListLocations`` (``includeExtendedLocations`` adds nothing: the
        sandbox has no edge zones)."""
        require_get(request)
        subscription = self._visible_subscription(claims, groups["sub"])
        return self.reply(200, {"value": self.providers.locations(subscription.subscription_id)})

    def _groups(self, subscription_id: str) -> dict[str, dict[str, Any]]:
        """Resource groups of a subscription by lower name: their JSON."""
        found: dict[str, dict[str, Any]] = {}
        for resource in sorted(resources(self.world), key=lambda r: r.name.lower()):
            if resource.subscription_id.lower() != subscription_id.lower():
                continue
            found.setdefault(
                resource.resource_group.lower(),
                {
                    "id": f"/subscriptions/{resource.subscription_id}/resourceGroups/"
                    f"{resource.resource_group}",
                    "name": resource.resource_group,
                    "type": GROUP_TYPE,
                    "location": resource.location,
                    "properties": {"provisioningState": "Succeeded"},
                },
            )
        return dict(sorted(found.items()))

    def list_groups(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        wanted = group_filter(request.query.get("$filter", ""))
        oid = claims.principal.object_id
        visible = [
            group
            for group in self._groups(groups["sub"]).values()
            if self.world.rbac_allows(oid, GROUP_READ, group["id"])
            and wanted.matches({}, group.get("tags", {}))
        ]
        if not visible and not self.world.rbac_allows(
            oid, GROUP_READ, f"/subscriptions/{groups['sub']}"
        ):
            self.authorize(claims, GROUP_READ, f"/subscriptions/{groups['sub']}")
        return self.reply(200, {"value": visible})

    def get_group(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        method = request.method.upper()
        if method not in ("GET", "HEAD"):
            require_get(request)
        scope = f"/subscriptions/{groups['sub']}/resourceGroups/{groups['rg']}"
        self.authorize(claims, GROUP_READ, scope)
        group = self._groups(groups["sub"]).get(groups["rg"].lower())
        if method == "HEAD":
            return web.Response(status=204 if group else 404)
        if group is None:
            raise ArmError(
                404, "ResourceGroupNotFound", f"Resource group '{groups['rg']}' could not be found."
            )
        return self.reply(200, group)

    def list_resources(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        if groups["rg"]:
            require_group(self.world, groups["sub"], groups["rg"])
        wanted: Filter = resource_filter(request.query.get("$filter", ""))
        expand = _parse_expand(request.query.get("$expand", ""))
        top = request.query.get("$top")
        oid = claims.principal.object_id
        found = [
            r.json(expand, with_tags=not wanted.by_tag)
            for r in sorted(resources(self.world), key=lambda r: r.id.lower())
            if r.subscription_id.lower() == groups["sub"].lower()
            and (not groups["rg"] or r.resource_group.lower() == groups["rg"].lower())
            and wanted.matches(r.filter_fields(), r.tags)
            and self.world.rbac_allows(oid, f"{r.type}/read", r.id)
        ]
        if top is not None:
            if not top.isdigit():
                raise ArmError(
                    400, "InvalidTopInQueryString", f"Invalid $top '{top}' in the query string."
                )
            found = found[: int(top)]
        return self.reply(200, {"value": found})
