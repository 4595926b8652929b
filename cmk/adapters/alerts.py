"""Alerts: the :class:`~cmk.ports.AlertSink` over an Event Grid custom topic and the log.

An alert is raised once per dedup key ``(subject, target version, type)`` until it is
resolved: the ledger's alert rows (:meth:`TableLedger.open_alert`) are the memory, so
an hourly sweep does not re-alert the same problem. A new alert

1. is written as one structured ERROR log record (message ``cmk alert ...``, with
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

A publish failure is transient: the dedup row is removed again and ServiceUnavailable
raised, so the platform's retry publishes it (and logs it once more).
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core.exceptions import AzureError, ResourceNotFoundError
from azure.core.messaging import CloudEvent
from azure.eventgrid.aio import EventGridPublisherClient

from cmk.adapters._errors import azure_errors, translate
from cmk.adapters.ledger import TableLedger
from cmk.errors import CmkError, ServiceUnavailable
from cmk.ports import Alert

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


def alert_event(alert: Alert) -> CloudEvent[dict[str, Any]]:
    """The CloudEvent published for ``alert``."""
    return CloudEvent(
        source=EVENT_SOURCE,
        type=event_type(alert),
        subject=alert.subject,
        data=alert_data(alert),
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
    ) -> None:
        self._publisher = publisher
        self._ledger = ledger
        self._logger = logger or logging.getLogger(__name__)

    async def raise_alert(self, alert: Alert) -> bool:
        """Publish unless an alert with the same dedup key is open; True if published."""
        details = {"Severity": alert.severity.value, "Cause": alert.cause[:16000]}
        if not await self._ledger.open_alert(alert.dedup_key, details):
            self._logger.info(
                "alert %s for %s already open; not raised again",
                alert.type.value,
                alert.subject,
                extra=self._extra(alert),
            )
            return False
        self._log(alert)
        if self._publisher is None:
            return True
        try:
            await self._publisher.send([alert_event(alert)])
        except (AzureError, CmkError) as error:
            await self._ledger.remove_alert(alert.dedup_key)
            failure = translate(error, f"publishing alert {event_type(alert)}")
            raise ServiceUnavailable(str(failure)) from error
        return True

    async def resolve(self, subject: str, to_version: str | None = None) -> int:
        """Close the open alerts of a subject (after a success); returns how many."""
        closed = await self._ledger.close_alerts(subject, to_version)
        if closed:
            self._logger.info(
                "resolved %d alert(s) for %s",
                closed,
                subject,
                extra={"cmk_subject": subject, "cmk_to_version": to_version},
            )
        return closed

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
        return {
            "cmk_alert_type": alert.type.value,
            "cmk_severity": alert.severity.value,
            "cmk_account_id": _account_id(alert),
            "cmk_subject": alert.subject,
            "cmk_key_id": None if alert.key_id is None else str(alert.key_id),
            "cmk_from_version": alert.from_version,
            "cmk_to_version": alert.to_version,
            "cmk_cause": alert.cause,
        }

    def _log(self, alert: Alert) -> None:
        self._logger.error(
            # The type is also in the text: the Functions host forwards the message to
            # App Insights even where ``extra`` does not become customDimensions.
            "cmk alert cmk_alert_type=%s severity=%s subject=%s: %s. Remediation: %s",
            alert.type.value,
            alert.severity.value,
            alert.subject,
            alert.cause,
            alert.remediation,
            extra=self._extra(alert),
        )
