"""Who is who in a scenario: tenants, subscriptions, user-assigned managed identities,
and role assignments.

Unnamed ids are derived from names (:func:`~cmk.sandbox.scenario.context.derived_id`), so
the same scenario always yields the same subscription, tenant and identity ids; the first
tenant is the world's own.
"""

from __future__ import annotations

from typing import Any

from cmk.sandbox.scenario.context import ScenarioContext, derived_id
from cmk.sandbox.world import Principal, Subscription, UserAssignedIdentity


def add_tenants_and_subscriptions(ctx: ScenarioContext) -> None:
    """``$.tenants`` (one ``main`` tenant when absent) and ``$.subscriptions``."""
    tenants = ctx.doc.get("tenants") or [{"name": "main"}]
    for i, tenant in enumerate(tenants):
        default = ctx.world.tenant_id if i == 0 else derived_id("tenant", tenant["name"])
        ctx.tenants[tenant["name"].lower()] = tenant.get("id", default)
    for i, item in enumerate(ctx.doc.get("subscriptions", [])):
        tenant_name = item.get("tenant", tenants[0]["name"]).lower()
        tenant_id = ctx.tenants.get(tenant_name)
        if tenant_id is None:
            ctx.problem(f"$.subscriptions[{i}].tenant", f"unknown tenant {tenant_name!r}")
            tenant_id = ctx.world.tenant_id
        sub_id = item.get("id", derived_id("subscription", item["name"])).lower()
        s = Subscription(sub_id, tenant_id, item["name"])
        ctx.world.subscriptions[sub_id] = s
        ctx.subs[item["name"].lower()] = s
        ctx.subs[sub_id] = s


def add_identity(ctx: ScenarioContext, item: dict[str, Any], path: str) -> None:
    """A user-assigned identity (``$.identities[i]``) and its principal."""
    s = ctx.sub(item["subscription"], f"{path}.subscription")
    if s is None:
        return
    rg = item.get("resourceGroup", "rg-identities")
    resource_id = (
        f"/subscriptions/{s.subscription_id}/resourceGroups/{rg}"
        f"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{item['name']}"
    )
    principal = Principal(
        derived_id("identity-oid", resource_id.lower()),
        derived_id("identity-client", resource_id.lower()),
        s.tenant_id,
        item["name"],
    )
    ctx.world.add_principal(principal)
    ctx.identities[item["name"].lower()] = UserAssignedIdentity(resource_id, principal)


def add_role_assignment(ctx: ScenarioContext, item: dict[str, Any], path: str) -> None:
    """A role assignment (``$.roleAssignments[i]``) of a principal at a scope."""
    pid = ctx.principal(item["principal"], f"{path}.principal")
    scope = ctx.scope(item["scope"], f"{path}.scope")
    if pid and scope:
        try:
            ctx.world.grant(pid, scope, item["role"])
        except ValueError as exc:
            ctx.problem(f"{path}.role", str(exc))
