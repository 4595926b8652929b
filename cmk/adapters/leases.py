"""Claims and write leases: the ledger table's rows that decide who may act.

==================  ==========  ===========================================================
rows                Partition   what they hold
==================  ==========  ===========================================================
claims              ``claim``   ``Owner``, ``Claimed``, and once done ``Created`` (the
                                version a near-expiry notice created)
write leases        ``lease``   ``Owner`` (one token per job run) and ``Expires``
==================  ==========  ===========================================================

A claim is taken once and kept: it is the memory that a piece of work (a near-expiry
notice) was done, and what it produced. A lease is held for a while and released: one
writer per account from its deciding read to its verify. Both are won by an insert, and
taken over (when the holder died: past ``lease`` / ``Expires``) by an ETag-conditional
replace, so of several contenders exactly one wins. Times come from the caller's clock.
A lease's holder remembers its ETag: renewing and releasing are one conditional request
each, and a row changed since (taken over) makes them read it before deciding.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity
from azure.data.tables.aio import TableClient

from cmk.adapters._errors import azure_errors
from cmk.adapters.table_rows import OWNER, TableRows, table_key
from cmk.ports import ClaimRecord, LeaseGrant

__all__ = ["CLAIM_PARTITION", "LEASE_PARTITION", "LeaseRows"]

logger = logging.getLogger(__name__)

CLAIM_PARTITION = "claim"
LEASE_PARTITION = "lease"
#: Keys a sweep could not read for a transient reason, with since when (cmk.usecases.sweep).
UNREADABLE_PARTITION = "unreadable"
#: How many held leases' ETags one process remembers at most.
HELD_ETAGS = 4096


def _time(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class LeaseRows(TableRows):
    """Claims (kept) and write leases (held, then released) in the ledger table."""

    def __init__(self, table_client: TableClient) -> None:
        super().__init__(table_client)
        #: The ETag of each lease this process holds, by (name, owner token): renewing or
        #: releasing it is one conditional request, not a read and a write. Only a miss
        #: (412/404: taken over, or a lost response hid our own write) reads the row.
        self._held: dict[tuple[str, str], str] = {}

    def _remember(self, name: str, owner: str, etag: str) -> None:
        """Keep a held lease's ETag; the oldest are forgotten past :data:`HELD_ETAGS`
        (leases kept to expiry are never released here: forgetting one only costs a read)."""
        self._held.pop((name, owner), None)
        self._held[(name, owner)] = etag
        while len(self._held) > HELD_ETAGS:
            self._held.pop(next(iter(self._held)))

    @staticmethod
    def _row(name: str) -> str:
        return table_key(name)

    # --- claims ----------------------------------------------------------------------

    async def claim(
        self,
        name: str,
        owner: str,
        *,
        lease: timedelta | None = None,
        now: datetime | None = None,
        done_after: timedelta | None = None,
    ) -> bool:
        """Atomically claim ``name`` (a Table insert): True for exactly one caller.

        With ``lease``, a claim older than the lease whose work is not recorded as done
        (its holder died before finishing) can be taken over, also atomically; with
        ``done_after``, a claim whose work is done can be, once older than that (a
        cool-down that ran out). Of several callers taking over, exactly one wins.
        """
        now = now or datetime.now(UTC)
        entity: dict[str, Any] = {
            "PartitionKey": CLAIM_PARTITION,
            "RowKey": self._row(name),
            "Name": name,
            OWNER: owner,
            "Claimed": now,
        }
        action = f"claiming {name!r}"
        if await self.insert_once(entity, action):
            return True
        if lease is None and done_after is None:
            return False
        held = await self.get_row(CLAIM_PARTITION, entity["RowKey"], action)
        if held is None:
            return await self.insert_once(entity, action)
        claimed = _time(held.get("Claimed"))
        wait = done_after if held.get("Created") else lease
        if claimed is None or wait is None or now - claimed < wait:
            return False
        if not await self.replace_if(entity, held, action):
            return False
        logger.warning("took over claim %r held by %s since %s", name, held.get(OWNER), claimed)
        return True

    async def claim_record(self, name: str) -> ClaimRecord | None:
        """The claim ``name`` as recorded, or None if nobody holds it."""
        held = await self.get_row(CLAIM_PARTITION, self._row(name), f"reading claim {name!r}")
        if held is None:
            return None
        return ClaimRecord(
            owner=str(held.get(OWNER) or ""),
            claimed=_time(held.get("Claimed")) or datetime.min.replace(tzinfo=UTC),
            created_version=str(held.get("Created") or "") or None,
        )

    async def refresh_claim(self, name: str, owner: str, now: datetime) -> bool:
        """Restart a claim still at work: its ``Claimed`` becomes ``now``, so a takeover
        waits a whole lease from here. False if ``owner`` no longer holds it (taken over)
        or its work is recorded done — conditional on the row read, so a takeover racing
        this refresh wins or loses as a whole."""
        action = f"refreshing claim {name!r}"
        held = await self.get_row(CLAIM_PARTITION, self._row(name), action)
        if held is None or held.get(OWNER) != owner or held.get("Created"):
            return False
        update = {"PartitionKey": CLAIM_PARTITION, "RowKey": held["RowKey"]}
        return await self.replace_if(
            {**update, OWNER: owner, "Claimed": now}, held, action, merge=True
        )

    async def complete_claim(self, name: str, owner: str, created_version: str) -> bool:
        """Record what the claim's work produced; False if ``owner`` no longer holds it."""
        action = f"completing claim {name!r}"
        held = await self.get_row(CLAIM_PARTITION, self._row(name), action)
        if held is None or held.get(OWNER) != owner:
            return False
        update = {"PartitionKey": CLAIM_PARTITION, "RowKey": held["RowKey"]}
        return await self.replace_if(
            {**update, OWNER: owner, "Created": created_version}, held, action, merge=True
        )

    async def release_claim(self, name: str, owner: str | None = None) -> None:
        """Drop the claim ``name`` (its work failed before doing anything), so the next
        caller can claim it again — with ``owner``, only while that owner still holds it.
        Dropping a claim nobody holds does nothing."""
        if owner is None:
            await self.delete_row(CLAIM_PARTITION, self._row(name))
            return
        action = f"releasing claim {name!r}"
        held = await self.get_row(CLAIM_PARTITION, self._row(name), action)
        if held is not None and held.get(OWNER) == owner:
            await self.delete_if(held, action)

    async def claim_owner(self, name: str) -> str | None:
        """Who holds the claim ``name``, or None if nobody does."""
        record = await self.claim_record(name)
        return None if record is None else record.owner

    # --- write leases ----------------------------------------------------------------

    async def acquire_lease(
        self, name: str, owner: str, now: datetime, ttl: timedelta, *, purpose: str = ""
    ) -> LeaseGrant:
        """Take the lease ``name`` for ``ttl`` unless another live holder has it.
        ``purpose`` (what the holder is doing) is told to whoever finds the lease held."""
        entity = self._lease(name, owner, now + ttl, purpose)
        action = f"taking the write lease {name!r}"
        etag = await self.insert_owned(entity, action)
        if etag is None:
            held = await self.get_row(LEASE_PARTITION, entity["RowKey"], action)
            if held is not None:
                return await self._take_over(entity, held, now, action)
            etag = await self.insert_owned(entity, action)  # released meanwhile
            if etag is None:
                return LeaseGrant(False, "", now + ttl, purpose)
        self._remember(name, owner, etag)
        return LeaseGrant(True, owner, now + ttl, purpose)

    async def _take_over(
        self, entity: dict[str, Any], held: TableEntity, now: datetime, action: str
    ) -> LeaseGrant:
        holder = str(held.get(OWNER) or "")
        expires = _time(held.get("Expires")) or now
        purpose = str(held.get("Purpose") or "")
        if holder != entity[OWNER] and expires > now:
            return LeaseGrant(False, holder, expires, purpose)
        etag = await self.replace_at(entity, str(held.metadata["etag"]), action)
        if etag is None:
            return LeaseGrant(False, "", expires, purpose)
        if holder != entity[OWNER]:
            logger.warning(
                "took over write lease %r of %s (expired %s)", entity["Name"], holder, expires
            )
        self._remember(entity["Name"], entity[OWNER], etag)
        return LeaseGrant(True, entity[OWNER], entity["Expires"], entity["Purpose"])

    async def renew_lease(self, name: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        """Extend our lease (right before a write): False if it is no longer ours."""
        action = f"renewing the write lease {name!r}"
        row = self._row(name)
        # The owner is written too (unchanged): a 412 that was our own lost write is
        # told from another holder's row by it (TableRows.replace_at).
        expires = {
            "PartitionKey": LEASE_PARTITION,
            "RowKey": row,
            OWNER: owner,
            "Expires": now + ttl,
        }
        etag = self._held.get((name, owner))
        if etag is not None:
            etag = await self.replace_at(expires, etag, action, merge=True)
        if etag is None:
            held = await self.get_row(LEASE_PARTITION, row, action)
            if held is None or held.get(OWNER) != owner:
                self._held.pop((name, owner), None)
                return False
            etag = await self.replace_at(expires, str(held.metadata["etag"]), action, merge=True)
            if etag is None:
                self._held.pop((name, owner), None)
                return False
        self._remember(name, owner, etag)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease back if it is still ours (never someone else's)."""
        action = f"releasing the write lease {name!r}"
        row = self._row(name)
        etag = self._held.pop((name, owner), None)
        if etag is not None and await self.delete_at(LEASE_PARTITION, row, etag, action):
            return
        held = await self.get_row(LEASE_PARTITION, row, action)
        if held is not None and held.get(OWNER) == owner:
            await self.delete_if(held, action)

    def _lease(self, name: str, owner: str, expires: datetime, purpose: str) -> dict[str, Any]:
        return {
            "PartitionKey": LEASE_PARTITION,
            "RowKey": self._row(name),
            "Name": name,
            OWNER: owner,
            "Expires": expires.astimezone(UTC),
            "Purpose": purpose,
        }

    # --- unreadable keys ---------------------------------------------------------------

    async def unreadable_keys(self) -> dict[str, datetime]:
        """Every key a sweep could not read for a transient reason, by versionless id
        (lowercase), with the time it was first found so (one query; none if no table)."""
        pages = self.client.query_entities(
            "PartitionKey eq @partition",
            parameters={"partition": UNREADABLE_PARTITION},
            select=["Key", "Since"],
        )
        found: dict[str, datetime] = {}
        with azure_errors("listing the keys found unreadable"):
            try:
                async for entity in pages:
                    since = _time(entity.get("Since"))
                    if entity.get("Key") and since is not None:
                        found[str(entity["Key"]).lower()] = since
            except ResourceNotFoundError:
                return {}
        return found

    async def note_unreadable(self, key: str, since: datetime) -> None:
        """Record that ``key`` has been unreadable since ``since`` (kept if recorded)."""
        entity = {
            "PartitionKey": UNREADABLE_PARTITION,
            "RowKey": self._row(key.lower()),
            "Key": key.lower(),
            "Since": since.astimezone(UTC),
        }
        await self.insert_once(entity, f"noting {key} unreadable")

    async def clear_unreadable(self, key: str) -> None:
        """Forget that ``key`` was unreadable (it was read again)."""
        await self.delete_row(UNREADABLE_PARTITION, self._row(key.lower()))
