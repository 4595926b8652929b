"""``/api/status`` and ``/api/sweep`` for estates of any size: Azure's asynchronous
request-reply pattern, as the three HTTP-facing calls of ``function_app.py``.

- :func:`accept` (``GET /api/status``, ``POST /api/sweep``) records an operation and
  puts it on the operations queue, then waits up to ``CMK_HTTP_ANSWER_SECONDS`` for it:
  finished in time, the caller gets the direct answer (200 and the CLI's document, or
  the error document) exactly as before; otherwise ``202 Accepted`` with ``Location``
  (the status URL, ``/api/operations/{id}``) and ``Retry-After``.
- :func:`poll` (``GET /api/operations/{id}``) answers 202 with ``Location`` and
  ``Retry-After`` while the operation waits or runs, then the very answer the direct
  call would have given (200 and its document; an error status and the error document);
  an operation past its deadline answers 500 ``failed``; an unknown or expired id 404.
- :func:`handle_operation_message` is the queue worker that runs it.

The work always runs in a queue-triggered invocation, never in the HTTP invocation's
background: the Functions host keeps a queue invocation alive (and redelivers its message
if the instance is lost), while work left running after an HTTP invocation returned dies
with the instance when Flex Consumption scales in. This is how Durable Functions'
``WaitForCompletionOrCreateCheckStatusResponse`` answers too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cmk import entrypoints
from cmk.adapters.operations import decode_operation_message, new_operation_id
from cmk.errors import CmkError, ConfigurationError, InvalidInput, TransientError
from cmk.ports import Operation, OperationAnswer, OperationKind, OperationState, OperationStore
from cmk.usecases.context import Engine

__all__ = [
    "ATTEMPTS",
    "RETRY_AFTER_SECONDS",
    "HttpAnswer",
    "accept",
    "handle_operation_message",
    "operation_document",
    "poll",
    "status_url",
]

log = logging.getLogger(__name__)

#: An HTTP answer: status, JSON document, headers.
HttpAnswer = tuple[int, object, dict[str, str]]

#: The ``Retry-After`` of a 202: how long a client should wait before it polls again.
RETRY_AFTER_SECONDS = 10
#: Deliveries of an operation's message that may end in a transient error (a service did
#: not answer) and be retried by the host; the last one keeps the 503 answer. Below
#: host.json's ``maxDequeueCount`` (5), so the message never reaches the poison queue
#: for a transient error.
ATTEMPTS = 3
#: Expired operations forgotten per accepted one (their rows are few; this bounds the
#: cost of one call).
FORGET_PER_CALL = 10
#: The longest an accepting call spends forgetting expired operations (from its window).
FORGET_SECONDS = 10
#: How often the accepting call looks at the operation while it waits: from the first
#: interval, doubling, up to the second.
_WATCH = (0.05, 1.0)

_WORK: dict[OperationKind, Callable[[Engine], Awaitable[object]]] = {
    OperationKind.STATUS: entrypoints.status_document,
    OperationKind.PLAN: entrypoints.plan_document,
    OperationKind.SWEEP: entrypoints.sweep_document,
}


def _store(engine: Engine) -> OperationStore:
    if engine.operations is None:
        raise ConfigurationError(
            "HTTP operations need storage: set AzureWebJobsStorage; see docs/configuration.md"
        )
    return engine.operations


def status_url(request_url: str, operation_id: str, *, depth: int = 1) -> str:
    """The status URL of an operation, on the host the request came to: the request's
    path with its last ``depth`` segments replaced by ``operations/{id}``. A function key
    the caller sent as ``?code=`` is kept (it was in their URL already); one sent in the
    ``x-functions-key`` header is not repeated."""
    parts = urlsplit(request_url)
    base = parts.path.rstrip("/").rsplit("/", depth)[0]
    code = [value for name, value in parse_qsl(parts.query) if name == "code"]
    query = urlencode({"code": code[0]}) if code else ""
    return urlunsplit((parts.scheme, parts.netloc, f"{base}/operations/{operation_id}", query, ""))


def operation_document(operation: Operation, url: str) -> dict[str, object]:
    """The body of a 202: ``{"operation": {id, kind, status, created, started, attempts,
    deadline, status_url}}`` (schema in docs/functions.md)."""
    return {
        "operation": {
            "id": operation.id,
            "kind": operation.kind.value,
            "status": operation.state.value,
            "created": operation.created.isoformat(),
            "started": None if operation.started is None else operation.started.isoformat(),
            "attempts": operation.attempts,
            "deadline": operation.deadline.isoformat(),
            "status_url": url,
        }
    }


def _accepted(operation: Operation, url: str) -> HttpAnswer:
    headers = {"Location": url, "Retry-After": str(RETRY_AFTER_SECONDS)}
    return 202, operation_document(operation, url), headers


def _plain(answer: entrypoints.JsonResponse) -> HttpAnswer:
    status, document = answer
    return status, document, {}


async def accept(engine: Engine, kind: OperationKind, request_url: str) -> HttpAnswer:
    """``GET /api/status`` / ``POST /api/sweep``: accept the operation, answer directly if
    it finishes within CMK_HTTP_ANSWER_SECONDS of the request, else 202 with its status
    URL. The window counts from the request: housekeeping before the watch (forgetting
    expired operations, at most :data:`FORGET_SECONDS`) is spent from it, so the answer
    never outlives Azure's 230 s front end."""
    began = asyncio.get_running_loop().time()
    try:
        store = _store(engine)
        now = engine.now()
        settings = engine.settings
        operation = Operation(
            id=new_operation_id(),
            kind=kind,
            state=OperationState.NOT_STARTED,
            created=now,
            deadline=now + settings.operation_deadline,
            expires=now + settings.operation_deadline + settings.operation_retention,
        )
        await _forget_expired(engine, store)
        await store.accept(operation)
    except CmkError as error:
        return _plain(entrypoints.failure_answer(error))
    log.info(
        "accepted %s operation %s",
        kind.value,
        operation.id,
        extra={"cmk_operation_id": operation.id, "cmk_step": "accepted"},
    )
    url = status_url(request_url, operation.id)
    spent = timedelta(seconds=asyncio.get_running_loop().time() - began)
    try:
        finished = await _watch(store, operation, settings.http_answer_window - spent)
        if finished is None:
            return _accepted(operation, url)
        answer = await store.answer(finished)
    except TransientError as error:
        # The operation is on its way; the caller can follow it at the status URL.
        log.warning("watching operation %s: %s", operation.id, error)
        return _accepted(operation, url)
    await _forget_quietly(store, operation.id)  # answered: nobody will poll it
    return answer.status, answer.document, {}


async def _forget_expired(engine: Engine, store: OperationStore) -> None:
    try:
        async with asyncio.timeout(FORGET_SECONDS):
            await store.forget_expired(engine.now(), FORGET_PER_CALL)
    except TimeoutError:  # deletes are idempotent: the next call goes on
        log.warning("forgetting expired operations took over %d s; left for later", FORGET_SECONDS)
    except TransientError as error:  # the next call tries again
        log.warning("forgetting expired operations: %s", error)


async def _forget_quietly(store: OperationStore, operation_id: str) -> None:
    try:
        await store.forget(operation_id)
    except TransientError as error:  # expires later and is forgotten then
        log.warning("forgetting operation %s: %s", operation_id, error)


async def _watch(
    store: OperationStore, operation: Operation, window: timedelta
) -> Operation | None:
    """The operation once finished, if that happens within ``window``; else None."""
    if window <= timedelta(0):
        return None
    loop = asyncio.get_running_loop()
    until = loop.time() + window.total_seconds()
    interval, longest = _WATCH
    while True:
        current = await store.get(operation.id)
        if current is not None and current.state.finished:
            return current
        left = until - loop.time()
        if left <= 0:
            return None
        await asyncio.sleep(min(interval, left))
        interval = min(interval * 2, longest)


def _not_found(operation_id: str) -> HttpAnswer:
    status, document = entrypoints.error_document(
        404,
        "not_found",
        f"no operation {operation_id!r}: the id is unknown, or its answer expired"
        " (kept CMK_OPERATION_RETENTION_HOURS after it finished)",
        "start a new call of GET /api/status or POST /api/sweep",
    )
    return status, document, {}


def _deadline_answer(operation: Operation) -> OperationAnswer:
    status, document = entrypoints.error_document(
        500,
        "failed",
        f"the {operation.kind.value} operation {operation.id} did not finish by its deadline"
        f" {operation.deadline.isoformat()} (CMK_OPERATION_DEADLINE_MINUTES after it was"
        f" accepted; {operation.attempts} attempt(s) started): the instance running it may"
        " have been lost, or it failed repeatedly",
        "start a new call; if it happens again, see the app's logs for this operation id",
    )
    return OperationAnswer(status, document)


async def poll(engine: Engine, operation_id: str, request_url: str) -> HttpAnswer:
    """``GET /api/operations/{id}``: 202 while it waits or runs; then its answer."""
    try:
        store = _store(engine)
        operation = await store.get(operation_id)
        now = engine.now()
        if operation is None or now >= operation.expires:
            return _not_found(operation_id)
        if not operation.state.finished and now >= operation.deadline:
            expires = now + engine.settings.operation_retention
            finished = await store.finish(operation.id, _deadline_answer(operation), now, expires)
            if finished is None:
                return _not_found(operation_id)
            operation = finished
        if not operation.state.finished:
            return _accepted(operation, status_url(request_url, operation.id, depth=2))
        answer = await store.answer(operation)
    except CmkError as error:
        return _plain(entrypoints.failure_answer(error))
    return answer.status, answer.document, {}


async def handle_operation_message(
    engine: Engine, body: str | bytes, dequeue_count: int = 1
) -> OperationAnswer | None:
    """Run one operation from the operations queue and keep its answer; None when the
    message is not an operation or the operation is gone or already finished. A
    transient error propagates (the host delivers the message again) for the first
    :data:`ATTEMPTS` - 1 deliveries; the last one keeps the 503 answer."""
    try:
        operation_id, kind = decode_operation_message(body)
    except InvalidInput as error:
        log.error("discarded operation message: %s", error, extra={"cmk_step": "decode"})
        return None
    store = _store(engine)
    extra = {"cmk_operation_id": operation_id, "cmk_step": "operation"}
    operation = await store.start(operation_id, engine.now())
    if operation is None or operation.state.finished:
        log.info("operation %s is gone or finished; nothing to do", operation_id, extra=extra)
        return None
    if engine.now() >= operation.deadline:
        answer = _deadline_answer(operation)
    else:
        answer = await _run(engine, kind, dequeue_count)
    now = engine.now()
    kept = await store.finish(operation_id, answer, now, now + engine.settings.operation_retention)
    if kept is None or kept.finished != now:
        # Forgotten meanwhile, or answered first (past its deadline, or by a redelivery).
        log.warning("operation %s was answered already; %d not kept", operation_id, answer.status)
        return None
    log.info(
        "%s operation %s answered %d",
        kind.value,
        operation_id,
        answer.status,
        extra={**extra, "cmk_http_status": answer.status},
    )
    return answer


async def _run(engine: Engine, kind: OperationKind, dequeue_count: int) -> OperationAnswer:
    try:
        document = await _WORK[kind](engine)
    except TransientError as error:
        if dequeue_count < ATTEMPTS:
            raise
        status, document = entrypoints.failure_answer(error)
        return OperationAnswer(status, document)
    except CmkError as error:
        status, document = entrypoints.failure_answer(error)
        return OperationAnswer(status, document)
    return OperationAnswer(200, document)
