"""TableLedger against Azurite through the real SDK."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from adapter_world import RG, SUB
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient, TableServiceClient

from cmk.adapters import leases
from cmk.adapters.ledger import TableLedger, account_partition, table_key
from cmk.adapters.outbox import DELIVERY_LEASE, AlertRow, AlertState
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId
from cmk.wiring import Services

KEY = KeyId("https://kv1.vault.azure.net", "cmk")
OTHER_KEY = KeyId("https://kv1.vault.azure.net", "other")
T0 = datetime(2030, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)


def _entry(
    name: str = "acct", to_version: str = "a" * 32, key: KeyId = KEY, **changes: object
) -> LedgerEntry:
    fields: dict[str, object] = {
        "account_id": AccountId(SUB, RG, name),
        "key_id": key,
        "to_version": to_version,
        "from_version": "0" * 32,
        "state": LedgerState.SUBMITTED,
        "attempts": 1,
        "cause": None,
        "trigger": "evt-1",
        "created": T0,
        "updated": T0 + timedelta(minutes=1),
        **changes,
    }
    return LedgerEntry(**fields)  # type: ignore[arg-type]


async def _open(ledger: TableLedger, key: tuple[str, str, str]) -> bool:
    """Record an alert in the outbox and mark it delivered (an open alert): True if it
    was not recorded before."""
    row = AlertRow(key, "event-1", f"CmkRotator.{key[2]}", key[0], {})
    owner = uuid.uuid4().hex
    if await ledger.record_alert(key, row, owner, T0) is not AlertState.NEW:
        return False
    assert await ledger.take_delivery(key, owner, T0) is not None
    assert await ledger.finish_delivery(key, owner, T0, sent=True)
    return True


class TestTableKeys:
    def test_account_partition_has_no_slash(self) -> None:
        """An account's partition key is its lowercase id with '/' replaced by '|'."""
        partition = account_partition(AccountId(SUB, "RG-AI", "Acct"))
        assert "/" not in partition
        assert (
            partition == f"|subscriptions|{SUB}|resourcegroups|rg-ai|providers|"
            "microsoft.cognitiveservices|accounts|acct"
        )

    def test_table_key_escapes_forbidden_characters(self) -> None:
        """'/', '\\', '#', '?', '%' and control characters are escaped, reversibly distinct."""
        assert table_key("a/b\\c#d?e%f\tg") == "a%2Fb%5Cc%23d%3Fe%25f%09g"
        assert table_key("a%2Fb") != table_key("a/b")


class TestTableLedger:
    async def test_record_then_get(self, services: Services) -> None:
        """A recorded entry reads back equal, with timezone-aware datetimes."""
        entry = _entry(cause="KeyDisabled: nope")
        await services.ledger.record(entry)
        found = await services.ledger.get(entry.account_id, entry.to_version)
        assert found == entry
        assert found is not None and found.created.tzinfo is not None

    async def test_get_missing_is_none(self, services: Services) -> None:
        """A row that was never recorded reads as None."""
        assert await services.ledger.get(AccountId(SUB, RG, "ghost"), "a" * 32) is None

    async def test_record_replaces(self, services: Services) -> None:
        """Recording the same (account, version) again replaces the row."""
        await services.ledger.record(_entry())
        await services.ledger.record(_entry(state=LedgerState.SUCCEEDED, attempts=2))
        found = await services.ledger.get(AccountId(SUB, RG, "acct"), "a" * 32)
        assert found is not None
        assert (found.state, found.attempts) == (LedgerState.SUCCEEDED, 2)
        assert len(await services.ledger.history()) == 1

    async def test_record_unchanged_writes_only_over_what_was_read(
        self, services: Services
    ) -> None:
        """record_unchanged inserts a row that was absent, replaces one as it was read, and
        refuses (False, nothing overwritten) when another writer got there first."""
        ledger = services.ledger
        planned = _entry(state=LedgerState.PLANNED)
        assert await ledger.record_unchanged(None, planned) is True
        assert await ledger.record_unchanged(None, planned) is False  # it exists now
        seen = await ledger.get(planned.account_id, planned.to_version)
        assert seen is not None
        other = _entry(state=LedgerState.SUCCEEDED, updated=T0 + timedelta(minutes=5))
        await ledger.record(other)  # another run settles it meanwhile
        again = _entry(state=LedgerState.PLANNED, updated=T0 + timedelta(minutes=6))
        assert await ledger.record_unchanged(seen, again) is False
        kept = await ledger.get(planned.account_id, planned.to_version)
        assert kept is not None and kept.state is LedgerState.SUCCEEDED
        assert await ledger.record_unchanged(kept, again) is True

    async def test_history_by_account_key_and_all(self, services: Services) -> None:
        """history() filters by account, by key, by both, and skips claim and alert rows."""
        await services.ledger.record(_entry("one", "a" * 32))
        await services.ledger.record(_entry("one", "b" * 32, created=T0 + timedelta(hours=1)))
        await services.ledger.record(_entry("two", "a" * 32))
        await services.ledger.record(_entry("two", "c" * 32, key=OTHER_KEY))
        await services.ledger.claim("near-expiry:x", "worker-1")
        await _open(services.ledger, ("sub", "a" * 32, "binding_stale"))
        one = await services.ledger.history(AccountId(SUB, RG, "one"))
        assert [e.to_version for e in one] == ["a" * 32, "b" * 32]
        by_key = await services.ledger.history(key=KEY.with_version("d" * 32))
        assert {(e.account_id.name, e.to_version) for e in by_key} == {
            ("one", "a" * 32),
            ("one", "b" * 32),
            ("two", "a" * 32),
        }
        both = await services.ledger.history(AccountId(SUB, RG, "two"), OTHER_KEY)
        assert [e.to_version for e in both] == ["c" * 32]
        assert len(await services.ledger.history()) == 4

    async def test_concurrent_claims_have_one_winner(self, services: Services) -> None:
        """Ten workers claiming the same name at once: exactly one gets True."""
        name = "near-expiry:https://kv1.vault.azure.net/keys/cmk/" + "a" * 32
        results = await asyncio.gather(
            *(services.ledger.claim(name, f"worker-{index}") for index in range(10))
        )
        assert results.count(True) == 1
        winner = f"worker-{results.index(True)}"
        assert await services.ledger.claim_owner(name) == winner
        assert await services.ledger.claim(name, "late") is False

    async def test_claim_within_its_lease_is_kept(self, services: Services) -> None:
        """A fresh claim is not taken over, even by a caller that offers a lease."""
        assert await services.ledger.claim("leased", "first") is True
        assert await services.ledger.claim("leased", "second", lease=timedelta(hours=1)) is False
        assert await services.ledger.claim_owner("leased") == "first"

    async def test_expired_claim_is_taken_over_by_exactly_one(self, services: Services) -> None:
        """Once a claim outlives its lease (its holder died), one of many callers takes it."""
        assert await services.ledger.claim("stale", "dead-worker") is True
        table = services.ledger.client
        [row] = [e async for e in table.query_entities("Owner eq 'dead-worker'")]
        row["Claimed"] = datetime.now(UTC) - timedelta(hours=1)
        await table.update_entity(row)
        results = await asyncio.gather(
            *(
                services.ledger.claim("stale", f"worker-{index}", lease=timedelta(minutes=10))
                for index in range(6)
            )
        )
        assert results.count(True) == 1
        assert await services.ledger.claim_owner("stale") == f"worker-{results.index(True)}"

    async def test_released_claim_can_be_claimed_again(self, services: Services) -> None:
        """After release_claim(), the next claim wins again."""
        assert await services.ledger.claim("job", "first") is True
        await services.ledger.release_claim("job")
        assert await services.ledger.claim_owner("job") is None
        assert await services.ledger.claim("job", "second") is True

    async def test_open_and_close_alerts(self, services: Services) -> None:
        """record_alert records once per key; close_alerts removes a subject's alerts."""
        subject = str(AccountId(SUB, RG, "acct"))
        assert await _open(services.ledger, (subject, "a" * 32, "binding_stale")) is True
        assert await _open(services.ledger, (subject, "a" * 32, "binding_stale")) is False
        assert await _open(services.ledger, (subject, "b" * 32, "binding_stale")) is True
        assert await _open(services.ledger, ("other", "a" * 32, "binding_stale")) is True
        assert await services.ledger.close_alerts(subject, "a" * 32) == 1
        assert await services.ledger.is_alert_open((subject, "b" * 32, "binding_stale"))
        assert await services.ledger.close_alerts(subject) == 1
        assert await services.ledger.is_alert_open(("other", "a" * 32, "binding_stale"))

    async def test_filters_escape_quotes(self, services: Services) -> None:
        """A subject with OData syntax in it matches nothing and closes nothing else."""
        await _open(services.ledger, ("victim", "", "binding_stale"))
        sneaky = "x' or PartitionKey ne '"
        assert await services.ledger.close_alerts(sneaky) == 0
        assert await services.ledger.is_alert_open(("victim", "", "binding_stale"))

    async def test_creates_the_table(self, azurite: str) -> None:
        """A ledger on a table that does not exist creates it on first use."""
        async with TableClient.from_connection_string(azurite, "ledgerfresh") as client:
            ledger = TableLedger(client)
            await ledger.record(_entry())
            assert await ledger.get(AccountId(SUB, RG, "acct"), "a" * 32) is not None
            await client.delete_table()

    async def test_reads_never_create_the_table(self, azurite: str) -> None:
        """Every read of a ledger whose table does not exist finds nothing and creates
        nothing (a dry run writes no storage); closing alerts there closes none."""
        name = f"ledgerread{uuid.uuid4().hex[:8]}"
        account = AccountId(SUB, RG, "acct")
        alert = (str(account), "a" * 32, "binding_stale")
        async with TableClient.from_connection_string(azurite, name) as client:
            ledger = TableLedger(client)
            assert await ledger.get(account, "a" * 32) is None
            assert await ledger.history() == []
            assert await ledger.history(account, KEY) == []
            assert await ledger.claim_owner("job") is None
            assert await ledger.is_alert_open(alert) is False
            assert await ledger.close_alerts(str(account)) == 0
            await ledger.remove_alert(alert)
            await ledger.release_claim("job")
        async with TableServiceClient.from_connection_string(azurite) as service:
            tables = [table.name async for table in service.list_tables()]
        assert name not in tables

    async def test_writes_create_the_table(self, azurite: str) -> None:
        """A claim and an alert on a ledger without a table create it and succeed."""
        name = f"ledgerwrite{uuid.uuid4().hex[:8]}"
        async with TableClient.from_connection_string(azurite, name) as client:
            ledger = TableLedger(client)
            assert await _open(ledger, ("subject", "", "binding_stale")) is True
            assert await ledger.claim("job", "me") is True
            assert await ledger.is_alert_open(("subject", "", "binding_stale"))
            await client.delete_table()


NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TTL = timedelta(minutes=5)


class TestIdempotentInserts:
    """A 409 on an insert is read back: our own row (a lost response retried) is ours."""

    async def test_lost_response_retry_keeps_our_claim(self, services: Services) -> None:
        """The second insert of the same claim by the same owner (what the SDK's retry of a
        request whose response was lost does) is still a win, and another owner loses."""
        name = f"lost-{uuid.uuid4().hex[:6]}"
        assert await services.ledger.claim(name, "token-a") is True
        assert await services.ledger.claim(name, "token-a") is True  # the retried insert
        assert await services.ledger.claim(name, "token-b") is False

    async def test_lost_response_retry_keeps_our_takeover(self, services: Services) -> None:
        """A claim taken over after its lease, whose answer was lost: the SDK's re-sent
        update meets 412 (our own write changed the ETag) and is still a win; another
        taker of the old claim loses."""
        name = f"takeover-{uuid.uuid4().hex[:6]}"
        ledger = services.ledger
        assert await ledger.claim(name, "dead", lease=timedelta(minutes=1), now=T0)
        held = await ledger.get_row(leases.CLAIM_PARTITION, table_key(name), "test")
        assert held is not None
        later = T0 + timedelta(minutes=2)
        ours = {**held, leases.OWNER: "token-a", "Claimed": later}
        assert await ledger.replace_if(ours, held, "test")
        assert await ledger.replace_if(ours, held, "test")  # the re-sent update: 412, ours
        theirs = {**held, leases.OWNER: "token-b", "Claimed": later}
        assert not await ledger.replace_if(theirs, held, "test")
        assert await ledger.claim_owner(name) == "token-a"

    async def test_lost_response_retry_keeps_our_alert_new(self, services: Services) -> None:
        """An alert row re-inserted by its own writer stays NEW (logged and delivered once)."""
        key = (f"acct-{uuid.uuid4().hex[:6]}", "a" * 32, "account_failure")
        row = AlertRow(key, "e1", "CmkRotator.account_update_failed", key[0], {})
        assert await services.ledger.record_alert(key, row, "w1", T0) is AlertState.NEW
        assert await services.ledger.record_alert(key, row, "w1", T0) is AlertState.NEW
        assert await services.ledger.record_alert(key, row, "w2", T0) is AlertState.PENDING


class TestClosingAlerts:
    async def test_closing_never_drops_an_alert_still_pending(self, services: Services) -> None:
        """Closing a subject's alerts — by cause group (a sweep) or all of them (a
        success) — leaves one not yet delivered: a recorded failure reaches the topic
        even if the account was repaired since; once sent, it is closed."""
        subject = f"https://kv{uuid.uuid4().hex[:6]}.vault.azure.net/keys/k"
        key = (subject, "a" * 32, "version_rejected")
        row = AlertRow(key, "e1", "CmkRotator.version_rejected", subject, {})
        ledger = services.ledger
        assert await ledger.record_alert(key, row, "w1", T0) is AlertState.NEW
        assert await ledger.close_alerts(subject, groups=["version_rejected"]) == 0
        assert await ledger.close_alerts(subject) == 0
        assert await ledger.take_delivery(key, "w2", T0) is not None
        assert await ledger.finish_delivery(key, "w2", T0, sent=True)
        assert await ledger.close_alerts(subject) == 1

    async def test_only_the_deliverer_marks_a_delivery(self, services: Services) -> None:
        """A worker whose delivery was taken over (its lease ran out) cannot mark the row:
        the new deliverer's publish decides."""
        subject = f"acct-{uuid.uuid4().hex[:6]}"
        key = (subject, "a" * 32, "account_failure")
        row = AlertRow(key, "e1", "CmkRotator.account_update_failed", subject, {})
        ledger = services.ledger
        await ledger.record_alert(key, row, "w1", T0)
        assert await ledger.take_delivery(key, "slow", T0) is not None
        later = T0 + DELIVERY_LEASE + timedelta(seconds=1)
        assert await ledger.take_delivery(key, "fast", later) is not None
        assert not await ledger.finish_delivery(key, "slow", later, sent=True)
        assert [k async for k in ledger.pending_alerts() if k == key] == [key]
        assert await ledger.finish_delivery(key, "fast", later, sent=True)
        assert [k async for k in ledger.pending_alerts() if k == key] == []


class TestWriteLeases:
    """One writer per account: a lease is granted to one owner until it expires."""

    async def test_one_holder_at_a_time(self, services: Services) -> None:
        """Of ten concurrent requests exactly one is granted; the others learn who holds it."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        grants = await asyncio.gather(
            *(services.ledger.acquire_lease(name, f"job-{i}", NOW, TTL) for i in range(10))
        )
        winners = [grant for grant in grants if grant.granted]
        assert len(winners) == 1
        assert all(g.holder == winners[0].holder for g in grants if not g.granted)
        assert all(g.expires == NOW + TTL for g in grants)

    async def test_released_lease_is_free(self, services: Services) -> None:
        """After release, the next job is granted at once; a stranger cannot release it."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        assert (await services.ledger.acquire_lease(name, "a", NOW, TTL)).granted
        await services.ledger.release_lease(name, "b")  # not b's: nothing happens
        assert not (await services.ledger.acquire_lease(name, "c", NOW, TTL)).granted
        await services.ledger.release_lease(name, "a")
        assert (await services.ledger.acquire_lease(name, "c", NOW, TTL)).granted

    async def test_expired_lease_is_taken_over_and_the_old_holder_cannot_renew(
        self, services: Services
    ) -> None:
        """A holder that stalled past its expiry loses the lease: the taker is granted,
        and the stalled holder's renew (right before its PATCH) answers False."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        assert (await services.ledger.acquire_lease(name, "stalled", NOW, TTL)).granted
        assert not (await services.ledger.acquire_lease(name, "b", NOW + TTL / 2, TTL)).granted
        later = NOW + TTL + timedelta(seconds=1)
        assert (await services.ledger.acquire_lease(name, "b", later, TTL)).granted
        assert await services.ledger.renew_lease(name, "stalled", later, TTL) is False
        assert await services.ledger.renew_lease(name, "b", later, TTL) is True
        await services.ledger.release_lease(name, "stalled")  # not its lease any more
        assert not (await services.ledger.acquire_lease(name, "c", later, TTL)).granted

    async def test_renew_and_release_are_one_request_each(
        self, services: Services, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The holder remembers its lease's ETag: renewing and releasing do not read the
        row first (2 Table requests per job, not 4)."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        assert (await services.ledger.acquire_lease(name, "a", NOW, TTL)).granted
        reads = _count_reads(services, monkeypatch)
        assert await services.ledger.renew_lease(name, "a", NOW + TTL / 2, TTL) is True
        await services.ledger.release_lease(name, "a")
        assert reads == []
        assert (await services.ledger.acquire_lease(name, "c", NOW, TTL)).granted

    async def test_renew_after_a_lost_response_is_still_ours(self, services: Services) -> None:
        """Our own write whose response was lost left the row with an ETag we never saw:
        the conditional renew misses (412), the row is read, and it is still ours."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        assert (await services.ledger.acquire_lease(name, "a", NOW, TTL)).granted
        row = {"PartitionKey": "lease", "RowKey": table_key(name), "Expires": NOW + TTL}
        await services.ledger.client.update_entity(row, mode=UpdateMode.MERGE)  # "lost" write
        assert await services.ledger.renew_lease(name, "a", NOW + TTL / 2, TTL) is True
        assert not (await services.ledger.acquire_lease(name, "b", NOW + TTL, TTL)).granted
        await services.ledger.release_lease(name, "a")
        assert (await services.ledger.acquire_lease(name, "b", NOW + TTL, TTL)).granted

    async def test_a_taken_over_lease_is_neither_renewed_nor_released(
        self, services: Services
    ) -> None:
        """With a remembered ETag that is stale because another job took the lease over,
        the old holder's renew answers False and its release leaves the new holder's row."""
        name = f"account|{uuid.uuid4().hex[:6]}"
        other = TableLedger(services.ledger.client)  # another instance of the app
        assert (await services.ledger.acquire_lease(name, "stalled", NOW, TTL)).granted
        later = NOW + TTL + timedelta(seconds=1)
        assert (await other.acquire_lease(name, "b", later, TTL)).granted
        assert await services.ledger.renew_lease(name, "stalled", later, TTL) is False
        await services.ledger.release_lease(name, "stalled")
        held = await services.ledger.client.get_entity("lease", table_key(name))
        assert held["Owner"] == "b"
        assert await other.renew_lease(name, "b", later, TTL) is True

    async def test_remembered_etags_are_bounded(
        self, services: Services, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Leases kept to expiry are never released here: the process remembers at most
        HELD_ETAGS of them, the oldest forgotten (a forgotten one costs a read, no more)."""
        monkeypatch.setattr(leases, "HELD_ETAGS", 3)
        names = [f"account|{uuid.uuid4().hex[:6]}" for _ in range(5)]
        for name in names:
            assert (await services.ledger.acquire_lease(name, "kept", NOW, TTL)).granted
        assert len(services.ledger._held) == 3
        assert await services.ledger.renew_lease(names[0], "kept", NOW, TTL) is True


def _count_reads(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every point read of the ledger table from now on."""
    reads: list[str] = []
    client = services.ledger.client
    real = client.get_entity

    async def spy(*args: Any, **kwargs: Any) -> Any:
        reads.append(str(args))
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "get_entity", spy)
    return reads


class TestNoticeClaims:
    """A claim records what its work created, and is then never taken over."""

    async def test_completed_claim_is_kept(self, services: Services) -> None:
        """complete_claim records the created version; even past the lease nobody takes it."""
        name = f"notice-{uuid.uuid4().hex[:6]}"
        assert await services.ledger.claim(name, "w1", lease=TTL, now=NOW)
        assert await services.ledger.complete_claim(name, "w1", "v" * 32) is True
        later = NOW + TTL * 10
        assert await services.ledger.claim(name, "w2", lease=TTL, now=later) is False
        record = await services.ledger.claim_record(name)
        assert record is not None and record.created_version == "v" * 32
        assert await services.ledger.complete_claim(name, "w2", "x" * 32) is False


class TestOpenRows:
    """One filtered query finds the rows of given states, whatever else the table holds."""

    async def test_iter_history_by_state(self, services: Services) -> None:
        """Rows in the asked states come back; others, claims and alerts do not."""
        tag = uuid.uuid4().hex[:6]
        states = list(LedgerState)
        for index, state in enumerate(states):
            await services.ledger.record(_entry(f"{tag}-{index}", state=state))
        await services.ledger.claim(f"claim-{tag}", "w1")
        await _open(services.ledger, (f"{tag}-0", "a" * 32, "account_failure"))
        wanted = {LedgerState.PLANNED, LedgerState.SUBMITTED, LedgerState.FAILED}

        found = [
            entry
            async for entry in services.ledger.iter_history(states=wanted)
            if entry.account_id.name.startswith(tag)
        ]

        assert sorted(e.state.value for e in found) == sorted(s.value for s in wanted)
