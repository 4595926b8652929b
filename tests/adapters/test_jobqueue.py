"""StorageJobQueue and the job codec, against Azurite through the real SDK."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from adapter_world import RG, SUB
from azure.storage.queue.aio import QueueClient

from cmk.adapters.jobqueue import StorageJobQueue, decode_job, encode_job
from cmk.errors import InvalidInput
from cmk.keyid import KeyId
from cmk.ports import JobStep, RotationJob
from cmk.resource_id import AccountId
from cmk.wiring import Services

TARGET = KeyId("https://kv1.vault.azure.net", "cmk", "a" * 32)


def _job(name: str = "acct", **changes: object) -> RotationJob:
    fields: dict[str, object] = {
        "account_id": AccountId(SUB, RG, name),
        "target": TARGET,
        "trigger": "evt-1",
        **changes,
    }
    return RotationJob(**fields)  # type: ignore[arg-type]


class TestJobCodec:
    def test_round_trip(self) -> None:
        """decode_job(encode_job(job)) gives the same job, every field included."""
        job = _job(
            step=JobStep.VERIFY,
            urgent=True,
            from_version="b" * 32,
            deferrals=3,
            deferred_seconds=42,
            lease_owner="host-1:0123456789ab",
            adopted=True,
        )
        assert decode_job(encode_job(job)) == job
        assert json.loads(encode_job(job))["deferrals"] == 3
        assert json.loads(encode_job(job))["deferred_seconds"] == 42

    def test_defaults_for_optional_fields(self) -> None:
        """A message without step, urgent and from_version decodes with the defaults."""
        text = json.dumps(
            {"account_id": str(AccountId(SUB, RG, "a1")), "target": str(TARGET), "trigger": "t"}
        )
        job = decode_job(text)
        assert (job.step, job.urgent, job.from_version) == (JobStep.ROTATE, False, None)
        assert job.deferrals == 0
        assert job.lease_owner is None  # a message of a producer that hands no lease on
        assert job.adopted is False  # nor adopts an update

    def test_ignores_unknown_fields(self) -> None:
        """Fields a newer producer adds are ignored."""
        body = json.loads(encode_job(_job()))
        body["future"] = {"x": 1}
        assert decode_job(json.dumps(body)) == _job()

    @pytest.mark.parametrize(
        "text",
        [
            "",
            "not json",
            "[]",
            "null",
            '{"target": "https://kv1.vault.azure.net/keys/cmk/' + "a" * 32 + '"}',
            json.dumps({"account_id": "/x", "target": str(TARGET), "trigger": "t"}),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": "https://kv1.vault.azure.net/keys/cmk",
                    "trigger": "t",
                }
            ),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": "https://evil.example.com/keys/cmk/" + "a" * 32,
                    "trigger": "t",
                }
            ),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": str(TARGET),
                    "trigger": "t",
                    "step": "explode",
                }
            ),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": str(TARGET),
                    "trigger": "t",
                    "urgent": "yes",
                }
            ),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": str(TARGET),
                    "trigger": "t",
                    "from_version": "zz",
                }
            ),
            json.dumps({"v": 99}),
            *(
                json.dumps(
                    {
                        "account_id": str(AccountId(SUB, RG, "a1")),
                        "target": str(TARGET),
                        "trigger": "t",
                        field: value,
                    }
                )
                for field in ("deferrals", "deferred_seconds")
                for value in (-1, "2", 1.5, True)
            ),
            *(
                json.dumps(
                    {
                        "account_id": str(AccountId(SUB, RG, "a1")),
                        "target": str(TARGET),
                        "trigger": "t",
                        "lease_owner": owner,
                    }
                )
                for owner in ("", 7, "x" * 257, "a\nb")
            ),
            json.dumps(
                {
                    "account_id": str(AccountId(SUB, RG, "a1")),
                    "target": str(TARGET),
                    "trigger": "t",
                    "adopted": "yes",
                }
            ),
            b"\xff\xfe",
            "x" * 100_000,
        ],
    )
    def test_rejects_junk(self, text: str | bytes) -> None:
        """Anything that is not exactly a job raises InvalidInput."""
        with pytest.raises(InvalidInput):
            decode_job(text)


class TestStorageJobQueue:
    async def test_message_is_base64_json(self, services: Services, azurite: str) -> None:
        """A sent job arrives as base64 of its JSON, as the Functions queue trigger expects."""
        await services.jobs.enqueue(_job())
        queue = services.settings.job_queue
        async with QueueClient.from_connection_string(azurite, queue) as raw:
            message = await raw.receive_message()
        assert message is not None
        text = base64.b64decode(message.content).decode()
        assert decode_job(text) == _job()

    async def test_delay_hides_the_message(self, services: Services, azurite: str) -> None:
        """A delayed job is not visible before its delay."""
        await services.jobs.enqueue(_job(), delay=timedelta(minutes=5))
        async with QueueClient.from_connection_string(azurite, services.settings.job_queue) as raw:
            assert await raw.peek_messages() == []
            properties = await raw.get_queue_properties()
        assert properties.approximate_message_count == 1

    async def test_enqueue_many_sends_every_job(self, services: Services, azurite: str) -> None:
        """enqueue_many sends every job concurrently and returns the count."""
        jobs = [_job(f"acct-{index}") for index in range(40)]
        assert await services.jobs.enqueue_many(jobs) == 40
        names = set()
        async with QueueClient.from_connection_string(azurite, services.settings.job_queue) as raw:
            async for message in raw.receive_messages(messages_per_page=32):
                names.add(decode_job(base64.b64decode(message.content).decode()).account_id.name)
        assert names == {f"acct-{index}" for index in range(40)}

    async def test_from_connection_string_creates_the_queue(self, azurite: str) -> None:
        """A queue that does not exist is created on first use; a second instance reuses it."""
        for _ in range(2):
            queue = StorageJobQueue.from_connection_string(azurite, "jobs-created-once")
            async with queue.client:
                await queue.enqueue(_job())
        async with QueueClient.from_connection_string(azurite, "jobs-created-once") as raw:
            properties = await raw.get_queue_properties()
            await raw.delete_queue()
        assert properties.approximate_message_count == 2
