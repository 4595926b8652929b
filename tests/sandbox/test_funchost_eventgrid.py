"""Event Grid triggers on the local Functions host: the library's converter produces the
EventGridEvent, the sandbox's Event Grid delivers through the host (callable and webhook),
and a failing function makes Event Grid retry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import CLOUDEVENT_SCHEMA, shape_event
from cmk.sandbox.funchost.host import FunctionInvocationError, FunctionsHost
from cmk.sandbox.funchost.http import EVENTGRID_SYSTEM_KEY
from cmk.sandbox.world import KeyEvent, KeyEventType

SAMPLE_APP = Path(__file__).parent / "sample_app"
SETTINGS = {"SAMPLE_JOB_QUEUE": "eg-jobs", "SAMPLE_SCHEDULE": "0 0 * * * *"}
VAULT_ID = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg"
    "/providers/Microsoft.KeyVault/vaults/kv1"
)


def _event(version: str = "a" * 32, key: str = "k1") -> KeyEvent:
    return KeyEvent(
        event_type=KeyEventType.NEW_VERSION,
        vault="kv1",
        vault_resource_id=VAULT_ID,
        vault_host="kv1.vault.azure.net",
        key_name=key,
        version=version,
        not_before=datetime(2025, 1, 1, tzinfo=UTC),
        expires=None,
        time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def _host(**options: Any) -> FunctionsHost:
    """The sample app without queue listeners (no storage needed)."""
    return FunctionsHost(SAMPLE_APP, settings=SETTINGS, poll_queues=False, **options)


def _received(host: FunctionsHost) -> list[dict[str, Any]]:
    return list(host.module.RECEIVED.get("on_key_event", []))


class TestEventGridTrigger:
    async def test_event_grid_schema_becomes_event_grid_event(self):
        """id, event_type, subject, topic and get_json() come through the library converter."""
        event = shape_event(_event(), "EventGridSchema")
        async with _host(serve_http=False) as host:
            await host.deliver_event_grid("on_key_event", event)
        [received] = _received(host)
        assert received == {
            "type": "EventGridEvent",
            "id": event["id"],
            "event_type": "Microsoft.KeyVault.KeyNewVersionCreated",
            "subject": "k1",
            "topic": VAULT_ID,
            "data": event["data"],
        }
        assert host.invocations["on_key_event"] == 1 and not host.failures

    async def test_cloud_event_is_decoded_as_cloud_event(self):
        """A CloudEvents 1.0 payload comes through the same converter as a CloudEvent."""
        event = shape_event(_event(), CLOUDEVENT_SCHEMA)
        async with _host(serve_http=False) as host:
            await host.deliver_event_grid("on_key_event", event)
        [received] = _received(host)
        assert received["type"] == "CloudEvent"
        assert received["event_type"] == "Microsoft.KeyVault.KeyNewVersionCreated"
        assert received["topic"] == VAULT_ID and received["subject"] == "k1"
        assert received["data"] == event["data"]

    async def test_cloud_event_subscription(self, sandbox: Sandbox):
        """A CloudEvents-schema sandbox subscription reaches the function too."""
        async with _host(serve_http=False) as host:
            sandbox.eventgrid.subscribe(
                host.event_grid_target("on_key_event"), schema=CLOUDEVENT_SCHEMA
            )
            sandbox.world.emit(_event("e" * 32))
            await asyncio.to_thread(sandbox.drain_events)
        [received] = _received(host)
        assert received["type"] == "CloudEvent" and received["data"]["Version"] == "e" * 32

    async def test_failure_raises_with_the_cause(self):
        """A failing function raises FunctionInvocationError and is counted."""
        async with _host(serve_http=False) as host:
            host.module.FAIL["on_key_event"] = 1
            with pytest.raises(FunctionInvocationError, match="failed on purpose") as caught:
                await host.deliver_event_grid("on_key_event", shape_event(_event(), "x"))
        assert isinstance(caught.value.__cause__, RuntimeError)
        assert host.failures["on_key_event"] == 1
        assert host.log[-1].succeeded is False

    async def test_wrong_trigger_type_is_refused(self):
        """Delivering an event to a queue function is an error."""
        host = FunctionsHost(SAMPLE_APP, settings=SETTINGS)
        with pytest.raises(ValueError, match="queueTrigger, not a eventGridTrigger"):
            host.event_grid_target("on_job")

    async def test_sandbox_subscription_delivers_through_the_host(self, sandbox: Sandbox):
        """A sandbox Event Grid subscription with the host's target invokes the function."""
        async with _host(serve_http=False, instances=2) as host:
            subscription = sandbox.eventgrid.subscribe(host.event_grid_target("on_key_event"))
            sandbox.world.emit(_event("b" * 32))
            sandbox.world.emit(_event("c" * 32))
            await asyncio.to_thread(sandbox.drain_events)
        versions = sorted(r["data"]["Version"] for r in _received(host))
        assert versions == ["b" * 32, "c" * 32]
        assert subscription.attempts == 2
        assert {i.instance for i in host.invocations_of("on_key_event")} == {0, 1}

    async def test_failing_function_makes_event_grid_retry(self, sandbox: Sandbox):
        """Two failures, then success: Event Grid delivered three times, nothing dead-lettered."""
        async with _host(serve_http=False) as host:
            host.module.FAIL["on_key_event"] = 2
            subscription = sandbox.eventgrid.subscribe(host.event_grid_target("on_key_event"))
            sandbox.world.emit(_event())
            await asyncio.to_thread(sandbox.drain_events)
        assert subscription.attempts == 3 and subscription.failures == 2
        assert host.failures["on_key_event"] == 2 and host.invocations["on_key_event"] == 3
        assert not sandbox.eventgrid.dead_letters

    async def test_webhook_delivery_with_system_key(self, sandbox: Sandbox):
        """The Event Grid extension webhook accepts the sandbox's HTTP delivery."""
        async with _host() as host:
            code = host.keys.system[EVENTGRID_SYSTEM_KEY]
            url = (
                f"{host.base_url}/runtime/webhooks/eventgrid?functionName=on_key_event&code={code}"
            )
            sandbox.eventgrid.subscribe(url=url)
            sandbox.world.emit(_event("d" * 32))
            await asyncio.to_thread(sandbox.drain_events)
        [received] = _received(host)
        assert received["data"]["Version"] == "d" * 32

    async def test_webhook_without_key_is_refused(self):
        """The webhook answers 401 without the system key, and validates subscriptions."""
        async with (
            _host() as host,
            aiohttp.ClientSession() as http,
        ):
            url = f"{host.base_url}/runtime/webhooks/eventgrid?functionName=on_key_event"
            async with http.post(url, json=[shape_event(_event(), "x")]) as response:
                assert response.status == 401
            validation = [
                {
                    "id": "1",
                    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                    "data": {"validationCode": "abc"},
                }
            ]
            async with http.post(
                f"{url}&code={host.master_key}",
                json=validation,
                headers={"aeg-event-type": "SubscriptionValidation"},
            ) as response:
                assert await response.json() == {"validationResponse": "abc"}
        assert not _received(host)
