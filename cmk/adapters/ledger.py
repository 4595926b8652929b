"""The rotation ledger in Azure Table storage: the :class:`~cmk.ports.Ledger` (aio).

One table holds three kinds of rows, told apart by their partition:

==================  ===========================================  ==========================
rows                PartitionKey                                 RowKey
==================  ===========================================  ==========================
ledger entries      the account id, lowercase, ``/`` -> ``|``    the target key version
claims              ``claim``                                    the claimed name (escaped)
write leases        ``lease``                                    the lease name (escaped)
alerts (outbox)     ``alert|`` + the alert subject (escaped)     ``{to_version or -}|{group}``
==================  ===========================================  ==========================

Claims and leases are :mod:`cmk.adapters.leases`, the alert outbox
:mod:`cmk.adapters.outbox`; every insert is idempotent (:mod:`cmk.adapters.table_rows`).

Table keys may not contain ``/ \\ # ?`` or control characters; :func:`table_key`
escapes them (and ``%``) as ``%XX``, except that account ids use the ``|`` form above
(an ARM id has no ``|``). Queries always pass values as ``@parameters``, which the SDK
escapes: no filter is ever built from unescaped input.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode

from cmk.adapters._errors import azure_errors
from cmk.adapters.leases import LeaseRows
from cmk.adapters.outbox import AlertRows
from cmk.adapters.table_rows import table_key
from cmk.errors import InvalidInput
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId

__all__ = ["TableLedger", "account_partition", "table_key"]

logger = logging.getLogger(__name__)

ENTRY = "entry"


def account_partition(account_id: AccountId) -> str:
    """The PartitionKey of an account's ledger rows: its lowercase id with ``/`` -> ``|``."""
    return str(account_id).lower().replace("/", "|")


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInput(f"ledger row: expected a datetime, got {type(value).__name__}")
    plain = datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo or UTC,
    )
    return plain.astimezone(UTC)


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _to_entity(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "PartitionKey": account_partition(entry.account_id),
        "RowKey": table_key(entry.to_version.lower()),
        "Kind": ENTRY,
        "AccountId": str(entry.account_id),
        "KeyId": str(entry.key_id.versionless()),
        "ToVersion": entry.to_version.lower(),
        "FromVersion": entry.from_version or "",
        "State": entry.state.value,
        "Attempts": int(entry.attempts),
        "Cause": entry.cause or "",
        "Trigger": entry.trigger,
        "Created": entry.created.astimezone(UTC),
        "Updated": entry.updated.astimezone(UTC),
    }


def _from_entity(entity: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        account_id=AccountId.parse(entity["AccountId"]),
        key_id=KeyId.parse(entity["KeyId"]),
        to_version=str(entity["ToVersion"]),
        from_version=_optional(entity.get("FromVersion")),
        state=LedgerState(entity["State"]),
        attempts=int(entity.get("Attempts") or 0),
        cause=_optional(entity.get("Cause")),
        trigger=str(entity.get("Trigger") or ""),
        created=_aware(entity["Created"]),
        updated=_aware(entity["Updated"]),
    )


class TableLedger(LeaseRows, AlertRows):
    """The :class:`~cmk.ports.Ledger` over one Azure table: ledger entries, claims and
    write leases, and the alert outbox.

    Writes create the table on first use if it is missing. Reads never do — a dry run
    writes nothing to storage — so a read of a table that does not exist finds nothing
    (None, [], False), and closing or removing alerts in a missing table closes nothing.
    """

    # --- ledger entries --------------------------------------------------------------

    async def get(self, account_id: AccountId, to_version: str) -> LedgerEntry | None:
        """The row for (account, to_version), or None."""
        action = f"reading the ledger row of {account_id} -> {to_version}"
        entity = await self.get_row(
            account_partition(account_id), table_key(to_version.lower()), action
        )
        return None if entity is None else _from_entity(entity)

    async def record(self, entry: LedgerEntry) -> None:
        """Insert or replace the row for (account, to_version)."""
        await self.ensure_table()
        with azure_errors(f"recording the ledger row of {entry.account_id} -> {entry.to_version}"):
            await self._client.upsert_entity(_to_entity(entry), mode=UpdateMode.REPLACE)

    async def replace_unchanged(self, seen: LedgerEntry, entry: LedgerEntry) -> bool:
        """Replace the row ``seen`` was read from with ``entry`` only if nobody wrote it
        since: read it, compare state and ``Updated``, then an ETag-conditional replace
        (a writer in between makes it False, never overwritten)."""
        action = f"settling the ledger row of {seen.account_id} -> {seen.to_version}"
        row = table_key(seen.to_version.lower())
        held = await self.get_row(account_partition(seen.account_id), row, action)
        if held is None or held.get("State") != seen.state.value:
            return False
        if _aware(held.get("Updated")) != seen.updated.astimezone(UTC):
            return False
        return await self.replace_if(_to_entity(entry), held, action)

    async def record_unchanged(self, seen: LedgerEntry | None, entry: LedgerEntry) -> bool:
        """Write ``entry`` only if its row is still as ``seen`` was read: an insert when
        there was none (409: someone else's row now), else :meth:`replace_unchanged`."""
        if seen is not None:
            return await self.replace_unchanged(seen, entry)
        action = f"recording the ledger row of {entry.account_id} -> {entry.to_version}"
        return await self.insert_once(_to_entity(entry), action)

    async def history(
        self, account_id: AccountId | None = None, key: KeyId | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows of one account, of one key (any version), or all; oldest first."""
        entries = [entry async for entry in self.iter_history(account_id, key)]
        entries.sort(key=lambda entry: (entry.created, str(entry.account_id), entry.to_version))
        return entries

    async def iter_history(
        self,
        account_id: AccountId | None = None,
        key: KeyId | None = None,
        *,
        states: Collection[LedgerState] | None = None,
    ) -> AsyncIterator[LedgerEntry]:
        """Like :meth:`history`, streamed in table order (nothing if there is no table);
        with ``states``, only rows in one of them (filtered by the service: one paged query,
        however many accounts the table holds)."""
        clauses = ["Kind eq @kind"]
        parameters: dict[str, Any] = {"kind": ENTRY}
        if states:
            names = sorted(state.value for state in states)
            clauses.append(
                # spaces around the parentheses: the SDK finds @names between spaces
                "( " + " or ".join(f"State eq @state{i}" for i in range(len(names))) + " )"
            )
            parameters.update({f"state{i}": name for i, name in enumerate(names)})
        if account_id is not None:
            clauses.append("PartitionKey eq @partition")
            parameters["partition"] = account_partition(account_id)
        if key is not None:
            clauses.append("KeyId eq @key")
            parameters["key"] = str(key.versionless())
        pages = self._client.query_entities(" and ".join(clauses), parameters=parameters)
        with azure_errors("reading the ledger history"):
            try:
                async for entity in pages:
                    try:
                        yield _from_entity(entity)
                    except (InvalidInput, KeyError, ValueError) as error:
                        logger.warning(
                            "skipping unreadable ledger row %s/%s: %s",
                            entity.get("PartitionKey"),
                            entity.get("RowKey"),
                            error,
                        )
            except ResourceNotFoundError:  # the table does not exist (yet): no history
                return
