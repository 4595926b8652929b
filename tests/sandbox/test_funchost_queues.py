"""Queue triggers on the local Functions host against Azurite: messages processed and
deleted, failures retried up to maxDequeueCount then moved to the poison queue (whose
trigger fires once), undecodable messages poisoned, bounded concurrency and scale-out.
Every host's polling jitter is drawn from the session's seed (``random_seed``)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from cmk.sandbox.funchost.host import FunctionsHost, Invocation
from cmk.sandbox.funchost.index import FunctionIndexError
from cmk.sandbox.funchost.queues import _on_loopback

SAMPLE_APP = Path(__file__).parent / "sample_app"


@pytest.fixture
def queue_name() -> str:
    return f"jobs-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(azurite: str, queue_name: str) -> dict[str, str]:
    return {
        "AzureWebJobsStorage": azurite,
        "SAMPLE_JOB_QUEUE": queue_name,
        "SAMPLE_SCHEDULE": "0 0 * * * *",
    }


@pytest.fixture
async def jobs(azurite: str, queue_name: str) -> AsyncIterator[QueueClient]:
    """The sample's job queue, created, with the base64 encoding the trigger expects."""
    client = QueueClient.from_connection_string(
        azurite, queue_name, message_encode_policy=TextBase64EncodePolicy()
    )
    await client.create_queue()
    try:
        yield client
    finally:
        await client.close()


def _received(host: FunctionsHost, function: str) -> list[dict[str, Any]]:
    return list(host.module.RECEIVED.get(function, []))


async def _count(azurite: str, queue: str) -> int:
    async with QueueClient.from_connection_string(azurite, queue) as client:
        return len(await client.peek_messages(max_messages=32))


def _max_overlap(invocations: list[Invocation]) -> int:
    edges: list[tuple[datetime, int]] = []
    for i in invocations:
        edges.append((i.started, 1))
        edges.append((i.started + timedelta(seconds=i.seconds), -1))
    running = peak = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):
        running += step
        peak = max(peak, running)
    return peak


class TestQueueTrigger:
    async def test_message_is_processed_and_deleted(
        self,
        settings: dict[str, str],
        jobs: QueueClient,
        azurite: str,
        queue_name: str,
        random_seed: int,
    ):
        """A base64 message reaches the function as a QueueMessage and is then deleted."""
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            sent = await jobs.send_message('{"account": "a1"}')
            await host.wait_for(lambda: host.invocations["on_job"] == 1)
            await host.wait_idle()
        [received] = _received(host, "on_job")
        assert received["id"] == sent.id
        assert received["body"] == '{"account": "a1"}'
        assert received["dequeue_count"] == 1 and received["inserted"] is True
        assert received["thread"].startswith("funchost")  # a sync function runs in the pool
        assert await _count(azurite, queue_name) == 0

    async def test_failing_message_is_retried_then_poisoned(
        self,
        settings: dict[str, str],
        jobs: QueueClient,
        azurite: str,
        queue_name: str,
        random_seed: int,
    ):
        """maxDequeueCount (3) attempts, then <queue>-poison; its trigger fires exactly once."""
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            await jobs.send_message("poison-me")
            await host.wait_for(lambda: host.invocations["on_job_poison"] == 1)
            await host.wait_idle()
        attempts = [r["dequeue_count"] for r in _received(host, "on_job")]
        assert attempts == [1, 2, 3]
        assert host.failures["on_job"] == 3
        assert host.poisoned == {queue_name: 1}
        assert _received(host, "on_job_poison") == [
            {"body": "poison-me", "function": "on_job_poison"}
        ]
        assert await _count(azurite, queue_name) == 0
        assert await _count(azurite, f"{queue_name}-poison") == 0

    async def test_poison_trigger_fires_once_even_after_waiting(
        self, settings: dict[str, str], jobs: QueueClient, random_seed: int
    ):
        """Polling on after poisoning invokes neither function again."""
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            await jobs.send_message("poison-again")
            await host.wait_for(lambda: host.invocations["on_job_poison"] == 1)
            with pytest.raises(TimeoutError):
                await host.wait_for(
                    lambda: host.invocations["on_job_poison"] > 1 or host.invocations["on_job"] > 3,
                    within=1.0,
                )
        assert host.invocations["on_job"] == 3 and host.invocations["on_job_poison"] == 1

    async def test_invalid_base64_is_poisoned_without_invocation(
        self, settings: dict[str, str], azurite: str, queue_name: str, random_seed: int
    ):
        """A message that is not base64 goes straight to the poison queue."""
        async with QueueClient.from_connection_string(azurite, queue_name) as raw:
            await raw.create_queue()
            await raw.send_message("not base64 at all!")
            async with FunctionsHost(
                SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
            ) as host:
                await host.wait_for(lambda: host.poisoned[queue_name] == 1)
        assert host.invocations["on_job"] == 0

    async def test_concurrency_is_bounded_per_instance(
        self, settings: dict[str, str], jobs: QueueClient, random_seed: int
    ):
        """Slow messages run in parallel, at most batchSize + newBatchThreshold (6) at once."""
        for n in range(14):
            await jobs.send_message(f"slow-{n}")
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            await host.wait_for(lambda: host.invocations["on_job"] == 14, within=120)
        overlap = _max_overlap(host.invocations_of("on_job"))
        assert 1 < overlap <= 6
        assert sorted(r["body"] for r in _received(host, "on_job")) == sorted(
            f"slow-{n}" for n in range(14)
        )

    async def test_instances_share_the_queue(
        self, settings: dict[str, str], jobs: QueueClient, random_seed: int
    ):
        """With two instances both take messages, and each message is processed once."""
        for n in range(16):
            await jobs.send_message(f"slow-{n}")
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, instances=2, random_seed=random_seed
        ) as host:
            await host.wait_for(lambda: host.invocations["on_job"] == 16, within=120)
        invocations = host.invocations_of("on_job")
        assert {i.instance for i in invocations} == {0, 1}
        assert len({r["id"] for r in _received(host, "on_job")}) == 16

    async def test_missing_queue_counts_as_empty(self, settings: dict[str, str], random_seed: int):
        """A trigger queue that does not exist yet is polled without errors or invocations."""
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            with pytest.raises(TimeoutError):
                await host.wait_for(lambda: bool(host.log), within=0.5)
        assert not host.failures

    async def test_polling_jitter_seed_is_reported(
        self, settings: dict[str, str], random_seed: int, caplog: pytest.LogCaptureFixture
    ):
        """The pollers' seed is the one given, or a drawn one: either way host.random_seed
        and logged when polling starts, so a run can be replayed."""
        caplog.set_level(logging.INFO, logger="cmk.sandbox.funchost.host")
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as given:
            pass
        async with FunctionsHost(SAMPLE_APP, settings=settings, serve_http=False) as drawn:
            pass
        assert given.random_seed == random_seed
        logged = [r for r in caplog.records if hasattr(r, "random_seed")]
        assert [r.random_seed for r in logged] == [random_seed, drawn.random_seed]
        assert f"random_seed={drawn.random_seed}" in logged[-1].getMessage()

    async def test_missing_connection_fails_at_start(
        self, queue_name: str, monkeypatch: pytest.MonkeyPatch, random_seed: int
    ):
        """Without AzureWebJobsStorage the host refuses to start, naming the setting."""
        monkeypatch.delenv("AzureWebJobsStorage", raising=False)
        host = FunctionsHost(
            SAMPLE_APP,
            settings={"SAMPLE_JOB_QUEUE": queue_name, "SAMPLE_SCHEDULE": "0 0 * * * *"},
            random_seed=random_seed,
        )
        with pytest.raises(FunctionIndexError, match="AzureWebJobsStorage"):
            await host.start()
        assert host.port == 0


class TestStopAndKill:
    async def test_stop_closes_the_apps_resources(self, settings: dict[str, str], random_seed: int):
        """Stopping the host awaits aclose() of the app's module-level resources, once."""
        async with FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        ) as host:
            assert host.module.resources.closed == 0
        assert host.module.resources.closed == 1
        await host.stop()  # idempotent: nothing left to close
        assert host.module.resources.closed == 1

    async def test_kill_cancels_what_is_in_flight_and_leaves_the_messages(
        self, settings: dict[str, str], jobs: QueueClient, random_seed: int
    ):
        """kill() cancels the invocations in flight (they stay unfinished, not failed) and
        their messages stay in the queue for another instance once their lease ends."""
        for n in range(2):
            await jobs.send_message(f"block-{n}")
        host = FunctionsHost(
            SAMPLE_APP, settings=settings, serve_http=False, random_seed=random_seed
        )
        await host.start()
        try:
            await host.wait_for(lambda: host.invocations["on_job"] == 2)
            killed = await host.kill()
            assert not _received(host, "on_job")  # both were still blocked
        finally:
            host.module.RELEASE.set()  # free the worker threads
            await host.stop()
        assert killed == 2
        assert not host.failures
        properties = await jobs.get_queue_properties()
        assert properties.approximate_message_count == 2  # invisible, not deleted


class TestLoopbackStorage:
    """The host's queue clients skip aiohttp's per-request proxy lookup only for storage on
    this machine (Azurite), which no proxy can serve."""

    @pytest.mark.parametrize(
        ("connection_string", "direct"),
        [
            ("UseDevelopmentStorage=true", True),
            ("AccountName=a;AccountKey=k;QueueEndpoint=http://127.0.0.1:10001/a", True),
            ("AccountName=a;AccountKey=k;QueueEndpoint=http://localhost:10001/a", True),
            ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k", False),
            ("AccountName=a;AccountKey=k;QueueEndpoint=https://a.queue.core.windows.net", False),
        ],
    )
    def test_only_loopback_storage_goes_direct(self, connection_string: str, direct: bool) -> None:
        assert _on_loopback(connection_string) is direct
