"""Faults and counters: rules that make the emulated services fail the way Azure does
(error statuses with or without ``Retry-After``, latency, dropped connections), and
per-endpoint request counters with a bounded request log.

Both live in one aiohttp middleware (:func:`middleware`) that wraps every service the
sandbox serves, so services implement only Azure's behaviour.

A rule matches a request by host glob (``*.vault.azure.net``), path regex (searched in the
path), and method; it fires with a probability and/or for a number of times::

    sandbox.faults.add(host="management.azure.com", path=r"/accounts/", method="PATCH",
                       status=429, retry_after=1, count=2)
    sandbox.faults.add(host="*.vault.azure.net", latency=0.2, probability=0.5)
    sandbox.faults.add(path=r"/keys/k1/", drop=True, count=1)

``hold`` (a ``threading.Event``) parks a matching request until the event is set — a
test that must put something *between* a client's request and its answer (another
client's whole update, say) holds it there, deterministically, without a sleep. A held
request is one still in the network: if its client gives up on it (a timeout, a closed
connection) while it is held, it never reaches the service — it is logged with status 0
and the rule's id, and never handled.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class FaultRule:
    """One fault: where it applies, what it does, how often. ``hits`` counts firings."""

    host: str = "*"
    path: str | None = None
    method: str | None = None
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    drop: bool = False
    hold: threading.Event | None = None
    body: dict[str, object] | None = None
    probability: float = 1.0
    count: int | None = None  # fire at most this many times (None: forever)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    hits: int = 0
    # its own draws, so what it decides does not depend on other rules' traffic
    draws: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status is None and not self.drop and self.latency <= 0 and self.hold is None:
            raise ValueError("a fault needs status=, drop=True, latency= or hold=")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {self.probability}")
        self._path_re = re.compile(self.path) if self.path else None

    def matches(self, host: str, path: str, method: str) -> bool:
        """Whether the rule applies to a request (before probability and count)."""
        if self.method and self.method.upper() != method.upper():
            return False
        if not fnmatch.fnmatchcase(host.lower(), self.host.lower()):
            return False
        return not (self._path_re and not self._path_re.search(path))

    def error_response(self) -> web.Response:
        """The response a status fault answers with (Azure's error shape)."""
        assert self.status is not None
        code = _REASONS.get(self.status, f"Status{self.status}")
        body = self.body or {
            "error": {"code": code, "message": f"Injected by the sandbox fault rule {self.id}."}
        }
        headers = {"x-ms-request-id": str(uuid.uuid4())}
        if self.retry_after is not None:
            seconds = self.retry_after
            headers["Retry-After"] = str(int(seconds)) if seconds == int(seconds) else str(seconds)
        return web.Response(
            status=self.status,
            body=json.dumps(body).encode(),
            content_type="application/json",
            headers=headers,
        )


class Faults:
    """The active fault rules. Thread-safe: tests add rules while the loop serves.

    With a seed, the n-th rule added since :meth:`clear` (or :meth:`seed`) draws from
    ``(seed, n)``: whether it fires on its k-th matching request is fixed by the seed,
    whatever requests other rules saw meanwhile."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._seed = seed
        self._added = 0

    def add(
        self,
        *,
        host: str = "*",
        path: str | None = None,
        method: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        latency: float = 0.0,
        drop: bool = False,
        body: dict[str, object] | None = None,
        probability: float = 1.0,
        count: int | None = None,
        hold: threading.Event | None = None,
    ) -> FaultRule:
        """Add a rule; see the module docstring. Returns it (``rule.hits`` counts firings)."""
        rule = FaultRule(
            host=host,
            path=path,
            method=method,
            status=status,
            retry_after=retry_after,
            latency=latency,
            drop=drop,
            hold=hold,
            body=body,
            probability=probability,
            count=count,
        )
        with self._lock:
            self._added += 1
            self._seed_rule(rule, self._added)
            self._rules.append(rule)
        return rule

    def _seed_rule(self, rule: FaultRule, ordinal: int) -> None:
        rule.draws.seed(None if self._seed is None else f"{self._seed}:{ordinal}")

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r.id != rule.id]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._added = 0

    def seed(self, seed: int) -> None:
        """Make probabilistic rules repeatable: the rules present and those added later
        draw from ``seed`` (rule by rule, see the class docstring)."""
        with self._lock:
            self._seed = seed
            for ordinal, rule in enumerate(self._rules, start=1):
                self._seed_rule(rule, ordinal)
            self._added = len(self._rules)

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def fire(self, host: str, path: str, method: str) -> list[FaultRule]:
        """The rules that fire for this request (their hits and counts updated)."""
        fired: list[FaultRule] = []
        with self._lock:
            for rule in self._rules:
                if rule.count is not None and rule.hits >= rule.count:
                    continue
                if not rule.matches(host, path, method):
                    continue
                if rule.probability < 1.0 and rule.draws.random() >= rule.probability:
                    continue
                rule.hits += 1
                fired.append(rule)
        return fired


@dataclass(frozen=True)
class RequestRecord:
    """One request the sandbox served (or faulted)."""

    time: float
    method: str
    host: str
    path: str
    query: str
    status: int  # 0 for a dropped connection
    duration: float
    endpoint: str
    fault: str | None = None


class Counters:
    """Per-endpoint request counts and a bounded log of recent requests.

    An endpoint is ``"METHOD host-pattern route"``, e.g.
    ``"GET *.vault.azure.net /keys/{name}/{version}"``, so counts aggregate across vaults.
    """

    def __init__(self, log_size: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._statuses: Counter[tuple[str, int]] = Counter()
        self.log: deque[RequestRecord] = deque(maxlen=log_size)

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._counts[record.endpoint] += 1
            self._statuses[(record.endpoint, record.status)] += 1
            self.log.append(record)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._statuses.clear()
            self.log.clear()

    def __getitem__(self, endpoint: str) -> int:
        with self._lock:
            return self._counts[endpoint]

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def snapshot(self) -> dict[str, int]:
        """Endpoint -> count, sorted by endpoint."""
        with self._lock:
            return dict(sorted(self._counts.items()))

    def by_status(self) -> dict[tuple[str, int], int]:
        """(endpoint, status) -> count."""
        with self._lock:
            return dict(sorted(self._statuses.items()))

    def matching(
        self, *, host: str = "*", path: str | None = None, method: str | None = None
    ) -> list[RequestRecord]:
        """Logged requests by host glob, path regex and method."""
        path_re = re.compile(path) if path else None
        with self._lock:
            records = list(self.log)
        return [
            r
            for r in records
            if fnmatch.fnmatchcase(r.host, host.lower())
            and (method is None or r.method == method.upper())
            and (path_re is None or path_re.search(r.path))
        ]

    def count(self, *, host: str = "*", path: str | None = None, method: str | None = None) -> int:
        """How many logged requests match (see :meth:`matching`)."""
        return len(self.matching(host=host, path=path, method=method))


EndpointNamer = Callable[[web.Request], str]


async def _hold(rule: FaultRule, request: web.Request) -> bool:
    """Park ``request`` until ``rule.hold`` is set (polled: many held requests take no
    thread each): True to deliver it then, False if its client gave up meanwhile."""
    assert rule.hold is not None
    while not rule.hold.is_set():  # a threading.Event, set by tests
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        await asyncio.sleep(HOLD_POLL_SECONDS)
    return True


#: How often a held request looks at its event.
HOLD_POLL_SECONDS = 0.01


def middleware(faults: Faults, counters: Counters, endpoint_of: EndpointNamer) -> Middleware:
    """The aiohttp middleware that applies ``faults`` and records into ``counters``.

    ``endpoint_of`` names the endpoint after the handler ran (when the route is known).
    """

    @web.middleware
    async def faults_and_counters(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        host = request.host.split(":")[0].lower()
        fired = faults.fire(host, request.path, request.method)
        delay = sum(r.latency for r in fired)
        if delay > 0:
            await asyncio.sleep(delay)
        abandoned: FaultRule | None = None
        for rule in fired:
            if rule.hold is not None and not await _hold(rule, request):
                abandoned = rule
                break
        answer = next((r for r in fired if r.drop or r.status is not None), None)
        status = 0
        fault_id = abandoned.id if abandoned else answer.id if answer else None
        try:
            if abandoned is not None:
                raise asyncio.CancelledError  # the client gave up: the service never saw it
            if answer is not None and answer.drop:
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError  # nothing to answer on a dropped connection
            if answer is not None:
                response: web.StreamResponse = answer.error_response()
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    status = exc.status
                    raise
            status = response.status
            return response
        finally:
            counters.record(
                RequestRecord(
                    time=time.time(),
                    method=request.method,
                    host=host,
                    path=request.path,
                    query=request.query_string,
                    status=status,
                    duration=time.monotonic() - started,
                    endpoint=endpoint_of(request),
                    fault=fault_id,
                )
            )

    return faults_and_counters
