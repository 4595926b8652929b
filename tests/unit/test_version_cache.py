"""The per-process cache of key version properties (pure: a fake clock and fake reads)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from cmk.adapters.version_cache import VersionCache
from cmk.keyid import KeyId
from cmk.policy import KeyVersion

VAULT = "https://kv1.vault.azure.net"


def _version(name: str, version: str, *, enabled: bool = True) -> KeyVersion:
    return KeyVersion(
        key_id=KeyId(VAULT, name, version),
        kty="RSA",
        size=2048,
        key_ops=frozenset({"wrapKey", "unwrapKey"}),
        enabled=enabled,
        not_before=None,
        expires=None,
        created=datetime(2026, 12, 1, tzinfo=UTC),
        recovery_level="Recoverable",
    )


class Reads:
    """Counts reads and answers with whatever ``answer`` is now."""

    def __init__(self, answer: KeyVersion) -> None:
        self.answer = answer
        self.count = 0

    async def __call__(self) -> KeyVersion:
        self.count += 1
        await asyncio.sleep(0)
        return self.answer


class TestVersionCache:
    async def test_fresh_entry_is_served_until_the_ttl(self) -> None:
        """Within the TTL one read serves every caller; past it, the next caller reads."""
        now = [0.0]
        cache = VersionCache(30.0, clock=lambda: now[0])
        key = KeyId(VAULT, "cmk", "a" * 32)
        reads = Reads(_version("cmk", "a" * 32))
        for _ in range(5):
            await cache.get(key, reads)
        assert reads.count == 1
        now[0] = 29.9
        await cache.get(key, reads)
        assert reads.count == 1
        now[0] = 30.0
        reads.answer = _version("cmk", "a" * 32, enabled=False)
        assert (await cache.get(key, reads)).enabled is False
        assert reads.count == 2

    async def test_concurrent_misses_share_one_read(self) -> None:
        """A hundred jobs asking at once for an uncached version cost one read."""
        cache = VersionCache(30.0, clock=lambda: 0.0)
        key = KeyId(VAULT, "cmk", "b" * 32)
        reads = Reads(_version("cmk", "b" * 32))
        results = await asyncio.gather(*(cache.get(key, reads) for _ in range(100)))
        assert reads.count == 1 and len({r.version for r in results}) == 1

    async def test_failed_read_is_not_cached(self) -> None:
        """A read that fails reaches every waiting caller, and the next caller reads again."""
        cache = VersionCache(30.0, clock=lambda: 0.0)
        key = KeyId(VAULT, "cmk", "c" * 32)

        async def failing() -> KeyVersion:
            raise RuntimeError("vault down")

        with pytest.raises(RuntimeError):
            await cache.get(key, failing)
        reads = Reads(_version("cmk", "c" * 32))
        await cache.get(key, reads)
        assert reads.count == 1

    async def test_forget_drops_one_version_or_the_whole_key(self) -> None:
        """forget(versioned) drops that version; forget(versionless) every version of the
        key and none of another key whose name starts the same."""
        cache = VersionCache(30.0, clock=lambda: 0.0)
        for name, version in (("cmk", "a" * 32), ("cmk", "b" * 32), ("cmk2", "a" * 32)):
            cache.put(_version(name, version))
        assert cache.forget(KeyId(VAULT, "cmk", "a" * 32)) == 1
        assert cache.forget(KeyId(VAULT, "cmk")) == 1
        assert cache.forget(KeyId(VAULT, "cmk2")) == 1

    async def test_zero_ttl_turns_it_off(self) -> None:
        """With ttl 0 every call reads."""
        cache = VersionCache(0.0)
        key = KeyId(VAULT, "cmk", "d" * 32)
        reads = Reads(_version("cmk", "d" * 32))
        await cache.get(key, reads)
        await cache.get(key, reads)
        assert reads.count == 2

    async def test_a_cancelled_reader_does_not_cancel_the_others(self) -> None:
        """The job reading a version is cancelled mid-read (its host stops it): the jobs
        waiting for that read are not cancelled with it; one of them reads instead."""
        cache = VersionCache(30.0, clock=lambda: 0.0)
        key = KeyId(VAULT, "cmk", "e" * 32)
        started, release = asyncio.Event(), asyncio.Event()

        async def slow() -> KeyVersion:
            started.set()
            await release.wait()
            return _version("cmk", "e" * 32)

        reader = asyncio.create_task(cache.get(key, slow))
        await started.wait()
        reads = Reads(_version("cmk", "e" * 32))
        waiters = [asyncio.create_task(cache.get(key, reads)) for _ in range(3)]
        await asyncio.sleep(0)  # the waiters park on the reader's read
        reader.cancel()
        results = await asyncio.gather(*waiters)
        assert reader.cancelled()
        assert [r.version for r in results] == ["e" * 32] * 3
        assert reads.count == 1  # the first waiter read; the others shared its answer
