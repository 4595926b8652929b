"""Role assignments and role definitions from ARM ``Microsoft.Authorization`` (2022-04-01).

There is no ``azure-mgmt-authorization`` in this product's dependencies, so the two reads go
through an ARM management client's ``send_request`` (its pipeline: bearer token for the
cloud's ARM scope, retries, user agent)::

    GET {scope}/providers/Microsoft.Authorization/roleAssignments
        ?$filter=principalId eq '{id}'&api-version=2022-04-01   (at, above and below scope)
    GET {roleDefinitionId}?api-version=2022-04-01              (permissions[]: data and control)

:meth:`RoleAssignments.grants_for` keeps the assignments at the scope or above it and
returns each with its role's data actions and control-plane actions (role definitions are
read once per process).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from azure.core.exceptions import HttpResponseError
from azure.core.rest import AsyncHttpResponse, HttpRequest

from cmk.adapters._errors import azure_errors
from cmk.lifecycle.model import RoleGrant

__all__ = ["API_VERSION", "RoleAssignments", "within_scope"]

API_VERSION = "2022-04-01"
_MAX_PAGES = 50


class RequestSender(Protocol):
    """Anything with an ARM pipeline's ``send_request`` (every azure-mgmt client)."""

    def send_request(
        self, request: HttpRequest, *, stream: bool = False, **kwargs: Any
    ) -> Awaitable[AsyncHttpResponse]: ...


def within_scope(scope: str, assignment_scope: str) -> bool:
    """True when a role assigned at ``assignment_scope`` applies to ``scope`` (same or above)."""
    inner, outer = scope.lower().rstrip("/"), assignment_scope.lower().rstrip("/")
    return outer in ("", "/") or inner == outer or inner.startswith(outer + "/")


@dataclass(frozen=True)
class _Definition:
    """What a role definition grants, as read once per process."""

    name: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...]
    actions: tuple[str, ...]
    not_actions: tuple[str, ...]


class RoleAssignments:
    """Reads role assignments at a scope and their role definitions through ARM.

    ``sender_for(subscription_id)`` returns a management client whose pipeline is used.
    """

    def __init__(self, sender_for: Callable[[str], RequestSender]) -> None:
        self._sender_for = sender_for
        self._definitions: dict[str, _Definition] = {}

    async def _get(self, subscription: str, url: str, action: str) -> dict[str, Any]:
        with azure_errors(action):
            response = await self._sender_for(subscription).send_request(HttpRequest("GET", url))
            await response.read()
            if response.status_code >= 400:
                raise HttpResponseError(response=response)
            body = json.loads(response.text())
        return body if isinstance(body, dict) else {}

    async def grants_for(self, principal_id: str, scope: str) -> list[RoleGrant]:
        """The principal's role assignments that apply at ``scope`` (at it or above), each with
        its role's data actions and control-plane actions."""
        subscription = scope.split("/")[2]
        query = quote(f"principalId eq '{principal_id}'", safe="")
        url: str | None = (
            f"{scope}/providers/Microsoft.Authorization/roleAssignments"
            f"?$filter={query}&api-version={API_VERSION}"
        )
        raw: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            if url is None:
                break
            page = await self._get(subscription, url, f"listing role assignments at {scope}")
            raw.extend(item for item in page.get("value", []) if isinstance(item, dict))
            next_link = page.get("nextLink")
            url = next_link if isinstance(next_link, str) and next_link else None
        grants = []
        for item in raw:
            props = item.get("properties") or {}
            assigned_at = str(props.get("scope") or "")
            if str(props.get("principalId", "")).lower() != principal_id.lower():
                continue
            if not within_scope(scope, assigned_at):
                continue
            role = await self._definition(subscription, str(props.get("roleDefinitionId") or ""))
            grants.append(
                RoleGrant(
                    assignment_id=str(item.get("id") or ""),
                    role_name=role.name,
                    scope=assigned_at,
                    principal_id=principal_id.lower(),
                    data_actions=role.data_actions,
                    not_data_actions=role.not_data_actions,
                    condition=props.get("condition") or None,
                    actions=role.actions,
                    not_actions=role.not_actions,
                )
            )
        return grants

    async def _definition(self, subscription: str, definition_id: str) -> _Definition:
        key = definition_id.rsplit("/", 1)[-1].lower()
        cached = self._definitions.get(key)
        if cached is not None:
            return cached
        url = f"{definition_id}?api-version={API_VERSION}"
        body = await self._get(subscription, url, f"reading role definition {definition_id}")
        props = body.get("properties") or {}
        permissions = [p for p in props.get("permissions") or [] if isinstance(p, dict)]

        def joined(name: str) -> tuple[str, ...]:
            return tuple(str(a) for p in permissions for a in p.get(name) or [])

        found = _Definition(
            name=str(props.get("roleName") or key),
            data_actions=joined("dataActions"),
            not_data_actions=joined("notDataActions"),
            actions=joined("actions"),
            not_actions=joined("notActions"),
        )
        self._definitions[key] = found
        return found
