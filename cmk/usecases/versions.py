"""Every version of one key and who uses it (``cmk versions``): is it safe to disable?

A version is safe to disable when no account in scope is bound to it, no update to it
is in flight (a PLANNED or SUBMITTED ledger row), and it is not the key's newest valid
version (disabling that would leave the next move without a target). Accounts are found
through the inventory of CMK_SUBSCRIPTIONS, asked for this key's accounts only: accounts
in other subscriptions are not seen, so the answer is only as complete as that scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cmk.keyid import KeyId
from cmk.planner import version_order
from cmk.policy import KeyVersion, evaluate
from cmk.ports import LedgerState
from cmk.resource_id import AccountId
from cmk.usecases.context import Engine
from cmk.usecases.keyview import newest_bindable
from cmk.usecases.subscriptions import subscription_scope

__all__ = ["KeyVersionsReport", "VersionUse", "key_versions"]

_IN_FLIGHT = frozenset({LedgerState.PLANNED, LedgerState.SUBMITTED})


@dataclass(frozen=True)
class VersionUse:
    """One version: its attributes, whether it may be bound, who uses it, and the verdict."""

    version: str
    enabled: bool
    created: datetime
    not_before: datetime | None
    expires: datetime | None
    bindable: bool
    reasons: tuple[str, ...]
    latest: bool
    newest_valid: bool
    accounts: tuple[AccountId, ...]
    in_flight: tuple[AccountId, ...]
    safe_to_disable: bool
    verdict: str


@dataclass(frozen=True)
class KeyVersionsReport:
    """The versions of one key, newest first."""

    key_id: KeyId
    in_scope: bool
    subscriptions: tuple[str, ...]
    newest_valid_version: str | None
    versions: tuple[VersionUse, ...]

    @property
    def unsafe_bindings(self) -> list[VersionUse]:
        """Versions accounts are bound to although they fail the policy."""
        return [v for v in self.versions if v.accounts and not v.bindable]


def _verdict(
    version: KeyVersion,
    bound: list[AccountId],
    moving: list[AccountId],
    newest: bool,
    successor: bool,
) -> tuple[bool, str]:
    """Whether ``version`` is safe to disable, and why; ``successor`` is True when a valid
    version newer than it exists (so a sweep has somewhere to move its accounts)."""
    if bound and successor:
        return False, (
            f"{len(bound)} account(s) use it: move them first ('cmk sweep' moves them to"
            " the newest valid version)"
        )
    if bound:
        return False, (
            f"{len(bound)} account(s) use it and no newer valid version exists: 'cmk rotate'"
            " creates one and moves them"
        )
    if moving:
        return False, f"an update of {len(moving)} account(s) to it is in flight"
    if newest:
        return False, "it is the newest valid version: the next move targets it"
    if not version.enabled:
        return True, "already disabled; no account uses it"
    return True, "no account uses it and a newer valid version exists"


async def key_versions(engine: Engine, key: KeyId) -> KeyVersionsReport:
    """Read every version of ``key`` and the accounts in scope bound to each (no writes)."""
    key = key.versionless()
    subscriptions = (await subscription_scope(engine)).subscriptions
    versions = await engine.keys.list_versions(key)
    current = await engine.keys.latest(key)
    now = engine.now()
    best = newest_bindable(versions, engine.policy, now, current=current.version)

    def newness(version: KeyVersion) -> tuple[datetime, bool, str]:
        return version_order(version, current.version)

    latest = max(versions, key=newness, default=None)
    bound: dict[str, list[AccountId]] = {}
    async for record in engine.inventory.cmk_accounts(subscriptions, key=key):
        binding = record.binding
        if binding is not None and binding.key_id.same_key(key):
            bound.setdefault(binding.key_id.version or "", []).append(record.account_id)
    moving: dict[str, list[AccountId]] = {}
    if engine.settings.storage is not None:
        for entry in await engine.ledger.history(key=key):
            if entry.state in _IN_FLIGHT:
                moving.setdefault(entry.to_version, []).append(entry.account_id)
    uses = []
    for version in sorted(versions, key=newness, reverse=True):
        verdict = evaluate(version, engine.policy, now)
        accounts = sorted(bound.get(version.version, []), key=str)
        newest = best is not None and best.version == version.version
        successor = best is not None and newness(best) > newness(version)
        safe, why = _verdict(version, accounts, moving.get(version.version, []), newest, successor)
        uses.append(
            VersionUse(
                version=version.version,
                enabled=version.enabled,
                created=version.created,
                not_before=version.not_before,
                expires=version.expires,
                bindable=verdict.bindable,
                reasons=tuple(str(reason) for reason in verdict.reasons),
                latest=latest is not None and latest.version == version.version,
                newest_valid=newest,
                accounts=tuple(accounts),
                in_flight=tuple(sorted(moving.get(version.version, []), key=str)),
                safe_to_disable=safe,
                verdict=why,
            )
        )
    return KeyVersionsReport(
        key_id=key,
        in_scope=engine.settings.vault_in_scope(key),
        subscriptions=subscriptions,
        newest_valid_version=best.version if best else None,
        versions=tuple(uses),
    )
