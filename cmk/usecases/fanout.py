"""Fan out one key: find the accounts bound to it, plan each, enqueue one job per move.

Used by the event handlers, which must answer Event Grid within 30 s even for thousands
of accounts: the inventory is streamed, and bound accounts are planned and enqueued in
chunks while later pages are still arriving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmk.planner import Binding, Decision, Finding, Move
from cmk.ports import RotationJob
from cmk.usecases.context import Engine
from cmk.usecases.keyview import KeyVersions, decide

__all__ = ["FanOut", "fan_out", "job_for"]

log = logging.getLogger(__name__)

CHUNK = 250


@dataclass
class FanOut:
    """What a fan-out planned and enqueued."""

    moves: list[Move] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    up_to_date: int = 0
    enqueued: int = 0


def job_for(move: Move, trigger: str, *, urgent: bool = False) -> RotationJob:
    """The queue job that carries out ``move``."""
    return RotationJob(
        account_id=move.binding.account_id,
        target=move.target.key_id,
        trigger=trigger,
        urgent=urgent or move.urgent,
        from_version=move.binding.key_id.version,
    )


async def fan_out(
    engine: Engine,
    view: KeyVersions,
    trigger: str,
    *,
    only_version: str | None = None,
    urgent: bool = False,
) -> FanOut:
    """Plan and enqueue every account bound to ``view.key`` (or only to ``only_version``)."""
    result = FanOut()
    gate = asyncio.Semaphore(max(1, engine.settings.max_concurrency // 4))
    tasks: list[asyncio.Task[None]] = []
    chunk: list[Binding] = []

    async def settle(bindings: Sequence[Binding]) -> None:
        async with gate:
            versions = await view.covering(bindings)
            decisions = decide(
                versions, bindings, engine.policy, engine.now(), current=view.latest.version
            )
            await _apply(engine, decisions, trigger, urgent, result)

    subscriptions = engine.settings.require_subscriptions()
    async for record in engine.inventory.cmk_accounts(subscriptions):
        binding = record.binding
        if binding is None or not binding.key_id.same_key(view.key):
            continue
        if only_version is not None and binding.key_id.version != only_version:
            continue
        chunk.append(binding)
        if len(chunk) >= CHUNK:
            tasks.append(asyncio.create_task(settle(chunk)))
            chunk = []
    if chunk:
        tasks.append(asyncio.create_task(settle(chunk)))
    await asyncio.gather(*tasks)
    log.info(
        "fan-out of %s: %d to move, %d up to date, %d findings, %d enqueued",
        view.key,
        len(result.moves),
        result.up_to_date,
        len(result.findings),
        result.enqueued,
        extra={"cmk_key_id": str(view.key), "cmk_step": "fan_out"},
    )
    return result


async def _apply(
    engine: Engine, decisions: Sequence[Decision], trigger: str, urgent: bool, result: FanOut
) -> None:
    jobs = []
    for decision in decisions:
        if isinstance(decision, Move):
            result.moves.append(decision)
            jobs.append(job_for(decision, trigger, urgent=urgent))
        elif isinstance(decision, Finding):
            result.findings.append(decision)
        else:
            result.up_to_date += 1
    if jobs and not engine.dry_run:
        sent = await engine.jobs.enqueue_many(jobs)  # await first: chunks run concurrently
        result.enqueued += sent
