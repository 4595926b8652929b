"""What building a world from a scenario knows so far: the world, the entities declared by
name, and the problems found (``"$.path: problem"``, all collected before failing).

The entity builders (:mod:`~cmk.sandbox.scenario.tenancy`,
:mod:`~cmk.sandbox.scenario.vaults`, :mod:`~cmk.sandbox.scenario.accounts`) resolve the
scenario's references through it: subscriptions by name or id, regions, times, principals
(``app``, ``identity:N``, ``account:N``, a GUID) and scopes (``subscription:``,
``vault:``, ``key:``, ``topic:`` or a resource id).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cmk.sandbox.scenario.times import InvalidTime, scenario_time
from cmk.sandbox.world import Principal, Subscription, UserAssignedIdentity, VaultState, World

_NAMESPACE = uuid.UUID("5d0c8f0e-8a44-4a5b-9a55-2f1f6a8c0c11")


def derived_id(kind: str, name: str) -> str:
    """A GUID that is always the same for the same kind and name."""
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{name}"))


class ScenarioContext:
    """A validated document being turned into a world, collecting problems with paths."""

    def __init__(self, document: dict[str, Any], world: World, app: Principal | None) -> None:
        self.doc = document
        self.world = world
        self.app = app
        self.problems: list[str] = []
        self.now = world.clock.now()
        self.tenants: dict[str, str] = {}
        self.subs: dict[str, Subscription] = {}  # by name and by id (lower)
        self.vaults: dict[str, VaultState] = {}  # by name (lower)
        self.identities: dict[str, UserAssignedIdentity] = {}
        self.account_principals: dict[str, Principal] = {}
        self.regions = set(document.get("regions", []))
        self.key_grants: set[tuple[str, str]] = set()

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def sub(self, ref: str, path: str) -> Subscription | None:
        found = self.subs.get(ref.lower())
        if found is None:
            self.problem(path, f"unknown subscription {ref!r}; declared: {self._sub_names()}")
        return found

    def _sub_names(self) -> list[str]:
        return sorted({s.display_name for s in self.subs.values()})

    def location(self, value: str, path: str) -> str:
        if self.regions and value not in self.regions:
            self.problem(path, f"region {value!r} is not in $.regions {sorted(self.regions)}")
        return value

    def when(self, value: str | None, path: str) -> datetime | None:
        if value is None:
            return None
        try:
            return scenario_time(value, self.now)
        except InvalidTime as problem:
            self.problem(path, str(problem))
            return None

    def principal(self, ref: str, path: str) -> str | None:
        if ref == "app":
            if self.app is None:
                self.problem(path, "'app' needs the sandbox's app identity")
                return None
            return self.app.object_id
        kind, _, name = ref.partition(":")
        if kind == "identity":
            uai = self.identities.get(name.lower())
            if uai is None:
                self.problem(path, f"unknown identity {name!r}")
                return None
            return uai.principal.object_id
        if kind == "account":
            principal = self.account_principals.get(name.lower())
            if principal is None:
                self.problem(path, f"unknown account {name!r} or it has no system identity")
                return None
            return principal.object_id
        try:
            return str(uuid.UUID(ref))
        except ValueError:
            self.problem(path, f"not a principal: {ref!r} (app, identity:N, account:N, a GUID)")
            return None

    def scope(self, ref: str, path: str) -> str | None:
        if ref.startswith("/"):
            return ref
        kind, _, name = ref.partition(":")
        if kind == "subscription":
            s = self.sub(name, path)
            return f"/subscriptions/{s.subscription_id}" if s else None
        if kind == "vault":
            vault = self.vaults.get(name.lower())
            if vault is None:
                self.problem(path, f"unknown vault {name!r}")
                return None
            return vault.resource_id
        if kind == "key":
            vault_name, _, key = name.partition("/")
            vault = self.vaults.get(vault_name.lower())
            if vault is None or key.lower() not in vault.keys:
                self.problem(path, f"unknown key {name!r} (use key:VAULT/KEY)")
                return None
            return f"{vault.resource_id}/keys/{key}"
        if kind == "topic":
            return self._topic_scope(name, path)
        self.problem(path, f"not a scope: {ref!r} (subscription:, vault:, key:, topic:, or /...)")
        return None

    def _topic_scope(self, name: str, path: str) -> str | None:
        for topic in self.doc.get("topics", []):
            if topic["name"].lower() == name.lower():
                s = self.sub(topic["subscription"], path)
                rg = topic.get("resourceGroup", "rg-cmk")
                if s is None:
                    return None
                return (
                    f"/subscriptions/{s.subscription_id}/resourceGroups/{rg}"
                    f"/providers/Microsoft.EventGrid/topics/{topic['name']}"
                )
        self.problem(path, f"unknown topic {name!r}")
        return None
