"""Fan out one key: find the accounts bound to it, plan each, enqueue one job per move.

Used by the event handlers, which must answer Event Grid within 30 s even for thousands
of accounts: the inventory is asked for the accounts of this one key only (filtered by
Resource Graph, so the pages read are proportional to that key's accounts), streamed,
and bound accounts are planned and enqueued in chunks while later pages are still
arriving. All chunks run in one task scope: a failure anywhere cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from cmk.keyid import KeyId
from cmk.planner import Binding, Decision, Finding, Move
from cmk.ports import RotationJob
from cmk.usecases.context import Engine, task_scope
from cmk.usecases.keyview import KeyVersions, decide
from cmk.usecases.report import FindingReport, PlannedMove
from cmk.usecases.subscriptions import subscription_scope

__all__ = ["FanOut", "fan_out", "job_for", "key_in_use"]

log = logging.getLogger(__name__)

CHUNK = 250


@dataclass
class FanOut:
    """What a fan-out planned and enqueued."""

    moves: list[Move] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    up_to_date: int = 0
    enqueued: int = 0

    def planned_moves(self) -> tuple[PlannedMove, ...]:
        """The report lines of the moves."""
        return tuple(PlannedMove.from_move(move) for move in self.moves)

    def finding_reports(self) -> tuple[FindingReport, ...]:
        """The report lines of the findings."""
        return tuple(FindingReport.from_finding(finding) for finding in self.findings)


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
    chunk: list[Binding] = []

    async def settle(bindings: Sequence[Binding]) -> None:
        try:
            versions = await view.covering(bindings)
            decisions = decide(
                versions, bindings, engine.policy, engine.now(), current=view.latest.version
            )
            await _apply(engine, decisions, trigger, urgent, result)
        finally:
            gate.release()

    subscriptions = (await subscription_scope(engine)).subscriptions
    # Every chunk runs in this scope: if the inventory fails mid-stream (or a chunk does),
    # the other chunks are cancelled before the error propagates, and nothing is
    # enqueued after the invocation failed. A chunk starts only when the gate has room,
    # so a slow queue holds back the stream instead of piling up tasks.
    async with task_scope() as group:
        async for record in engine.inventory.cmk_accounts(subscriptions, key=view.key):
            binding = record.binding
            if binding is None or not binding.key_id.same_key(view.key):
                continue  # the inventory filters by key already; this is the guard
            if only_version is not None and binding.key_id.version != only_version:
                continue
            chunk.append(binding)
            if len(chunk) >= CHUNK:
                await gate.acquire()
                group.create_task(settle(chunk))
                chunk = []
        if chunk:
            await gate.acquire()
            group.create_task(settle(chunk))
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


async def key_in_use(engine: Engine, key: KeyId) -> bool:
    """Whether any CMK account in scope is bound to ``key`` (any version): the first
    binding the inventory streams answers it. A vault may hold keys of other services
    (Storage, SQL, disks): this app neither rotates nor alerts for those."""
    subscriptions = (await subscription_scope(engine)).subscriptions
    records = engine.inventory.cmk_accounts(subscriptions, key=key)
    try:
        async for record in records:
            if record.binding is not None and record.binding.key_id.same_key(key):
                return True
        return False
    finally:  # stopped at the first: close the stream now (its open response with it)
        close = getattr(records, "aclose", None)
        if close is not None:
            await close()


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
