"""TableLedger against Azurite through the real SDK."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from adapter_world import RG, SUB
from azure.data.tables.aio import TableClient, TableServiceClient

from cmk.adapters.ledger import TableLedger, account_partition, table_key
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

    async def test_history_by_account_key_and_all(self, services: Services) -> None:
        """history() filters by account, by key, by both, and skips claim and alert rows."""
        await services.ledger.record(_entry("one", "a" * 32))
        await services.ledger.record(_entry("one", "b" * 32, created=T0 + timedelta(hours=1)))
        await services.ledger.record(_entry("two", "a" * 32))
        await services.ledger.record(_entry("two", "c" * 32, key=OTHER_KEY))
        await services.ledger.claim("near-expiry:x", "worker-1")
        await services.ledger.open_alert(("sub", "a" * 32, "binding_stale"))
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
        """open_alert is True once per key; close_alerts removes a subject's alerts."""
        subject = str(AccountId(SUB, RG, "acct"))
        assert await services.ledger.open_alert((subject, "a" * 32, "binding_stale")) is True
        assert await services.ledger.open_alert((subject, "a" * 32, "binding_stale")) is False
        assert await services.ledger.open_alert((subject, "b" * 32, "binding_stale")) is True
        assert await services.ledger.open_alert(("other", "a" * 32, "binding_stale")) is True
        assert await services.ledger.close_alerts(subject, "a" * 32) == 1
        assert await services.ledger.is_alert_open((subject, "b" * 32, "binding_stale"))
        assert await services.ledger.close_alerts(subject) == 1
        assert await services.ledger.is_alert_open(("other", "a" * 32, "binding_stale"))

    async def test_filters_escape_quotes(self, services: Services) -> None:
        """A subject with OData syntax in it matches nothing and closes nothing else."""
        await services.ledger.open_alert(("victim", "", "binding_stale"))
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
            assert await ledger.open_alert(("subject", "", "binding_stale")) is True
            assert await ledger.claim("job", "me") is True
            assert await ledger.is_alert_open(("subject", "", "binding_stale"))
            await client.delete_table()
