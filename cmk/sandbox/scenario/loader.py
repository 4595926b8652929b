"""Scenario files: a JSON description of a sandbox world (``scenario.schema.json``,
documented in docs/sandbox.md), validated and turned into :class:`~cmk.sandbox.world.World`
objects directly (no HTTP, no events, no real RSA keys), so 10,000 accounts seed in
well under a second.

Every problem names its JSON path: ``$.accounts[3].encryption.key: vault kv1 has no key
'k9'``.

The parts: :mod:`~cmk.sandbox.scenario.files` (schema, reading, validation),
:mod:`~cmk.sandbox.scenario.context` (references and problems while building),
:mod:`~cmk.sandbox.scenario.times` (relative times), one builder module per kind of
entity (:mod:`~cmk.sandbox.scenario.tenancy`, :mod:`~cmk.sandbox.scenario.vaults`,
:mod:`~cmk.sandbox.scenario.accounts`) and :mod:`~cmk.sandbox.scenario.specs` (topics,
faults, the result). Their public names are importable from here.
"""

from __future__ import annotations

from typing import Any

from cmk.sandbox.scenario.accounts import (
    KEY_ACCESS_PERMISSIONS,
    KEY_ACCESS_ROLE,
    add_accounts,
)
from cmk.sandbox.scenario.context import ScenarioContext
from cmk.sandbox.scenario.files import ScenarioError, example_path, load, schema
from cmk.sandbox.scenario.specs import (
    FaultSpec,
    SeededWorld,
    TopicSpec,
    fault_specs,
    topic_specs,
)
from cmk.sandbox.scenario.tenancy import (
    add_identity,
    add_role_assignment,
    add_tenants_and_subscriptions,
)
from cmk.sandbox.scenario.vaults import add_access_policies, add_vault
from cmk.sandbox.world import Principal, World

__all__ = [
    "KEY_ACCESS_PERMISSIONS",
    "KEY_ACCESS_ROLE",
    "FaultSpec",
    "ScenarioError",
    "SeededWorld",
    "TopicSpec",
    "build_world",
    "example_path",
    "load",
    "schema",
]


def _populate(ctx: ScenarioContext) -> None:
    """Build every section in dependency order: principals and vaults before the accounts
    that use them, access policies and role assignments last (they may name accounts)."""
    add_tenants_and_subscriptions(ctx)
    for i, item in enumerate(ctx.doc.get("identities", [])):
        add_identity(ctx, item, f"$.identities[{i}]")
    for i, item in enumerate(ctx.doc.get("vaults", [])):
        add_vault(ctx, item, f"$.vaults[{i}]")
    for i, item in enumerate(ctx.doc.get("accounts", [])):
        add_accounts(ctx, item, f"$.accounts[{i}]")
    for i, item in enumerate(ctx.doc.get("vaults", [])):
        add_access_policies(ctx, item, f"$.vaults[{i}]")
    for i, item in enumerate(ctx.doc.get("roleAssignments", [])):
        add_role_assignment(ctx, item, f"$.roleAssignments[{i}]")


def build_world(
    document: dict[str, Any],
    *,
    tenant_id: str | None = None,
    app: Principal | None = None,
    source: str = "<scenario>",
) -> SeededWorld:
    """A world from a validated scenario document (see :func:`load`); ``app`` is the
    principal that ``"app"`` refers to. Raises ScenarioError naming every problem."""
    world = World(tenant_id=tenant_id)
    if app is not None:
        world.add_principal(app)
    ctx = ScenarioContext(document, world, app)
    with world.lock:
        _populate(ctx)
    if ctx.problems:
        raise ScenarioError(source, ctx.problems)
    topics = topic_specs(ctx)
    faults = fault_specs(document)
    if ctx.problems:
        raise ScenarioError(source, ctx.problems)
    return SeededWorld(
        world=world,
        topics=topics,
        faults=faults,
        throttling=document.get("throttling", True),
        identities=ctx.identities,
    )
