"""Row operations on the ledger table that stay correct when a response is lost.

Every write the engine makes in Table storage goes through :class:`TableRows`:

- :meth:`TableRows.insert_once` inserts a row that carries an owner token. The SDK
  retries a request whose response was lost; the retry then meets our own row (409).
  The row is read back and its token compared, so our own insert is never mistaken for
  someone else's.
- :meth:`TableRows.replace_if` / :meth:`TableRows.delete_if` are conditional on the ETag
  read before: of several writers, exactly one wins, the others learn they lost.

Reads never create the table (a dry run writes nothing); writes create it once.
"""

from __future__ import annotations

from collections.abc import Mapping
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

from cmk.adapters._errors import translate
from cmk.adapters._provision import CreateOnce
from cmk.errors import InvalidInput

__all__ = ["OWNER", "TableRows", "table_key"]

#: The property that names who wrote a row (a per-attempt token).
OWNER = "Owner"
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


class TableRows:
    """Idempotent inserts and ETag-conditional writes over one ``TableClient``."""

    def __init__(self, table_client: TableClient) -> None:
        self._client = table_client
        self._ensure = CreateOnce(f"table {table_client.table_name}", table_client.create_table)

    @property
    def client(self) -> TableClient:
        """The underlying ``TableClient`` (the caller closes it)."""
        return self._client

    async def ensure_table(self) -> None:
        """Create the table unless it exists (once per instance)."""
        await self._ensure()

    async def insert_once(self, entity: dict[str, Any], action: str) -> bool:
        """Insert ``entity``: True if the row is ours (inserted now, or by a lost-response
        retry of this very insert: same :data:`OWNER`), False if someone else's exists."""
        return await self.insert_owned(entity, action) is not None

    async def insert_owned(self, entity: dict[str, Any], action: str) -> str | None:
        """:meth:`insert_once`, answering the ETag of our row (None if it is not ours)."""
        await self.ensure_table()
        try:
            written = await self._client.create_entity(entity)
        except ResourceExistsError:
            owner = entity.get(OWNER)
            if not owner:
                return None
            held = await self.get_row(entity["PartitionKey"], entity["RowKey"], action)
            if held is None or held.get(OWNER) != owner:
                return None
            return str(held.metadata["etag"])
        except AzureError as error:
            raise translate(error, action) from error
        return str(written["etag"])

    async def get_row(self, partition: str, row: str, action: str) -> TableEntity | None:
        """The entity, or None when it (or the whole table) does not exist; never creates."""
        try:
            return await self._client.get_entity(partition, row)
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise translate(error, action) from error

    async def replace_if(
        self, entity: dict[str, Any], held: TableEntity, action: str, *, merge: bool = False
    ) -> bool:
        """Write ``entity`` over ``held`` only if the row is unchanged since it was read:
        True if written, False if another writer changed or deleted it first."""
        etag = str(held.metadata["etag"])
        return await self.replace_at(entity, etag, action, merge=merge) is not None

    async def replace_at(
        self, entity: dict[str, Any], etag: str, action: str, *, merge: bool = False
    ) -> str | None:
        """Write ``entity`` only if the row still has ``etag``: its new ETag, or None if
        another writer changed or deleted it first.

        A 412 can also be our own write: the SDK re-sends an update whose answer was lost,
        and the re-sent one finds the ETag our first one changed. So a 412 re-reads the
        row: if it holds every value ``entity`` wrote (an owner token, a time — values
        no other writer writes), the write was ours and its ETag is answered."""
        try:
            written = await self._client.update_entity(
                entity,
                mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
        except ResourceModifiedError:
            held = await self.get_row(entity["PartitionKey"], entity["RowKey"], action)
            return str(held.metadata["etag"]) if held and _holds(held, entity) else None
        except ResourceNotFoundError:
            return None
        except AzureError as error:
            raise translate(error, action) from error
        return str(written["etag"])

    async def delete_if(self, held: TableEntity, action: str) -> bool:
        """Delete ``held`` only if unchanged since it was read: True if deleted by us."""
        etag = str(held.metadata["etag"])
        return await self.delete_at(held["PartitionKey"], held["RowKey"], etag, action)

    async def delete_at(self, partition: str, row: str, etag: str, action: str) -> bool:
        """Delete the row only if it still has ``etag``: True if deleted by us."""
        try:
            await self._client.delete_entity(
                partition, row, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        except AzureError as error:
            raise translate(error, action) from error
        return True

    async def delete_row(self, partition: str, row: str) -> None:
        """Delete the row; a missing row (or table) is already deleted. Never creates."""
        try:
            await self._client.delete_entity(partition, row)
        except ResourceNotFoundError:
            pass
        except AzureError as error:
            raise translate(error, f"deleting table row {partition}/{row}") from error


def _holds(held: TableEntity, entity: Mapping[str, Any]) -> bool:
    """Whether the row ``held`` has every value ``entity`` would write."""
    return all(
        name in ("PartitionKey", "RowKey") or held.get(name) == value
        for name, value in entity.items()
    )
