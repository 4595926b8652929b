"""fan_out and key_versions: one key's accounts only, and nothing left running on failure."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from usecase_rig import SUB_A, SUB_B, TEST_OPTIONS, Rig

from cmk.adapters.inventory import ResourceGraphInventory
from cmk.adapters.jobqueue import decode_job
from cmk.errors import CmkError
from cmk.keyid import KeyId
from cmk.ports import AccountRecord
from cmk.resource_id import AccountId
from cmk.sandbox.resourcegraph.service import graph_for
from cmk.sandbox.world import KeyEventType
from cmk.usecases import Engine, on_new_version, rotate_account, sweep
from cmk.usecases.fanout import fan_out
from cmk.usecases.keyview import KeyVersions
from cmk.usecases.versions import key_versions
from cmk.wiring import Services

GRAPH_PATH = "Microsoft.ResourceGraph/resources"
#: Bounds a hang of a condition wait; decides nothing.
HANG_SECONDS = 60.0


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


def _graph_posts(rig: Rig) -> int:
    """Resource Graph queries answered — not counting the sandbox's own per-user quota 429s
    (its window runs on the real clock and is shared with the tests before: a retry of one
    is not a page)."""
    counters = rig.estate.sandbox.counters
    records = counters.matching(host="management.azure.com", path=GRAPH_PATH, method="POST")
    return sum(1 for record in records if not (record.status == 429 and record.fault is None))


def _paged(rig: Rig, page_size: int) -> Engine:
    """The rig's engine over a Resource Graph inventory with small pages."""
    inventory = ResourceGraphInventory(rig.services.inventory.client, page_size=page_size)
    return replace(rig.engine, inventory=inventory)


def _spy_queries(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The KQL of every Resource Graph request body the sandbox receives."""
    graph = graph_for(rig.world)
    answer = graph.query
    seen: list[str] = []

    def query(principal_id: str, request: object) -> dict[str, Any]:
        if isinstance(request, dict):
            seen.append(str(request.get("query")))
        return answer(principal_id, request)

    monkeypatch.setattr(graph, "query", query)
    return seen


class _FaultAfterFirstRecord:
    """The real inventory; ``arm`` runs when its first record arrives (so the next Resource
    Graph page is fetched with the fault in place)."""

    def __init__(self, inner: ResourceGraphInventory, arm: Callable[[], object]) -> None:
        self.inner = inner
        self.arm = arm

    async def cmk_accounts(
        self, subscriptions: Sequence[str], key: KeyId | None = None
    ) -> AsyncIterator[AccountRecord]:
        armed = False
        async for record in self.inner.cmk_accounts(subscriptions, key):
            if not armed:
                self.arm()
                armed = True
            yield record


class TestFanOutScope:
    async def test_inventory_failing_mid_stream_leaves_nothing_running(self, rig: Rig) -> None:
        """Resource Graph fails on the page after the first while a chunk is being planned:
        fan_out raises, no task is left running, and nothing is enqueued afterwards."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        for i in range(400):
            estate.account(f"mid{i:03d}", estate.kv, old.version, sub=(SUB_A, SUB_B)[i % 2])
        estate.version(estate.kv)  # the new latest version, the target of every move
        faults = estate.sandbox.faults
        engine = rig.engine
        key = KeyId.from_parts(estate.kv.url, "cmk")
        view = await KeyVersions.load(engine.keys, key, engine.policy, engine.now())
        # the chunk's read of the bound version is still out when the next page fails: it
        # is held in the sandbox until the test ends, whatever the machine's load
        release = threading.Event()
        faults.add(host="*.vault.azure.net", path=f"/keys/cmk/{old.version}", hold=release)
        inventory = ResourceGraphInventory(rig.services.inventory.client, page_size=300)

        def arm() -> None:
            faults.add(host="management.azure.com", path=GRAPH_PATH, method="POST", status=503)

        failing = replace(engine, inventory=_FaultAfterFirstRecord(inventory, arm))

        try:
            with pytest.raises(CmkError):
                await fan_out(failing, view, "event-1")
        finally:
            release.set()

        current = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not current] == []
        assert await rig.queue_length() == 0


class TestCovering:
    async def test_cancelled_reader_does_not_break_a_concurrent_one(self, rig: Rig) -> None:
        """Two chunks need the same unknown version; cancelling the first mid-read leaves
        no read running and the second still gets the version."""
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        first = estate.account("first", estate.kv, old.version)
        second = estate.account("second", estate.kv, old.version, sub=SUB_B)
        estate.version(estate.kv)
        engine = rig.engine
        key = KeyId.from_parts(estate.kv.url, "cmk")
        view = await KeyVersions.load(engine.keys, key, engine.policy, engine.now())
        release = threading.Event()
        held = estate.sandbox.faults.add(  # only the first read, until the test ends
            host="*.vault.azure.net", path=f"/keys/cmk/{old.version}", hold=release, count=1
        )
        records = [
            await engine.accounts.get(AccountId.parse(a.resource_id)) for a in (first, second)
        ]
        bindings = [r.binding for r in records if r.binding is not None]

        cancelled = asyncio.create_task(view.covering(bindings[:1]))
        try:
            await _until(lambda: held.hits == 1, "the first call reading the version")
            surviving = asyncio.create_task(view.covering(bindings[1:]))
            lock = view._locks[old.version]
            await _until(lambda: bool(lock._waiters), "the second call waiting for that read")
            cancelled.cancel()
            versions = await surviving
        finally:
            release.set()

        assert old.version in {v.version for v in versions}
        assert cancelled.cancelled()
        current = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not current] == []


class TestKeyFilter:
    async def test_event_reads_pages_in_proportion_to_its_key(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With 3 keys of 120 accounts each (and the same key name on another vault), an
        event for one key asks Resource Graph for that key only: 3 pages of 50, not 8."""
        estate = rig.estate
        created = estate.world.clock.now() - timedelta(days=1)
        for key in ("k1", "k2", "k3"):
            old = estate.version(estate.kv, key, created=created)
            for i in range(120):
                sub = (SUB_A, SUB_B)[i % 2]
                estate.account(f"{key}-{i:03d}", estate.kv, old.version, key=key, sub=sub)
        twin = estate.version(estate.hsm, "k1", kty="RSA-HSM", created=created)
        estate.account("twin", estate.hsm, twin.version, key="k1", sub=SUB_B)
        new = estate.version(estate.kv, "k1")
        queries = _spy_queries(rig, monkeypatch)
        estate.sandbox.counters.reset()

        report = await on_new_version(
            _paged(rig, 50), estate.event(KeyEventType.NEW_VERSION, estate.kv, new, key="k1")
        )

        assert report.enqueued == 120
        assert {str(m.account_id).rsplit("/", 1)[-1][:3] for m in report.moves} == {"k1-"}
        assert _graph_posts(rig) == 3  # ceil(120 / 50); the whole estate would take 8
        assert len(set(queries)) == 1
        assert f"keyVaultUri =~ '{estate.kv.url}/'" in queries[0]
        assert "keyName =~ 'k1'" in queries[0]

    async def test_key_versions_lists_only_that_keys_accounts(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """``cmk versions`` asks Resource Graph for the key's accounts, not the estate's."""
        estate = rig.estate
        mine = estate.version(estate.kv, "k1")
        other = estate.version(estate.kv, "k2")
        for i in range(30):
            estate.account(f"mine{i:02d}", estate.kv, mine.version, key="k1")
            estate.account(f"other{i:02d}", estate.kv, other.version, key="k2")
        queries = _spy_queries(rig, monkeypatch)
        estate.sandbox.counters.reset()

        report = await key_versions(_paged(rig, 10), KeyId.from_parts(estate.kv.url, "k1"))

        (use,) = [v for v in report.versions if v.version == mine.version]
        assert len(use.accounts) == 30
        assert _graph_posts(rig) == 3  # 30 rows of this key; the estate's 60 take 6
        assert all("keyName =~ 'k1'" in query for query in queries)


class TestJobsArePointers:
    """A job names its account and target, nothing the worker would trust: a worker in
    another process (another instance, its own cold cache) reads each version it judges
    from Key Vault once — the target and the bound version — and its cache serves the
    rest of that fan-out's jobs."""

    @pytest.mark.parametrize("producer", ["event", "sweep"])
    async def test_another_process_reads_each_version_once(self, rig: Rig, producer: str) -> None:
        estate = rig.estate
        old = estate.version(estate.kv, created=estate.world.clock.now() - timedelta(days=1))
        accounts = [estate.account(f"acct-c{i}", estate.kv, old.version) for i in range(6)]
        new = estate.version(estate.kv)
        if producer == "event":
            event = estate.event(KeyEventType.NEW_VERSION, estate.kv, new)
            enqueued = (await on_new_version(rig.engine, event)).enqueued
        else:
            enqueued = (await sweep(rig.engine)).enqueued
        assert enqueued == len(accounts)
        counters = estate.sandbox.counters
        vault = f"{estate.kv.name}.vault.azure.net"

        async with Services.from_settings(rig.engine.settings, options=TEST_OPTIONS) as other:
            elsewhere = replace(rig.engine, keys=other.keys)  # another instance's cache
            before = counters.matching(host=vault, path="/keys/", method="GET")
            reports = await _work(rig, elsewhere)
            read = counters.matching(host=vault, path="/keys/", method="GET")[len(before) :]

        assert sorted(report.result.value for report in reports) == ["succeeded"] * len(accounts)
        assert [a.encryption.key_version for a in accounts] == [new.version] * len(accounts)
        answered = sorted(r.path.rsplit("/", 1)[-1] for r in read if r.status == 200)
        assert answered == sorted([old.version, new.version])
        rig.check_invariants()


async def _work(rig: Rig, engine: Engine) -> list[Any]:
    """Run every queued job once with ``engine`` (another instance's worker)."""
    client = rig.services.jobs.client
    reports = []
    while messages := [m async for m in client.receive_messages(max_messages=32)]:
        for message in messages:
            reports.append(await rotate_account(engine, decode_job(message.content)))
            await client.delete_message(message)
    return reports
