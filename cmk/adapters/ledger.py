"""The rotation ledger in Azure Table storage: the :class:`~cmk.ports.Ledger` (aio).

One table holds three kinds of rows, told apart by their partition:

==================  ===========================================  ==========================
rows                PartitionKey                                 RowKey
==================  ===========================================  ==========================
ledger entries      the account id, lowercase, ``/`` -> ``|``    the target key version
claims              ``claim``                                    the claimed name (escaped)
open alerts         ``alert|`` + the alert subject (escaped)     ``{to_version or -}|{type}``
==================  ===========================================  ==========================

Table keys may not contain ``/ \\ # ?`` or control characters; :func:`table_key`
escapes them (and ``%``) as ``%XX``, except that account ids use the ``|`` form above
(an ARM id has no ``|``). Queries always pass values as ``@parameters``, which the SDK
escapes: no filter is ever built from unescaped input.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableClient

from cmk.adapters._errors import azure_errors, translate
from cmk.adapters._provision import CreateOnce
from cmk.errors import InvalidInput
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId

__all__ = ["TableLedger", "account_partition", "table_key"]

logger = logging.getLogger(__name__)

ENTRY = "entry"
CLAIM_PARTITION = "claim"
ALERT_PREFIX = "alert|"
_UNSAFE = frozenset("/\\#?%")


def table_key(text: str) -> str:
    """``text`` safe as a PartitionKey / RowKey: ``/ \\ # ? %`` and control characters
    become ``%XX``."""
    out: list[str] = []
    for char in text:
        if char in _UNSAFE or ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        else:
            out.append(char)
    key = "".join(out)
    if len(key.encode("utf-8")) > 1000:
        raise InvalidInput(f"table key too long ({len(key)} characters): {text[:60]!r}...")
    return key


def account_partition(account_id: AccountId) -> str:
    """The PartitionKey of an account's ledger rows: its lowercase id with ``/`` -> ``|``."""
    return str(account_id).lower().replace("/", "|")


def _alert_partition(subject: str) -> str:
    return ALERT_PREFIX + table_key(subject.strip().lower())


def _alert_row(to_version: str, alert_type: str) -> str:
    return table_key(f"{(to_version or '-').lower()}|{alert_type}")


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


class TableLedger:
    """The :class:`~cmk.ports.Ledger` (and alert dedup rows) over one Azure table.

    Writes (:meth:`record`, :meth:`claim`, :meth:`open_alert`) create the table on first
    use if it is missing. Reads never do — a dry run writes nothing to storage — so a
    read of a table that does not exist finds nothing (None, [], False), and closing or
    removing alerts in a missing table closes nothing.
    """

    def __init__(self, table_client: TableClient) -> None:
        self._client = table_client
        self._ensure = CreateOnce(
            f"table {table_client.table_name}",
            table_client.create_table,
        )

    @property
    def client(self) -> TableClient:
        """The underlying ``TableClient`` (the caller closes it)."""
        return self._client

    async def ensure_table(self) -> None:
        """Create the table unless it exists (once per instance)."""
        await self._ensure()

    # --- ledger entries --------------------------------------------------------------

    async def get(self, account_id: AccountId, to_version: str) -> LedgerEntry | None:
        """The row for (account, to_version), or None."""
        action = f"reading the ledger row of {account_id} -> {to_version}"
        entity = await self._get(
            account_partition(account_id), table_key(to_version.lower()), action
        )
        return None if entity is None else _from_entity(entity)

    async def record(self, entry: LedgerEntry) -> None:
        """Insert or replace the row for (account, to_version)."""
        await self.ensure_table()
        with azure_errors(f"recording the ledger row of {entry.account_id} -> {entry.to_version}"):
            await self._client.upsert_entity(_to_entity(entry), mode=UpdateMode.REPLACE)

    async def history(
        self, account_id: AccountId | None = None, key: KeyId | None = None
    ) -> list[LedgerEntry]:
        """Ledger rows of one account, of one key (any version), or all; oldest first."""
        entries = [entry async for entry in self.iter_history(account_id, key)]
        entries.sort(key=lambda entry: (entry.created, str(entry.account_id), entry.to_version))
        return entries

    async def iter_history(
        self, account_id: AccountId | None = None, key: KeyId | None = None
    ) -> AsyncIterator[LedgerEntry]:
        """Like :meth:`history`, streamed in table order (nothing if there is no table)."""
        clauses = ["Kind eq @kind"]
        parameters: dict[str, Any] = {"kind": ENTRY}
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

    # --- claims ----------------------------------------------------------------------

    async def claim(self, name: str, owner: str, *, lease: timedelta | None = None) -> bool:
        """Atomically claim ``name`` (a Table insert): True for exactly one caller.

        With ``lease``, a claim older than the lease (its holder died before finishing)
        can be taken over, also atomically: the replace is conditional on the row's ETag,
        so of several callers taking over at once exactly one wins.
        """
        entity = {
            "PartitionKey": CLAIM_PARTITION,
            "RowKey": table_key(name),
            "Name": name,
            "Owner": owner,
            "Claimed": datetime.now(UTC),
        }
        action = f"claiming {name!r}"
        if await self._insert(entity, action):
            return True
        if lease is None:
            return False
        return await self._take_over(entity, lease, action)

    async def _take_over(self, entity: dict[str, Any], lease: timedelta, action: str) -> bool:
        held = await self._get(CLAIM_PARTITION, entity["RowKey"], action)
        if held is None:
            return await self._insert(entity, action)
        claimed = held.get("Claimed")
        if not isinstance(claimed, datetime) or datetime.now(UTC) - claimed < lease:
            return False
        try:
            await self._client.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=held.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        except AzureError as error:
            raise translate(error, action) from error
        logger.warning(
            "took over claim %r held by %s since %s", entity["Name"], held.get("Owner"), claimed
        )
        return True

    async def release_claim(self, name: str) -> None:
        """Drop the claim ``name`` (e.g. when its work failed before doing anything), so the
        next caller can claim it again. Dropping a claim nobody holds does nothing."""
        await self._delete(CLAIM_PARTITION, table_key(name))

    async def claim_owner(self, name: str) -> str | None:
        """Who holds the claim ``name``, or None if nobody does."""
        entity = await self._get(CLAIM_PARTITION, table_key(name), f"reading claim {name!r}")
        return None if entity is None else str(entity.get("Owner") or "")

    # --- alert dedup rows ------------------------------------------------------------

    async def open_alert(
        self, dedup_key: tuple[str, str, str], details: Mapping[str, str] | None = None
    ) -> bool:
        """Record an open alert for ``(subject, to_version, type)``: True if it was not open."""
        await self.ensure_table()
        subject, to_version, alert_type = dedup_key
        entity: dict[str, Any] = {
            **{name: value for name, value in (details or {}).items() if name[0].isupper()},
            "PartitionKey": _alert_partition(subject),
            "RowKey": _alert_row(to_version, alert_type),
            "Kind": "alert",
            "Subject": subject,
            "ToVersion": to_version.lower(),
            "AlertType": alert_type,
            "Opened": datetime.now(UTC),
        }
        return await self._insert(entity, f"opening alert {alert_type} for {subject}")

    async def remove_alert(self, dedup_key: tuple[str, str, str]) -> None:
        """Forget one open alert (e.g. when publishing it failed, so a retry publishes)."""
        subject, to_version, alert_type = dedup_key
        await self._delete(_alert_partition(subject), _alert_row(to_version, alert_type))

    async def is_alert_open(self, dedup_key: tuple[str, str, str]) -> bool:
        """Whether an alert with this dedup key is open."""
        subject, to_version, alert_type = dedup_key
        partition, row = _alert_partition(subject), _alert_row(to_version, alert_type)
        return await self._get(partition, row, f"reading alert {alert_type}") is not None

    async def close_alerts(self, subject: str, to_version: str | None = None) -> int:
        """Close the open alerts of ``subject`` (only those for ``to_version`` when given);
        returns how many were closed (none if there is no table)."""
        clauses = ["PartitionKey eq @partition"]
        parameters: dict[str, Any] = {"partition": _alert_partition(subject)}
        if to_version is not None:
            clauses.append("ToVersion eq @version")
            parameters["version"] = to_version.lower()
        pages = self._client.query_entities(
            " and ".join(clauses), parameters=parameters, select=["PartitionKey", "RowKey"]
        )
        with azure_errors(f"listing the open alerts of {subject}"):
            try:
                rows = [(entity["PartitionKey"], entity["RowKey"]) async for entity in pages]
            except ResourceNotFoundError:  # no table, so no open alert
                return 0
        for partition, row in rows:
            await self._delete(partition, row)
        return len(rows)

    # --- helpers ---------------------------------------------------------------------

    async def _insert(self, entity: dict[str, Any], action: str) -> bool:
        """Insert ``entity``: True if inserted, False if the row exists (409)."""
        await self.ensure_table()
        try:
            await self._client.create_entity(entity)
        except ResourceExistsError:
            return False
        except AzureError as error:
            raise translate(error, action) from error
        return True

    async def _get(self, partition: str, row: str, action: str) -> TableEntity | None:
        """The entity, or None when it (or the whole table) does not exist; never creates."""
        try:
            return await self._client.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise translate(error, action) from error

    async def _delete(self, partition: str, row: str) -> None:
        """Delete the row; a missing row (or table) is already deleted. Never creates."""
        try:
            await self._client.delete_entity(partition, row)
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            raise translate(error, f"deleting table row {partition}/{row}") from error
