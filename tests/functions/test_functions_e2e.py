"""The repository's Functions app end to end on the local Functions host (two worker
instances) against the sandbox and Azurite: Key Vault events delivered by Event Grid as
infra/ subscribes them, jobs on the Azurite queue, updates through ARM, alerts on the
Event Grid topic, the ledger in Table storage, the timer sweep and the HTTP endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from app_world import KEY, MAX_DEQUEUE_COUNT, ROOT, AppWorld, close_app
from azure.identity.aio import ManagedIdentityCredential
from azure.keyvault.keys.aio import KeyClient

from cmk.ports import LedgerState
from cmk.sandbox.core import Sandbox
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.world import AccountState

WITHIN = 20.0


@pytest.fixture
def app_world(sandbox: Sandbox, azurite: str) -> AppWorld:
    return AppWorld(sandbox, azurite)


@pytest.fixture
async def host(app_world: AppWorld, random_seed: int) -> AsyncIterator[FunctionsHost]:
    """The app on two worker instances, polling its Azurite queues (jitter from the
    session's seed), serving HTTP."""
    async with FunctionsHost(
        ROOT, settings=app_world.settings, instances=2, random_seed=random_seed
    ) as running:
        try:
            yield running
        finally:
            await close_app(running)


async def _create_version(app_world: AppWorld) -> str:
    """A new key version created through the Key Vault SDK, as an operator would."""
    async with (
        ManagedIdentityCredential() as credential,
        KeyClient(app_world.vault.url, credential) as client,
    ):
        key = await client.create_rsa_key(KEY, size=2048)
    assert key.properties.version is not None
    return key.properties.version


def _ids(accounts: list[AccountState]) -> set[str]:
    return {a.resource_id.lower() for a in accounts}


async def _ledger_states(
    app_world: AppWorld, host: FunctionsHost, version: str
) -> dict[str, LedgerState]:
    """Account id (lowercase) -> ledger state of its row for ``version``."""
    entries = await app_world.ledger(host)
    return {str(e.account_id).lower(): e.state for e in entries if e.to_version == version}


async def _settle(app_world: AppWorld, host: FunctionsHost, version: str, expected: int) -> None:
    """Wait until ``expected`` accounts have a SUCCEEDED ledger row for ``version``."""

    async def done() -> bool:
        states = await _ledger_states(app_world, host, version)
        return list(states.values()).count(LedgerState.SUCCEEDED) == expected

    for _ in range(int(WITHIN / 0.1)):
        if await done():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"ledger not settled: {await _ledger_states(app_world, host, version)}")


class TestNewKeyVersion:
    async def test_every_bound_account_moves_to_the_new_version(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """A Key Vault SDK-made version reaches every bound account via Event Grid and the queue."""
        first = app_world.first_version()
        accounts = [app_world.account(f"acct-new-{i}", first.version) for i in range(4)]
        subscriptions = app_world.subscribe(host)

        created = await _create_version(app_world)
        await host.wait_for(lambda: app_world.on_version(created), within=WITHIN)
        await host.wait_idle()

        [new_version] = [s for s in subscriptions if s.name == "cmk-on_key_new_version"]
        [event] = new_version.delivered
        assert event["data"]["Version"] == created
        assert host.invocations["on_key_new_version"] == 1
        assert host.invocations["rotate_account"] == len(accounts)
        entries = await app_world.ledger(host)
        assert {(str(e.account_id).lower(), e.to_version, e.state) for e in entries} == {
            (account_id, created, LedgerState.SUCCEEDED) for account_id in _ids(accounts)
        }
        assert {e.trigger for e in entries} == {event["id"]}
        assert {e.from_version for e in entries} == {first.version}
        assert not host.poisoned and app_world.alerts() == []
        app_world.check_invariants()


class TestNearExpiry:
    async def test_one_new_version_and_every_account_moves(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """Near expiry, delivered twice, creates exactly one version and moves every account."""
        now = app_world.sandbox.world.clock.now()
        expiring = app_world.version(
            created=now - timedelta(days=330), expires=now + timedelta(days=35)
        )
        accounts = [app_world.account(f"acct-exp-{i}", expiring.version) for i in range(3)]
        subscriptions = app_world.subscribe(host)
        app_world.sandbox.eventgrid.duplicate_probability = 1.0

        assert app_world.sandbox.advance_clock(timedelta(days=10)) == 1
        await host.wait_for(lambda: len(app_world.versions()) == 2, within=WITHIN)
        created = app_world.versions()[-1].version
        await host.wait_for(lambda: app_world.on_version(created), within=WITHIN)
        await _settle(app_world, host, created, len(accounts))

        [near] = [s for s in subscriptions if s.name == "cmk-on_key_near_expiry"]
        # both copies are handled in the end (the loser of the claim fails, Event Grid retries)
        await host.wait_for(lambda: len(near.delivered) == 2, within=WITHIN)
        assert not app_world.sandbox.eventgrid.dead_letters
        assert len(app_world.versions()) == 2
        newest = app_world.versions()[-1]
        assert newest.size == 2048 and newest.expires is not None
        assert newest.expires > now + timedelta(days=300)
        assert not host.poisoned and app_world.alerts() == []
        app_world.check_invariants()


class TestFailingAccount:
    async def test_persistent_transient_failure_is_retried_then_poisoned_and_alerted_once(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """A PATCH that always answers 503 is tried maxDequeueCount times, then alerted once."""
        first = app_world.first_version()
        healthy = app_world.account("acct-ok", first.version)
        failing = app_world.account("acct-busy", first.version)
        rule = app_world.sandbox.faults.add(
            host="management.azure.com",
            path=f"/accounts/{failing.name}$",
            method="PATCH",
            status=503,
            retry_after=0.01,
        )
        app_world.subscribe(host)

        created = app_world.version(emit=True).version
        await host.wait_for(lambda: host.invocations["on_poison"] == 1, within=WITHIN)
        await host.wait_idle()

        failed = [i for i in host.invocations_of("rotate_account") if not i.succeeded]
        assert sorted(i.dequeue_count or 0 for i in failed) == list(range(1, MAX_DEQUEUE_COUNT + 1))
        assert rule.hits >= MAX_DEQUEUE_COUNT
        assert dict(host.poisoned) == {app_world.settings["CMK_JOB_QUEUE"]: 1}
        assert healthy.encryption.key_version == created
        assert failing.encryption.key_version == first.version
        [alert] = app_world.alerts()
        assert alert["type"] == "CmkRotator.account_update_failed"
        assert alert["subject"].lower() == failing.resource_id.lower()
        assert alert["data"]["toVersion"] == created
        [entry] = await app_world.ledger(host, failing)
        assert entry.state is LedgerState.FAILED and entry.to_version == created
        assert entry.attempts == MAX_DEQUEUE_COUNT
        app_world.check_invariants()

    async def test_identity_without_key_access_fails_at_once_with_one_alert(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """An account whose identity lost key access is a permanent failure: no retry, one alert."""
        first = app_world.first_version()
        healthy = app_world.account("acct-ok", first.version)
        denied = app_world.account("acct-denied", first.version, grant=False)
        app_world.subscribe(host)

        created = app_world.version(emit=True).version
        await host.wait_for(lambda: len(app_world.alerts()) == 1, within=WITHIN)
        await host.wait_idle()

        assert healthy.encryption.key_version == created
        assert denied.encryption.key_version == first.version
        assert host.invocations["rotate_account"] == 2 and not host.failures
        assert host.invocations["on_poison"] == 0 and not host.poisoned
        [alert] = app_world.alerts()
        assert alert["type"] == "CmkRotator.identity_missing"
        assert alert["subject"].lower() == denied.resource_id.lower()
        assert alert["data"]["toVersion"] == created
        [entry] = await app_world.ledger(host, denied)
        assert entry.state is LedgerState.FAILED and "KeyVaultAccessDenied" in (entry.cause or "")
        app_world.check_invariants()


class TestSweep:
    async def test_sweep_moves_an_account_whose_event_never_came(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """A version Event Grid never announced is found by the timer sweep and applied."""
        first = app_world.first_version()
        accounts = [app_world.account(f"acct-sw-{i}", first.version) for i in range(2)]
        app_world.subscribe(host)
        missed = app_world.version(emit=False).version
        await asyncio.to_thread(app_world.sandbox.drain_events)
        assert host.invocations["on_key_new_version"] == 0

        await host.fire_timer("sweep")
        await host.wait_for(lambda: app_world.on_version(missed), within=WITHIN)
        await host.wait_idle()

        entries = await app_world.ledger(host)
        assert {(str(e.account_id).lower(), e.state) for e in entries} == {
            (account_id, LedgerState.SUCCEEDED) for account_id in _ids(accounts)
        }
        assert all(e.trigger.startswith("sweep:") for e in entries)
        assert app_world.alerts() == []
        app_world.check_invariants()


async def _call(
    host: FunctionsHost, method: str, route: str, *, key: str | None, **params: str
) -> tuple[int, Any]:
    headers = {"x-functions-key": key} if key is not None else {}
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.request(method, host.url(route), params=params, headers=headers) as response,
    ):
        body = await response.json() if response.content_length else None
        return response.status, body


class TestHttp:
    @pytest.mark.parametrize(
        ("method", "route"),
        [("GET", "status"), ("GET", "plan"), ("POST", "sweep"), ("POST", "rotate")],
    )
    async def test_without_a_valid_key_is_refused(
        self, app_world: AppWorld, host: FunctionsHost, method: str, route: str
    ) -> None:
        """No key, or a wrong one, is answered 401 and the function never runs."""
        assert (await _call(host, method, route, key=None))[0] == 401
        assert (await _call(host, method, route, key="not-the-key"))[0] == 401
        assert sum(host.invocations.values()) == 0

    async def test_status_lists_the_inventory(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """GET /api/status with the function key answers every bound account as JSON."""
        first = app_world.first_version()
        accounts = [app_world.account(f"acct-st-{i}", first.version) for i in range(2)]
        newer = app_world.version().version

        status, body = await _call(host, "GET", "status", key=host.function_key)

        assert status == 200
        rows = body["accounts"]  # the schema of `cmk status -o json`
        assert {row["account_id"].lower() for row in rows} == _ids(accounts)
        assert {(row["bound_version"], row["newest_version"]) for row in rows} == {
            (first.version, newer)
        }
        assert body["summary"]["stale"] == 2 and body["exit_code"] == 1

    async def test_rotate_creates_a_version_and_moves_the_accounts(
        self, app_world: AppWorld, host: FunctionsHost
    ) -> None:
        """POST /api/rotate?key_id=... creates one version and every bound account follows."""
        first = app_world.first_version()
        accounts = [app_world.account(f"acct-rot-{i}", first.version) for i in range(2)]
        key_id = f"{app_world.vault.url}/keys/{KEY}"

        status, body = await _call(host, "POST", "rotate", key=host.function_key, key_id=key_id)

        assert status == 200
        rotation = body["rotation"]  # the schema of `cmk rotate -o json`
        assert rotation["outcome"] == "rotated"
        created = rotation["created_version"]
        assert [v.version for v in app_world.versions()] == [first.version, created]
        assert {m["account_id"].lower() for m in rotation["moves"]} == _ids(accounts)
        await host.wait_for(lambda: app_world.on_version(created), within=WITHIN)
        await host.wait_idle()
        app_world.check_invariants()

    @pytest.mark.parametrize(
        ("params", "status", "message"),
        [
            ({}, 400, "key_id is required"),
            ({"key_id": "not a key id"}, 400, ""),
            (
                {"key_id": "https://kvelsewhere.vault.azure.net/keys/cmk"},
                400,
                "CMK_VAULT_ALLOWLIST",
            ),
        ],
        ids=["missing", "malformed", "out-of-scope"],
    )
    async def test_bad_key_id_is_a_client_error(
        self,
        app_world: AppWorld,
        host: FunctionsHost,
        params: dict[str, str],
        status: int,
        message: str,
    ) -> None:
        """A missing, malformed or out-of-scope key id gets 400 and a message; nothing is made."""
        app_world.account("acct-bad", app_world.first_version().version)

        answered, body = await _call(host, "POST", "rotate", key=host.function_key, **params)

        assert answered == status
        assert message in body["error"]["message"] and body["error"]["message"]
        assert body["error"]["exit_code"] == 2
        assert len(app_world.versions()) == 1

    async def test_unknown_key_is_not_found(self, app_world: AppWorld, host: FunctionsHost) -> None:
        """A key that does not exist in an allowed vault is answered 404 with a message."""
        app_world.version()
        key_id = f"{app_world.vault.url}/keys/nosuchkey"

        answered, body = await _call(host, "POST", "rotate", key=host.function_key, key_id=key_id)

        assert answered == 404
        assert "nosuchkey" in body["error"]["message"]
        assert body["error"]["kind"] == "not_found"
