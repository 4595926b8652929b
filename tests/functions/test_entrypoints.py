"""cmk.entrypoints against the sandbox and Azurite: throttled jobs go back on the queue
instead of burning deliveries, a key event that fails for good raises one alert and
completes, and http_rotate answers 403 when the app may not use the key."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from app_world import KEY, REGION, SUB, AppWorld

from cmk import entrypoints
from cmk.adapters.jobqueue import decode_job, encode_job
from cmk.entrypoints import MAX_DEFERRED, throttle_delay
from cmk.errors import NewerFormat, ServiceUnavailable, ThrottledError
from cmk.events import KeyVaultEventType
from cmk.keyid import KeyId
from cmk.ports import RotationJob
from cmk.resource_id import AccountId
from cmk.runtime import Runtime
from cmk.sandbox.core import Sandbox
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import add_key_version, key_event
from cmk.sandbox.world import AccountState, KeyEventType, VaultKind, VaultState
from cmk.sandbox.world import Subscription as ArmSubscription
from cmk.settings import Settings
from cmk.usecases import Engine
from cmk.wiring import RetryOptions, WiringOptions

# As the other suites: the SDK retries at once (three times), LROs poll fast.
TEST_OPTIONS = WiringOptions(retry=RetryOptions(total=3, backoff=False), polling_interval=0.05)
ARM = "management.azure.com"


@dataclass
class Rig:
    """The seeded world, a vault in the allow-list the app holds no role on, and the
    app's runtime (settings as the Functions app reads them)."""

    world: AppWorld
    locked: VaultState
    runtime: Runtime

    @property
    def engine(self) -> Engine:
        return self.runtime.engine()

    @property
    def sandbox(self) -> Sandbox:
        return self.world.sandbox

    def stale_job(self, name: str, **changes: Any) -> tuple[AccountState, RotationJob]:
        """An account on the first version and the job that moves it to a newer one."""
        first = self.world.first_version().version
        newer = self.world.version().version
        account = self.world.account(name, first)
        job = RotationJob(
            account_id=AccountId.parse(account.resource_id),
            target=KeyId(self.world.vault.url, KEY, newer),
            trigger="test",
            from_version=first,
            **changes,
        )
        return account, job

    def locked_event(self) -> tuple[dict[str, Any], KeyId]:
        """A KeyNewVersionCreated event (Event Grid schema) for a version in ``locked``."""
        world = self.sandbox.world
        with world.lock:
            version = add_key_version(world, self.locked, KEY, emit=False)
            state = self.locked.keys[KEY]
            raw = key_event(world, KeyEventType.NEW_VERSION, self.locked, state, version)
        return shape_event(raw, "EventGridSchema"), KeyId(self.locked.url, KEY, version.version)

    async def queued(self) -> list[RotationJob]:
        """The jobs visible in the queue now (peeked)."""
        client = self.runtime.services.jobs.client
        return [decode_job(m.content) for m in await client.peek_messages(max_messages=32)]

    async def visible(self, ceiling: float = 60.0) -> list[RotationJob]:
        """The jobs once one is visible (the ceiling only bounds a hang)."""
        deadline = time.monotonic() + ceiling
        while not (jobs := await self.queued()):
            assert time.monotonic() < deadline, "no job became visible"
            await asyncio.sleep(0.05)
        return jobs

    async def queue_length(self) -> int:
        """Every message in the queue, invisible ones included."""
        properties = await self.runtime.services.jobs.client.get_queue_properties()
        return int(properties.approximate_message_count or 0)


@pytest.fixture
async def rig(sandbox: Sandbox, azurite: str) -> AsyncIterator[Rig]:
    app_world = AppWorld(sandbox, azurite)
    world = sandbox.world
    locked = VaultState(
        f"kvlocked{uuid.uuid4().hex[:6]}", VaultKind.VAULT, SUB, "rg-keys", REGION, world.tenant_id
    )
    with world.lock:
        world.vaults[locked.host] = locked
    settings = Settings.from_environ(
        {
            **app_world.settings,
            "CMK_VAULT_ALLOWLIST": f"{app_world.vault.url},{locked.url}",
        }
    )
    async with Runtime(settings, options=TEST_OPTIONS) as runtime:
        await runtime.prepare_storage()
        yield Rig(app_world, locked, runtime)


class TestThrottleDelay:
    def test_follows_retry_after_with_jitter(self) -> None:
        """The delay is the service's Retry-After plus 0-25 %, spread across jobs (by
        account), the same for one job every time (no random source: runs replay)."""
        delays = {throttle_delay(8.0, 0, f"acct-{n}") for n in range(50)}
        assert all(timedelta(seconds=8) <= d <= timedelta(seconds=10) for d in delays)
        assert len(delays) > 40
        assert throttle_delay(8.0, 1, "acct-1") == throttle_delay(8.0, 1, "acct-1")

    def test_without_retry_after_backs_off(self) -> None:
        """Without a Retry-After the delay is 5 s, doubled per earlier deferral of the job,
        at most a minute (plus jitter)."""
        assert timedelta(seconds=5) <= throttle_delay(None) <= timedelta(seconds=6.25)
        assert timedelta(seconds=20) <= throttle_delay(None, 2) <= timedelta(seconds=25)
        assert timedelta(seconds=60) <= throttle_delay(None, 9) <= timedelta(seconds=75)

    def test_zero_retry_after_waits_a_second(self) -> None:
        """A Retry-After of 0 still waits at least a second."""
        assert throttle_delay(0.0) >= timedelta(seconds=1)


class TestThrottledJob:
    async def test_throttled_patch_is_deferred(self, rig: Rig) -> None:
        """A job whose PATCH keeps getting 429 is put back on the queue, invisible for the
        Retry-After, with one deferral more; the handler completes the message."""
        account, job = rig.stale_job("acct-throttled", deferrals=2)
        rule = rig.sandbox.faults.add(
            host=ARM, path=account.name, method="PATCH", status=429, retry_after=1
        )

        started = time.monotonic()
        report = await entrypoints.handle_job_message(rig.engine, encode_job(job))

        assert report is None
        assert rule.hits == 1  # the SDK never re-sends a PATCH (DESIGN §2): deferred at once
        assert await rig.queue_length() == 1
        [deferred] = await rig.visible()
        assert deferred == replace(job, deferrals=3, deferred_seconds=deferred.deferred_seconds)
        assert 1 <= deferred.deferred_seconds <= 2  # the Retry-After, jitter, whole seconds
        # Invisible for the Retry-After (1 s) at least: a lower bound, which load only
        # makes truer (Azurite keeps visibility in milliseconds; 50 ms for rounding).
        assert time.monotonic() - started >= 0.95
        assert account.encryption.key_version == job.from_version

    async def test_deferred_job_runs_once_the_throttle_passes(self, rig: Rig) -> None:
        """The deferred message, delivered again after the throttle, moves the account."""
        account, job = rig.stale_job("acct-later")
        rule = rig.sandbox.faults.add(
            host=ARM, path=account.name, method="PATCH", status=429, retry_after=1
        )
        assert await entrypoints.handle_job_message(rig.engine, encode_job(job)) is None
        rig.sandbox.faults.remove(rule)
        [deferred] = await rig.visible()

        report = await entrypoints.handle_job_message(rig.engine, encode_job(deferred))

        assert report is not None and report.result.value == "succeeded"
        assert account.encryption.key_version == job.target.version

    async def test_many_deferrals_within_the_budget_still_defer(self, rig: Rig) -> None:
        """The cap is time spent deferred, not a count: a job met by 429s a hundred times
        in a busy subscription (instances sharing its budget) is deferred again, not
        poisoned for it."""
        account, job = rig.stale_job("acct-often", deferrals=100, deferred_seconds=600)
        rig.sandbox.faults.add(
            host=ARM, path=account.name, method="PATCH", status=429, retry_after=1
        )

        assert await entrypoints.handle_job_message(rig.engine, encode_job(job)) is None

        [deferred] = await rig.visible()
        assert deferred.deferrals == 101 and 601 <= deferred.deferred_seconds <= 602

    async def test_after_the_cap_the_throttle_propagates(self, rig: Rig) -> None:
        """A job deferred for MAX_DEFERRED in all raises the 429, so the host's retries and
        the poison queue take over; nothing is enqueued."""
        budget = int(MAX_DEFERRED.total_seconds())
        account, job = rig.stale_job("acct-capped", deferrals=3, deferred_seconds=budget)
        rig.sandbox.faults.add(
            host=ARM, path=account.name, method="PATCH", status=429, retry_after=1
        )

        with pytest.raises(ThrottledError):
            await entrypoints.handle_job_message(rig.engine, encode_job(job))

        assert await rig.queue_length() == 0

    async def test_dry_run_never_enqueues(self, rig: Rig) -> None:
        """In a dry run a throttled job raises instead of writing to the queue."""
        account, job = rig.stale_job("acct-dry")
        rig.sandbox.faults.add(host=ARM, path=account.name, method="GET", status=429, retry_after=1)

        with pytest.raises(ThrottledError):
            await entrypoints.handle_job_message(rig.runtime.engine(dry_run=True), encode_job(job))

        assert await rig.queue_length() == 0


class TestKeyEventFailures:
    async def test_access_denied_alerts_once_and_completes(self, rig: Rig) -> None:
        """An event for an allow-listed vault the app may not read raises one event_failed
        alert and returns; a second delivery raises no second alert."""
        event, key_id = rig.locked_event()

        first = await entrypoints.handle_key_event(rig.engine, event, KeyVaultEventType.NEW_VERSION)
        second = await entrypoints.handle_key_event(
            rig.engine, event, KeyVaultEventType.NEW_VERSION
        )

        assert first is None and second is None
        [alert] = rig.world.alerts("event_failed")
        assert alert["subject"] == str(key_id.versionless())
        assert alert["data"]["toVersion"] == key_id.version
        assert alert["data"]["severity"] == "error"
        assert event["id"] in alert["data"]["cause"]
        assert "AccessDenied" in alert["data"]["cause"]
        assert len(rig.world.alerts()) == 1

    async def test_alert_that_cannot_be_recorded_retries_the_event(self, rig: Rig) -> None:
        """The event failed for good but its event_failed alert cannot be recorded (the
        ledger table answers 503): the event fails too, so Event Grid delivers it again,
        and that delivery raises the alert — no event is completed without its alert."""
        event, _ = rig.locked_event()
        sink = rig.engine.alerts

        class TableDown:
            def __getattr__(self, name: str) -> Any:
                return getattr(sink, name)

            async def raise_alert(self, alert: Any) -> bool:
                raise ServiceUnavailable("recording the alert failed: 503")

        down = replace(rig.engine, alerts=TableDown())
        with pytest.raises(ServiceUnavailable):
            await entrypoints.handle_key_event(down, event, KeyVaultEventType.NEW_VERSION)
        assert rig.world.alerts() == []

        again = await entrypoints.handle_key_event(rig.engine, event, KeyVaultEventType.NEW_VERSION)

        assert again is None
        assert len(rig.world.alerts("event_failed")) == 1

    async def test_transient_error_still_propagates(self, rig: Rig) -> None:
        """A Key Vault that keeps answering 503 fails the event (Event Grid retries), with
        no alert."""
        version = rig.world.version()
        rig.sandbox.faults.add(host=rig.world.vault.host, status=503)
        world = rig.sandbox.world
        raw = key_event(
            world, KeyEventType.NEW_VERSION, rig.world.vault, rig.world.vault.keys[KEY], version
        )

        with pytest.raises(ServiceUnavailable):
            await entrypoints.handle_key_event(
                rig.engine, shape_event(raw, "EventGridSchema"), KeyVaultEventType.NEW_VERSION
            )

        assert rig.world.alerts() == []

    async def test_dry_run_does_not_alert(self, rig: Rig) -> None:
        """In a dry run the failed event is logged and completed but not alerted."""
        event, _ = rig.locked_event()

        report = await entrypoints.handle_key_event(
            rig.runtime.engine(dry_run=True), event, KeyVaultEventType.NEW_VERSION
        )

        assert report is None
        assert rig.world.alerts() == []


#: How the log alert rules of infra/app/alerting.bicep read an ERROR line's alert type.
RULE_EXTRACT = re.compile(r"cmk_alert_type=([a-z_]+)")


def _rejected_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The ERROR lines the log alert rules read as ``input_rejected``."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and (m := RULE_EXTRACT.search(r.getMessage()))
        and m.group(1) == "input_rejected"
    ]


class TestRejectedInput:
    """Input that decides nothing is repaired, not lost; input that is dropped for good
    says so on an ERROR line the log alert rules fire on, with what was received."""

    def event_for_new_version(self, rig: Rig) -> dict[str, Any]:
        rig.stale_job("acct-hint")  # an account on the first version, bound to the key
        version = rig.world.version()
        world = rig.sandbox.world
        raw = key_event(
            world, KeyEventType.NEW_VERSION, rig.world.vault, rig.world.vault.keys[KEY], version
        )
        return shape_event(raw, "EventGridSchema")

    @pytest.mark.parametrize(
        "change",
        [
            {"NBF": "-1"},
            {"EXP": "2030-01-01T00:00:00Z"},
            {"EXP": [1]},
            {"id": "e" * 600},
            {"id": "tab\there"},
        ],
    )
    async def test_a_hint_that_cannot_be_read_does_not_lose_the_event(
        self, rig: Rig, change: dict[str, object], caplog: pytest.LogCaptureFixture
    ) -> None:
        """An NBF/EXP that is not unix seconds or an over-long event id is dropped with a
        WARNING; the event still moves its accounts (one job queued)."""
        event = self.event_for_new_version(rig)
        if "id" in change:
            event["id"] = change["id"]
        else:
            event["data"] = {**event["data"], **change}

        with caplog.at_level(logging.WARNING):
            report = await entrypoints.handle_key_event(
                rig.engine, event, KeyVaultEventType.NEW_VERSION
            )

        assert report is not None
        assert len(await rig.visible()) == 1
        assert _rejected_lines(caplog) == []
        notes = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("ignored" in note or "shortened" in note for note in notes), notes

    async def test_a_rejected_event_is_logged_for_the_alert_rule(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An event that disagrees with itself is completed (retrying cannot fix it) on an
        ERROR line the rules read as input_rejected, with the event as received."""
        event = self.event_for_new_version(rig)
        event["data"] = {**event["data"], "VaultName": "some-other-vault"}

        with caplog.at_level(logging.ERROR):
            report = await entrypoints.handle_key_event(
                rig.engine, event, KeyVaultEventType.NEW_VERSION
            )

        assert report is None
        [line] = _rejected_lines(caplog)
        assert "inconsistent" in line and "some-other-vault" in line and event["id"] in line
        assert await rig.queued() == []

    @pytest.mark.parametrize("body", ["[" * 5000, "not json", json.dumps({"v": 1})])
    async def test_a_message_that_is_not_a_job_is_logged_for_the_alert_rule(
        self, rig: Rig, body: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Garbage (deep nesting included) on the job or poison queue is completed, not
        left to crash the host until the message lands where nothing reads it."""
        with caplog.at_level(logging.ERROR):
            assert await entrypoints.handle_job_message(rig.engine, body) is None
            assert await entrypoints.handle_poison_message(rig.engine, body) is None

        lines = _rejected_lines(caplog)
        assert len(lines) == 2
        assert all(body[:40] in line for line in lines)

    async def test_a_job_of_a_newer_release_is_left_for_it(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A job in a newer format (a rolling deployment) is put back on the job queue as
        it came, for later — from the poison queue too (it never ran, so it was not
        poisoned): never dropped, failed or alerted. In a dry run the host's redelivery
        keeps it instead."""
        _, job = rig.stale_job("acct-newer")
        body = json.loads(encode_job(job))
        body["v"] = 2
        text = json.dumps(body)

        with caplog.at_level(logging.WARNING):
            assert await entrypoints.handle_job_message(rig.engine, text) is None
            assert await entrypoints.handle_poison_message(rig.engine, text) is None

        assert await rig.queue_length() == 2  # both back, invisible for a while
        assert await rig.queued() == []
        assert _rejected_lines(caplog) == []
        assert rig.world.alerts() == []
        with pytest.raises(NewerFormat):
            await entrypoints.handle_job_message(rig.runtime.engine(dry_run=True), text)

    async def test_a_poison_job_outside_the_allow_list_is_skipped(self, rig: Rig) -> None:
        """A poison job for a vault not in CMK_VAULT_ALLOWLIST reads nothing and alerts
        nobody, as its job would have skipped it."""
        _, job = rig.stale_job("acct-outside")
        outside = replace(job, target=KeyId("https://kvnotallowed.vault.azure.net", KEY, "0" * 32))
        rig.sandbox.counters.reset()

        report = await entrypoints.handle_poison_message(rig.engine, encode_job(outside))

        assert report is not None and report.result.value == "skipped"
        assert "CMK_VAULT_ALLOWLIST" in (report.cause or "")
        assert rig.world.alerts() == []
        assert rig.sandbox.counters.matching(host=ARM) == []


class TestHttpRotate:
    async def test_a_failure_after_the_create_names_the_version(self, rig: Rig) -> None:
        """Resource Graph down after the new version exists: 503 transient naming the
        version created (its accounts are the next sweep's); a retry within the
        cool-down is answered 409 with the same version, and makes none."""
        rig.stale_job("acct-http")
        before = len(rig.world.versions())
        rig.sandbox.faults.add(host=ARM, path="Microsoft.ResourceGraph/resources", status=503)
        key = f"{rig.world.vault.url}/keys/{KEY}"

        status, body = await entrypoints.http_rotate(rig.engine, key)

        assert status == 503, body
        assert isinstance(body, dict)
        error = body["error"]
        created = rig.world.versions()[-1].version
        assert len(rig.world.versions()) == before + 1
        assert error["kind"] == "transient" and body["created_version"] == created
        assert created in error["message"] and "sweep" in error["fix"]
        again, answer = await entrypoints.http_rotate(rig.engine, key)
        assert again == 409 and isinstance(answer, dict)
        assert answer["created_version"] == created
        assert len(rig.world.versions()) == before + 1

    async def test_a_failure_before_the_create_says_nothing_was_created(self, rig: Rig) -> None:
        """Key Vault down: 503 transient with created_version null; no version made."""
        rig.stale_job("acct-http-kv")
        before = len(rig.world.versions())
        rig.sandbox.faults.add(host=rig.world.vault.host, status=503)

        status, body = await entrypoints.http_rotate(
            rig.engine, f"{rig.world.vault.url}/keys/{KEY}"
        )

        assert status == 503 and isinstance(body, dict)
        assert body["error"]["kind"] == "transient" and body["created_version"] is None
        assert "no version is known to have been created" in body["error"]["message"]
        assert len(rig.world.versions()) == before

    async def test_access_denied_is_forbidden(self, rig: Rig) -> None:
        """Rotating a key the app may not use answers 403 with a message; nothing is made."""
        rig.locked_event()  # the key exists, with one version

        status, body = await entrypoints.http_rotate(rig.engine, f"{rig.locked.url}/keys/{KEY}")

        assert status == 403
        assert isinstance(body, dict) and "may not rotate" in body["error"]["message"]
        assert body["error"]["kind"] == "access_denied" and body["error"]["fix"]
        assert len(rig.locked.keys[KEY].versions) == 1


#: The members of each answer, as `cmk ... -o json` prints them (docs/cli.md).
CLI_KEYS = {
    "status": {"accounts", "summary", "scope", "warnings", "exit_code"},
    "plan": {"plan", "scope", "warnings", "exit_code"},
    "sweep": {"sweep", "jobs", "summary", "scope", "warnings", "exit_code"},
}
ERROR_KEYS = {"kind", "message", "fix", "exit_code"}
HIDDEN_SUB = "7b7b7b7b-2222-4222-8222-222222222222"


async def _runtime_with(rig: Rig, **values: str) -> Runtime:
    """A second runtime over the same world with some settings changed ('' unsets one)."""
    environ = {**rig.world.settings, "CMK_VAULT_ALLOWLIST": rig.world.vault.url, **values}
    return Runtime(
        Settings.from_environ({k: v for k, v in environ.items() if v}), options=TEST_OPTIONS
    )


class TestHttpAnswers:
    """The HTTP endpoints answer in the CLI's schemas, and say which subscriptions they
    covered."""

    async def test_status_plan_sweep_answer_as_the_cli(self, rig: Rig) -> None:
        """/api/status, /api/plan and /api/sweep carry exactly the members of `cmk status`,
        `cmk plan` and `cmk sweep` -o json; a stale account makes status's exit_code 1,
        while for plan and sweep a move is work, not a finding (0)."""
        first = rig.world.first_version().version
        rig.world.version()
        rig.world.account("acct-schema", first)

        answers = {
            "status": await entrypoints.http_status(rig.engine),
            "plan": await entrypoints.http_plan(rig.engine),
            "sweep": await entrypoints.http_sweep(rig.engine),
        }

        for name, (status, body) in answers.items():
            assert status == 200, name
            assert isinstance(body, dict) and set(body) == CLI_KEYS[name], name
            assert body["exit_code"] == (1 if name == "status" else 0), name
            assert body["warnings"] == [], name
            assert body["scope"]["source"] == "CMK_SUBSCRIPTIONS"
            assert [s["id"] for s in body["scope"]["subscriptions"]] == [SUB]
            assert body["scope"]["subscriptions"][0]["name"] == "sub-app"
        status_body = answers["status"][1]
        assert isinstance(status_body, dict)
        assert status_body["summary"]["stale"] == 1
        sweep_body = answers["sweep"][1]
        assert isinstance(sweep_body, dict)
        assert sweep_body["jobs"] == [] and sweep_body["sweep"]["enqueued"] == 1

    async def test_configured_subscription_not_visible_is_a_warning(
        self, rig: Rig, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A CMK_SUBSCRIPTIONS entry the identity cannot see is named in warnings (exit 1),
        left out of the inventory, and logged at WARNING for the app's logs."""
        first = rig.world.first_version().version
        rig.world.account("acct-hidden", first)
        async with await _runtime_with(rig, CMK_SUBSCRIPTIONS=f"{SUB},{HIDDEN_SUB}") as runtime:
            with caplog.at_level("WARNING", logger="cmk.usecases.subscriptions"):
                status, body = await entrypoints.http_status(runtime.engine())

        assert status == 200 and isinstance(body, dict)
        assert body["scope"]["not_visible"] == [HIDDEN_SUB]
        assert [s["id"] for s in body["scope"]["subscriptions"]] == [SUB]
        assert any(HIDDEN_SUB in w and "not visible" in w for w in body["warnings"])
        assert body["exit_code"] == 1 and body["summary"]["current"] == 1
        assert any(HIDDEN_SUB in r.getMessage() for r in caplog.records)

    async def test_unset_subscriptions_means_every_readable_one(self, rig: Rig) -> None:
        """Without CMK_SUBSCRIPTIONS the scope is what ARM lists for the identity: the
        app's subscription (by name), not one it holds no role in."""
        world = rig.sandbox.world
        with world.lock:
            world.subscriptions[HIDDEN_SUB] = ArmSubscription(HIDDEN_SUB, world.tenant_id, "x")
        first = rig.world.first_version().version
        rig.world.account("acct-default", first)
        async with await _runtime_with(rig, CMK_SUBSCRIPTIONS="") as runtime:
            status, body = await entrypoints.http_status(runtime.engine())

        assert status == 200 and isinstance(body, dict)
        scope = body["scope"]
        assert scope["source"] == "readable by the identity"
        ids = {s["id"]: s["name"] for s in scope["subscriptions"]}
        assert ids[SUB] == "sub-app" and HIDDEN_SUB not in ids
        assert [a["account_id"].rsplit("/", 1)[1] for a in body["accounts"]] == ["acct-default"]

    async def test_errors_answer_as_the_cli(self, rig: Rig) -> None:
        """An error answer is {error: {kind, message, fix, exit_code}} as the CLI's."""
        status, body = await entrypoints.http_rotate(rig.engine, None)

        assert status == 400 and isinstance(body, dict) and set(body) == {"error"}
        assert set(body["error"]) == ERROR_KEYS
        assert body["error"]["kind"] == "usage" and body["error"]["exit_code"] == 2
        assert "key_id" in body["error"]["fix"]
