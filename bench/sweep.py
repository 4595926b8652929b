"""The sweep at scale: ``--accounts`` accounts (default 100,000) bound to ``--keys`` keys
(default 50) in 5 Key Vaults over 4 subscriptions, a tenth of them on an older version
(stale). The app's own sweep use case (what the timer runs) with the Azurite job queue:
seconds, peak memory, and the requests made against the minimum possible.

The sandbox and Azurite run in a process of their own (:mod:`bench._remote`; with
``--in-process`` in this one, as before), so this process holds only the sweep.

Made = Resource Graph, Key Vault and ARM requests (the sandbox's counters, read from its
process) + every Storage request, counted at this process's HTTP transport (azure-core's
aiohttp transport, which every Azure client sends through, below the SDKs' retries: each
table page, point read, write, create and enqueue is one request), by table or queue and
operation. (Counting the calls of the engine's ledger port, as this benchmark once did,
missed the alert, outbox and unreadable-mark queries, which go round it.)

Minimum = what a sweep of this estate must do: the Resource Graph pages (1,000 rows a
page) + one read per distinct key + one read of each older version accounts are bound to
+ one challenge 401 per vault (a new Key Vault client's first request) + the list of
subscriptions the identity can read (one ARM read a process, for the scope) + one enqueue per
stale account + one page of each Table query a sweep needs (:data:`SWEEP_QUERIES`; the
benchmark's table is new, so one page each) + the table and queue creates a process makes
before its first sweep. A dry run sends, writes and creates nothing and reads no alert
rows (its Table minimum: the open ledger rows, if anything moves, and the unreadable
marks).

Memory, of this process: its peak RSS (``ru_maxrss``, whole life: interpreter, imports
and the timed sweep) and the tracemalloc peak of Python allocations during a second,
identical dry-run sweep. Duration is set against the Resource Graph quota floor: the
pages at 15 queries per 5 s window (the first window's at once) cannot take less.
``--dry-run`` enqueues nothing.

    python -m bench.sweep [--accounts 100000] [--keys 50] [--dry-run] [--in-process] [--json]
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.queue.aio import QueueClient

from bench._remote import remote_staged
from bench._stage import Stopwatch, delta, emit, estate, machine, parser, staged
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.usecases import SweepReport, sweep

GRAPH_PAGE = 1000
GRAPH_QUOTA, GRAPH_WINDOW_SECONDS = 15, 5.0  # per user (DESIGN.md §4; the sandbox = Azure)
MEMORY_TARGET_MB = 150.0
REQUESTS_TARGET = 1.05  # x the minimum


#: The Table queries a sweep makes, each at least one page: the alert outbox's pending
#: rows (delivered first), the open alerts (to resolve what recovered), the open ledger rows
#: (moves under way or failed), the keys earlier sweeps found unreadable.
SWEEP_QUERIES = ("outbox pending alerts", "open alerts", "open ledger rows", "unreadable marks")


def _endpoints(connection_string: str) -> dict[str, str]:
    """The Table and Queue endpoints named in a Storage connection string."""
    found: dict[str, str] = {}
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name in ("TableEndpoint", "QueueEndpoint") and value:
            found["table" if name == "TableEndpoint" else "queue"] = value.rstrip("/")
    return found


def _table_operation(method: str, resource: str) -> tuple[str, str]:
    """(table, operation) of a Table service request, from its first path segment."""
    if resource == "$batch":
        return "", "batch"
    name, paren, keys = resource.partition("(")
    if name == "Tables":
        return (keys.strip("')") if paren else ""), f"{method} table"  # create, delete
    if method == "GET":
        return name, "query page" if keys in ("", ")") else "point read"
    return name, "write"


def _queue_operation(method: str, path: list[str], query: str) -> tuple[str, str]:
    """(queue, operation) of a Queue service request."""
    name = path[0] if path else ""
    if len(path) >= 2 and path[1] == "messages":
        return name, "enqueue" if method == "POST" else f"{method} messages"
    if method == "PUT" and "comp=" not in query:
        return name, "create queue"
    return name, f"{method} {query.split('&', maxsplit=1)[0] or 'queue'}"


class StorageRequests:
    """Every request this process sends to Table and Queue storage, counted at the HTTP
    transport: while entered, azure-core's aiohttp transport (the one every Azure client
    sends through, below its retry policy) notes each request to one of the endpoints of
    ``connection_string`` by (service, table or queue, operation), and how many failed
    (an error status or no answer). Requests elsewhere (ARM, Key Vault) are not kept."""

    def __init__(self, connection_string: str) -> None:
        self._endpoints = _endpoints(connection_string)
        if not self._endpoints:
            raise ValueError("the connection string names no TableEndpoint or QueueEndpoint")
        self.counts: dict[tuple[str, str, str], int] = {}
        self.failed = 0
        self._original: Any = None

    def classify(self, method: str, url: str) -> tuple[str, str, str] | None:
        """(service, table or queue, operation) of a request, None if not to Storage."""
        for service, endpoint in self._endpoints.items():
            if url == endpoint or url.startswith(endpoint + "/"):
                parts = urlsplit(url[len(endpoint) :])
                path = [unquote(p) for p in parts.path.split("/") if p]
                if service == "table":
                    return ("table", *_table_operation(method, path[0] if path else ""))
                return ("queue", *_queue_operation(method, path, parts.query))
        return None

    def note(self, method: str, url: str, status: int) -> None:
        found = self.classify(method.upper(), url)
        if found is not None:
            self.counts[found] = self.counts.get(found, 0) + 1
            if status == 0 or status >= 400:
                self.failed += 1

    def __enter__(self) -> StorageRequests:
        counter, original = self, AioHttpTransport.send
        self._original = original

        async def send(transport: Any, request: Any, **config: Any) -> Any:
            status = 0
            try:
                response = await original(transport, request, **config)
                status = int(response.status_code)
                return response
            finally:
                counter.note(request.method, request.url, status)

        AioHttpTransport.send = send
        return self

    def __exit__(self, *exc: object) -> None:
        AioHttpTransport.send = self._original

    def total(self, operation: str | None = None, service: str | None = None) -> int:
        return sum(
            n
            for (kind, _, op), n in self.counts.items()
            if (operation is None or op == operation) and (service is None or kind == service)
        )

    def figures(self) -> dict[str, int]:
        """Every count as ``"service name: operation"``, sorted."""
        return {
            f"{kind} {name or '-'}: {op}": n for (kind, name, op), n in sorted(self.counts.items())
        }

    def made(self) -> dict[str, int]:
        """The kinds the minimum names: Table query pages, enqueues, the table and queue
        creates, and every other Storage request (point reads, writes, deletes...)."""
        pages, enqueues = self.total("query page"), self.total("enqueue")
        setup = self.total("POST table") + self.total("create queue")
        return {
            "table_query_pages": pages,
            "enqueues": enqueues,
            "storage_setup": setup,
            "storage_other": self.total() - pages - enqueues - setup,
        }


def minimum_requests(document: dict[str, Any], *, dry_run: bool) -> dict[str, int]:
    """The fewest requests a sweep of the estate ``document`` (:func:`bench._stage.estate`)
    can make (see the module's docstring)."""
    groups = document["accounts"]
    accounts = sum(int(group["count"]) for group in groups)
    bound = [group["encryption"] for group in groups]
    keys = {(e["vault"], e["key"]) for e in bound}
    stale_versions = {(e["vault"], e["key"]) for e in bound if e["version"] != "latest"}
    stale = sum(int(g["count"]) for g in groups if g["encryption"]["version"] != "latest")
    # A dry run reads only the open ledger rows (when something moves) and the marks.
    queries = (1 if stale else 0) + 1 if dry_run else len(SWEEP_QUERIES)
    return {
        "resource_graph_pages": math.ceil(accounts / GRAPH_PAGE),
        "key_reads": len(keys),
        "bound_version_reads": len(stale_versions),  # each older bound version, once
        "keyvault_challenges": len({vault for vault, _ in keys}),  # one 401 per vault client
        "subscription_list": 1,  # the subscriptions the identity reads (ARM), once a process
        "enqueues": 0 if dry_run else stale,
        "table_query_pages": queries,
        "storage_setup": 0 if dry_run else 2,  # the ledger table and the job queue
    }


class _Timeline:
    """When (seconds since the sweep began) the inventory stream ended and the job sends
    began and ended, and how long sends ran in all."""

    def __init__(self) -> None:
        self.origin = time.monotonic()
        self.inventory_done: float | None = None
        self.first_send: float | None = None
        self.last_send_done: float | None = None
        self.sending = 0.0

    def now(self) -> float:
        return time.monotonic() - self.origin

    def figures(self) -> dict[str, float | None]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 2)

        return {
            "inventory_streamed_at": rounded(self.inventory_done),
            "first_send_at": rounded(self.first_send),
            "last_send_done_at": rounded(self.last_send_done),
            "sending": round(self.sending, 2),
        }


class _TimedQueue:
    """The engine's job queue, noting its sends on the timeline."""

    def __init__(self, inner: Any, timeline: _Timeline) -> None:
        self._inner = inner
        self._timeline = timeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def enqueue_many(self, *args: Any, **kwargs: Any) -> Any:
        line = self._timeline
        started = line.now()
        if line.first_send is None:
            line.first_send = started
        try:
            return await self._inner.enqueue_many(*args, **kwargs)
        finally:
            line.last_send_done = line.now()
            line.sending += line.last_send_done - started


class _TimedInventory:
    """The engine's inventory, noting on the timeline when the full listing ended."""

    def __init__(self, inner: Any, timeline: _Timeline) -> None:
        self._inner = inner
        self._timeline = timeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def cmk_accounts(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async for record in self._inner.cmk_accounts(*args, **kwargs):
            yield record
        if kwargs.get("key") is None and len(args) < 2:
            self._timeline.inventory_done = self._timeline.now()


PHASES: dict[str, Any] = {}


async def _sweep(dry_run: bool) -> SweepReport:
    async with Runtime(Settings.from_environ(os.environ)) as runtime:
        engine = runtime.engine(dry_run=dry_run)
        if not dry_run:
            await runtime.prepare_storage()  # as a new Functions process does before its first
        line = _Timeline()
        jobs, inventory = _TimedQueue(engine.jobs, line), _TimedInventory(engine.inventory, line)
        report = await sweep(replace(engine, jobs=jobs, inventory=inventory))
        PHASES["timeline"] = line.figures() | {"sweep_done_at": round(line.now(), 2)}
        return report


async def _queued(settings: dict[str, str]) -> int:
    async with QueueClient.from_connection_string(
        settings["AzureWebJobsStorage"], settings["CMK_JOB_QUEUE"]
    ) as queue:
        properties = await queue.get_queue_properties()
        return int(properties.approximate_message_count or 0)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _maxrss_mb() -> float:
    """This process's peak resident set so far (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def quota_floor(pages: int) -> float:
    """Seconds ``pages`` Resource Graph queries take at least: the first window's quota
    at once, then one window for each further quota's worth."""
    return max(0, math.ceil(pages / GRAPH_QUOTA) - 1) * GRAPH_WINDOW_SECONDS


@dataclass
class _Served:
    """The sandbox, wherever it runs: the app settings, its counters, how many are stale."""

    settings: dict[str, str]
    stale: int
    counts: Callable[[], dict[str, int]]
    cpu: Callable[[], dict[str, float]]
    reset_throttle: Callable[[], None]
    where: str


@contextmanager
def _served(document: dict[str, Any], in_process: bool) -> Iterator[_Served]:
    if not in_process:
        with remote_staged(document, queue_prefix="sweep") as remote:
            yield _Served(
                remote.settings, remote.stale, remote.counts, remote.cpu_seconds,
                remote.reset_throttle, f"own process (pid {remote.pid()})",
            )  # fmt: skip
        return
    from bench._remote import _stale  # noqa: PLC0415 (the in-process comparison only)

    with staged(document, queue_prefix="sweep") as stage:
        stage.sandbox.set_throttling(True)
        yield _Served(
            stage.settings, _stale(stage.sandbox), stage.counts, lambda: {},
            stage.reset_throttle, "this process",
        )  # fmt: skip


def run(accounts: int, keys: int, dry_run: bool, in_process: bool = False) -> dict[str, Any]:
    document = estate(accounts, subscriptions=4, keys=keys, vaults=5, stale_every=10)
    with _served(document, in_process) as served:
        before, cpu_before = served.counts(), served.cpu()
        rss_before, own_cpu = _maxrss_mb(), _cpu_seconds()
        with StorageRequests(served.settings["AzureWebJobsStorage"]) as storage:
            watch = Stopwatch()
            report = asyncio.run(_sweep(dry_run))
            seconds = watch.seconds()
        own_cpu = _cpu_seconds() - own_cpu
        cpu = {"sweep": own_cpu} | {n: v - cpu_before[n] for n, v in served.cpu().items()}
        phases = PHASES["timeline"]
        rss_peak = _maxrss_mb()
        counts = delta(served.counts(), before)
        enqueued = 0 if dry_run else asyncio.run(_queued(served.settings))
        served.reset_throttle()
        tracemalloc.start()
        asyncio.run(_sweep(True))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    pages = math.ceil(accounts / GRAPH_PAGE)
    floor = quota_floor(pages)
    minimum = minimum_requests(document, dry_run=dry_run)
    made = {
        "resource_graph": counts["resource_graph"],
        "keyvault": counts["keyvault"],
        "arm": counts["arm_reads"] + counts["arm_writes"],
        **storage.made(),
    }
    ratio = sum(made.values()) / max(1, sum(minimum.values()))
    return {
        "benchmark": "sweep",
        "accounts": accounts,
        "keys": keys,
        "stale_accounts": served.stale,
        "mode": "dry-run" if dry_run else "enqueue to Azurite",
        "sandbox": served.where,
        "seconds": round(seconds, 2),
        "graph_quota_floor_seconds": floor,
        "graph_quota_floor": (
            f"{pages} pages at {GRAPH_QUOTA} queries per {GRAPH_WINDOW_SECONDS:g} s window"
        ),
        "seconds_over_floor": round(seconds / floor, 2) if floor else None,
        "timeline_seconds": phases,
        "cpu_seconds": {name: round(value, 2) for name, value in cpu.items()},
        "peak_rss_mb": round(rss_peak, 1),
        "rss_before_sweep_mb": round(rss_before, 1),
        "peak_rss_method": "ru_maxrss of the sweeping process (its whole life, timed sweep"
        " included; the tracemalloc sweep comes after)",
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_method": "tracemalloc peak during an identical dry-run sweep",
        "requests_minimum": {**minimum, "total": sum(minimum.values())},
        "requests_made": {**made, "total": sum(made.values())},
        "requests_over_minimum": round(ratio, 4),
        "storage_requests": storage.figures(),
        "storage_requests_failed": storage.failed,
        "storage_requests_method": "counted at this process's aiohttp transport (azure-core's"
        " AioHttpTransport.send, below the SDKs' retries), by table or queue and operation",
        "queued_after_sweep": enqueued,
        "report": {
            "accounts": report.accounts,
            "keys_read": report.keys_read,
            "moves": len(report.moves),
            "enqueued": report.enqueued,
            "findings": len(report.findings),
            "alerts_published": report.alerts_published,
            "errors": list(report.errors)[:5],
        },
        "targets": {
            "requests_within_1_05_x_minimum": ratio <= REQUESTS_TARGET,
            "peak_rss_under_150_mb": rss_peak < MEMORY_TARGET_MB,
            "tracemalloc_peak_under_150_mb": peak / 2**20 < MEMORY_TARGET_MB,
        },
        "machine": machine(),
    }


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.add_argument("--accounts", type=int, default=100_000)
    cli.add_argument("--keys", type=int, default=50)
    cli.add_argument("--dry-run", action="store_true", help="enqueue nothing")
    cli.add_argument(
        "--in-process", action="store_true", help="serve the sandbox from this process (as before)"
    )
    args = cli.parse_args()
    result = run(args.accounts, args.keys, args.dry_run, args.in_process)
    made, minimum = result["requests_made"], result["requests_minimum"]
    emit(
        result,
        args.json,
        [
            f"sweep: {args.accounts} accounts, {args.keys} keys,"
            f" {result['stale_accounts']} stale ({result['mode']}; sandbox in {result['sandbox']})",
            f"  {result['seconds']} s = {result['seconds_over_floor']} x the Resource Graph"
            f" quota floor of {result['graph_quota_floor_seconds']} s"
            f" ({result['graph_quota_floor']})",
            f"  timeline (s) {result['timeline_seconds']}",
            f"  CPU seconds {result['cpu_seconds']}",
            f"  peak RSS {result['peak_rss_mb']} MB (ru_maxrss of the sweeping process;"
            f" {result['rss_before_sweep_mb']} MB before the sweep);"
            f" tracemalloc peak {result['peak_memory_mb']} MB (dry-run sweep)",
            f"  requests: made {made['total']} {made}",
            f"            minimum {minimum['total']} {minimum}"
            f" -> {result['requests_over_minimum']} x the minimum",
            f"  Storage requests (HTTP transport) {result['storage_requests']},"
            f" {result['storage_requests_failed']} failed;"
            f" {result['queued_after_sweep']} messages in the job queue after the sweep",
        ],
    )


if __name__ == "__main__":
    main()
