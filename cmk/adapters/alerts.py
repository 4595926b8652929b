"""Alerts: the :class:`~cmk.ports.AlertSink` over an Event Grid custom topic and the log.

An alert is raised once per dedup key ``(subject, target version, cause group)`` until
it is resolved: the ledger's alert rows (the outbox, :mod:`cmk.adapters.outbox`) are the
memory, so an hourly sweep does not re-alert the same problem. A new alert

0. is recorded first, as a pending outbox row carrying its CloudEvent (with a stable id);
1. is written as one structured ERROR log record by the first run that takes its
   delivery (message ``cmk alert ...``, with
   ``extra`` fields ``cmk_alert_type``, ``cmk_severity``, ``cmk_account_id``,
   ``cmk_key_id``, ``cmk_from_version``, ``cmk_to_version``, ``cmk_cause``) that an
   Azure Monitor alert rule fires on, whether or not a topic is configured; and
2. is published, when a topic is configured, as a CloudEvent 1.0::

       source  /cmk-rotator
       type    CmkRotator.<alert type>      (see below)
       subject the account id, or the key id for key-level alerts
       data    {"alertType", "severity", "accountId", "keyId", "fromVersion",
                "toVersion", "cause", "remediation"}

Event types (``type`` of the CloudEvent, one per :class:`~cmk.ports.AlertType`):

- ``CmkRotator.account_update_failed``  an encryption update failed permanently
- ``CmkRotator.binding_unsafe``          an account is bound to a disabled/rejected version
- ``CmkRotator.key_near_expiry_unrotated`` a key nears expiry with no valid successor
- ``CmkRotator.binding_stale``           an account stayed on an old version too long
- ``CmkRotator.key_expired_bound``       an account is bound to an expired version
- ``CmkRotator.identity_missing``        an account has no identity that can use the key
- ``CmkRotator.vault_not_recoverable``   the vault lacks soft delete / purge protection
- ``CmkRotator.version_rejected``        a new key version fails the policy
- ``CmkRotator.event_failed``            a Key Vault event could not be handled (permanent)
- ``CmkRotator.key_unreadable``          a sweep cannot read an allow-listed key

3. is marked sent once the topic accepted it.

Publishes are independent: a failure is logged at WARNING and leaves the alert pending,
never raised into the job or event that found the problem. :meth:`flush_pending` (every
sweep, and every publish that reached the topic) delivers what stayed pending — the
topic was down, the process died — with the same CloudEvent id, so a consumer can drop
the rare duplicate of an alert whose publish answer was lost. The ERROR line is written by
the run that delivers the alert, before it publishes, and the row then remembers it (a run
that recorded the alert and died, or lost the answer, leaves it to whichever run delivers
it; one that dies between the line and that mark leaves a rare second line, never none).
Dedup never swallows an undelivered alert: a raise that meets a pending row delivers it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.core.messaging import CloudEvent
from azure.eventgrid.aio import EventGridPublisherClient

from cmk.adapters._errors import azure_errors, translate
from cmk.adapters.ledger import TableLedger
from cmk.adapters.outbox import AlertRow, AlertState
from cmk.errors import CmkError
from cmk.ports import EARLIER_GROUPS, Alert

__all__ = ["EVENT_SOURCE", "EventGridAlerts", "alert_event", "event_type"]

EVENT_SOURCE = "/cmk-rotator"
EVENT_TYPE_PREFIX = "CmkRotator."


def event_type(alert: Alert) -> str:
    """The CloudEvent ``type`` of an alert, e.g. ``CmkRotator.account_update_failed``."""
    return f"{EVENT_TYPE_PREFIX}{alert.type.value}"


def _account_id(alert: Alert) -> str | None:
    return alert.subject if alert.subject.lower().startswith("/subscriptions/") else None


def alert_data(alert: Alert) -> dict[str, Any]:
    """The ``data`` of an alert's CloudEvent."""
    return {
        "alertType": alert.type.value,
        "severity": alert.severity.value,
        "accountId": _account_id(alert),
        "keyId": None if alert.key_id is None else str(alert.key_id),
        "fromVersion": alert.from_version,
        "toVersion": alert.to_version,
        "cause": alert.cause,
        "remediation": alert.remediation,
    }


def alert_row(alert: Alert, event_id: str | None = None) -> AlertRow:
    """The outbox row of ``alert``: its CloudEvent's parts, with a new id unless given."""
    return AlertRow(
        alert.dedup_key,
        event_id or str(uuid.uuid4()),
        event_type(alert),
        alert.subject,
        alert_data(alert),
    )


def alert_event(alert: Alert, event_id: str | None = None) -> CloudEvent[dict[str, Any]]:
    """The CloudEvent published for ``alert`` (``event_id`` stays the same on a retry)."""
    return _event(alert_row(alert, event_id))


def _event(row: AlertRow) -> CloudEvent[dict[str, Any]]:
    return CloudEvent(
        source=EVENT_SOURCE,
        type=row.event_type,
        subject=row.subject,
        data=row.data,
        id=row.event_id,
    )


class EventGridAlerts:
    """The :class:`~cmk.ports.AlertSink`: dedup in the ledger, then log and publish.

    ``publisher`` is None when no topic is configured (CMK_ALERT_TOPIC_ENDPOINT unset):
    alerts are then logged only. ``logger`` receives the ERROR records.
    """

    def __init__(
        self,
        publisher: EventGridPublisherClient | None,
        ledger: TableLedger,
        logger: logging.Logger | None = None,
        owner: str = "cmk",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._logger = logger or logging.getLogger(__name__)
        self._owner = owner
        self._clock = clock

    async def raise_alert(self, alert: Alert) -> bool:
        """Record the alert unless it is recorded already, then deliver it (see the module
        docstring); True if this call delivered it."""
        token = f"{self._owner}:{uuid.uuid4().hex[:8]}"
        subject, to_version, group = alert.dedup_key
        for earlier in EARLIER_GROUPS.get(group, ()):
            if await self._ledger.is_alert_open((subject, to_version, earlier)):
                return self._already_open(alert)
        row = alert_row(alert)
        details = {"Severity": alert.severity.value, "Cause": alert.cause[:16000]}
        state = await self._ledger.record_alert(alert.dedup_key, row, token, self._clock(), details)
        if state is AlertState.SENT:
            return self._already_open(alert)
        return await self._deliver(alert.dedup_key, token)

    def _already_open(self, alert: Alert) -> bool:
        self._logger.info(
            "alert %s for %s already open; not raised again",
            alert.type.value,
            alert.subject,
            extra=self._extra(alert),
        )
        return False

    async def flush_pending(self) -> int:
        """Deliver every alert recorded but not yet delivered; returns how many."""
        token = f"{self._owner}:{uuid.uuid4().hex[:8]}"
        delivered = 0
        async for key in self._ledger.pending_alerts():
            delivered += await self._deliver(key, token)
        if delivered:
            self._logger.info("delivered %d pending alert(s)", delivered)
        return delivered

    async def _deliver(self, dedup_key: tuple[str, str, str], token: str) -> bool:
        row = await self._ledger.take_delivery(dedup_key, token, self._clock())
        if row is None:  # sent, resolved, or another worker is delivering it now
            return False
        if not row.logged:
            self._log(row)
        if self._publisher is not None:
            try:
                await self._publisher.send([_event(row)])
            except (AzureError, CmkError) as error:
                failure = translate(error, f"publishing alert {row.event_type}")
                self._logger.warning(
                    "alert %s for %s stays pending (the next sweep delivers it): %s",
                    row.event_type,
                    row.subject,
                    failure,
                    extra={"cmk_subject": row.subject, "cmk_step": "alert"},
                )
                await self._ledger.finish_delivery(dedup_key, token, self._clock(), sent=False)
                return False
        await self._ledger.finish_delivery(dedup_key, token, self._clock(), sent=True)
        return True

    async def resolve(
        self,
        subject: str,
        to_version: str | None = None,
        groups: Collection[str] | None = None,
        *,
        still_open: Callable[[str, str], Awaitable[bool]] | None = None,
    ) -> int:
        """Close the open alerts of a subject (after a success); only those of ``groups``
        when given, and not those ``still_open(to_version, group)`` keeps; returns how
        many."""
        closed = await self._ledger.close_alerts(subject, to_version, groups, still_open)
        if closed:
            self._logger.info(
                "resolved %d alert(s) for %s",
                closed,
                subject,
                extra={"cmk_subject": subject, "cmk_to_version": to_version},
            )
        return closed

    async def open_alerts(self) -> set[tuple[str, str, str]]:
        """Every recorded alert as (subject, to_version, cause group), lowercase, as
        :meth:`resolve`'s ``still_open`` is asked about it: one query over the alert rows."""
        pages = self._ledger.client.query_entities(
            "Kind eq @kind", parameters={"kind": "alert"}, select=["Subject", "ToVersion", "RowKey"]
        )
        with azure_errors("listing the open alerts"):
            try:
                return {
                    (
                        str(entity["Subject"]).strip().lower(),
                        str(entity.get("ToVersion") or "").lower(),
                        str(entity["RowKey"]).rsplit("|", 1)[-1],
                    )
                    async for entity in pages
                    if entity.get("Subject")
                }
            except ResourceNotFoundError:  # no table, so no open alert
                return set()

    async def open_subjects(self) -> set[str]:
        """The subjects (lowercase) with at least one open alert: one query over the alert
        rows (``Kind eq 'alert'``), however many accounts are in scope; none without a table.
        """
        pages = self._ledger.client.query_entities(
            "Kind eq @kind", parameters={"kind": "alert"}, select=["Subject"]
        )
        with azure_errors("listing the open alerts"):
            try:
                return {
                    str(entity["Subject"]).strip().lower()
                    async for entity in pages
                    if entity.get("Subject")
                }
            except ResourceNotFoundError:  # no table, so no open alert
                return set()

    def _extra(self, alert: Alert) -> dict[str, Any]:
        return _log_fields(alert.subject, alert_data(alert))

    def _log(self, row: AlertRow) -> None:
        """The alert's one ERROR line (from its outbox row: whichever run delivers it)."""
        data = row.data
        self._logger.error(
            # The type is also in the text: the Functions host forwards the message to
            # App Insights even where ``extra`` does not become customDimensions.
            "cmk alert cmk_alert_type=%s severity=%s subject=%s: %s. Remediation: %s",
            data.get("alertType"),
            data.get("severity"),
            row.subject,
            data.get("cause"),
            data.get("remediation"),
            extra=_log_fields(row.subject, data),
        )


def _log_fields(subject: str, data: dict[str, Any]) -> dict[str, Any]:
    """The ``cmk_*`` fields of an alert's log records, from its CloudEvent ``data``."""
    return {
        "cmk_alert_type": data.get("alertType"),
        "cmk_severity": data.get("severity"),
        "cmk_account_id": data.get("accountId"),
        "cmk_subject": subject,
        "cmk_key_id": data.get("keyId"),
        "cmk_from_version": data.get("fromVersion"),
        "cmk_to_version": data.get("toVersion"),
        "cmk_cause": data.get("cause"),
    }
