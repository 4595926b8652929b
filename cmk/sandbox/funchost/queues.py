"""The queue trigger listener of one function on one worker instance, after the Storage
queues extension (5.x):

- poll with ``batchSize``; when a batch arrives poll again at once, while fewer than
  ``newBatchThreshold`` messages are in flight; when the queue is empty back off
  exponentially (with jitter) from 100 ms up to ``maxPollingInterval``;
- a received message is invisible for 10 minutes (or ``functionTimeout`` + 1 min) while
  the function runs; on success it is deleted;
- on failure it is released with ``visibilityTimeout``, unless its dequeue count has
  reached ``maxDequeueCount``: then it is copied as-is to ``<queue>-poison`` (created if
  needed) and deleted. A message already past the limit when received is poisoned
  without an invocation, and so is a message that is not valid base64 under
  ``messageEncoding: base64``.

A queue that does not exist yet counts as empty (the listener does not create it).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueMessage, QueueServiceClient
from azure.storage.queue.aio import QueueClient

from cmk.sandbox.funchost.config import MIN_POLLING_INTERVAL, QueueOptions
from cmk.sandbox.funchost.index import IndexedFunction
from cmk.sandbox.funchost.invoke import TriggerInput, queue_input

logger = logging.getLogger(__name__)

RECEIVE_VISIBILITY = timedelta(minutes=10)
MAX_VISIBILITY = timedelta(days=7)
STOP_GRACE_SECONDS = 10.0

Invoke = Callable[[IndexedFunction, TriggerInput, int], Awaitable[None]]
PoisonHook = Callable[[IndexedFunction, str, int], None]


def poison_queue_name(queue: str) -> str:
    """``<queue>-poison``, as the Functions host names it."""
    return f"{queue}-poison"


_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _on_loopback(connection_string: str) -> bool:
    """Whether the connection string's queue endpoint is on this machine (Azurite), as the
    SDK reads it (a client object only: nothing is opened)."""
    url = QueueServiceClient.from_connection_string(connection_string).url
    return urlsplit(url).hostname in _LOOPBACK


class QueueListener:
    """Polls one queue for one queue-triggered function on one worker instance."""

    def __init__(
        self,
        function: IndexedFunction,
        connection_string: str,
        options: QueueOptions,
        invoke: Invoke,
        *,
        instance: int,
        on_poison: PoisonHook,
        function_timeout: timedelta | None,
        random_seed: int | str | None = None,
    ) -> None:
        self.function = function
        self.queue_name = str(function.trigger["queueName"])
        self.options = options
        self.instance = instance
        self._invoke = invoke
        self._on_poison = on_poison
        self._connection_string = connection_string
        self._client: QueueClient | None = None
        self._poison: QueueClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._random = random.Random(random_seed)  # the polling back-off's jitter
        receive = max(RECEIVE_VISIBILITY, (function_timeout or timedelta(0)) + timedelta(minutes=1))
        self._receive_visibility = int(min(receive, MAX_VISIBILITY).total_seconds())
        self.polls = 0

    def _queue(self, name: str) -> QueueClient:
        """A client of queue ``name``. Storage on loopback (Azurite) is never proxied, so
        the client does not ask the environment for a proxy (and ~/.netrc) per request,
        as aiohttp's trust_env does: the real host's polling costs the app no CPU either."""
        direct = _on_loopback(self._connection_string)
        return QueueClient.from_connection_string(
            self._connection_string, name, use_env_settings=not direct
        )

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def start(self) -> None:
        self._client = self._queue(self.queue_name)
        self._poison = self._queue(poison_queue_name(self.queue_name))
        self._task = asyncio.get_running_loop().create_task(
            self._poll(), name=f"queue:{self.function.name}:{self.instance}"
        )

    def abandon(self) -> int:
        """Die like a worker process: stop polling and cancel every in-flight invocation
        now, without waiting (their messages come back when their lease ends); returns how
        many were cancelled. Call :meth:`stop` afterwards to release the clients."""
        if self._task is not None:
            self._task.cancel()
        in_flight = [task for task in self._in_flight if not task.done()]
        for task in in_flight:
            task.cancel()
        return len(in_flight)

    async def stop(self) -> None:
        """Stop polling; let in-flight invocations finish (up to a grace period)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for client in (self._client, self._poison):
            if client is not None:
                await client.close()
        self._client = self._poison = None

    async def queued(self) -> int:
        """Messages in the queue, visible or not (Storage's approximate count; 0 if absent)."""
        assert self._client is not None
        try:
            properties = await self._client.get_queue_properties()
        except ResourceNotFoundError:
            return 0
        return int(properties.approximate_message_count or 0)

    async def _poll(self) -> None:
        assert self._client is not None
        minimum = MIN_POLLING_INTERVAL.total_seconds()
        maximum = max(self.options.max_polling_interval.total_seconds(), minimum)
        delay = minimum
        while True:
            while len(self._in_flight) > self.options.new_batch_threshold:
                await asyncio.wait(set(self._in_flight), return_when=asyncio.FIRST_COMPLETED)
            messages = await self._receive()
            if messages:
                for message in messages:
                    task = asyncio.get_running_loop().create_task(self._process(message))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
                delay = minimum
                continue
            await asyncio.sleep(self._random.uniform(delay / 2, delay))
            delay = min(delay * 2, maximum)

    async def _receive(self) -> list[QueueMessage]:
        assert self._client is not None
        self.polls += 1
        batch = self.options.batch_size
        try:
            pages = self._client.receive_messages(
                messages_per_page=batch,
                max_messages=batch,
                visibility_timeout=self._receive_visibility,
            )
            return [message async for message in pages]
        except ResourceNotFoundError:
            return []  # the queue does not exist yet: empty
        except AzureError as exc:
            logger.warning(
                "queue poll failed",
                extra={"queue": self.queue_name, "error": f"{type(exc).__name__}: {exc}"},
            )
            return []

    def _decode(self, message: QueueMessage) -> bytes | None:
        content = message.content or ""
        text = content if isinstance(content, str) else bytes(content).decode("utf-8")
        if self.options.message_encoding == "none":
            return text.encode("utf-8")
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _process(self, message: QueueMessage) -> None:
        assert self._client is not None
        dequeue_count = int(message.dequeue_count or 1)
        if dequeue_count > self.options.max_dequeue_count:
            await self._move_to_poison(message, "dequeue count past maxDequeueCount")
            return
        body = self._decode(message)
        if body is None:
            await self._move_to_poison(message, "message is not valid base64")
            return
        trigger = queue_input(
            body,
            message_id=str(message.id),
            dequeue_count=dequeue_count,
            inserted_on=message.inserted_on,
            expires_on=message.expires_on,
            next_visible_on=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            await self._invoke(self.function, trigger, self.instance)
        except Exception:  # the function failed: release or poison, as the host does
            failed = True
        else:
            failed = False
        try:
            await self._settle(message, failed=failed, dequeue_count=dequeue_count)
        except AzureError as error:  # the host logs it; the lease's end brings it back
            logger.warning(
                "queue message could not be settled; it is visible again when its lease ends",
                extra={
                    "queue": self.queue_name,
                    "message_id": message.id,
                    "error": f"{type(error).__name__}: {error}",
                },
            )

    async def _settle(self, message: QueueMessage, *, failed: bool, dequeue_count: int) -> None:
        """After the invocation: delete on success; on failure release, or poison."""
        assert self._client is not None
        if failed:
            if dequeue_count >= self.options.max_dequeue_count:
                await self._move_to_poison(message, "maxDequeueCount reached")
            else:
                await self._release(message)
            return
        try:
            await self._client.delete_message(message.id, message.pop_receipt)
        except ResourceNotFoundError:
            logger.warning(  # it became visible again and another instance took it
                "queue message already gone",
                extra={"queue": self.queue_name, "message_id": message.id},
            )

    async def _release(self, message: QueueMessage) -> None:
        assert self._client is not None
        seconds = round(self.options.visibility_timeout.total_seconds())
        # ResourceNotFoundError: the lease was lost meanwhile; it is visible again anyway
        with contextlib.suppress(ResourceNotFoundError):
            await self._client.update_message(
                message.id, message.pop_receipt, visibility_timeout=seconds
            )

    async def _move_to_poison(self, message: QueueMessage, reason: str) -> None:
        assert self._client is not None and self._poison is not None
        with contextlib.suppress(ResourceExistsError):
            await self._poison.create_queue()
        await self._poison.send_message(message.content)
        with contextlib.suppress(ResourceNotFoundError):
            await self._client.delete_message(message.id, message.pop_receipt)
        logger.warning(
            "queue message moved to poison queue",
            extra={
                "queue": self.queue_name,
                "poison_queue": poison_queue_name(self.queue_name),
                "message_id": message.id,
                "dequeue_count": message.dequeue_count,
                "reason": reason,
            },
        )
        self._on_poison(self.function, str(message.id), int(message.dequeue_count or 0))
