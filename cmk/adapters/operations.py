"""HTTP operations in Table storage and on a Storage queue: the
:class:`~cmk.ports.OperationStore` (aio).

An operation lives in the ledger table (the app's state table) in two kinds of rows:

=================  ==============================  ==========================================
rows               PartitionKey                    RowKey
=================  ==============================  ==========================================
the operation      ``operation``                   its id (32 hex digits)
its answer         ``operation|`` + its id         ``{result token}|{chunk number, 5 digits}``
=================  ==============================  ==========================================

The answer is the JSON document the call would have answered directly, gzip-compressed
and cut into binary properties of at most 48 KiB (Table storage allows 64 KiB per
property and 1 MiB per entity), :data:`CHUNKS_PER_ROW` per row: a 100,000-account status
document (tens of MB of JSON, a few MB compressed) is a handful of rows. The chunk rows
are written first and the operation row names them (``Result``, ``Chunks``) last, with
an ETag-conditional write, so a reader never sees half an answer and of two workers that
finish the same operation (a redelivered message) the first one's answer stays.

The queue message is ``{"v": 1, "id": ..., "kind": ...}``, base64 as Functions expects
(:func:`~cmk.adapters.jobqueue.message_policies`). :func:`decode_operation_message` is
strict, as :func:`~cmk.adapters.jobqueue.decode_job` is.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from cmk.adapters._errors import azure_errors
from cmk.adapters._provision import CreateOnce
from cmk.adapters.table_rows import TableRows
from cmk.errors import InvalidInput, ServiceUnavailable
from cmk.ports import Operation, OperationAnswer, OperationKind, OperationState

__all__ = [
    "CHUNKS_PER_ROW",
    "CHUNK_BYTES",
    "OPERATION_ID",
    "TableOperations",
    "decode_operation_message",
    "encode_operation_message",
    "new_operation_id",
]

#: PartitionKey of the operation rows.
OPERATIONS = "operation"
#: A chunk of the compressed answer: one binary property (Table storage allows 64 KiB).
CHUNK_BYTES = 48 * 1024
#: Chunk properties per row: 480 KiB of data (640 KiB as base64 on the wire), under the
#: 1 MiB limit of an entity.
CHUNKS_PER_ROW = 10
#: What an operation id looks like (uuid4, hex).
OPERATION_ID = re.compile(r"[0-9a-f]{32}")
#: Format of the queue message, written as ``"v"``.
FORMAT_VERSION = 1
#: How many conditional writes of the operation row are tried before giving up.
_WRITE_TRIES = 5


def new_operation_id() -> str:
    """A fresh, unguessable operation id."""
    return uuid.uuid4().hex


def encode_operation_message(operation: Operation) -> str:
    """The JSON text of the queue message that runs ``operation`` (before the base64)."""
    return json.dumps(
        {"v": FORMAT_VERSION, "id": operation.id, "kind": operation.kind.value},
        separators=(",", ":"),
        sort_keys=True,
    )


def decode_operation_message(text: str | bytes) -> tuple[str, OperationKind]:
    """The operation id and kind of a queue message; InvalidInput for anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("operation message: not UTF-8") from None
    if len(text) > 1024:
        raise InvalidInput(f"operation message: {len(text)} characters is too long")
    try:
        body = json.loads(text)
    except RecursionError:
        raise InvalidInput("operation message: not JSON (nested too deeply)") from None
    except ValueError as error:
        raise InvalidInput(f"operation message: not JSON ({error})") from None
    if not isinstance(body, dict) or body.get("v", FORMAT_VERSION) != FORMAT_VERSION:
        raise InvalidInput("operation message: not a version 1 JSON object")
    operation_id, kind = body.get("id"), body.get("kind")
    if not isinstance(operation_id, str) or not OPERATION_ID.fullmatch(operation_id):
        raise InvalidInput(f"operation message: id {operation_id!r} is not an operation id")
    try:
        return operation_id, OperationKind(str(kind))
    except ValueError:
        raise InvalidInput(f"operation message: unknown kind {kind!r}") from None


def _partition(operation_id: str) -> str:
    return f"{OPERATIONS}|{operation_id}"


def _aware(value: object) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidInput(f"operation row: expected a datetime, got {type(value).__name__}")
    plain = datetime(*value.timetuple()[:6], value.microsecond, tzinfo=value.tzinfo or UTC)
    return plain.astimezone(UTC)


def _maybe(value: object) -> datetime | None:
    return None if value is None else _aware(value)


def _operation(entity: Mapping[str, Any]) -> Operation:
    status = entity.get("HttpStatus")
    return Operation(
        id=str(entity["RowKey"]),
        kind=OperationKind(entity["OpKind"]),
        state=OperationState(entity["State"]),
        created=_aware(entity["Created"]),
        deadline=_aware(entity["Deadline"]),
        expires=_aware(entity["Expires"]),
        started=_maybe(entity.get("Started")),
        finished=_maybe(entity.get("Finished")),
        attempts=int(entity.get("Attempts") or 0),
        http_status=None if status is None else int(status),
    )


def _entity(operation: Operation) -> dict[str, Any]:
    return {
        "PartitionKey": OPERATIONS,
        "RowKey": operation.id,
        "Kind": "operation",
        "OpKind": operation.kind.value,
        "State": operation.state.value,
        "Created": operation.created.astimezone(UTC),
        "Deadline": operation.deadline.astimezone(UTC),
        "Expires": operation.expires.astimezone(UTC),
        "Attempts": operation.attempts,
    }


def _chunk_rows(operation_id: str, token: str, payload: bytes) -> list[dict[str, Any]]:
    """The rows that hold ``payload``: :data:`CHUNKS_PER_ROW` chunk properties each."""
    chunks = [payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES)]
    rows = []
    for number, start in enumerate(range(0, max(len(chunks), 1), CHUNKS_PER_ROW)):
        row: dict[str, Any] = {
            "PartitionKey": _partition(operation_id),
            "RowKey": f"{token}|{number:05d}",
            "Kind": "operation-answer",
        }
        for index, chunk in enumerate(chunks[start : start + CHUNKS_PER_ROW]):
            row[f"D{index:02d}"] = chunk
        rows.append(row)
    return rows


class TableOperations(TableRows):
    """The :class:`~cmk.ports.OperationStore` over the ledger table and the operations
    queue (``queue_client`` built with
    :func:`~cmk.adapters.jobqueue.message_policies`; both clients are the caller's)."""

    def __init__(self, table_client: TableClient, queue_client: QueueClient) -> None:
        super().__init__(table_client)
        self._queue = queue_client
        self._ensure_queue = CreateOnce(
            f"queue {queue_client.queue_name}", queue_client.create_queue
        )

    async def ensure_queue(self) -> None:
        """Create the operations queue unless it exists (once per instance)."""
        await self._ensure_queue()

    async def accept(self, operation: Operation) -> None:
        await self.ensure_table()
        await self.ensure_queue()
        with azure_errors(f"recording operation {operation.id}"):
            await self._client.create_entity(_entity(operation))
        with azure_errors(f"enqueueing operation {operation.id}"):
            await self._queue.send_message(encode_operation_message(operation))

    async def _row(self, operation_id: str) -> Any:
        return await self.get_row(OPERATIONS, operation_id, f"reading operation {operation_id}")

    async def get(self, operation_id: str) -> Operation | None:
        if not OPERATION_ID.fullmatch(operation_id):
            return None
        held = await self._row(operation_id)
        return None if held is None else _operation(held)

    async def start(self, operation_id: str, now: datetime) -> Operation | None:
        held = await self._row(operation_id)
        if held is None:
            return None
        operation = _operation(held)
        if operation.state.finished:
            return operation
        update = {
            "PartitionKey": OPERATIONS,
            "RowKey": operation_id,
            "State": OperationState.RUNNING.value,
            "Started": now.astimezone(UTC),
            "Attempts": operation.attempts + 1,
        }
        # If another worker moved it on meanwhile, what it is now is the answer either way.
        await self.replace_if(update, held, f"starting operation {operation_id}", merge=True)
        return await self.get(operation_id)

    async def finish(
        self, operation_id: str, answer: OperationAnswer, now: datetime, expires: datetime
    ) -> Operation | None:
        token = uuid.uuid4().hex[:12]
        payload = gzip.compress(json.dumps(answer.document).encode("utf-8"), compresslevel=6)
        rows = _chunk_rows(operation_id, token, payload)
        action = f"keeping the answer of operation {operation_id}"
        gate = asyncio.Semaphore(4)

        async def write(row: dict[str, Any]) -> None:
            async with gate:
                with azure_errors(action):
                    await self._client.upsert_entity(row, mode=UpdateMode.REPLACE)

        await asyncio.gather(*(write(row) for row in rows))
        state = OperationState.SUCCEEDED if answer.status < 400 else OperationState.FAILED
        for _ in range(_WRITE_TRIES):
            held = await self._row(operation_id)
            if held is None or OperationState(held["State"]).finished:
                await self._delete_answer(operation_id, token)  # gone, or finished first
                return None if held is None else _operation(held)
            update = {
                "PartitionKey": OPERATIONS,
                "RowKey": operation_id,
                "State": state.value,
                "HttpStatus": answer.status,
                "Finished": now.astimezone(UTC),
                "Expires": expires.astimezone(UTC),
                "Result": token,
                "Chunks": len(rows),
                "Bytes": len(payload),
            }
            if await self.replace_if(update, held, action, merge=True):
                return await self.get(operation_id)
        raise ServiceUnavailable(f"{action}: the operation row kept changing; try again")

    async def answer(self, operation: Operation) -> OperationAnswer:
        held = await self._row(operation.id)
        if held is None or not OperationState(held["State"]).finished:
            raise InvalidInput(f"operation {operation.id} has no answer (yet)")
        token, count = str(held["Result"]), int(held["Chunks"])
        action = f"reading the answer of operation {operation.id}"
        rows = await asyncio.gather(
            *(
                self.get_row(_partition(operation.id), f"{token}|{n:05d}", action)
                for n in range(count)
            )
        )
        payload = bytearray()
        for number, row in enumerate(rows):
            if row is None:
                raise ServiceUnavailable(f"{action}: part {number} of {count} is missing")
            for index in range(CHUNKS_PER_ROW):
                chunk = row.get(f"D{index:02d}")
                if chunk is None:
                    break
                payload += bytes(chunk)
        document = json.loads(gzip.decompress(bytes(payload)).decode("utf-8"))
        return OperationAnswer(status=int(held["HttpStatus"]), document=document)

    async def _delete_answer(self, operation_id: str, token: str | None = None) -> None:
        """Delete the answer rows of the operation (of one finish, with ``token``)."""
        pages = self._client.query_entities(
            "PartitionKey eq @partition",
            parameters={"partition": _partition(operation_id)},
            select=["PartitionKey", "RowKey"],
        )
        with azure_errors(f"listing the answer of operation {operation_id}"):
            try:
                keys = [str(entity["RowKey"]) async for entity in pages]
            except ResourceNotFoundError:
                return
        for row in keys:
            if token is None or row.startswith(f"{token}|"):
                await self.delete_row(_partition(operation_id), row)

    async def forget(self, operation_id: str) -> None:
        if not OPERATION_ID.fullmatch(operation_id):
            return
        await self._delete_answer(operation_id)
        await self.delete_row(OPERATIONS, operation_id)

    async def forget_expired(self, now: datetime, limit: int) -> int:
        pages = self._client.query_entities(
            "PartitionKey eq @partition and Expires lt @now",
            parameters={"partition": OPERATIONS, "now": now.astimezone(UTC)},
            select=["RowKey"],
            results_per_page=limit,
        )
        expired: list[str] = []
        with azure_errors("listing expired operations"):
            try:
                async for entity in pages:
                    expired.append(str(entity["RowKey"]))
                    if len(expired) >= limit:
                        break
            except ResourceNotFoundError:
                return 0
        for operation_id in expired:
            await self.forget(operation_id)
        return len(expired)
