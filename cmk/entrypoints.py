"""What each Azure Function calls: host-shaped input in, one use case, plain data out.

``function_app.py`` unwraps its bindings (an Event Grid event as a dict, a queue
message's text, an HTTP request's parameters) and calls one function here. Nothing here
imports ``azure.functions``, so the CLI (``cmk replay``) and tests use the same path.

Error contract with the host:
- transient errors (:class:`~cmk.errors.TransientError`) propagate: Event Grid and the
  queue trigger retry, the queue ends in the poison queue after ``maxDequeueCount``;
- bad input (a malformed or forged event, an undecodable job) is logged at ERROR with
  what was received and completed: retrying could never make it valid, and the log keeps
  it (dead-lettered events can be replayed with ``cmk replay``);
- permanent failures of an account are the engine's: a ledger row and one alert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cmk.adapters.jobqueue import decode_job
from cmk.errors import InvalidInput, NotFound, OutOfScope
from cmk.events import IgnoredEvent, KeyVaultEventType, parse_event
from cmk.keyid import KeyId
from cmk.usecases import (
    EventReport,
    JobReport,
    SweepReport,
    on_expired,
    on_near_expiry,
    on_new_version,
    on_poison,
    plan,
    rotate_account,
    status,
    sweep,
)
from cmk.usecases.context import Engine
from cmk.usecases.report import to_jsonable
from cmk.usecases.rotate import rotate_key

__all__ = [
    "handle_job_message",
    "handle_key_event",
    "handle_poison_message",
    "http_plan",
    "http_rotate",
    "http_status",
    "http_sweep",
    "run_sweep",
]

log = logging.getLogger(__name__)

_HANDLERS = {
    KeyVaultEventType.NEW_VERSION: on_new_version,
    KeyVaultEventType.NEAR_EXPIRY: on_near_expiry,
    KeyVaultEventType.EXPIRED: on_expired,
}


async def handle_key_event(
    engine: Engine, event: Mapping[str, object], expected: KeyVaultEventType
) -> EventReport | None:
    """Handle one Key Vault event delivered by Event Grid; None when it was not ours."""
    try:
        parsed = parse_event(dict(event))
    except InvalidInput as error:
        log.error(
            "rejected event %s: %s",
            event.get("id"),
            error,
            extra={"cmk_event_id": str(event.get("id")), "cmk_step": "parse", "cmk_event": event},
        )
        return None
    if isinstance(parsed, IgnoredEvent):
        log.info("ignored event %s: %s", parsed.event_id, parsed.reason)
        return None
    if parsed.event_type is not expected:
        # The subscription filter routed it here; the event still points at a real key.
        log.warning(
            "event %s of type %s arrived at the %s function; handling it by its type",
            parsed.event_id,
            parsed.event_type.value,
            expected.value,
        )
    return await _HANDLERS[parsed.event_type](engine, parsed)


async def handle_job_message(engine: Engine, body: str | bytes) -> JobReport | None:
    """Run one rotation job from the queue; None when the message is not a job."""
    try:
        job = decode_job(body)
    except InvalidInput as error:
        log.error("discarded queue message: %s", error, extra={"cmk_step": "decode"})
        return None
    return await rotate_account(engine, job)


async def handle_poison_message(engine: Engine, body: str | bytes) -> JobReport | None:
    """A job that exhausted its retries: record it as failed and alert."""
    try:
        job = decode_job(body)
    except InvalidInput as error:
        log.error("discarded poison message: %s", error, extra={"cmk_step": "poison"})
        return None
    return await on_poison(engine, job)


async def run_sweep(engine: Engine) -> SweepReport:
    """The timer's sweep of everything in scope."""
    return await sweep(engine)


JsonResponse = tuple[int, object]


async def http_status(engine: Engine) -> JsonResponse:
    """GET /api/status: every CMK-bound account in scope and its state."""
    return 200, to_jsonable(await status(engine))


async def http_plan(engine: Engine) -> JsonResponse:
    """GET /api/plan: what a sweep would do (a dry run)."""
    return 200, to_jsonable(await plan(engine))


async def http_sweep(engine: Engine) -> JsonResponse:
    """POST /api/sweep: sweep now."""
    return 200, to_jsonable(await sweep(engine))


async def http_rotate(engine: Engine, key_id: str | None) -> JsonResponse:
    """POST /api/rotate?key_id=...: create a new version of one key now and move every
    bound account. 400 for a missing or invalid key id or a vault outside the allow-list,
    404 for a key that does not exist (nothing is written in either case)."""
    if not key_id:
        return 400, {
            "error": "key_id is required, e.g. ?key_id=https://myvault.vault.azure.net/keys/mykey"
        }
    try:
        parsed = KeyId.parse(key_id)
        report = await rotate_key(engine, parsed.versionless(), trigger="http")
    except (InvalidInput, OutOfScope) as error:
        return 400, {"error": str(error)}
    except NotFound as error:
        return 404, {"error": str(error)}
    return 200, to_jsonable(report)
