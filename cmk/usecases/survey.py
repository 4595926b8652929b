"""The whole scope as data: every CMK account in scope, its key read once, a decision each.

:func:`survey_chunks` streams the inventory a chunk (a Resource Graph page's worth) at a
time: it groups the chunk's accounts by key (outside the vault allow-list they are only
counted), reads each key the first time it is seen (see
:class:`~cmk.usecases.keyview.KeyVersions`: the latest version, then each distinct bound
version once, shared by every later chunk), decides the chunk's bindings and yields them.
What it keeps between chunks is per key (what was read, how many accounts), not per
account, so a sweep of 100,000 accounts holds its moves and findings and little else.
:func:`survey` runs it keeping every record (status reports every account). It writes
nothing; :mod:`cmk.usecases.sweep` acts on the result.

A key that cannot be read (its latest version, or a version an account is bound to) is
unreadable for all its accounts, as if read at once: its accounts are kept on
:attr:`KeySurvey.records`, and those decided in earlier chunks are listed again (one
Resource Graph query for that key) so the sweep can take back what it had decided.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from cmk.errors import CmkError, TransientError
from cmk.keyid import KeyId
from cmk.planner import Decision
from cmk.policy import KeyVersion
from cmk.ports import AccountRecord
from cmk.usecases.context import Engine, gather_bounded
from cmk.usecases.keyview import KeyVersions, decide
from cmk.usecases.subscriptions import subscription_scope

__all__ = ["CHUNK_SIZE", "KeySurvey", "Survey", "Surveyed", "survey", "survey_chunks"]

log = logging.getLogger(__name__)

#: Accounts decided together: one Resource Graph page.
CHUNK_SIZE = 1000


@dataclass
class KeySurvey:
    """One key: what was read of it, how many accounts are bound to it, and (when the
    survey keeps records, or the key could not be read) those accounts and decisions."""

    key: KeyId
    records: list[AccountRecord] = field(default_factory=list)
    view: KeyVersions | None = None
    error: str | None = None
    #: the error may pass (throttled, unavailable): reported, not alerted
    transient: bool = False
    decisions: list[Decision] = field(default_factory=list)
    accounts: int = 0
    #: accounts decided before the key turned out unreadable (listed again at the end)
    decided: int = 0

    @property
    def latest(self) -> KeyVersion | None:
        """The key's latest version, if it could be read."""
        return self.view.latest if self.view else None


#: One decided account: its key's survey, the account, and the decision on its binding.
Surveyed = tuple[KeySurvey, AccountRecord, Decision]


@dataclass
class Survey:
    """Every key in scope, the accounts outside the allow-list, and what failed to read."""

    keys: dict[KeyId, KeySurvey] = field(default_factory=dict)
    #: the accounts outside the allow-list, when the survey keeps records
    out_of_scope: list[AccountRecord] = field(default_factory=list)
    #: how many CMK accounts the inventory returned, and how many were out of scope
    accounts: int = 0
    out_of_scope_accounts: int = 0
    key_requests: int = 0

    @property
    def errors(self) -> list[str]:
        """Why some keys could not be read."""
        return [f"{k.key}: {k.error}" for k in self.keys.values() if k.error]


async def survey(engine: Engine) -> Survey:
    """Inventory everything in scope and decide every binding (no writes), keeping every
    record and decision on its :class:`KeySurvey`."""
    found = Survey()
    async for _ in survey_chunks(engine, found, keep_records=True):
        pass
    return found


async def survey_chunks(
    engine: Engine, found: Survey, *, keep_records: bool = False
) -> AsyncIterator[list[Surveyed]]:
    """Stream the decided accounts of the scope, a chunk at a time, into ``found``.

    Accounts of unreadable keys are not yielded; they are on their key's ``records`` once
    the stream ends. With ``keep_records`` every record and decision is kept as well.
    """
    scope = await subscription_scope(engine)
    stream = engine.inventory.cmk_accounts(scope.subscriptions)
    async for chunk in _chunks(stream, CHUNK_SIZE):
        decided = await _decide_chunk(engine, found, chunk, keep_records=keep_records)
        if decided:
            yield decided
    for item in found.keys.values():
        if item.error and item.decided and not keep_records:
            item.records = [
                record
                async for record in engine.inventory.cmk_accounts(scope.subscriptions, item.key)
                if record.binding is not None
            ]
    found.key_requests = sum(k.view.requests for k in found.keys.values() if k.view)
    log.info(
        "survey: %d accounts, %d keys, %d key requests, %d out of scope, %d key errors",
        found.accounts,
        len(found.keys),
        found.key_requests,
        found.out_of_scope_accounts,
        len(found.errors),
        extra={"cmk_step": "survey"},
    )


async def _chunks(
    records: AsyncIterable[AccountRecord], size: int
) -> AsyncIterator[list[AccountRecord]]:
    chunk: list[AccountRecord] = []
    async for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _decide_chunk(
    engine: Engine, found: Survey, chunk: list[AccountRecord], *, keep_records: bool
) -> list[Surveyed]:
    """Count and group one chunk by key, read what is new of each key (keys at once, up to
    CMK_MAX_CONCURRENCY), and decide; the decided accounts in key order, then record order."""
    groups: dict[KeyId, list[AccountRecord]] = {}
    for record in chunk:
        if record.binding is None:
            continue
        found.accounts += 1
        key = record.binding.key_id.versionless()
        if not engine.settings.vault_in_scope(key):
            found.out_of_scope_accounts += 1
            if keep_records:
                found.out_of_scope.append(record)
            continue
        found.keys.setdefault(key, KeySurvey(key)).accounts += 1
        groups.setdefault(key, []).append(record)
    decided = await gather_bounded(
        engine.settings.max_concurrency,
        (_read(engine, found.keys[key], records, keep_records) for key, records in groups.items()),
    )
    return [row for rows in decided for row in rows]


async def _read(
    engine: Engine, item: KeySurvey, records: list[AccountRecord], keep_records: bool
) -> list[Surveyed]:
    """Read what ``records`` need of one key and decide them; a failure is kept on the
    item (which then holds the key's accounts), not raised."""
    if item.error:
        item.records += records
        return []
    bindings = [record.binding for record in records if record.binding is not None]
    try:
        if item.view is None:
            item.view = await KeyVersions.load(engine.keys, item.key, engine.policy, engine.now())
        versions = await item.view.covering(bindings)
    except CmkError as error:
        item.error = str(error) or type(error).__name__
        item.transient = isinstance(error, TransientError)
        log.warning("cannot read %s: %s", item.key, item.error, extra={"cmk_key_id": str(item.key)})
        item.records += records
        item.decisions = []
        return []
    decisions = decide(
        versions, bindings, engine.policy, engine.now(), current=item.view.latest.version
    )
    item.decided += len(records)
    if keep_records:
        item.records += records
        item.decisions += decisions
    return [(item, record, decision) for record, decision in zip(records, decisions, strict=True)]
