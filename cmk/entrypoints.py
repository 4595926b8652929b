"""What each Azure Function calls: host-shaped input in, one use case, plain data out.

``function_app.py`` unwraps its bindings (an Event Grid event as a dict, a queue
message's text, an HTTP request's parameters) and calls one function here. Nothing here
imports ``azure.functions``, so the CLI (``cmk replay``) and tests use the same path.

Error contract with the host:
- transient errors (:class:`~cmk.errors.TransientError`) propagate: Event Grid and the
  queue trigger retry, the queue ends in the poison queue after ``maxDequeueCount``;
- bad input (a malformed or forged event, an undecodable job) is logged at ERROR with
  what was received (cut to :data:`MAX_LOGGED_INPUT` characters) and completed: retrying
  could never make it valid, and the log keeps it. The line carries
  ``cmk_alert_type=input_rejected``, so the ``update-failed`` log alert rule tells a human
  that something was dropped; a field that decides nothing (``NBF``/``EXP``, an over-long
  event id) is repaired with a WARNING instead of losing the event;
- a job written by a newer release (:class:`~cmk.errors.NewerFormat`, a rolling
  deployment) is put back on the job queue as it came, invisible for
  :data:`NEWER_FORMAT_DELAY`, from the job queue and the poison queue alike: never
  discarded, never failed or alerted, until an instance of that release runs it;
- permanent failures of an account are the engine's: a ledger row and one alert;
- a permanent failure handling a key event (our identity may not read the key, the key
  is gone) is logged at ERROR and raised as one ``event_failed`` alert, and the event is
  completed: Event Grid would otherwise retry it for 24 hours without telling anyone;
- a throttled job (429) is put back on the queue with the service's ``Retry-After``
  (plus jitter) instead of spending one of the message's ``maxDequeueCount`` deliveries;
  once the job has spent :data:`MAX_DEFERRED` deferred in all, the 429 propagates like
  any transient error (a budget of time, not of deferrals: many instances sharing one
  subscription's budget meet more 429s per job, and must not poison jobs for it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from cmk.adapters.jobqueue import decode_job
from cmk.errors import (
    AccessDenied,
    CmkError,
    ConfigurationError,
    InvalidInput,
    InvalidKeyId,
    NewerFormat,
    NotFound,
    OutOfScope,
    PermanentError,
    ThrottledError,
    TransientError,
)
from cmk.events import IgnoredEvent, KeyVaultEventType, parse_event
from cmk.keyid import KeyId
from cmk.policy import KeyVersion
from cmk.ports import RotationJob
from cmk.settings import parse_boolean
from cmk.usecases import (
    EventReport,
    JobReport,
    SweepReport,
    alerting,
    on_expired,
    on_near_expiry,
    on_new_version,
    on_poison,
    plan,
    rotate_account,
    status,
    sweep,
)
from cmk.usecases.answers import (
    EXIT_FINDINGS,
    EXIT_USAGE,
    error_answer,
    plan_answer,
    rotation_answer,
    status_answer,
    sweep_answer,
)
from cmk.usecases.context import Engine
from cmk.usecases.report import to_jsonable
from cmk.usecases.rotate import rotate_key
from cmk.usecases.subscriptions import HIDDEN_FIX, subscription_scope

__all__ = [
    "MAX_DEFERRED",
    "error_document",
    "failure_answer",
    "handle_job_message",
    "handle_key_event",
    "handle_poison_message",
    "http_plan",
    "http_rotate",
    "http_rotate_request",
    "http_status",
    "http_sweep",
    "plan_document",
    "refuse_unknown_parameters",
    "run_sweep",
    "status_document",
    "sweep_document",
    "throttle_delay",
]

log = logging.getLogger(__name__)

#: The most characters of a rejected event or message written to its log line.
MAX_LOGGED_INPUT = 4000
#: The ``cmk_alert_type`` of a log line saying input was rejected and dropped.
INPUT_REJECTED = "input_rejected"
#: How long a job of a newer release waits on the queue before it is offered again.
NEWER_FORMAT_DELAY = timedelta(minutes=5)

#: How long a throttled job may spend put back on the queue, in all, before its 429
#: propagates (and the host's own retries, then the poison queue, take over): an hour of
#: throttling is no longer a busy subscription but something a human should look at.
MAX_DEFERRED = timedelta(hours=1)
#: How long a throttled job first waits when the service gave no ``Retry-After`` (ARM's
#: own 429s always give one; a resource provider's may not): doubled at each deferral of
#: the same job, up to :data:`MAX_THROTTLE_DELAY`.
DEFAULT_THROTTLE_DELAY = timedelta(seconds=5)
MAX_THROTTLE_DELAY = timedelta(seconds=60)
#: The shortest wait before a deferred job runs again.
MIN_THROTTLE_DELAY = timedelta(seconds=1)
#: Up to this share of the delay is added (spread by a hash of the job), so deferred
#: jobs do not all return in the same second and trip the throttle again together.
THROTTLE_JITTER = 0.25

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
        _rejected(f"event {str(event.get('id'))[:100]!r}", error, event, step="parse")
        return None
    if isinstance(parsed, IgnoredEvent):
        log.info("ignored event %s: %s", parsed.event_id, parsed.reason)
        return None
    for note in parsed.notes:
        log.warning("event %s: %s", parsed.event_id, note, extra={"cmk_step": "parse"})
    if parsed.event_type is not expected:
        # The subscription filter routed it here; the event still points at a real key.
        log.warning(
            "event %s of type %s arrived at the %s function; handling it by its type",
            parsed.event_id,
            parsed.event_type.value,
            expected.value,
        )
    try:
        return await _HANDLERS[parsed.event_type](engine, parsed)
    except PermanentError as error:
        key = parsed.key_id
        log.error(
            "event %s for %s failed for good: %s",
            parsed.event_id,
            key,
            error,
            extra={
                "cmk_event_id": parsed.event_id,
                "cmk_key_id": str(key.versionless()),
                "cmk_to_version": key.version,
                "cmk_step": "event",
                "cmk_error": type(error).__name__,
            },
        )
        cause = f"{type(error).__name__}: {error}"
        failed = alerting.event_failed(key, parsed.event_id, cause)
        await alerting.publish(engine, [failed], durable=True)  # unrecorded: the event retries
        return None


async def handle_job_message(engine: Engine, body: str | bytes) -> JobReport | None:
    """Run one rotation job from the queue; None when the message is not a job, or when
    the job was throttled and put back on the queue for later."""
    try:
        job = decode_job(body)
    except NewerFormat as error:
        await _leave_for_newer_release(engine, body, error)
        return None
    except InvalidInput as error:
        _rejected("queue message", error, body, step="decode")
        return None
    try:
        return await rotate_account(engine, job)
    except ThrottledError as error:
        if engine.dry_run or job.deferred_seconds >= MAX_DEFERRED.total_seconds():
            raise
        await _defer(engine, job, error)
        return None


def throttle_delay(retry_after: float | None, deferrals: int = 0, spread: str = "") -> timedelta:
    """How long a throttled job waits: the service's ``Retry-After`` (else 5 s doubled per
    earlier deferral, at most a minute), at least 1 s, plus up to 25 %.

    The extra share comes from a hash of ``spread`` (the job's account) and the deferral:
    jobs throttled together come back spread out, and the same job always waits the same
    — no random source, so a run replays exactly (tests/chaos ``--chaos-seed``)."""
    if retry_after is None:
        doubled: timedelta = DEFAULT_THROTTLE_DELAY * (2 ** min(deferrals, 10))
        base = min(doubled, MAX_THROTTLE_DELAY)
    else:
        base = timedelta(seconds=retry_after)
    base = max(base, MIN_THROTTLE_DELAY)
    digest = hashlib.sha256(f"{spread.lower()}|{deferrals}".encode()).digest()
    share = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF
    return base * (1 + THROTTLE_JITTER * share)


async def _defer(engine: Engine, job: RotationJob, error: ThrottledError) -> None:
    """Put ``job`` back on the queue after the throttle's delay, one deferral more."""
    delay = throttle_delay(error.retry_after, job.deferrals, str(job.account_id))
    deferred = replace(
        job,
        deferrals=job.deferrals + 1,
        deferred_seconds=job.deferred_seconds + math.ceil(delay.total_seconds()),
    )
    await engine.jobs.enqueue(deferred, delay=delay)
    log.warning(
        "throttled; job for %s deferred %.0f s (deferral %d, %d s of %d s deferred): %s",
        job.account_id,
        delay.total_seconds(),
        deferred.deferrals,
        deferred.deferred_seconds,
        MAX_DEFERRED.total_seconds(),
        error,
        extra={
            "cmk_account_id": str(job.account_id),
            "cmk_key_id": str(job.target.versionless()),
            "cmk_to_version": job.target.version,
            "cmk_step": "deferred",
        },
    )


async def handle_poison_message(engine: Engine, body: str | bytes) -> JobReport | None:
    """A job that exhausted its retries: record it as failed and alert."""
    try:
        job = decode_job(body)
    except NewerFormat as error:
        await _leave_for_newer_release(engine, body, error)  # it never ran: not poisoned
        return None
    except InvalidInput as error:
        _rejected("poison message", error, body, step="poison")
        return None
    return await on_poison(engine, job)


async def _leave_for_newer_release(engine: Engine, body: str | bytes, error: NewerFormat) -> None:
    """Put a newer release's job back on the job queue, as it came, for later."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    if engine.dry_run:  # writes nothing: the host delivers it again instead
        log.warning("%s; left to the host's redelivery (dry run)", error)
        raise error
    await engine.jobs.requeue_text(text, delay=NEWER_FORMAT_DELAY)
    log.warning(
        "%s; put back on the job queue for %d s",
        error,
        NEWER_FORMAT_DELAY.total_seconds(),
        extra={"cmk_step": "newer_format"},
    )


def _rejected(what: str, error: CmkError, received: object, step: str) -> None:
    """Log input that is dropped for good: the error, what was received (cut), and
    ``cmk_alert_type=input_rejected`` in the text, which the log alert rules read."""
    if isinstance(received, bytes):
        received = received.decode("utf-8", "backslashreplace")
    if not isinstance(received, str):
        try:
            received = json.dumps(received, default=str, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError):
            received = f"(a {type(received).__name__} that cannot be shown as JSON)"
    shown = received[:MAX_LOGGED_INPUT] + ("…" if len(received) > MAX_LOGGED_INPUT else "")
    log.error(
        "rejected %s: %s (cmk_alert_type=%s); received: %s",
        what,
        error,
        INPUT_REJECTED,
        shown,
        extra={"cmk_alert_type": INPUT_REJECTED, "cmk_step": step},
    )


async def run_sweep(engine: Engine) -> SweepReport:
    """The timer's sweep of everything in scope."""
    return await sweep(engine)


JsonResponse = tuple[int, object]

#: The fix an HTTP caller is given when the app's identity may not rotate a key.
_ROTATE_GRANT = (
    "give the app's identity the key role on the vault ('CMK rotator key rotator': rerun the"
    " deployment's step 2, e.g. `azd provision`; in an access-policy vault get, list, create,"
    " rotate, getrotationpolicy)"
)


def _error(status: int, kind: str, message: str, fix: str = "", **details: object) -> JsonResponse:
    """An HTTP error in the CLI's error schema (``{error: {kind, message, fix, exit_code}}``);
    ``exit_code`` is what ``cmk`` exits with for the same error."""
    code = EXIT_FINDINGS if kind in ("conflict", "transient", "failed") else EXIT_USAGE
    return status, to_jsonable(error_answer(kind, message, fix, code, **details).document)


def error_document(
    status: int, kind: str, message: str, fix: str = "", **details: object
) -> JsonResponse:
    """An HTTP error in the CLI's error schema, with ``status`` (see :func:`_error`)."""
    return _error(status, kind, message, fix, **details)


def failure_answer(error: CmkError) -> JsonResponse:
    """What a status, plan or sweep call answers when it cannot finish."""
    if isinstance(error, ConfigurationError):
        return _error(500, "configuration", str(error), "fix the app settings named above")
    if isinstance(error, AccessDenied):
        fix = "grant the app's identity the roles of docs/deployment.md (Least privilege)"
        return _error(403, "access_denied", str(error), fix)
    if isinstance(error, TransientError):
        return _error(503, "transient", str(error), "a service did not answer; call again")
    return _error(500, "failed", str(error))


async def status_document(engine: Engine) -> object:
    """The 200 document of GET /api/status (``cmk status -o json``); raises CmkError."""
    accounts = await status(engine)
    scope = await subscription_scope(engine)
    return to_jsonable(status_answer(engine.settings, accounts, scope).document)


async def http_status(engine: Engine) -> JsonResponse:
    """GET /api/status: every CMK-bound account in scope and its state, as ``cmk status
    -o json`` prints it (``{accounts, summary, scope, warnings, exit_code}``)."""
    try:
        return 200, await status_document(engine)
    except CmkError as error:
        return failure_answer(error)


async def plan_document(engine: Engine) -> object:
    """The 200 document of GET /api/plan (``cmk plan -o json``); raises CmkError."""
    report = await plan(engine)
    scope = await subscription_scope(engine)
    return to_jsonable(plan_answer(engine.settings, report, scope).document)


async def http_plan(engine: Engine) -> JsonResponse:
    """GET /api/plan: what a sweep would do (a dry run), as ``cmk plan -o json`` prints it
    (``{plan, scope, warnings, exit_code}``)."""
    try:
        return 200, await plan_document(engine)
    except CmkError as error:
        return failure_answer(error)


async def http_sweep(engine: Engine) -> JsonResponse:
    """POST /api/sweep: sweep now, as ``cmk sweep -o json`` prints it (``{sweep, jobs,
    summary, scope, warnings, exit_code}``); the moves are enqueued for the queue
    workers, so ``jobs`` is empty and ``sweep.enqueued`` counts them."""
    try:
        return 200, await sweep_document(engine)
    except CmkError as error:
        return failure_answer(error)


async def sweep_document(engine: Engine) -> object:
    """The 200 document of POST /api/sweep (``cmk sweep -o json``, ``jobs`` empty);
    raises CmkError."""
    report = await sweep(engine)
    scope = await subscription_scope(engine)
    return to_jsonable(sweep_answer(engine.settings, report, [], scope).document)


async def http_rotate(engine: Engine, key_id: str | None, *, force: bool = False) -> JsonResponse:
    """POST /api/rotate?key_id=...[&force=true]: create a new version of one key now and
    move every bound account; answers as ``cmk rotate --enqueue -o json`` prints
    (``{rotation, jobs, summary, exit_code}``), errors as the CLI's.

    400 for a missing, invalid or versioned key id or a vault outside the allow-list, 403
    when the app's identity may not read or rotate the key, 404 for a key that does not
    exist, 500 (kind ``configuration``) when a subscription of CMK_SUBSCRIPTIONS is not
    visible to the identity (nothing is written in any of these cases). 409 when the same
    key was rotated through this endpoint less than CMK_ROTATE_COOLDOWN_MINUTES ago
    (naming the version it created), unless ``force``: a retried or doubled call does not
    make two versions. 503 (kind ``transient``) when a service did not answer and 500
    (kind ``failed``) for any other failure; both name ``created_version`` (null when
    nothing was created), so a caller knows whether a version now exists (its accounts
    are then moved by the next sweep, and a retry within the cool-down is answered 409).
    """
    created: list[str] = []
    if not key_id:
        return _error(
            400,
            "usage",
            "key_id is required",
            "add ?key_id=https://myvault.vault.azure.net/keys/mykey (the versionless key id)",
        )
    try:
        parsed = KeyId.parse(key_id)
        if parsed.version:
            return _error(
                400,
                "usage",
                f"key_id names version {parsed.version}; rotation creates a new version of the key",
                f"pass the versionless id: key_id={parsed.versionless()}",
            )
        if not engine.settings.vault_in_scope(parsed):
            raise OutOfScope(f"vault {parsed.vault_url} is not in CMK_VAULT_ALLOWLIST")
        refusal = (await subscription_scope(engine)).refusal("rotation")
        if refusal is not None:  # before anything is created
            return _error(500, "configuration", refusal, HIDDEN_FIX, created_version=None)
        cooling = None if engine.dry_run else await _cool_down(engine, parsed, force=force)
        if cooling is not None:
            return cooling
        try:
            report = await _rotate_once(engine, parsed, force=force, created=created)
        except CmkError as error:
            if not created:
                raise  # answered below by what it is
            # A version exists: whatever failed after it (a 403 or 404 of the fan-out
            # included), the answer must name it, not read as a refusal to rotate.
            transient = isinstance(error, TransientError)
            kind = "transient" if transient else "failed"
            return _failed_rotation(503 if transient else 500, kind, error, created)
    except _RotationInProgress as error:
        return _error(
            409,
            "conflict",
            f"{error}; not rotating again",
            "wait for that call to finish; GET /api/status shows the result",
            created_version=None,
        )
    except ConfigurationError as error:
        return failure_answer(error)
    except InvalidKeyId as error:
        return _error(400, "usage", str(error), "give a key id such as " + _KEY_EXAMPLE)
    except InvalidInput as error:
        return _error(400, "usage", str(error))
    except OutOfScope as error:
        fix = "add the vault to the app setting CMK_VAULT_ALLOWLIST"
        return _error(400, "configuration", str(error), fix)
    except AccessDenied as error:
        message = f"the app's identity may not rotate this key: {error}"
        return _error(403, "access_denied", message, _ROTATE_GRANT)
    except NotFound as error:
        fix = "check the key id (GET /api/status lists the keys in scope)"
        return _error(404, "not_found", str(error), fix)
    except TransientError as error:
        return _failed_rotation(503, "transient", error, created)
    except PermanentError as error:
        return _failed_rotation(500, "failed", error, created)
    return 200, to_jsonable(rotation_answer(report, []).document)


def _failed_rotation(status: int, kind: str, error: CmkError, created: list[str]) -> JsonResponse:
    """A rotation that failed: whether it created a version, and what to do next."""
    if created:
        message = f"created version {created[0]}, then failed: {error}"
        fix = "its accounts are moved by the next sweep (POST /api/sweep moves them now)"
    elif kind == "transient":
        # Key Vault may have carried out a create whose answer was lost and could not be
        # read back: the version would then exist without our knowing it.
        message = f"no version is known to have been created: {error}"
        fix = (
            "call again; if Key Vault failed while creating, first check that no new"
            " version appeared (cmk versions <key id>), or the retry makes a second one"
        )
    else:
        message = f"no version was created: {error}"
        fix = "see the error; nothing was changed"
    return _error(status, kind, message, fix, created_version=created[0] if created else None)


_KEY_EXAMPLE = "https://myvault.vault.azure.net/keys/mykey"
#: The query parameters each HTTP endpoint takes (anything else is refused: a guessed
#: ``dry_run`` must never be ignored by an endpoint that writes).
HTTP_PARAMETERS: dict[str, tuple[str, ...]] = {
    "rotate": ("key_id", "force", "dry_run"),
    "status": (),
    "plan": (),
    "sweep": (),
}


def refuse_unknown_parameters(endpoint: str, given: Mapping[str, str]) -> JsonResponse | None:
    """The 400 answer when ``given`` has a query parameter ``endpoint`` does not take
    (``code`` is the Functions key's own parameter, always allowed), else None."""
    accepted = HTTP_PARAMETERS[endpoint]
    unknown = sorted(name for name in given if name not in accepted and name != "code")
    if not unknown:
        return None
    takes = ", ".join(accepted) if accepted else "no query parameters"
    fix = f"/api/{endpoint} takes {takes}"
    if endpoint == "sweep" and "dry_run" in unknown:
        fix += "; GET /api/plan shows what a sweep would do without doing it"
    return _error(400, "usage", f"unknown query parameter(s): {', '.join(unknown)}", fix)


async def http_rotate_request(engine: Engine, params: Mapping[str, str]) -> JsonResponse:
    """POST /api/rotate as the Function receives it: its query parameters checked (none
    unknown; ``force`` and ``dry_run`` true or false), then :func:`http_rotate`."""
    refused = refuse_unknown_parameters("rotate", params)
    if refused is not None:
        return refused
    flags: dict[str, bool] = {}
    for name in ("force", "dry_run"):
        value = (params.get(name) or "").strip()
        try:
            flags[name] = bool(value) and parse_boolean(value)
        except ValueError:
            return _error(
                400, "usage", f"{name}={params.get(name)!r} is not true or false", f"{name}=true"
            )
    if flags["dry_run"]:
        engine = replace(engine, settings=replace(engine.settings, dry_run=True))
    return await http_rotate(engine, params.get("key_id"), force=flags["force"])


class _RotationInProgress(Exception):
    """Another call holds the endpoint's rotation claim of this key."""


def _rotation_claim(key: KeyId) -> str:
    return f"http-rotate|{key.versionless()}"


async def _cool_down(engine: Engine, key: KeyId, *, force: bool) -> JsonResponse | None:
    """The 409 answer when ``key`` was rotated here within the cool-down, else None (the
    rotation then takes the claim over, see :func:`_rotate_once`)."""
    name, window = _rotation_claim(key), engine.settings.rotate_cooldown
    last = await engine.ledger.claim_record(name)
    if last is not None and not force and engine.now() - last.claimed < window:
        until = last.claimed + window
        return _error(
            409,
            "conflict",
            f"{key} was rotated through this endpoint at {last.claimed.isoformat()}"
            f" (created version {last.created_version or 'in progress'}); another rotation"
            f" before {until.isoformat()} needs force=true",
            "add force=true to rotate again now (CMK_ROTATE_COOLDOWN_MINUTES)",
            created_version=last.created_version,
            cool_down_until=until.isoformat(),
        )
    return None


async def _rotate_once(
    engine: Engine, key: KeyId, *, force: bool, created: list[str]
) -> EventReport:
    """Rotate under the endpoint's claim, so two calls at once create one version. The
    last rotation's claim is taken over, never deleted: ETag-conditional, so of two calls
    after the cool-down (or two with force=true) exactly one rotates. A claim whose
    rotation never finished (its caller died) is taken over after the cool-down too.
    The version it creates is appended to ``created`` as soon as it exists."""
    if engine.dry_run:
        return await rotate_key(engine, key, trigger="http")
    name, token = _rotation_claim(key), f"{engine.owner}:http:{uuid.uuid4().hex[:12]}"
    window = engine.settings.rotate_cooldown
    done_after = timedelta(0) if force else window
    if not await engine.ledger.claim(
        name, token, lease=window, now=engine.now(), done_after=done_after
    ):
        raise _RotationInProgress(f"{key} is being rotated by another call right now")

    async def record_created(version: KeyVersion) -> None:
        # Recorded before the fan-out: if that fails, the caller's retry within the
        # cool-down is answered 409 naming this version, not given another one. Known
        # created first: a recording that fails (or whose answer is lost) must not
        # release the claim of a rotation that created a version.
        created.append(version.version)
        await engine.ledger.complete_claim(name, token, version.version)

    try:
        return await rotate_key(engine, key, trigger="http", on_created=record_created)
    except Exception:
        if created:
            log.warning(
                "%s: created version %s, then failed moving its accounts; the next sweep"
                " moves them (the claim keeps the version for the cool-down)",
                key,
                created[0],
            )
            raise
        # Refused, or failed before a version existed (Key Vault refused the create, or
        # it failed and no version appeared): a retry — with or without force — must
        # not meet "being rotated".
        try:
            await engine.ledger.release_claim(name, token)
        except CmkError as error:
            log.warning("rotation claim %s not released (a retry waits it out): %s", name, error)
        raise
