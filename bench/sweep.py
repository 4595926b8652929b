"""The sweep at scale: ``--accounts`` accounts (default 100,000) bound to ``--keys`` keys
(default 50) in 5 Key Vaults over 4 subscriptions, a tenth of them on an older version
(stale). The app's own sweep use case (what the timer runs) with the Azurite job queue:
seconds, peak memory, and the requests made against the minimum possible.

The sandbox and Azurite run in a process of their own (:mod:`bench._remote`; with
``--in-process`` in this one, as before), so this process holds only the sweep.

Minimum = Resource Graph pages (1,000 rows a page) + one read per distinct key + one
enqueue per stale account. Made = Resource Graph and Key Vault requests (the sandbox's
counters, read from its process) + enqueues (the queue's message count) + ledger requests
(Azurite is not counted by the sandbox: the engine's ledger is wrapped to count point
reads, and each query as one request per 1,000 rows returned, the Table service's page
size). Memory, of this process: its peak RSS (``ru_maxrss``, whole life: interpreter,
imports and the timed sweep) and the tracemalloc peak of Python allocations during a
second, identical dry-run sweep. Duration is set against the Resource Graph quota floor:
the pages at 15 queries per 5 s window (the first window's at once) cannot take less.
``--dry-run`` enqueues nothing (then minimum and made leave out the enqueues).

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

from azure.storage.queue.aio import QueueClient

from bench._remote import remote_staged
from bench._stage import Stopwatch, delta, emit, estate, machine, parser, staged
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.usecases import SweepReport, sweep

GRAPH_PAGE = 1000
TABLE_PAGE = 1000
GRAPH_QUOTA, GRAPH_WINDOW_SECONDS = 15, 5.0  # per user (DESIGN.md §4; the sandbox = Azure)
MEMORY_TARGET_MB = 150.0
REQUESTS_TARGET = 1.05  # x the minimum


class _CountedLedger:
    """The engine's ledger, counting the requests it makes to Table storage."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.point_reads = 0
        self.query_rows = 0
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        self.point_reads += 1
        return await self._inner.get(*args, **kwargs)

    async def iter_history(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        self.queries += 1
        async for entry in self._inner.iter_history(*args, **kwargs):
            self.query_rows += 1
            yield entry

    @property
    def requests(self) -> int:
        pages = self.queries + self.query_rows // TABLE_PAGE
        return self.point_reads + pages


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


LEDGER: dict[str, Any] = {"requests": 0}


async def _sweep(dry_run: bool) -> SweepReport:
    async with Runtime(Settings.from_environ(os.environ)) as runtime:
        engine = runtime.engine(dry_run=dry_run)
        if not dry_run:
            await runtime.prepare_storage()
        counted, line = _CountedLedger(engine.ledger), _Timeline()
        jobs, inventory = _TimedQueue(engine.jobs, line), _TimedInventory(engine.inventory, line)
        report = await sweep(replace(engine, ledger=counted, jobs=jobs, inventory=inventory))
        LEDGER["requests"] = counted.requests
        LEDGER["timeline"] = line.figures() | {"sweep_done_at": round(line.now(), 2)}
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
        watch = Stopwatch()
        report = asyncio.run(_sweep(dry_run))
        seconds = watch.seconds()
        own_cpu = _cpu_seconds() - own_cpu
        cpu = {"sweep": own_cpu} | {n: v - cpu_before[n] for n, v in served.cpu().items()}
        ledger_requests, phases = LEDGER["requests"], LEDGER["timeline"]
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
    minimum = {"resource_graph_pages": pages, "key_reads": keys,
               "enqueues": 0 if dry_run else served.stale}  # fmt: skip
    made = {
        "resource_graph": counts["resource_graph"],
        "keyvault": counts["keyvault"],
        "enqueues": enqueued,
        "ledger": ledger_requests,
        "arm": counts["arm_reads"] + counts["arm_writes"],
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
        ],
    )


if __name__ == "__main__":
    main()
