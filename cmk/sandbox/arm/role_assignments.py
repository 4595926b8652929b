"""One ARM role assignment: ``RoleAssignments_Create`` / ``_Get`` / ``_Delete`` (api-version
2022-04-01, ``authorization-RoleAssignmentsCalls.json`` of
``specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01`` in
Azure/azure-rest-api-specs) for :mod:`cmk.sandbox.arm.service`; what ``az role assignment
create|delete`` and ``AuthorizationManagementClient.role_assignments`` send::

    PUT|GET|DELETE {scope}/providers/Microsoft.Authorization/roleAssignments/{guid}

``{scope}`` is a subscription, a resource group, a resource, or a key of a vault
(``{vault id}/keys/{key}``, where ``docs/lifecycle.md`` grants an account's identity
*Key Vault Crypto Service Encryption User*); it must exist in the world
(:func:`cmk.sandbox.arm.scopes.require_scope`: 404 ``ResourceGroupNotFound`` /
``ResourceNotFound``). A PUT grants in the world exactly as a scenario's ``roleAssignments``
do (:meth:`World.grant`), so the grant takes effect at once for ARM, Key Vault and the
Cognitive Services key check.

* PUT — body ``{"properties": {"roleDefinitionId", "principalId", "principalType"}}``; 201 with
  the ``RoleAssignment`` (example ``RoleAssignments_CreateForResource.json``), 200 when the
  same assignment is PUT again under its name (a template deployed twice). The same principal,
  role and scope under another name is 409 ``RoleAssignmentExists``; another principal, role
  or scope under an existing name is 400 ``RoleAssignmentUpdateNotPermitted``; a name that is
  not a GUID is 400 ``InvalidRoleAssignmentId``; a role definition the sandbox does not know
  is 400 ``RoleDefinitionDoesNotExist`` and a principal it does not know 400
  ``PrincipalNotFound`` (these two statuses are the sandbox's choice: the spec documents only
  ``default`` errors). Needs ``Microsoft.Authorization/roleAssignments/write``.
* GET — 200 with the assignment, 404 ``RoleAssignmentNotFound`` when none of that name is at
  that scope. Needs ``roleAssignments/read``.
* DELETE — 200 with the deleted assignment, 204 when there is none (as the spec says).
  Needs ``roleAssignments/delete``.

Writes and deletes honour a role's ``notActions`` (:data:`~cmk.sandbox.arm.authorization.
NOT_ACTIONS`): a Contributor cannot grant access, an Owner can. They honour a role's ABAC
condition too (:data:`~cmk.sandbox.arm.authorization.ASSIGNABLE_ROLES`): a Key Vault Data
Access Administrator may grant and revoke the Key Vault data roles and no other, else 403
``AuthorizationFailed`` with ARM's "or an ABAC condition not fulfilled". ``principalType``
is not kept: every assignment answers ``ServicePrincipal``, as the list does.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from cmk.sandbox.arm.authorization import (
    NOT_ACTIONS,
    assignment_json,
    may_assign,
    role_by_guid,
)
from cmk.sandbox.arm.errors import ArmError, authorization_failed, bad_request
from cmk.sandbox.arm.keyvault import Handler, Json
from cmk.sandbox.arm.scopes import require_scope
from cmk.sandbox.platform.context import TokenClaims
from cmk.sandbox.world import RoleAssignment, World, action_allowed

ASSIGNMENT = re.compile(
    r"^(?P<scope>/subscriptions/(?P<sub>[^/]+)(?:/.+?)?)"
    r"/providers/Microsoft\.Authorization/roleAssignments/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
READ = "Microsoft.Authorization/roleAssignments/read"
WRITE = "Microsoft.Authorization/roleAssignments/write"
DELETE = "Microsoft.Authorization/roleAssignments/delete"


def _same_scope(a: str, b: str) -> bool:
    return a.lower().rstrip("/") == b.lower().rstrip("/")


def _covers(assigned_at: str, scope: str) -> bool:
    outer, inner = assigned_at.lower().rstrip("/"), scope.lower().rstrip("/")
    return outer in ("", inner) or inner.startswith(outer + "/")


class RoleAssignmentArm:
    """The one route, over one world."""

    def __init__(self, world: World, reply: Json) -> None:
        self.world = world
        self.reply = reply

    def routes(self) -> list[tuple[re.Pattern[str], Handler]]:
        return [(ASSIGNMENT, self.handle)]

    def allows(
        self, principal_id: str, action: str, scope: str, assigned: str | None = None
    ) -> bool:
        """Whether an assignment of the principal at ``scope`` or above grants ``action``,
        its role does not exclude it (``notActions``) and, for a write or delete of an
        assignment of role ``assigned``, its role's condition admits that role."""
        for held in self.world.role_assignments:
            if held.principal_id != principal_id or not _covers(held.scope, scope):
                continue
            excluded = frozenset(NOT_ACTIONS.get(held.role, ()))
            if (
                action_allowed(self.world.role_actions(held.role), action)
                and not action_allowed(excluded, action)
                and (assigned is None or may_assign(held.role, assigned))
            ):
                return True
        return False

    def _authorize(
        self, claims: TokenClaims, action: str, scope: str, assigned: str | None = None
    ) -> None:
        principal = claims.principal
        if self.allows(principal.object_id, action, scope, assigned):
            return
        if assigned is None:
            raise authorization_failed(principal.client_id, principal.object_id, action, scope)
        raise ArmError(  # the action is granted, but only under a condition this role fails
            403,
            "AuthorizationFailed",
            f"The client '{principal.client_id}' with object id '{principal.object_id}' does"
            " not have authorization or an ABAC condition not fulfilled to perform action"
            f" '{action}' over scope '{scope}' or the scope is invalid. If access was recently"
            " granted, please refresh your credentials.",
        )

    def _find(self, scope: str, name: str) -> RoleAssignment | None:
        return next(
            (
                a
                for a in self.world.role_assignments
                if a.id.lower() == name.lower() and _same_scope(a.scope, scope)
            ),
            None,
        )

    def handle(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], body: bytes
    ) -> web.Response:
        scope, name = groups["scope"].rstrip("/"), groups["name"]
        method = request.method.upper()
        action = {"GET": READ, "PUT": WRITE, "DELETE": DELETE}.get(method)
        if action is None:
            raise ArmError(
                405,
                "MethodNotAllowed",
                f"The requested resource does not support http method '{method}'.",
            )
        _require_guid(name)
        self._authorize(claims, action, scope)
        require_scope(self.world, scope)
        found = self._find(scope, name)
        if method == "GET":
            if found is None:
                raise ArmError(
                    404, "RoleAssignmentNotFound", f"The role assignment '{name}' is not found."
                )
            return self.reply(200, assignment_json(found))
        if method == "DELETE":
            if found is None:
                return web.Response(status=204)
            self._authorize(claims, DELETE, scope, assigned=found.role)
            self.world.role_assignments.remove(found)
            return self.reply(200, assignment_json(found))
        return self._put(claims, scope, name, found, body)

    def _put(
        self,
        claims: TokenClaims,
        scope: str,
        name: str,
        found: RoleAssignment | None,
        body: bytes,
    ) -> web.Response:
        principal_id, role = self._parse(body)
        self._authorize(claims, WRITE, scope, assigned=role)
        if found is not None:
            if found.principal_id.lower() != principal_id.lower() or found.role != role:
                raise bad_request(
                    "RoleAssignmentUpdateNotPermitted",
                    "Tenant ID, application ID, principal ID, and scope are not allowed to be "
                    "updated.",
                )
            return self.reply(200, assignment_json(found))
        for held in self.world.role_assignments:
            if (
                held.principal_id.lower() == principal_id.lower()
                and held.role == role
                and _same_scope(held.scope, scope)
            ):
                raise ArmError(409, "RoleAssignmentExists", "The role assignment already exists.")
        assignment = self.world.grant(principal_id, scope, role)
        assignment.id = name.lower()
        return self.reply(201, assignment_json(assignment))

    def _parse(self, body: bytes) -> tuple[str, str]:
        """The principal's object id (as the world spells it) and the role name of a PUT."""
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            payload = None
        props = payload.get("properties") if isinstance(payload, dict) else None
        if not isinstance(props, dict):
            raise bad_request("InvalidRequestContent", "The request content must hold properties.")
        definition_id, principal_id = props.get("roleDefinitionId"), props.get("principalId")
        if not isinstance(definition_id, str) or not isinstance(principal_id, str):
            raise bad_request(
                "InvalidRequestContent",
                "The request content needs properties.roleDefinitionId and principalId.",
            )
        guid = definition_id.rstrip("/").rsplit("/", 1)[-1]
        role = role_by_guid(self.world, guid)
        if role is None:
            raise bad_request(
                "RoleDefinitionDoesNotExist",
                f"The specified role definition with ID '{guid}' does not exist.",
            )
        known = next((p for p in self.world.principals if p.lower() == principal_id.lower()), None)
        if known is None:
            raise bad_request(
                "PrincipalNotFound",
                f"Principal {principal_id.replace('-', '')} does not exist in the directory "
                f"{self.world.tenant_id}. Check that you have the correct principal ID.",
            )
        return known, role


def _require_guid(name: str) -> None:
    try:
        uuid.UUID(name)
    except ValueError:
        raise bad_request(
            "InvalidRoleAssignmentId",
            f"The role assignment ID '{name}' is not valid. The role assignment ID must be a GUID.",
        ) from None
