"""Rotation jobs on a Storage queue: the :class:`~cmk.ports.JobQueue`, and the job codec.

A message is the JSON of one :class:`~cmk.ports.RotationJob` (:func:`encode_job`),
base64-encoded by the SDK's ``TextBase64EncodePolicy`` — what the Functions queue
trigger expects by default. Build the ``QueueClient`` with :func:`message_policies`
(or use :meth:`StorageJobQueue.from_connection_string`), so the SDK does the base64.

:func:`decode_job` is strict: anything that is not exactly a job (bad JSON, missing or
mistyped fields, an account id or key id that does not parse, an unversioned target)
raises :class:`~cmk.errors.InvalidInput`. Unknown fields are ignored, so a newer
producer does not poison an older worker; ``deferrals`` (how often the job was put back
after throttling) and ``deferred_seconds`` (how long, in all) may be absent, as in
messages of older producers, and then are 0;
``lease_owner`` (a VERIFY's handed-on write lease) may be absent, and then is None;
``adopted`` may be absent, and then is false.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from cmk.adapters._errors import azure_errors
from cmk.adapters._provision import CreateOnce
from cmk.errors import InvalidInput, NewerFormat
from cmk.keyid import KeyId
from cmk.ports import JobStep, RotationJob
from cmk.resource_id import AccountId

__all__ = ["StorageJobQueue", "decode_job", "encode_job", "message_policies"]

logger = logging.getLogger(__name__)

#: Version of the message format, written as ``"v"``.
FORMAT_VERSION = 1
#: A Storage queue message holds at most 64 KiB; a job is far smaller.
MAX_MESSAGE_CHARS = 48 * 1024
#: Storage limits a message's initial invisibility to 7 days.
MAX_DELAY = timedelta(days=7)


def encode_job(job: RotationJob) -> str:
    """The JSON text of ``job`` (before the queue's base64)."""
    if job.target.version is None:
        raise InvalidInput(f"a rotation job needs a versioned target, got {job.target}")
    return json.dumps(
        {
            "v": FORMAT_VERSION,
            "account_id": str(job.account_id),
            "target": str(job.target),
            "trigger": job.trigger,
            "step": job.step.value,
            "urgent": job.urgent,
            "from_version": job.from_version,
            "deferrals": job.deferrals,
            "deferred_seconds": job.deferred_seconds,
            "lease_owner": job.lease_owner,
            "adopted": job.adopted,
        },
        separators=(",", ":"),
        sort_keys=True,
    )


def _field(body: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    if name not in body or body[name] is None:
        if optional:
            return None
        raise InvalidInput(f"rotation job: field {name!r} is missing")
    value = body[name]
    if type(value) is not kind:  # bool is an int: compare exact types
        raise InvalidInput(
            f"rotation job: field {name!r} must be {kind.__name__}, not {type(value).__name__}"
        )
    return value


def decode_job(text: str | bytes) -> RotationJob:
    """The :class:`RotationJob` in a message's JSON text; InvalidInput for anything else."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("rotation job: message is not UTF-8") from None
    if len(text) > MAX_MESSAGE_CHARS:
        raise InvalidInput(f"rotation job: message of {len(text)} characters is too long")
    try:
        body = json.loads(text)
    except RecursionError:
        raise InvalidInput("rotation job: not JSON (nested too deeply)") from None
    except ValueError as error:
        raise InvalidInput(f"rotation job: not JSON ({error})") from None
    if not isinstance(body, dict):
        raise InvalidInput("rotation job: the message must be a JSON object")
    version = body.get("v", FORMAT_VERSION)
    if type(version) is int and version > FORMAT_VERSION:
        raise NewerFormat(
            f"rotation job: format version {version} is newer than this release reads"
            f" ({FORMAT_VERSION}); left for an instance of the newer release"
        )
    if version != FORMAT_VERSION:
        raise InvalidInput(f"rotation job: unsupported format version {version!r}")
    target = KeyId.parse(_field(body, "target", str))
    if target.version is None:
        raise InvalidInput(f"rotation job: target {target} names no version")
    step_text = _field(body, "step", str, optional=True) or JobStep.ROTATE.value
    try:
        step = JobStep(step_text)
    except ValueError:
        raise InvalidInput(f"rotation job: unknown step {step_text!r}") from None
    trigger = _field(body, "trigger", str)
    if not trigger.strip() or len(trigger) > 1024 or not trigger.isprintable():
        raise InvalidInput("rotation job: trigger must be 1-1024 printable characters")
    from_version = _field(body, "from_version", str, optional=True)
    if from_version is not None:
        from_version = target.with_version(from_version).version
    deferrals = _field(body, "deferrals", int, optional=True) or 0
    if deferrals < 0:
        raise InvalidInput(f"rotation job: deferrals must be 0 or more, not {deferrals}")
    deferred_seconds = _field(body, "deferred_seconds", int, optional=True) or 0
    if deferred_seconds < 0:
        raise InvalidInput(
            f"rotation job: deferred_seconds must be 0 or more, not {deferred_seconds}"
        )
    lease_owner = _field(body, "lease_owner", str, optional=True)
    if lease_owner is not None and not (0 < len(lease_owner) <= 256 and lease_owner.isprintable()):
        raise InvalidInput("rotation job: lease_owner must be 1-256 printable characters")
    return RotationJob(
        account_id=AccountId.parse(_field(body, "account_id", str)),
        target=target,
        trigger=trigger,
        step=step,
        urgent=bool(_field(body, "urgent", bool, optional=True)),
        from_version=from_version,
        deferrals=deferrals,
        deferred_seconds=deferred_seconds,
        lease_owner=lease_owner,
        adopted=bool(_field(body, "adopted", bool, optional=True)),
    )


def message_policies() -> dict[str, Any]:
    """``QueueClient`` keyword arguments for base64 text messages, as Functions expects."""
    return {
        "message_encode_policy": TextBase64EncodePolicy(),
        "message_decode_policy": TextBase64DecodePolicy(),
    }


class StorageJobQueue:
    """The :class:`~cmk.ports.JobQueue` over an Azure Storage queue (aio).

    ``queue_client`` must be built with :func:`message_policies`. The queue is created
    on first use if it does not exist. ``max_concurrency`` bounds :meth:`enqueue_many`.
    """

    def __init__(self, queue_client: QueueClient, *, max_concurrency: int = 32) -> None:
        self._client = queue_client
        self._max_concurrency = max(1, max_concurrency)
        self._ensure = CreateOnce(
            f"queue {queue_client.queue_name}",
            queue_client.create_queue,
        )

    @classmethod
    def from_connection_string(
        cls, connection_string: str, queue_name: str, *, max_concurrency: int = 32, **options: Any
    ) -> StorageJobQueue:
        """A queue over ``QueueClient.from_connection_string`` with base64 messages;
        ``options`` go to the client."""
        client = QueueClient.from_connection_string(
            connection_string, queue_name, **message_policies(), **options
        )
        return cls(client, max_concurrency=max_concurrency)

    @property
    def client(self) -> QueueClient:
        """The underlying ``QueueClient`` (the caller closes it)."""
        return self._client

    async def ensure_queue(self) -> None:
        """Create the queue unless it exists (once per instance)."""
        await self._ensure()

    async def enqueue(self, job: RotationJob, *, delay: timedelta | None = None) -> None:
        """Send one job, invisible for ``delay`` (at most 7 days) when given."""
        await self.ensure_queue()
        visibility = None
        if delay is not None and delay > timedelta(0):
            visibility = int(min(delay, MAX_DELAY).total_seconds())
        text = encode_job(job)
        with azure_errors(f"enqueueing the job for {job.account_id}"):
            await self._client.send_message(text, visibility_timeout=visibility)
        logger.debug(
            "enqueued %s job for %s -> %s",
            job.step.value,
            job.account_id,
            job.target,
            extra={"cmk_account_id": str(job.account_id), "cmk_key_id": str(job.target)},
        )

    async def requeue_text(self, text: str, *, delay: timedelta) -> None:
        """Send ``text`` as it is (a job this release cannot read), invisible for ``delay``."""
        await self.ensure_queue()
        visibility = int(min(max(delay, timedelta(0)), MAX_DELAY).total_seconds())
        with azure_errors("putting a newer release's job back on the queue"):
            await self._client.send_message(text, visibility_timeout=visibility or None)

    async def enqueue_many(self, jobs: Sequence[RotationJob]) -> int:
        """Enqueue concurrently; returns how many were sent. If any send fails, the first
        error is raised after every job was attempted (sending twice is harmless)."""
        await self.ensure_queue()
        gate = asyncio.Semaphore(self._max_concurrency)

        async def send(job: RotationJob) -> None:
            async with gate:
                await self.enqueue(job)

        results = await asyncio.gather(*(send(job) for job in jobs), return_exceptions=True)
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            logger.warning("%d of %d job(s) could not be enqueued", len(errors), len(jobs))
            raise errors[0]
        return len(jobs)
