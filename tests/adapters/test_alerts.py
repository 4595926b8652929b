"""EventGridAlerts against the sandbox's Event Grid topic and Azurite, through the real SDK."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from adapter_world import RG, SUB, TEST_OPTIONS, Cloud, settings_for

from cmk.adapters.alerts import EventGridAlerts, alert_row
from cmk.adapters.outbox import DELIVERY_LEASE, MAX_PAYLOAD_CHARS, AlertState
from cmk.errors import ServiceUnavailable
from cmk.keyid import KeyId
from cmk.ports import Alert, AlertType, Severity
from cmk.resource_id import AccountId
from cmk.sandbox.eventgrid.service import Topic
from cmk.wiring import Services

ALERT_RULES = Path(__file__).resolve().parents[2] / "infra" / "app" / "alerting.bicep"

ACCOUNT = str(AccountId(SUB, RG, "acct"))
KEY = KeyId("https://kv1.vault.azure.net", "cmk")


def _alert(**changes: object) -> Alert:
    fields: dict[str, object] = {
        "type": AlertType.ACCOUNT_UPDATE_FAILED,
        "severity": Severity.ERROR,
        "subject": ACCOUNT,
        "key_id": KEY,
        "from_version": "0" * 32,
        "to_version": "a" * 32,
        "cause": "KeyVaultAccessDenied: the identity cannot unwrap",
        "remediation": "Grant the account's identity Key Vault Crypto Service Encryption User.",
        **changes,
    }
    return Alert(**fields)  # type: ignore[arg-type]


@pytest.fixture
def topic(cloud: Cloud) -> Topic:
    """A custom topic the app may publish to (EventGrid Data Sender)."""
    made = cloud.sandbox.eventgrid.create_topic("cmk-alerts")
    cloud.world.grant(
        cloud.sandbox.app_principal.object_id, made.resource_id, "EventGrid Data Sender"
    )
    return made


@pytest.fixture
async def publishing(topic: Topic, azurite: str) -> AsyncIterator[Services]:
    """Services with CMK_ALERT_TOPIC_ENDPOINT set to the topic."""
    settings = settings_for(azurite, topic=topic.endpoint)
    async with Services.from_settings(settings, options=TEST_OPTIONS) as wired:
        yield wired


class TestEventGridAlerts:
    async def test_publishes_once_per_dedup_key(self, publishing: Services, topic: Topic) -> None:
        """The same alert raised twice is published once as a CloudEvent."""
        assert await publishing.alerts.raise_alert(_alert()) is True
        assert await publishing.alerts.raise_alert(_alert(cause="again")) is False
        assert len(topic.events) == 1
        event = topic.events[0]
        assert event["specversion"] == "1.0"
        assert event["source"] == "/cmk-rotator"
        assert event["type"] == "CmkRotator.account_update_failed"
        assert event["subject"] == ACCOUNT
        assert event["data"] == {
            "alertType": "account_update_failed",
            "severity": "error",
            "accountId": ACCOUNT,
            "keyId": str(KEY),
            "fromVersion": "0" * 32,
            "toVersion": "a" * 32,
            "cause": "KeyVaultAccessDenied: the identity cannot unwrap",
            "remediation": "Grant the account's identity Key Vault Crypto Service Encryption User.",
        }

    async def test_other_version_or_type_is_a_new_alert(
        self, publishing: Services, topic: Topic
    ) -> None:
        """Another target version or cause group is another dedup key."""
        await publishing.alerts.raise_alert(_alert())
        await publishing.alerts.raise_alert(_alert(to_version="b" * 32))
        await publishing.alerts.raise_alert(_alert(type=AlertType.BINDING_STALE))
        assert len(topic.events) == 3

    async def test_resolve_reopens_the_key(self, publishing: Services, topic: Topic) -> None:
        """After resolve(), the same alert is published again."""
        await publishing.alerts.raise_alert(_alert())
        assert await publishing.alerts.resolve(ACCOUNT) == 1
        assert await publishing.alerts.raise_alert(_alert()) is True
        assert len(topic.events) == 2

    async def test_error_log_carries_extra_fields(
        self, publishing: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A new alert is one ERROR record with the cmk_* fields; a duplicate logs no ERROR."""
        with caplog.at_level(logging.INFO):
            await publishing.alerts.raise_alert(_alert(severity=Severity.CRITICAL))
            await publishing.alerts.raise_alert(_alert())
        errors = [record for record in caplog.records if record.levelno == logging.ERROR]
        assert len(errors) == 1
        record = errors[0]
        assert record.cmk_alert_type == "account_update_failed"  # type: ignore[attr-defined]
        assert record.cmk_account_id == ACCOUNT  # type: ignore[attr-defined]
        assert record.cmk_key_id == str(KEY)  # type: ignore[attr-defined]
        assert record.cmk_severity == "critical"  # type: ignore[attr-defined]
        assert record.cmk_to_version == "a" * 32  # type: ignore[attr-defined]

    async def test_log_message_names_the_type_for_the_alert_rules(
        self, publishing: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The alert rules (infra/app/alerting.bicep) fall back to the message text where
        the log fields do not become customDimensions: the text they extract from must
        name the type, so the message format is load-bearing."""
        found = re.search(r'extract\("([^"]+)", 1, message\)', ALERT_RULES.read_text())
        assert found is not None
        with caplog.at_level(logging.ERROR):
            await publishing.alerts.raise_alert(_alert(type=AlertType.KEY_UNREADABLE))
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        extracted = re.search(found.group(1), record.getMessage())
        assert extracted is not None and extracted.group(1) == "key_unreadable"

    async def test_error_line_not_lost_with_the_answer_of_the_delivery_mark(
        self, publishing: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The write that marks the alert as being delivered lands but its answer is lost:
        the run raises before its ERROR line. The line is not lost: the next delivery (once
        the mark's lease ran out) writes it, once."""
        now = [datetime.now(UTC)]
        ledger = publishing.ledger
        sink = EventGridAlerts(None, ledger, logging.getLogger("cmk.alerts"), clock=lambda: now[0])
        take = ledger.take_delivery

        async def answer_lost(*args: Any, **kwargs: Any) -> Any:
            await take(*args, **kwargs)
            raise ServiceUnavailable("marking the delivery: response lost (injected)")

        caplog.set_level(logging.ERROR, logger="cmk.alerts")
        ledger.take_delivery = answer_lost  # type: ignore[method-assign]
        try:
            with pytest.raises(ServiceUnavailable):
                await sink.raise_alert(_alert())
        finally:
            ledger.take_delivery = take  # type: ignore[method-assign]
        assert await sink.flush_pending() == 0  # the lost run still holds the delivery
        now[0] += DELIVERY_LEASE + timedelta(seconds=1)
        assert await sink.flush_pending() == 1
        lines = [r for r in caplog.records if r.getMessage().startswith("cmk alert ")]
        assert len(lines) == 1

    async def test_alert_open_under_its_earlier_group_is_not_raised_again(
        self, publishing: Services, topic: Topic
    ) -> None:
        """binding_unsafe and key_expired_bound share a group now; an alert an earlier
        version of the app recorded under its own type's group is the same problem."""
        earlier = _alert(type=AlertType.BINDING_UNSAFE)
        key = (earlier.subject.lower(), earlier.to_version or "", "binding_unsafe")
        row = alert_row(earlier)
        state = await publishing.ledger.record_alert(key, row, "earlier", datetime.now(UTC))
        assert state is AlertState.NEW
        assert await publishing.alerts.raise_alert(_alert(type=AlertType.BINDING_UNSAFE)) is False
        assert await publishing.alerts.raise_alert(_alert(type=AlertType.KEY_EXPIRED_BOUND)) is (
            False
        )
        assert topic.events == []

    async def test_without_topic_logs_only(
        self, services: Services, caplog: pytest.LogCaptureFixture
    ) -> None:
        """With no topic configured, an alert is logged (and still deduplicated)."""
        with caplog.at_level(logging.ERROR):
            assert await services.alerts.raise_alert(_alert()) is True
            assert await services.alerts.raise_alert(_alert()) is False
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    async def test_publish_failure_stays_pending_and_is_delivered_later(
        self, publishing: Services, topic: Topic, cloud: Cloud, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failed publish raises nothing and keeps the alert pending; a raise of the same
        alert delivers it, and so does flush_pending; the ERROR line is written once."""
        rule = cloud.sandbox.faults.add(host=topic.host, status=503)
        with caplog.at_level(logging.INFO):
            assert await publishing.alerts.raise_alert(_alert()) is False
            assert await publishing.ledger.is_alert_open(_alert().dedup_key)
            assert [key async for key in publishing.ledger.pending_alerts()] == [_alert().dedup_key]
            cloud.sandbox.faults.remove(rule)
            assert await publishing.alerts.raise_alert(_alert()) is True  # dedup delivers it
            assert await publishing.alerts.raise_alert(_alert()) is False  # now sent: dedup
        assert len(topic.events) == 1
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

    async def test_flush_delivers_pending_with_the_same_event_id(
        self, publishing: Services, topic: Topic, cloud: Cloud
    ) -> None:
        """What stayed pending is delivered by flush_pending, once, with a stable event id."""
        rule = cloud.sandbox.faults.add(host=topic.host, status=503)
        await publishing.alerts.raise_alert(_alert())
        await publishing.alerts.raise_alert(_alert(to_version="b" * 32))
        assert await publishing.alerts.flush_pending() == 0  # topic still down
        cloud.sandbox.faults.remove(rule)
        assert await publishing.alerts.flush_pending() == 2
        assert await publishing.alerts.flush_pending() == 0
        assert len(topic.events) == 2
        assert len({event["id"] for event in topic.events}) == 2

    async def test_a_very_long_cause_is_recorded_cut_and_delivered_later(
        self, publishing: Services, topic: Topic, cloud: Cloud
    ) -> None:
        """A cause longer than a Table property holds (an error page quoted whole) is cut
        to fit, and says so; the pending row reads back as JSON and is delivered by a
        later flush — the row never holds JSON cut in the middle, which no run could read
        back, blocking every later delivery."""
        cause = "upstream said: " + "é😀" * 40_000
        rule = cloud.sandbox.faults.add(host=topic.host, status=503)
        assert await publishing.alerts.raise_alert(_alert(cause=cause)) is False
        cloud.sandbox.faults.remove(rule)

        assert await publishing.alerts.flush_pending() == 1

        [event] = topic.events
        delivered = event["data"]["cause"]
        assert delivered.startswith("upstream said: é😀") and "characters cut)" in delivered
        assert len(delivered.encode("utf-16-le")) // 2 <= MAX_PAYLOAD_CHARS
        assert event["data"]["toVersion"] == "a" * 32

    async def test_failures_of_one_move_share_one_alert(
        self, publishing: Services, topic: Topic
    ) -> None:
        """account_update_failed and identity_missing for the same account and target are
        one failure: the second is not published."""
        assert await publishing.alerts.raise_alert(_alert()) is True
        assert await publishing.alerts.raise_alert(_alert(type=AlertType.IDENTITY_MISSING)) is False
        assert len(topic.events) == 1

    async def test_key_level_alert_has_no_account(self, publishing: Services, topic: Topic) -> None:
        """An alert about a key carries the key id as subject and no account id."""
        alert = _alert(
            type=AlertType.KEY_NEAR_EXPIRY_UNROTATED,
            subject=str(KEY),
            from_version=None,
            to_version=None,
        )
        assert await publishing.alerts.raise_alert(alert) is True
        assert topic.events[0]["subject"] == str(KEY)
        assert topic.events[0]["data"]["accountId"] is None
