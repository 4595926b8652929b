"""The alert outbox: one row per open alert, recorded before it is published.

Partition ``alert|`` + the subject (escaped), row ``{to_version or -}|{dedup group}``.
A row goes ``pending`` (recorded, with everything needed to publish it) → ``sent``
(the topic accepted it), and is deleted when its problem is resolved. The first run that
takes a pending row's delivery writes the alert's ERROR log line, and marks the row
``Logged`` when it records the delivery's end: the line is written whichever run delivers
it (the one that recorded it, or a later one after a lost response or a crash), and twice
only when a run dies between the line and that write (a duplicate rather than a loss).
While one worker delivers a pending row it marks it (``DeliveringBy`` /
``DeliveringSince``, an ETag-conditional write), so two runs never publish the same alert
at once; a worker that died delivering is taken over after :data:`DELIVERY_LEASE`.
Rows written before the outbox existed have no ``State`` and count as sent; rows without
``Logged`` were logged when recorded.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableEntity

from cmk.adapters._errors import azure_errors
from cmk.adapters.table_rows import OWNER, TableRows, table_key

__all__ = ["DELIVERY_LEASE", "MAX_PAYLOAD_CHARS", "AlertRow", "AlertRows", "AlertState", "payload"]

ALERT_PREFIX = "alert|"
#: How long a delivery may take before another run takes the pending alert over.
DELIVERY_LEASE = timedelta(minutes=5)

DedupKey = tuple[str, str, str]
#: The longest payload a row keeps: a Table string property holds at most 64 KiB of
#: UTF-16 (32,768 characters); the alert's cause is shortened to fit, never its JSON.
MAX_PAYLOAD_CHARS = 30_000


class AlertState(StrEnum):
    NEW = "new"  # recorded by this call: log it, then deliver it
    PENDING = "pending"  # recorded earlier, not yet delivered
    SENT = "sent"  # delivered: an open alert, deduplicated until resolved


@dataclass(frozen=True)
class AlertRow:
    """A recorded alert, as the outbox keeps it for (re)delivery."""

    dedup_key: DedupKey
    event_id: str
    event_type: str
    subject: str
    data: dict[str, Any]
    #: Its ERROR log line was written (by the first run that took its delivery).
    logged: bool = False


def _partition(subject: str) -> str:
    return ALERT_PREFIX + table_key(subject.strip().lower())


def _row(to_version: str, group: str) -> str:
    return table_key(f"{(to_version or '-').lower()}|{group}")


def payload(data: Mapping[str, Any]) -> str:
    """``data`` as the row's JSON, within :data:`MAX_PAYLOAD_CHARS` UTF-16 units: a cause
    (an error text quoted from a service) too long to fit is cut, and says so."""
    text = _json(data)
    cause = data.get("cause")
    keep = len(cause) if isinstance(cause, str) else 0
    while _units(text) > MAX_PAYLOAD_CHARS and isinstance(cause, str) and keep > 0:
        keep = max(0, min(keep - 64, keep * MAX_PAYLOAD_CHARS // _units(text) - 64))
        text = _json({**data, "cause": f"{cause[:keep]} … ({len(cause) - keep} characters cut)"})
    if _units(text) > MAX_PAYLOAD_CHARS:  # not the cause: keep what identifies the alert
        text = _json({name: data[name] for name in _IDENTIFYING if name in data})
    return text


_IDENTIFYING = ("alertType", "severity", "subject", "keyId", "fromVersion", "toVersion")


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, default=str, ensure_ascii=False)


def _units(text: str) -> int:
    """Length in UTF-16 code units, as Table storage counts a string."""
    return len(text.encode("utf-16-le")) // 2


def _data(entity: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded alert's data; a payload that is not a JSON object (a row written by a
    version that cut the JSON itself) is delivered with its text as the cause rather than
    block every later delivery."""
    text = str(entity.get("Payload") or "{}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        return data
    return {"cause": f"(the recorded alert could not be read back) {text[:2000]}"}


def _alert_row(entity: Mapping[str, Any]) -> AlertRow:
    group = str(entity.get("Group") or entity.get("AlertType") or "")
    return AlertRow(
        dedup_key=(str(entity["Subject"]).lower(), str(entity.get("ToVersion") or ""), group),
        event_id=str(entity.get("EventId") or ""),
        event_type=str(entity.get("EventType") or ""),
        subject=str(entity["Subject"]),
        data=_data(entity),
        logged=bool(entity.get("Logged", True)),  # rows of older versions logged at once
    )


class AlertRows(TableRows):
    """The alert outbox rows of the ledger table."""

    async def record_alert(
        self,
        dedup_key: DedupKey,
        row: AlertRow,
        owner: str,
        now: datetime,
        details: Mapping[str, str] | None = None,
    ) -> AlertState:
        """Record ``row`` as pending unless an alert with this dedup key is recorded:
        NEW if recorded now, else the recorded alert's state (PENDING or SENT)."""
        subject, to_version, group = dedup_key
        entity: dict[str, Any] = {
            **{name: value for name, value in (details or {}).items() if name[0].isupper()},
            "PartitionKey": _partition(subject),
            "RowKey": _row(to_version, group),
            "Kind": "alert",
            "Subject": row.subject,
            "ToVersion": to_version.lower(),
            "AlertType": row.event_type.rsplit(".", 1)[-1],
            "Group": group,
            "Opened": now,
            "State": AlertState.PENDING.value,
            "Logged": False,
            OWNER: owner,
            "EventId": row.event_id,
            "EventType": row.event_type,
            "Payload": payload(row.data),
        }
        action = f"recording alert {entity['AlertType']} for {subject}"
        if await self.insert_once(entity, action):
            return AlertState.NEW
        held = await self.get_row(entity["PartitionKey"], entity["RowKey"], action)
        if held is None:  # resolved meanwhile: record it anew
            return AlertState.NEW if await self.insert_once(entity, action) else AlertState.SENT
        return AlertState.PENDING if held.get("State") == "pending" else AlertState.SENT

    async def take_delivery(
        self, dedup_key: DedupKey, owner: str, now: datetime
    ) -> AlertRow | None:
        """Mark a pending alert as being delivered by ``owner``: the row to publish (its
        ``logged`` False when no run wrote its ERROR line yet: the caller writes it first),
        or None when it is sent, resolved, or being delivered by a live other worker."""
        subject, to_version, group = dedup_key
        action = f"delivering alert {group} for {subject}"
        held = await self.get_row(_partition(subject), _row(to_version, group), action)
        return None if held is None else await self._take(held, owner, now, action)

    async def _take(
        self, held: TableEntity, owner: str, now: datetime, action: str
    ) -> AlertRow | None:
        if held.get("State") != "pending":
            return None
        by, since = held.get("DeliveringBy"), held.get("DeliveringSince")
        if by and by != owner and isinstance(since, datetime) and now - since < DELIVERY_LEASE:
            return None
        mark = {
            "PartitionKey": held["PartitionKey"],
            "RowKey": held["RowKey"],
            "DeliveringBy": owner,
            "DeliveringSince": now,
        }
        if not await self.replace_if(mark, held, action, merge=True):
            return None
        return _alert_row(held)

    async def finish_delivery(
        self, dedup_key: DedupKey, owner: str, now: datetime, *, sent: bool
    ) -> bool:
        """After a publish: mark the alert sent, or free it for the next run's delivery, and
        logged either way (the caller wrote its line before publishing) —
        only while ``owner`` still delivers it (ETag-conditional: a row resolved and
        recorded anew meanwhile, or taken over after the lease, is not ours to mark).
        False if it was not."""
        subject, to_version, group = dedup_key
        action = f"recording the delivery of alert {group} for {subject}"
        held = await self.get_row(_partition(subject), _row(to_version, group), action)
        if held is None or held.get("DeliveringBy") != owner:
            return False
        update: dict[str, Any] = {
            "PartitionKey": held["PartitionKey"],
            "RowKey": held["RowKey"],
            "DeliveringBy": "",
            "Logged": True,
        }
        if sent:
            update["State"] = AlertState.SENT.value
            update["Sent"] = now
        return await self.replace_if(update, held, action, merge=True)

    async def pending_alerts(self) -> AsyncIterator[DedupKey]:
        """The dedup keys of every alert recorded but not yet delivered."""
        pages = self.client.query_entities(
            "Kind eq @kind and State eq @state",
            parameters={"kind": "alert", "state": AlertState.PENDING.value},
            select=["Subject", "ToVersion", "Group", "AlertType"],
        )
        with azure_errors("listing the pending alerts"):
            try:
                async for entity in pages:
                    group = str(entity.get("Group") or entity.get("AlertType") or "")
                    yield (
                        str(entity["Subject"]).lower(),
                        str(entity.get("ToVersion") or ""),
                        group,
                    )
            except ResourceNotFoundError:  # no table, so nothing pending
                return

    async def is_alert_open(self, dedup_key: DedupKey) -> bool:
        """Whether an alert with this dedup key is recorded (pending or sent)."""
        subject, to_version, group = dedup_key
        row = await self.get_row(_partition(subject), _row(to_version, group), "reading alert")
        return row is not None

    async def remove_alert(self, dedup_key: DedupKey) -> None:
        """Forget one recorded alert."""
        subject, to_version, group = dedup_key
        await self.delete_row(_partition(subject), _row(to_version, group))

    async def close_alerts(
        self,
        subject: str,
        to_version: str | None = None,
        groups: Collection[str] | None = None,
        still_open: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> int:
        """Close the recorded alerts of ``subject`` (only those for ``to_version``, and of
        the cause ``groups``, when given; not those ``still_open(to_version, group)``
        keeps), never one still pending delivery: a failure that was recorded must reach
        the topic even when the account was repaired since (it is closed by a later
        resolve, once sent). Returns how many were closed (none if there is no table)."""
        clauses = ["PartitionKey eq @partition"]
        parameters: dict[str, Any] = {"partition": _partition(subject)}
        if to_version is not None:
            clauses.append("ToVersion eq @version")
            parameters["version"] = to_version.lower()
        pages = self.client.query_entities(
            " and ".join(clauses),
            parameters=parameters,
            select=["PartitionKey", "RowKey", "State", "ToVersion"],
        )
        with azure_errors(f"listing the open alerts of {subject}"):
            try:
                found = [entity async for entity in pages]
            except ResourceNotFoundError:  # no table, so no open alert
                return 0
        found = [entity for entity in found if entity.get("State") != AlertState.PENDING.value]
        if groups is not None:
            wanted = {table_key(group) for group in groups}
            found = [entity for entity in found if entity["RowKey"].rsplit("|", 1)[-1] in wanted]
        if still_open is not None:
            found = [
                entity
                for entity in found
                if not await still_open(
                    str(entity.get("ToVersion") or ""), entity["RowKey"].rsplit("|", 1)[-1]
                )
            ]
        rows = [(entity["PartitionKey"], entity["RowKey"]) for entity in found]
        for partition, row in rows:
            await self.delete_row(partition, row)
        return len(rows)
