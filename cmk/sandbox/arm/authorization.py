"""ARM ``Microsoft.Authorization`` (api-version 2022-04-01) for :mod:`cmk.sandbox.arm.service`: role
assignments and role definitions, from :attr:`World.role_assignments` and
:data:`~cmk.sandbox.world.ROLE_ACTIONS` and the world's custom roles
(:meth:`World.define_role`).

* ``GET {scope}/providers/Microsoft.Authorization/roleAssignments`` — ``scope`` is a
  subscription, resource group, resource or sub-resource (a vault's ``/keys/{name}``).
  ``$filter=atScope()``: assignments at the scope or above it; ``principalId eq '{id}'``:
  that principal's assignments at, above or below it; both (``and``): that principal's at or
  above; none: everything at, above or below. Pages of :data:`PAGE_SIZE` with a ``nextLink``
  (``$skipToken``). Needs ``Microsoft.Authorization/roleAssignments/read`` on the scope.
  ``createdOn``/``updatedOn`` are when the assignment was made (the world's clock), never
  the time of the read.
* ``GET /subscriptions/{s}/providers/Microsoft.Authorization/roleDefinitions/{guid}`` — the
  built-in role with ``permissions[].actions`` / ``dataActions``; 404
  ``RoleDefinitionDoesNotExist``.
* ``GET {scope}/providers/Microsoft.Authorization/roleDefinitions`` (``RoleDefinitions_List``;
  ``az role definition list``, and ``az role assignment list`` to fill role names) — every
  role the sandbox knows (built-in, then the world's custom roles), each with ARM's
  ``/subscriptions/{s}/...`` id, ``$filter`` ``roleName eq '...'`` (any case) and/or ``type eq
  'BuiltInRole'|'CustomRole'`` joined by ``and``; ``atScopeAndBelow()`` changes nothing (every
  role is assignable at ``/``); any other filter is 400 ``InvalidFilter`` (ARM's answer to
  one is undocumented). One page. Only the roles the sandbox emulates are listed, not
  Azure's hundreds of built-in roles.

Each built-in role carries its real role definition GUID and splits its permissions into
control-plane ``actions`` and data-plane ``dataActions`` as Azure does (Owner, Contributor and
Reader have no data actions: they do not grant key operations in an RBAC vault).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from aiohttp import web

from cmk.sandbox.arm.cognitive.accounts import ArmError, iso
from cmk.sandbox.arm.keyvault import Authorize, Handler, Json, require_get
from cmk.sandbox.platform.context import TokenClaims
from cmk.sandbox.world import ROLE_ACTIONS, RoleAssignment, World

PAGE_SIZE = 100
ASSIGNMENTS_READ = "Microsoft.Authorization/roleAssignments/read"

_PROVIDER = r"/providers/Microsoft\.Authorization"
ASSIGNMENTS = re.compile(
    rf"^(?P<scope>/subscriptions/(?P<sub>[^/]+)(?:/.+?)?){_PROVIDER}/roleAssignments/?$",
    re.IGNORECASE,
)
DEFINITIONS = re.compile(
    rf"^(?P<scope>/subscriptions/(?P<sub>[^/]+)(?:/.+?)?){_PROVIDER}/roleDefinitions/?$",
    re.IGNORECASE,
)
_ROLE_FILTER = re.compile(
    r"^\s*(?P<field>roleName|type)\s+eq\s+'(?P<value>(?:[^']|'')*)'\s*$", re.IGNORECASE
)
DEFINITION = re.compile(
    rf"^/subscriptions/(?P<sub>[^/]+){_PROVIDER}/roleDefinitions/(?P<guid>[^/]+)/?$",
    re.IGNORECASE,
)
_PRINCIPAL = re.compile(r"principalId\s+eq\s+'(?P<id>[^']+)'", re.IGNORECASE)
_AT_SCOPE = re.compile(r"atScope\(\)", re.IGNORECASE)

# Built-in roles: real role definition GUID, control-plane actions, data actions.
BUILT_IN: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "Owner": ("8e3af657-a8ff-443c-a75c-2fe8c4bcb635", ("*",), ()),
    "Contributor": ("b24988ac-6180-42a0-ab88-20f7382dd24c", ("*",), ()),
    "Reader": ("acdd72a7-3385-48ef-bd42-f606fba81ae7", ("*/read",), ()),
    "Cognitive Services Contributor": (
        "25fbc0a9-bd7c-42a3-aa1a-3b75d497ee68",
        ("Microsoft.CognitiveServices/*",),
        (),
    ),
    "Key Vault Administrator": (
        "00482a5a-887f-4fb3-b363-3b7fe8e74483",
        ("Microsoft.KeyVault/vaults/*/read",),
        ("Microsoft.KeyVault/vaults/*",),
    ),
    "Key Vault Crypto Officer": (
        "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        ("Microsoft.KeyVault/vaults/*/read",),
        (),
    ),
    "Key Vault Crypto User": ("12338af0-0e69-4776-bea7-57ae8d297424", (), ()),
    "Key Vault Crypto Service Encryption User": (
        "e147488a-f6f5-4113-8e2d-b22465e65bf6",
        ("Microsoft.EventGrid/eventSubscriptions/read",),
        (),
    ),
    "Key Vault Reader": (
        "21090545-7ca7-4776-b22c-e363652d74d2",
        ("Microsoft.KeyVault/vaults/*/read",),
        ("Microsoft.KeyVault/vaults/*/read",),
    ),
    "EventGrid Data Sender": ("d5a91429-5739-47e2-a06b-3470a27159e7", (), ()),
    "Key Vault Data Access Administrator": (
        "8b54135c-b56d-4d72-a534-26097cfdc8d8",
        tuple(sorted(ROLE_ACTIONS["Key Vault Data Access Administrator"])),  # world.py's
        (),
    ),
}
#: Roles whose role assignment writes and deletes hold only for some role definitions: the
#: ABAC condition of their permissions (``conditionVersion`` 2.0), as the role definition
#: GUIDs it lets them assign (``@Request[…:RoleDefinitionId]`` for a write) and remove
#: (``@Resource[…:RoleDefinitionId]`` for a delete). Key Vault Data Access Administrator
#: (learn.microsoft.com/azure/role-based-access-control/built-in-roles/security#key-vault-
#: data-access-administrator) may grant and revoke the Key Vault data roles only: Key Vault
#: Administrator, Certificates Officer, Crypto Officer, Crypto Service Encryption User,
#: Crypto User, Reader, Secrets Officer and Secrets User.
ASSIGNABLE_ROLES: dict[str, frozenset[str]] = {
    "Key Vault Data Access Administrator": frozenset(
        {
            "00482a5a-887f-4fb3-b363-3b7fe8e74483",
            "a4417e6f-fecd-4de8-b567-7b0420556985",
            "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
            "e147488a-f6f5-4113-8e2d-b22465e65bf6",
            "12338af0-0e69-4776-bea7-57ae8d297424",
            "21090545-7ca7-4776-b22c-e363652d74d2",
            "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
            "4633458b-17de-408a-b874-0445c86b69e6",
        }
    ),
}
#: What a built-in role excludes (``permissions[].notActions``): Contributor manages
#: everything but access (Azure's Contributor also excludes a few Blueprint, Purview and
#: subscription actions the sandbox does not serve). :mod:`cmk.sandbox.arm.role_assignments`
#: enforces them on role assignment writes and deletes.
NOT_ACTIONS: dict[str, tuple[str, ...]] = {
    "Contributor": (
        "Microsoft.Authorization/*/Delete",
        "Microsoft.Authorization/*/Write",
        "Microsoft.Authorization/elevateAccess/Action",
    ),
}
_DATA_PREFIXES = ("microsoft.keyvault/vaults/keys", "microsoft.keyvault/vaults/keyrotationpolicies")


def _is_data_action(action: str) -> bool:
    lowered = action.lower()
    return lowered.startswith(_DATA_PREFIXES) or lowered.endswith("/events/send/action")


def role_guid(role: str) -> str:
    """The role definition GUID of a built-in role (a stable made-up one for others)."""
    known = BUILT_IN.get(role)
    return known[0] if known else str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-role:{role}"))


def role_permissions(role: str, granted: frozenset[str]) -> dict[str, Any]:
    """``actions`` / ``dataActions`` of a role that grants ``granted`` in the world: the
    table above plus the world's data actions."""
    _, actions, data = BUILT_IN.get(role, ("", (), ()))
    data_actions = sorted({*data, *(a for a in granted if _is_data_action(a))})
    if role not in BUILT_IN:
        actions = tuple(sorted(a for a in granted if not _is_data_action(a)))
    permissions: dict[str, Any] = {
        "actions": list(actions),
        "notActions": list(NOT_ACTIONS.get(role, ())),
        "dataActions": data_actions,
        "notDataActions": [],
    }
    if role in ASSIGNABLE_ROLES:
        permissions |= {"condition": role_condition(role), "conditionVersion": "2.0"}
    return permissions


def role_condition(role: str) -> str:
    """The ABAC condition of a role of :data:`ASSIGNABLE_ROLES`, in Azure's syntax."""
    guids = ", ".join(sorted(ASSIGNABLE_ROLES[role]))
    return " AND ".join(
        f"((!(ActionMatches{{'Microsoft.Authorization/roleAssignments/{verb}'}})) OR"
        f" (@{source}[Microsoft.Authorization/roleAssignments:RoleDefinitionId]"
        f" ForAnyOfAnyValues:GuidEquals{{{guids}}}))"
        for verb, source in (("write", "Request"), ("delete", "Resource"))
    )


def may_assign(role: str, assigned: str) -> bool:
    """Whether holding ``role`` lets a principal write or delete an assignment of role
    ``assigned`` (its condition, if it has one, names ``assigned``'s definition)."""
    allowed = ASSIGNABLE_ROLES.get(role)
    return allowed is None or role_guid(assigned) in allowed


def roles(world: World) -> list[str]:
    """Every role the sandbox knows: built-in, then the world's custom roles."""
    return [*ROLE_ACTIONS, *world.custom_roles]


def role_by_guid(world: World, guid: str) -> str | None:
    """The role (built-in or custom) whose role definition GUID is ``guid`` (any case)."""
    return next((r for r in roles(world) if role_guid(r) == guid.lower()), None)


def assignment_json(assignment: RoleAssignment) -> dict[str, Any]:
    """A ``RoleAssignment`` as ARM answers it (``RoleAssignments_Get`` / ``_ListForScope``)."""
    sub = assignment.scope.split("/")[2] if assignment.scope.count("/") >= 2 else ""
    created = iso(assignment.created) if assignment.created else None
    return {
        "id": f"{assignment.scope}/providers/Microsoft.Authorization/roleAssignments/"
        f"{assignment.id}",
        "name": assignment.id,
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": f"/subscriptions/{sub}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{role_guid(assignment.role)}",
            "principalId": assignment.principal_id,
            "principalType": "ServicePrincipal",
            "scope": assignment.scope,
            "condition": None,
            "conditionVersion": None,
            "createdOn": created,
            "updatedOn": created,
            "createdBy": None,
            "updatedBy": None,
            "delegatedManagedIdentityResourceId": None,
            "description": None,
        },
    }


def _within(inner: str, outer: str) -> bool:
    inner, outer = inner.lower().rstrip("/"), outer.lower().rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


class AuthorizationArm:
    """The role assignment and role definition routes over one world."""

    def __init__(self, world: World, authorize: Authorize, reply: Json) -> None:
        self.world = world
        self.authorize = authorize
        self.reply = reply

    def routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        return [
            (DEFINITION, self.definition),
            (DEFINITIONS, self.definitions),
            (ASSIGNMENTS, self.assignments),
        ]

    def _selected(self, scope: str, text: str) -> list[RoleAssignment]:
        principal = _PRINCIPAL.search(text)
        at_scope = bool(_AT_SCOPE.search(text))
        if text.strip() and principal is None and not at_scope:
            raise ArmError(
                400, "InvalidFilter", f"The filter '{text}' is not supported for this scope."
            )
        chosen: list[RoleAssignment] = []
        for assignment in self.world.role_assignments:
            if principal and assignment.principal_id.lower() != principal["id"].lower():
                continue
            above = _within(scope, assignment.scope)
            below = _within(assignment.scope, scope)
            if above or (below and not at_scope):
                chosen.append(assignment)
        return sorted(chosen, key=lambda a: a.id)

    def assignments(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        scope = groups["scope"]
        self.authorize(claims, ASSIGNMENTS_READ, scope)
        chosen = self._selected(scope, request.query.get("$filter", ""))
        after = request.query.get("$skipToken")
        if after:
            chosen = [a for a in chosen if a.id > after]
        page, rest = chosen[:PAGE_SIZE], chosen[PAGE_SIZE:]
        body: dict[str, Any] = {"value": [assignment_json(a) for a in page]}
        if rest:
            query = "&".join(
                f"{k}={quote(v, safe='')}" for k, v in request.query.items() if k != "$skipToken"
            )
            body["nextLink"] = (
                f"https://{request.host}{request.path}?{query}&$skipToken={page[-1].id}"
            )
        return self.reply(200, body)

    def definition(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        require_get(request)
        role = role_by_guid(self.world, groups["guid"])
        if role is None:
            raise ArmError(
                404,
                "RoleDefinitionDoesNotExist",
                f"The specified role definition with ID '{groups['guid']}' does not exist.",
            )
        return self.reply(200, self.definition_json(role, groups["sub"]))

    def definitions(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        """``RoleDefinitions_List`` at a scope, filtered by ``roleName`` and ``type``."""
        require_get(request)
        wanted = _role_filter(request.query.get("$filter", ""))
        bodies = [self.definition_json(role, groups["sub"]) for role in roles(self.world)]
        found = [
            body
            for body in bodies
            if all(body["properties"][field].lower() == value for field, value in wanted.items())
        ]
        return self.reply(200, {"value": found})

    def definition_json(self, role: str, subscription_id: str) -> dict[str, Any]:
        """A ``RoleDefinition`` as ARM answers it (``RoleDefinitions_Get`` / ``_List``)."""
        guid = role_guid(role)
        built_in = role in ROLE_ACTIONS
        return {
            "id": f"/subscriptions/{subscription_id}/providers/Microsoft.Authorization/"
            f"roleDefinitions/{guid}",
            "name": guid,
            "type": "Microsoft.Authorization/roleDefinitions",
            "properties": {
                "roleName": role,
                "type": "BuiltInRole" if built_in else "CustomRole",
                "description": f"{role} (sandbox {'built-in' if built_in else 'custom'} role)",
                "assignableScopes": ["/"],
                "permissions": [role_permissions(role, self.world.role_actions(role))],
                "createdOn": None,
                "updatedOn": None,
                "createdBy": None,
                "updatedBy": None,
            },
        }


def _role_filter(text: str) -> dict[str, str]:
    """``roleName eq 'x' and type eq 'BuiltInRole'`` -> {'roleName': 'x', 'type': ...}
    (values lower-cased); ``atScopeAndBelow()`` is dropped; anything else is 400."""
    wanted: dict[str, str] = {}
    if not text.strip():
        return wanted
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        if clause.strip().lower() == "atscopeandbelow()":
            continue
        match = _ROLE_FILTER.match(clause)
        if match is None:
            raise ArmError(
                400, "InvalidFilter", f"The filter '{text}' is not supported for this scope."
            )
        field = "roleName" if match["field"].lower() == "rolename" else "type"
        wanted[field] = match["value"].replace("''", "'").lower()
    return wanted
