"""Event Grid for the sandbox: subscriptions that deliver Key Vault events, and custom
topics that keep what the app publishes.

**Subscriptions** (system topic on the vaults): each Key Vault event the world emits is
shaped like the real one (Event Grid schema or CloudEvents 1.0; data ``Id``,
``VaultName``, ``ObjectType``, ``ObjectName``, ``Version``, ``NBF``, ``EXP``; ``topic`` /
``source`` is the vault's ARM id, ``subject`` the key name) and delivered at least once
to a Python callable or an HTTP endpoint. Switches make delivery as unfriendly as Azure
may be: duplicates, random delays, reordering. A failing delivery (exception, non-2xx,
timeout) is retried on Event Grid's schedule scaled down by ``retry_scale``; after
``max_attempts``, or when the next retry would come later than ``event_ttl_minutes`` after
the first attempt (counted on the unscaled schedule), it goes to the dead-letter list with
Event Grid's ``deadLetterReason`` (``MaxDeliveryAttemptsExceeded`` / ``TimeToLiveExceeded``).
A subscription filters as Event Grid does: ``included_event_types``, the vaults of its
system topics, and ``advanced_filters`` with the ``StringIn`` and ``StringNotIn`` operators
(``{"operatorType", "key", "values"}``, values compared case-insensitively; a key is
``data.<Field>`` or an envelope field of the subscription's schema); other operators are
not emulated and refused.

Every random choice (duplicate or not, each copy's delay) is drawn from one seeded
generator when the event is emitted, in emission order, so a seed replays the same
choices; :meth:`EventGrid.reset` rewinds to the seed. ``force_duplicates`` duplicates the
next N deliveries whatever the probability, for a test that claims a duplicate happened.

**Custom topics** (``https://{topic}.{region}-1.eventgrid.azure.net/api/events``) accept
what ``EventGridPublisherClient`` sends — CloudEvents (``application/cloudevents-batch+json``)
or Event Grid schema (``application/json``) — with the ``aeg-sas-key`` header, or a
bearer token for ``https://eventgrid.azure.net`` whose principal holds "EventGrid Data
Sender" on the topic.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
import random
import secrets
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web

from cmk.sandbox.platform.context import AUDIENCE_EVENTGRID, ServiceContext
from cmk.sandbox.world import KeyEvent, KeyEventType, World

logger = logging.getLogger(__name__)

EVENTGRID_SCHEMA = "EventGridSchema"
CLOUDEVENT_SCHEMA = "CloudEventSchemaV1_0"
EVENTGRID_HOSTS = ("*.eventgrid.azure.net", "*.eventgrid.azure.cn", "*.eventgrid.azure.us")
# Event Grid's retry schedule (seconds): 10 s, 30 s, 1 m, 5 m, 10 m, 30 m, 1 h, 3 h, 6 h, 12 h...
RETRY_SCHEDULE = (10, 30, 60, 300, 600, 1800, 3600, 10800, 21600, 43200)
SEND_ACTION = "Microsoft.EventGrid/topics/events/send/action"
#: Event Grid's default and maximum event time-to-live (``retryPolicy.eventTimeToLiveInMinutes``).
EVENT_TTL_MINUTES = 1440
MAX_ATTEMPTS_EXCEEDED = "MaxDeliveryAttemptsExceeded"
TTL_EXCEEDED = "TimeToLiveExceeded"
#: The advanced-filter operators emulated (Event Grid has more: numbers, Begins/Ends/Contains,
#: IsNull..., which no sandbox subscriber uses).
FILTER_OPERATORS = ("StringIn", "StringNotIn")

EventHandler = Callable[[dict[str, Any]], object]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_event_data(event: KeyEvent) -> dict[str, Any]:
    """The ``data`` of a Key Vault key event, as Key Vault sends it."""
    return {
        "Id": f"https://{event.vault_host}/keys/{event.key_name}/{event.version}",
        "VaultName": event.vault,
        "ObjectType": "Key",
        "ObjectName": event.key_name,
        "Version": event.version,
        "NBF": int(event.not_before.timestamp()) if event.not_before else None,
        "EXP": int(event.expires.timestamp()) if event.expires else None,
    }


def shape_event(event: KeyEvent, schema: str) -> dict[str, Any]:
    """A key event in Event Grid schema or CloudEvents 1.0 schema."""
    if schema == CLOUDEVENT_SCHEMA:
        return {
            "id": event.id,
            "source": event.vault_resource_id,
            "specversion": "1.0",
            "type": str(event.event_type),
            "subject": event.key_name,
            "time": _iso(event.time),
            "data": key_event_data(event),
        }
    return {
        "id": event.id,
        "topic": event.vault_resource_id,
        "subject": event.key_name,
        "eventType": str(event.event_type),
        "eventTime": _iso(event.time),
        "data": key_event_data(event),
        "dataVersion": "1",
        "metadataVersion": "1",
    }


@dataclass
class DeadLetter:
    """An event given up after ``attempts`` failed deliveries, with the last failure."""

    subscription: str
    event: dict[str, Any]
    attempts: int
    reason: str  # the last failure
    dead_letter_reason: str = MAX_ATTEMPTS_EXCEEDED  # Event Grid's deadLetterReason


@dataclass(frozen=True)
class AdvancedFilter:
    """One ``filter.advancedFilters`` entry: ``StringIn`` / ``StringNotIn`` on ``key``."""

    operator_type: str
    key: str
    values: frozenset[str]  # lowercase: Event Grid compares strings case-insensitively

    @classmethod
    def parse(cls, given: Any) -> AdvancedFilter:
        """From the ARM shape ``{"operatorType", "key", "values"}``; ValueError otherwise."""
        operator = given.get("operatorType") if isinstance(given, dict) else None
        if operator not in FILTER_OPERATORS:
            raise ValueError(
                f"advanced filter {given!r}: the sandbox emulates {', '.join(FILTER_OPERATORS)}"
            )
        key, values = given.get("key"), given.get("values")
        if not isinstance(key, str) or not key or not isinstance(values, list):
            raise ValueError(f"advanced filter {given!r}: needs a key and a list of values")
        return cls(operator, key, frozenset(str(v).lower() for v in values))

    def matches(self, payload: dict[str, Any]) -> bool:
        """Whether the shaped event passes; a missing key fails ``StringIn`` and passes
        ``StringNotIn``, as in Event Grid."""
        value: Any = payload
        for part in self.key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None or isinstance(value, (dict, list)):
            return self.operator_type == "StringNotIn"
        found = str(value).lower() in self.values
        return found if self.operator_type == "StringIn" else not found


@dataclass
class Subscription:
    """An event subscription on the vaults' system topics."""

    name: str
    schema: str
    handler: EventHandler | None
    url: str | None
    included_event_types: frozenset[str] | None
    vaults: frozenset[str] | None  # vault names (lowercase); None: every vault
    max_attempts: int
    advanced_filters: tuple[AdvancedFilter, ...] = ()
    event_ttl_minutes: int = EVENT_TTL_MINUTES
    delivered: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    failures: int = 0

    def wants(self, event: KeyEvent) -> bool:
        if self.included_event_types is not None and (
            str(event.event_type) not in self.included_event_types
        ):
            return False
        if self.vaults is not None and event.vault.lower() not in self.vaults:
            return False
        payload = shape_event(event, self.schema) if self.advanced_filters else {}
        return all(f.matches(payload) for f in self.advanced_filters)


@dataclass
class Topic:
    """A custom topic: its endpoint, access key, and every event it accepted."""

    name: str
    region: str
    resource_id: str
    key: str
    input_schema: str | None = None  # None accepts both schemas
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.name}.{self.region}-1.eventgrid.azure.net"

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}/api/events"


class EventGrid:
    """Subscriptions, delivery behaviour, dead letters and custom topics of one sandbox."""

    def __init__(self, *, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.random_seed = seed
        self._random = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self.subscriptions: list[Subscription] = []
        self.topics: dict[str, Topic] = {}  # lower host -> topic
        self.dead_letters: list[DeadLetter] = []
        # delivery switches
        self.duplicate_probability = 0.0
        self.force_duplicates = 0  # the next N deliveries are duplicated, whatever the odds
        self.duplicated = 0  # deliveries sent twice so far
        self.max_delay = 0.0  # seconds; each delivery waits uniform(0, max_delay)
        self.reorder = False  # when on, deliveries wait a random 0-50 ms so they overtake
        self.retry_scale = 0.001  # 10 s -> 10 ms
        self.delivery_timeout = 30.0

    # --- wiring ----------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on ``loop`` (the sandbox's)."""
        self._loop = loop

    def attach(self, world: World) -> None:
        """Receive ``world``'s key events, and be listed by its ARM (custom topics)."""
        world.add_key_event_listener(self._on_key_event)
        world.event_grids.append(self)

    def seed(self, seed: int | None) -> None:
        """Draw later random choices from ``seed`` (and rewind to it on :meth:`reset`)."""
        with self._lock:
            self.random_seed = seed
            self._random.seed(seed)

    def reset(self) -> None:
        """Forget subscriptions, topics and dead letters; restore default switches and
        rewind the random choices to the seed."""
        with self._lock:
            for task in list(self._tasks):
                task.cancel()
            self.subscriptions = []
            self.topics = {}
            self.dead_letters = []
            self._random.seed(self.random_seed)
        self.duplicate_probability = 0.0
        self.force_duplicates = 0
        self.duplicated = 0
        self.max_delay = 0.0
        self.reorder = False
        self.retry_scale = 0.001

    async def close(self) -> None:
        """Cancel pending deliveries (and wait until they ended); close the HTTP session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(
        self,
        handler: EventHandler | None = None,
        *,
        url: str | None = None,
        schema: str = EVENTGRID_SCHEMA,
        included_event_types: Sequence[str | KeyEventType] | None = None,
        vaults: Sequence[str] | None = None,
        max_attempts: int = 30,
        name: str | None = None,
        advanced_filters: Sequence[dict[str, Any]] = (),
        event_ttl_minutes: int = EVENT_TTL_MINUTES,
    ) -> Subscription:
        """Subscribe ``handler`` (called with one event dict; sync handlers run in a thread,
        coroutine functions on the sandbox loop) or ``url`` (HTTP POST) to key events.
        ``vaults`` (names) limits it to those vaults' system topics; ``advanced_filters``
        and ``event_ttl_minutes`` (1-1440) are the ARM properties of the same meaning."""
        if (handler is None) == (url is None):
            raise ValueError("give exactly one of handler= or url=")
        if schema not in (EVENTGRID_SCHEMA, CLOUDEVENT_SCHEMA):
            raise ValueError(f"schema must be {EVENTGRID_SCHEMA} or {CLOUDEVENT_SCHEMA}")
        if not 1 <= event_ttl_minutes <= EVENT_TTL_MINUTES:
            raise ValueError(f"event_ttl_minutes must be 1-{EVENT_TTL_MINUTES}")
        subscription = Subscription(
            name=name or f"sub-{uuid.uuid4().hex[:8]}",
            schema=schema,
            handler=handler,
            url=url,
            included_event_types=(
                frozenset(str(t) for t in included_event_types)
                if included_event_types is not None
                else None
            ),
            vaults=frozenset(v.lower() for v in vaults) if vaults is not None else None,
            max_attempts=max_attempts,
            advanced_filters=tuple(AdvancedFilter.parse(f) for f in advanced_filters),
            event_ttl_minutes=event_ttl_minutes,
        )
        with self._lock:
            self.subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self.subscriptions = [s for s in self.subscriptions if s is not subscription]

    def _on_key_event(self, event: KeyEvent) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if ".managedhsm." in event.vault_host:
            # Event Grid has Key Vault vaults as a source, not Managed HSM pools: their
            # keys' changes reach cmk-rotator through the sweep only, as in Azure.
            return
        with self._lock:  # one draw sequence, in emission order, whatever the threads
            targets = [s for s in self.subscriptions if s.wants(event)]
            deliveries = [
                (subscription, self._delay())
                for subscription in targets
                for _ in range(self._copies())
            ]
        for subscription, delay in deliveries:
            payload = shape_event(event, subscription.schema)
            loop.call_soon_threadsafe(self._spawn, subscription, payload, delay)

    def _copies(self) -> int:
        """1, or 2 for a duplicated delivery (forced, or drawn); call with the lock held."""
        duplicate = self._random.random() < self.duplicate_probability
        if self.force_duplicates > 0:
            self.force_duplicates -= 1
            duplicate = True
        self.duplicated += duplicate
        return 2 if duplicate else 1

    def _delay(self) -> float:
        """A delivery's delay (random delay plus the reordering jitter); lock held."""
        delay = self._random.uniform(0, self.max_delay) if self.max_delay > 0 else 0.0
        if self.reorder:
            delay += self._random.uniform(0, 0.05)
        return delay

    def _spawn(self, subscription: Subscription, payload: dict[str, Any], delay: float) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(subscription, payload, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(
        self, subscription: Subscription, payload: dict[str, Any], delay: float = 0.0
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        reason, cause, attempt = "", MAX_ATTEMPTS_EXCEEDED, 0
        elapsed = 0  # Event Grid seconds since the first attempt (the schedule, unscaled)
        for attempt in range(1, subscription.max_attempts + 1):
            subscription.attempts += 1
            try:
                await self._attempt(subscription, payload, attempt)
            except Exception as exc:  # any failure of the subscriber means "retry later"
                subscription.failures += 1
                reason = f"{type(exc).__name__}: {exc}"
                logger.debug("event delivery failed", extra={"subscription": subscription.name})
                if attempt == subscription.max_attempts:
                    break
                wait = RETRY_SCHEDULE[min(attempt - 1, len(RETRY_SCHEDULE) - 1)]
                if elapsed + wait > subscription.event_ttl_minutes * 60:
                    cause = TTL_EXCEEDED
                    break
                elapsed += wait
                await asyncio.sleep(wait * self.retry_scale)
                continue
            subscription.delivered.append(payload)
            return
        self.dead_letters.append(DeadLetter(subscription.name, payload, attempt, reason, cause))

    async def _attempt(self, subscription: Subscription, payload: dict[str, Any], n: int) -> None:
        if subscription.handler is not None:
            handler = subscription.handler
            if inspect.iscoroutinefunction(handler):
                await asyncio.wait_for(handler(payload), self.delivery_timeout)
            else:
                loop = asyncio.get_running_loop()
                result = await asyncio.wait_for(
                    loop.run_in_executor(None, handler, payload), self.delivery_timeout
                )
                if inspect.isawaitable(result):
                    await result
            return
        assert subscription.url is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        body: object = payload
        content_type = "application/cloudevents+json; charset=utf-8"
        if subscription.schema != CLOUDEVENT_SCHEMA:
            body, content_type = [payload], "application/json"
        headers = {
            "Content-Type": content_type,
            "aeg-event-type": "Notification",
            "aeg-subscription-name": subscription.name.upper(),
            "aeg-delivery-count": str(n - 1),
            "aeg-data-version": "1",
            "aeg-metadata-version": "1",
        }
        timeout = aiohttp.ClientTimeout(total=self.delivery_timeout)
        async with self._session.post(
            subscription.url, data=json.dumps(body), headers=headers, timeout=timeout
        ) as response:
            if not 200 <= response.status < 300:
                raise RuntimeError(f"subscriber answered {response.status}")

    async def drain(self) -> None:
        """Wait (on the sandbox loop) until no delivery is pending."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- custom topics ---------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        *,
        region: str = "westeurope",
        subscription_id: str = "00000000-0000-0000-0000-000000000000",
        resource_group: str = "rg-cmk",
        key: str | None = None,
        input_schema: str | None = None,
    ) -> Topic:
        """A custom topic at ``https://{name}.{region}-1.eventgrid.azure.net/api/events``."""
        topic = Topic(
            name=name,
            region=region,
            resource_id=(
                f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
                f"/providers/Microsoft.EventGrid/topics/{name}"
            ),
            key=key or secrets.token_urlsafe(32),
            input_schema=input_schema,
        )
        with self._lock:
            self.topics[topic.host.lower()] = topic
        return topic

    def topic(self, name: str) -> Topic:
        """The custom topic called ``name``."""
        with self._lock:
            for topic in self.topics.values():
                if topic.name.lower() == name.lower():
                    return topic
        raise KeyError(f"no custom topic {name!r}; create it with create_topic()")

    def build_app(self, ctx: ServiceContext) -> web.Application:
        """The data plane of the custom topics (``POST /api/events``)."""

        async def publish(request: web.Request) -> web.Response:
            host = request.host.split(":")[0].lower()
            with self._lock:
                topic = self.topics.get(host)
            if topic is None:
                return _error(404, "NotFound", f"The topic {host} could not be found.")
            denied = _authorize(request, topic, ctx)
            if denied is not None:
                return denied
            try:
                events = json.loads(await request.read())
            except ValueError:
                return _error(400, "BadRequest", "The request body is not valid JSON.")
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
            schema = (
                CLOUDEVENT_SCHEMA if content_type.startswith("application/cloudevents") else None
            )
            if isinstance(events, dict):
                events = [events]
            if not isinstance(events, list) or not events:
                return _error(400, "BadRequest", "The request must carry an array of events.")
            for index, event in enumerate(events):
                problem = _validate(event, schema or EVENTGRID_SCHEMA, topic)
                if problem:
                    return _error(400, "BadRequest", f"events[{index}]: {problem}")
            with self._lock:
                topic.events.extend(events)
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/api/events", publish)
        return app


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _authorize(request: web.Request, topic: Topic, ctx: ServiceContext) -> web.Response | None:
    key = request.headers.get("aeg-sas-key")
    if key is not None:
        if hmac.compare_digest(key, topic.key):
            return None
        return _error(401, "Unauthorized", "The request authorization key is not authorized.")
    if request.headers.get("Authorization", "").lower().startswith("bearer "):
        claims = ctx.bearer_claims(request)
        if claims is None or claims.audience != AUDIENCE_EVENTGRID:
            return _error(401, "Unauthorized", "The access token is invalid or has expired.")
        if not ctx.world.rbac_allows(claims.principal.object_id, SEND_ACTION, topic.resource_id):
            return _error(
                403,
                "Forbidden",
                f"The principal {claims.principal.object_id} does not have"
                f" {SEND_ACTION} on {topic.resource_id}.",
            )
        return None
    return _error(
        401,
        "Unauthorized",
        "The request does not carry aeg-sas-key, aeg-sas-token or a bearer token.",
    )


def _validate(event: object, schema: str, topic: Topic) -> str | None:
    if not isinstance(event, dict):
        return "not a JSON object"
    if topic.input_schema is not None and topic.input_schema != schema:
        return f"this topic accepts {topic.input_schema} only"
    required = (
        ("id", "source", "type", "specversion")
        if schema == CLOUDEVENT_SCHEMA
        else ("id", "subject", "eventType", "eventTime", "data", "dataVersion")
    )
    missing = [name for name in required if event.get(name) in (None, "")]
    if missing:
        return f"missing required properties {missing} for {schema}"
    return None
