"""A per-process cache of key version properties, keyed by version id.

A fan-out of one new version to 400 accounts asks Key Vault about the same two versions
400 times (the target, and the version the accounts are on). The answers cannot differ
except by a change to the version itself — disabled, its dates edited, the key deleted —
so they are kept for a short ``ttl`` and shared by every job of the process: Key Vault is
read once per version, not once per account. Concurrent misses of one version share one
read.

What keeps it safe:

- ``ttl`` bounds how long a change goes unseen (CMK_KEY_CACHE_SECONDS, default 30 s, at
  most 300; 0 turns the cache off): Key Vault emits no event when a version is disabled,
  edited or deleted, so a version disabled after the event is caught before its PATCH
  once the entry is older than that, and no sooner;
- :meth:`VersionCache.forget` drops a key's entries in this process: the event handlers
  call it for every ``KeyNewVersionCreated`` / ``KeyNearExpiry`` / ``KeyExpired`` they
  handle (the jobs of that event mostly run in other instances, whose entries stay), and
  the worker for a PATCH the resource provider refused (a failed bind, or one refused as
  the account's identity being denied the key) before it decides again;
- a version the resource provider refuses to bind is never bound on a cached word alone:
  the provider checks the key itself (``KeyDisabled``), and the worker re-reads.

Reads of the key's latest version and listings are never served from the cache (they are
how new versions are found); what they return refreshes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from cmk.keyid import KeyId
from cmk.policy import KeyVersion

__all__ = ["VersionCache"]


def _slot(key: KeyId) -> str:
    return str(key).lower()


class VersionCache:
    """Version properties for ``ttl`` seconds (monotonic ``clock``), misses coalesced."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, KeyVersion]] = {}
        self._reads: dict[str, asyncio.Future[KeyVersion | None]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def get(self, key: KeyId, read: Callable[[], Awaitable[KeyVersion]]) -> KeyVersion:
        """The version ``key`` names: cached if fresh, else ``read()`` once for all callers."""
        if not self.enabled:
            return await read()
        slot = _slot(key)
        while True:
            entry = self._entries.get(slot)
            if entry is not None and self._clock() - entry[0] < self._ttl:
                self.hits += 1
                return entry[1]
            pending = self._reads.get(slot)
            if pending is None:
                break
            self.hits += 1
            shared = await asyncio.shield(pending)
            if shared is not None:
                return shared
            # The reader was cancelled (its invocation stopped): that is no answer for the
            # others, who read for themselves rather than inherit its cancellation.
        self.misses += 1
        future: asyncio.Future[KeyVersion | None] = asyncio.get_running_loop().create_future()
        self._reads[slot] = future
        try:
            version = await read()
        except asyncio.CancelledError:
            future.set_result(None)
            raise
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: a miss nobody else waited on logs nothing
            raise
        finally:
            self._reads.pop(slot, None)
        self.put(version)
        future.set_result(version)
        return version

    def put(self, version: KeyVersion) -> None:
        """Remember what a fresh read returned."""
        if self.enabled:
            self._entries[_slot(version.key_id)] = (self._clock(), version)

    def forget(self, key: KeyId) -> int:
        """Drop ``key``'s entries (every version of it when ``key`` is versionless);
        returns how many were dropped."""
        if key.version:
            return 1 if self._entries.pop(_slot(key), None) is not None else 0
        prefix = _slot(key.versionless()) + "/"
        stale = [slot for slot in self._entries if slot.startswith(prefix)]
        for slot in stale:
            del self._entries[slot]
        return len(stale)
