"""Event Grid: Key Vault event deliveries (both schemas, at least once) and custom topics."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from azure.core.credentials import AzureKeyCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent, EventGridPublisherClient
from azure.eventgrid.aio import EventGridPublisherClient as AsyncEventGridPublisherClient
from azure.identity import DefaultAzureCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from azure.keyvault.keys import KeyClient

from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import CLOUDEVENT_SCHEMA, shape_event
from cmk.sandbox.platform.server import bind_loopback
from cmk.sandbox.world import KeyEvent, KeyEventType, VaultKind, VaultState

VAULT_ID = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg"
    "/providers/Microsoft.KeyVault/vaults/kv1"
)


def _event(version: str = "a" * 32, kind: KeyEventType = KeyEventType.NEW_VERSION) -> KeyEvent:
    return KeyEvent(
        event_type=kind,
        vault="kv1",
        vault_resource_id=VAULT_ID,
        vault_host="kv1.vault.azure.net",
        key_name="k1",
        version=version,
        not_before=datetime(2025, 1, 1, tzinfo=UTC),
        expires=None,
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


class Collector:
    """A thread-safe handler that records what it receives, optionally failing first."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.calls = 0
        self.fail_first = fail_first
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        with self.lock:
            self.calls += 1
            if self.calls <= self.fail_first:
                raise RuntimeError("subscriber down")
            self.events.append(event)


class TestEventShapes:
    def test_event_grid_schema_matches_key_vault(self):
        """Event Grid schema: topic is the vault id, subject the key, data Key Vault's."""
        shaped = shape_event(_event(), "EventGridSchema")
        assert shaped == {
            "id": shaped["id"],
            "topic": VAULT_ID,
            "subject": "k1",
            "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
            "eventTime": "2025-01-02T03:04:05Z",
            "data": {
                "Id": "https://kv1.vault.azure.net/keys/k1/" + "a" * 32,
                "VaultName": "kv1",
                "ObjectType": "Key",
                "ObjectName": "k1",
                "Version": "a" * 32,
                "NBF": 1735689600,
                "EXP": None,
            },
            "dataVersion": "1",
            "metadataVersion": "1",
        }

    def test_cloud_event_schema(self):
        """CloudEvents 1.0: source is the vault id, type the event type, same data."""
        shaped = shape_event(_event(), CLOUDEVENT_SCHEMA)
        assert shaped["specversion"] == "1.0"
        assert shaped["source"] == VAULT_ID
        assert shaped["type"] == "Microsoft.KeyVault.KeyNewVersionCreated"
        assert shaped["subject"] == "k1"
        assert shaped["data"]["ObjectType"] == "Key"


class TestSubscriptions:
    def test_new_version_from_key_client_is_delivered(self, sandbox: Sandbox):
        """Creating a key with the real KeyClient delivers KeyNewVersionCreated."""
        vault = VaultState("kv1", VaultKind.VAULT, "s", "rg", "westeurope", sandbox.tenant_id)
        sandbox.world.vaults[vault.host] = vault
        sandbox.world.grant(
            sandbox.app_principal.object_id, vault.resource_id, "Key Vault Crypto Officer"
        )
        collector = Collector()
        sandbox.eventgrid.subscribe(collector)
        key = KeyClient(vault.url, DefaultAzureCredential()).create_rsa_key("k1", size=2048)
        sandbox.drain_events()
        [event] = collector.events
        assert event["eventType"] == "Microsoft.KeyVault.KeyNewVersionCreated"
        assert event["data"]["Id"] == key.id
        assert event["topic"] == vault.resource_id

    def test_included_event_types_filter(self, sandbox: Sandbox):
        """A subscription only gets the event types it includes."""
        collector = Collector()
        sandbox.eventgrid.subscribe(collector, included_event_types=[KeyEventType.NEAR_EXPIRY])
        sandbox.world.emit(_event())
        sandbox.world.emit(_event("b" * 32, KeyEventType.NEAR_EXPIRY))
        sandbox.drain_events()
        assert [e["eventType"] for e in collector.events] == [str(KeyEventType.NEAR_EXPIRY)]

    def test_duplicates(self, sandbox: Sandbox):
        """With duplicate_probability=1 every event arrives twice with the same id."""
        collector = Collector()
        sandbox.eventgrid.subscribe(collector)
        sandbox.eventgrid.duplicate_probability = 1.0
        sandbox.world.emit(_event())
        sandbox.drain_events()
        assert len(collector.events) == 2
        assert collector.events[0]["id"] == collector.events[1]["id"]

    def test_forced_duplicates_whatever_the_odds(self, sandbox: Sandbox):
        """force_duplicates=1 duplicates the next delivery even at probability 0."""
        collector = Collector()
        sandbox.eventgrid.subscribe(collector)
        sandbox.eventgrid.force_duplicates = 1
        for version in ("a" * 32, "b" * 32, "c" * 32):
            sandbox.world.emit(_event(version))
        sandbox.drain_events()
        versions = sorted(e["data"]["Version"] for e in collector.events)
        assert versions == ["a" * 32, "a" * 32, "b" * 32, "c" * 32]
        assert sandbox.eventgrid.duplicated == 1

    def test_the_seed_decides_the_duplicates(self, sandbox: Sandbox):
        """At probability 0.5 the same seed duplicates the same events: reset() rewinds to
        the seed, so a replay draws what the first run drew."""

        def duplicated() -> list[bool]:
            collector = Collector()
            sandbox.eventgrid.subscribe(collector)
            sandbox.eventgrid.duplicate_probability = 0.5
            versions = [f"{i:032x}" for i in range(40)]
            for version in versions:
                sandbox.world.emit(_event(version))
            sandbox.drain_events()
            received = [e["data"]["Version"] for e in collector.events]
            return [received.count(version) == 2 for version in versions]

        first = duplicated()
        sandbox.reset()
        assert duplicated() == first
        assert any(first) and not all(first)  # the odds were drawn, not fixed

    def test_reordering(self, sandbox: Sandbox):
        """With reorder on, 30 events in a row do not all arrive in emission order."""
        collector = Collector()
        sandbox.eventgrid.subscribe(collector)
        sandbox.eventgrid.reorder = True
        versions = [f"{i:032x}" for i in range(30)]
        for v in versions:
            sandbox.world.emit(_event(v))
        sandbox.drain_events()
        received = [e["data"]["Version"] for e in collector.events]
        assert sorted(received) == versions
        assert received != versions

    def test_retry_then_success(self, sandbox: Sandbox):
        """A subscriber failing twice gets the event on the third attempt."""
        collector = Collector(fail_first=2)
        subscription = sandbox.eventgrid.subscribe(collector)
        sandbox.world.emit(_event())
        sandbox.drain_events()
        assert len(collector.events) == 1
        assert subscription.attempts == 3 and subscription.failures == 2

    def test_dead_letter_after_max_attempts(self, sandbox: Sandbox):
        """A subscriber that always fails sends the event to the dead-letter list."""
        collector = Collector(fail_first=100)
        sandbox.eventgrid.subscribe(collector, max_attempts=3, name="always-down")
        sandbox.world.emit(_event())
        sandbox.drain_events()
        [dead] = sandbox.eventgrid.dead_letters
        assert dead.subscription == "always-down" and dead.attempts == 3
        assert "subscriber down" in dead.reason
        assert dead.dead_letter_reason == "MaxDeliveryAttemptsExceeded"

    def test_time_to_live_ends_retries_before_max_attempts(self, sandbox: Sandbox):
        """30 attempts on Event Grid's schedule span days; a 1440-minute TTL ends them at the
        11th (sent 82,000 s after the first; the 12th would be at 125,200 s > 86,400 s),
        dead-lettered as TimeToLiveExceeded. A 1-minute TTL stops after 10 s + 30 s."""
        sandbox.eventgrid.retry_scale = 1e-6  # the schedule's days in tenths of a second
        collector = Collector(fail_first=100)
        sandbox.eventgrid.subscribe(collector, max_attempts=30, name="day")
        sandbox.eventgrid.subscribe(collector, event_ttl_minutes=1, name="minute")
        sandbox.world.emit(_event())
        sandbox.drain_events()
        dead = {d.subscription: d for d in sandbox.eventgrid.dead_letters}
        assert dead["day"].attempts == 11
        assert dead["minute"].attempts == 3  # at 0 s, 10 s, 40 s; the next at 100 s
        assert {d.dead_letter_reason for d in dead.values()} == {"TimeToLiveExceeded"}

    def test_time_to_live_is_event_grids_range(self, sandbox: Sandbox):
        """eventTimeToLiveInMinutes is 1-1440, as ARM validates it."""
        for minutes in (0, 1441):
            with pytest.raises(ValueError, match="1-1440"):
                sandbox.eventgrid.subscribe(Collector(), event_ttl_minutes=minutes)

    def test_advanced_filter_string_in(self, sandbox: Sandbox):
        """infra/'s `data.ObjectType StringIn [Key]` passes key events (values compare
        case-insensitively); StringIn [Secret] passes none; StringNotIn inverts; a filter
        on an envelope field (subject) works as well."""
        collectors = {name: Collector() for name in ("key", "lower", "secret", "not", "subj")}
        filters: dict[str, dict[str, Any]] = {
            "key": {"operatorType": "StringIn", "key": "data.ObjectType", "values": ["Key"]},
            "lower": {"operatorType": "StringIn", "key": "data.ObjectType", "values": ["key"]},
            "secret": {"operatorType": "StringIn", "key": "data.ObjectType", "values": ["Secret"]},
            "not": {"operatorType": "StringNotIn", "key": "data.ObjectType", "values": ["Key"]},
            "subj": {"operatorType": "StringIn", "key": "subject", "values": ["K1", "k2"]},
        }
        for name, collector in collectors.items():
            sandbox.eventgrid.subscribe(collector, advanced_filters=[filters[name]], name=name)
        sandbox.world.emit(_event())
        sandbox.drain_events()
        got = {name: len(c.events) for name, c in collectors.items()}
        assert got == {"key": 1, "lower": 1, "secret": 0, "not": 0, "subj": 1}

    def test_other_filter_operators_are_refused(self, sandbox: Sandbox):
        """An operator the sandbox does not emulate is refused, not silently ignored."""
        with pytest.raises(ValueError, match="StringIn, StringNotIn"):
            sandbox.eventgrid.subscribe(
                Collector(),
                advanced_filters=[
                    {"operatorType": "NumberGreaterThan", "key": "data.EXP", "value": 1}
                ],
            )

    def test_http_webhook_delivery(self, sandbox: Sandbox):
        """A URL subscriber receives an Event Grid schema array with aeg-* headers."""
        received: list[tuple[dict[str, str], Any]] = []

        async def hook(request: web.Request) -> web.Response:
            received.append((dict(request.headers), await request.json()))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        sock = bind_loopback()

        async def serve() -> None:
            await runner.setup()
            await web.SockSite(runner, sock).start()

        sandbox._call(serve())  # the webhook runs on the sandbox's loop, on loopback
        try:
            port = sock.getsockname()[1]
            sandbox.eventgrid.subscribe(url=f"http://127.0.0.1:{port}/hook", name="hooksub")
            sandbox.world.emit(_event())
            sandbox.drain_events()
        finally:
            sandbox._call(runner.cleanup())
        [(headers, body)] = received
        assert headers["aeg-event-type"] == "Notification"
        assert headers["aeg-subscription-name"] == "HOOKSUB"
        assert isinstance(body, list) and body[0]["subject"] == "k1"


class TestCustomTopics:
    def test_cloud_events_with_key(self, sandbox: Sandbox):
        """EventGridPublisherClient sends CloudEvents with the key; the topic keeps them."""
        topic = sandbox.eventgrid.create_topic("alerts")
        client = EventGridPublisherClient(topic.endpoint, AzureKeyCredential(topic.key))
        client.send([CloudEvent(source="/cmk", type="Cmk.Alert", data={"a": 1})])
        [event] = sandbox.eventgrid.topic("alerts").events
        assert event["type"] == "Cmk.Alert" and event["data"] == {"a": 1}
        assert event["specversion"] == "1.0"

    def test_event_grid_events_with_bearer_token(self, sandbox: Sandbox):
        """A bearer token with EventGrid Data Sender on the topic may publish EG events."""
        topic = sandbox.eventgrid.create_topic("alerts2", region="eastus")
        sandbox.world.grant(
            sandbox.app_principal.object_id, topic.resource_id, "EventGrid Data Sender"
        )
        client = EventGridPublisherClient(topic.endpoint, DefaultAzureCredential())
        client.send(
            [EventGridEvent(subject="s", event_type="Cmk.Alert", data={}, data_version="1")]
        )
        assert topic.events[0]["eventType"] == "Cmk.Alert"

    def test_bearer_without_role_is_forbidden(self, sandbox: Sandbox):
        """A bearer token without the sender role gets 403."""
        topic = sandbox.eventgrid.create_topic("alerts3")
        client = EventGridPublisherClient(topic.endpoint, DefaultAzureCredential())
        with pytest.raises(HttpResponseError) as caught:
            client.send([CloudEvent(source="/cmk", type="Cmk.Alert", data={})])
        assert caught.value.status_code == 403
        assert topic.events == []

    def test_wrong_key_is_unauthorized(self, sandbox: Sandbox):
        """A wrong aeg-sas-key gets 401."""
        topic = sandbox.eventgrid.create_topic("alerts4")
        client = EventGridPublisherClient(topic.endpoint, AzureKeyCredential("nope"))
        with pytest.raises((ClientAuthenticationError, HttpResponseError)) as caught:
            client.send([CloudEvent(source="/cmk", type="Cmk.Alert", data={})])
        assert caught.value.status_code == 401

    async def test_async_publisher(self, sandbox: Sandbox):
        """The async publisher with a managed identity token works too."""
        topic = sandbox.eventgrid.create_topic("alerts5")
        sandbox.world.grant(
            sandbox.app_principal.object_id, topic.resource_id, "EventGrid Data Sender"
        )
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncEventGridPublisherClient(topic.endpoint, credential) as client,
        ):
            await client.send([CloudEvent(source="/cmk", type="Cmk.Alert", data={"n": 5})])
        assert topic.events[0]["data"] == {"n": 5}

    def test_unknown_topic_is_404(self, sandbox: Sandbox):
        """Publishing to a topic that does not exist gets 404."""
        client = EventGridPublisherClient(
            "https://ghost.westeurope-1.eventgrid.azure.net/api/events", AzureKeyCredential("k")
        )
        with pytest.raises(ResourceNotFoundError):
            client.send([CloudEvent(source="/cmk", type="Cmk.Alert", data={})])
