"""What the use cases read of one key, with as few Key Vault requests as possible.

:class:`KeyVersions` starts from the key's latest version (one GET). When that version is
bindable it is the target of every move (latest is by definition the newest created), so
only the distinct versions accounts are bound to are read, once each, to judge them.
When it is not bindable every version is listed once and the newest bindable one found.

:func:`decide` runs :func:`cmk.planner.plan` over those versions and then checks each
Move again (target bindable, same key, newer than the bound version): a move that fails
the check becomes a Finding, so no bug upstream can bind a rejected or older version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime

from cmk.errors import NotFound
from cmk.keyid import KeyId
from cmk.planner import (
    Binding,
    Decision,
    Finding,
    FindingKind,
    Move,
    newest_bindable,
    plan,
    version_order,
)
from cmk.policy import KeyVersion, VersionPolicy, evaluate
from cmk.ports import KeyStore
from cmk.usecases.context import task_scope

__all__ = ["KeyVersions", "decide", "newest_bindable"]

log = logging.getLogger(__name__)


class KeyVersions:
    """The versions of one key read so far: latest, and bound versions or the full list."""

    def __init__(
        self, keys: KeyStore, latest: KeyVersion, versions: Iterable[KeyVersion], *, complete: bool
    ) -> None:
        self.keys = keys
        self.latest = latest
        self.key = latest.key_id.versionless()
        self.complete = complete
        self._known: dict[str, KeyVersion] = {v.version: v for v in versions}
        self._known.setdefault(latest.version, latest)
        self._absent: set[str] = set()  # bound versions Key Vault does not have
        self._locks: dict[str, asyncio.Lock] = {}  # one reader per version at a time
        self.requests = 2 if complete else 1  # Key Vault requests made for this key

    @classmethod
    async def load(
        cls,
        keys: KeyStore,
        key: KeyId,
        policy: VersionPolicy,
        now: datetime,
        *,
        list_if_unbindable: bool = True,
    ) -> KeyVersions:
        """Read the latest version; list every version only when latest is not bindable."""
        latest = await keys.latest(key.versionless())
        if not list_if_unbindable or evaluate(latest, policy, now).bindable:
            return cls(keys, latest, [latest], complete=False)
        return cls(keys, latest, await keys.list_versions(key.versionless()), complete=True)

    @property
    def known(self) -> list[KeyVersion]:
        """Every version read so far."""
        return list(self._known.values())

    def get(self, version: str) -> KeyVersion | None:
        """A version already read, if it was."""
        return self._known.get(version)

    def with_latest(self, latest: KeyVersion) -> KeyVersions:
        """The same view after ``latest`` was created."""
        return KeyVersions(self.keys, latest, [*self.known, latest], complete=self.complete)

    def newest_bindable(self, policy: VersionPolicy, now: datetime) -> KeyVersion | None:
        """The newest bindable version among those read (all of them when complete)."""
        return newest_bindable(self._known.values(), policy, now, current=self.latest.version)

    async def covering(self, bindings: Iterable[Binding]) -> list[KeyVersion]:
        """The versions needed to plan ``bindings``: reads each unknown bound version once.

        Concurrent calls share the reads (one lock per version); each call's reads run in
        its own task scope, so a cancelled or failed call leaves no read running.
        """
        if not self.complete:
            wanted = {b.key_id.version for b in bindings if b.key_id.same_key(self.key)}
            missing = [v for v in wanted if v and not self._settled(v)]
            if missing:
                async with task_scope() as group:
                    for version in missing:
                        group.create_task(self._ensure(version))
        return list(self._known.values())

    def _settled(self, version: str) -> bool:
        return version in self._known or version in self._absent

    async def _ensure(self, version: str) -> None:
        async with self._locks.setdefault(version, asyncio.Lock()):
            if not self._settled(version):  # another call may have read it meanwhile
                await self._read(version)

    async def _read(self, version: str) -> None:
        self.requests += 1
        try:
            found = await self.keys.get_version(self.key.with_version(version))
        except NotFound:
            log.warning(
                "bound version %s of %s not found",
                version,
                self.key,
                extra={"cmk_key_id": str(self.key), "cmk_from_version": version},
            )
            self._absent.add(version)
            return
        self._known[found.version] = found


def decide(
    versions: Sequence[KeyVersion],
    bindings: Sequence[Binding],
    policy: VersionPolicy,
    now: datetime,
    *,
    current: str | None = None,
) -> list[Decision]:
    """Plan ``bindings`` over ``versions``, then re-check every Move (see module docstring).
    ``current`` is the key's current version (it wins ties of creation time)."""
    decisions = plan(versions, bindings, policy, now, current=current)
    best = newest_bindable(versions, policy, now, current=current)
    index = {version.key_id: version for version in versions}
    return [
        _checked(d, index.get(d.binding.key_id), best, policy, now, current=current)
        for d in decisions
    ]


def _checked(
    decision: Decision,
    bound: KeyVersion | None,
    best: KeyVersion | None,
    policy: VersionPolicy,
    now: datetime,
    *,
    current: str | None = None,
) -> Decision:
    if not isinstance(decision, Move):
        return decision
    binding, target = decision.binding, decision.target
    verdict = evaluate(target, policy, now, bound_vault=binding.key_id)
    newer = bound is not None and version_order(target, current) > version_order(bound, current)
    if verdict.bindable and newer and target.key_id.same_key(binding.key_id):
        return decision
    log.error(
        "planner proposed moving %s to %s, which is not a newer bindable version of its key",
        binding.account_id,
        target.key_id,
        extra={
            "cmk_account_id": str(binding.account_id),
            "cmk_key_id": str(binding.key_id.versionless()),
            "cmk_from_version": binding.key_id.version,
            "cmk_to_version": target.version,
        },
    )
    if (
        best is not None
        and bound is not None
        and best.key_id.same_key(binding.key_id)
        and version_order(best, current) > version_order(bound, current)
    ):
        reason = f"newer version {best.version} replaces {bound.version}"
        return Move(binding, best, reason, decision.finding)
    kind = decision.finding or FindingKind.NO_VALID_VERSION
    detail = f"no bindable version newer than {binding.key_id.version}"
    return Finding(binding, kind, detail, best)
