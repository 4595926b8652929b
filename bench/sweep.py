"""The sweep at scale: ``--accounts`` accounts (default 100,000) bound to ``--keys`` keys
(default 50) in 5 Key Vaults over 4 subscriptions, a tenth of them on an older version
(stale). The app's own sweep use case (what the timer runs) with the Azurite job queue:
seconds, peak memory, and the requests made against the minimum possible.

Minimum = Resource Graph pages (1,000 rows a page) + one read per distinct key + one
enqueue per stale account. Made = Resource Graph and Key Vault requests (sandbox counters)
+ enqueues (the queue's message count) + ledger requests (Azurite is not counted by the
sandbox: the engine's ledger is wrapped to count point reads, and each query as one
request per 1,000 rows returned, the Table service's page size). Memory: the peak of Python
allocations (tracemalloc) during a second, identical sweep, and the growth of the
process's maxrss during the first (timed) one; both include the sandbox, which serves
the requests from the same process. ``--dry-run`` enqueues nothing (then minimum and
made leave out the enqueues).

    python -m bench.sweep [--accounts 100000] [--keys 50] [--dry-run] [--json]
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from azure.storage.queue.aio import QueueClient

from bench._stage import Stage, Stopwatch, delta, emit, estate, machine, parser, staged
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.usecases import SweepReport, sweep

GRAPH_PAGE = 1000
TABLE_PAGE = 1000
MEMORY_TARGET_MB = 250.0


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


LEDGER = {"requests": 0}


async def _sweep(dry_run: bool) -> SweepReport:
    async with Runtime(Settings.from_environ(os.environ)) as runtime:
        engine = runtime.engine(dry_run=dry_run)
        if not dry_run:
            await runtime.prepare_storage()
        counted = _CountedLedger(engine.ledger)
        report = await sweep(replace(engine, ledger=counted))
        LEDGER["requests"] = counted.requests
        return report


async def _queued(stage: Stage) -> int:
    async with QueueClient.from_connection_string(
        stage.settings["AzureWebJobsStorage"], stage.settings["CMK_JOB_QUEUE"]
    ) as queue:
        properties = await queue.get_queue_properties()
        return int(properties.approximate_message_count or 0)


def _stale(stage: Stage) -> int:
    """Accounts not on their key's latest version."""
    world = stage.sandbox.world
    latest = {
        (vault.url, key.name.lower()): key.versions[-1].version
        for vault in world.vaults.values()
        for key in vault.keys.values()
    }
    return sum(
        1
        for a in world.accounts.values()
        if a.encryption.key_version
        != latest[
            ((a.encryption.key_vault_uri or "").rstrip("/"), (a.encryption.key_name or "").lower())
        ]
    )


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run(accounts: int, keys: int, dry_run: bool) -> dict[str, Any]:
    document = estate(accounts, subscriptions=4, keys=keys, vaults=5, stale_every=10)
    with staged(document, queue_prefix="sweep") as stage:
        stage.sandbox.set_throttling(True)
        stale = _stale(stage)
        before = stage.counts()
        rss_before = _maxrss_mb()
        watch = Stopwatch()
        report = asyncio.run(_sweep(dry_run))
        seconds = watch.seconds()
        ledger_requests = LEDGER["requests"]
        rss_growth = _maxrss_mb() - rss_before
        counts = delta(stage.counts(), before)
        enqueued = 0 if dry_run else asyncio.run(_queued(stage))
        tracemalloc.start()
        asyncio.run(_sweep(True))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    pages = math.ceil(accounts / GRAPH_PAGE)
    minimum = {"resource_graph_pages": pages, "key_reads": keys,
               "enqueues": 0 if dry_run else stale}  # fmt: skip
    made = {
        "resource_graph": counts["resource_graph"],
        "keyvault": counts["keyvault"],
        "enqueues": enqueued,
        "ledger": ledger_requests,
        "arm": counts["arm_reads"] + counts["arm_writes"],
    }
    return {
        "benchmark": "sweep",
        "accounts": accounts,
        "keys": keys,
        "stale_accounts": stale,
        "mode": "dry-run" if dry_run else "enqueue to Azurite",
        "seconds": round(seconds, 2),
        "peak_memory_mb": round(peak / 2**20, 1),
        "peak_memory_method": "tracemalloc peak during an identical dry-run sweep",
        "maxrss_growth_mb": round(rss_growth, 1),
        "requests_minimum": {**minimum, "total": sum(minimum.values())},
        "requests_made": {**made, "total": sum(made.values())},
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
            "minimum_requests": sum(made.values()) <= sum(minimum.values()),
            "peak_under_250_mb": peak / 2**20 < MEMORY_TARGET_MB,
        },
        "machine": machine(),
    }


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.add_argument("--accounts", type=int, default=100_000)
    cli.add_argument("--keys", type=int, default=50)
    cli.add_argument("--dry-run", action="store_true", help="enqueue nothing")
    args = cli.parse_args()
    result = run(args.accounts, args.keys, args.dry_run)
    made, minimum = result["requests_made"], result["requests_minimum"]
    emit(
        result,
        args.json,
        [
            f"sweep: {args.accounts} accounts, {args.keys} keys,"
            f" {result['stale_accounts']} stale ({result['mode']})",
            f"  {result['seconds']} s; peak {result['peak_memory_mb']} MB (tracemalloc),"
            f" maxrss +{result['maxrss_growth_mb']} MB",
            f"  requests: made {made['total']} {made}",
            f"            minimum {minimum['total']} {minimum}",
        ],
    )


if __name__ == "__main__":
    main()
