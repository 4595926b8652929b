"""The whole scope at once: sweep (act), plan (what a sweep would do), status (as data).

A sweep inventories every CMK account in scope, reads each distinct key once, enqueues a
job for every stale binding and raises an alert for every finding: bound to a disabled,
expired or expiring version, key near expiry with no successor, vault without purge
protection, account without a usable identity, update stuck or failed, binding stale
beyond CMK_STALE_GRACE_HOURS. The alert sink deduplicates, so an hourly sweep does not
alert twice about the same problem; and a sweep resolves the open alerts of accounts it
found healthy, so a problem fixed by hand alerts again if it comes back.

A sweep streams (:func:`~cmk.usecases.survey.survey_chunks`): each Resource Graph page's
worth of accounts is decided and judged as it arrives, its jobs are sent while the next
pages come, and only the moves and the accounts with a problem are kept, so 100,000
accounts cost a sweep little more memory than its moves and findings. ``status`` reports
every account, so it keeps them all.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cmk.errors import CmkError
from cmk.keyid import KeyId
from cmk.planner import Decision, Move, UpToDate, version_order
from cmk.policy import KeyVersion
from cmk.ports import (
    AccountRecord,
    Alert,
    AlertType,
    LedgerEntry,
    LedgerState,
    RotationJob,
    alert_group,
)
from cmk.usecases import alerting
from cmk.usecases.assessment import Assessment, arm_problem, assess, assess_unread
from cmk.usecases.context import Engine, gather_bounded, task_scope
from cmk.usecases.events import DEFAULT_NOTICE
from cmk.usecases.keyview import KeyVersions
from cmk.usecases.report import (
    AccountStatus,
    BindingState,
    FindingReport,
    PlannedMove,
    SweepReport,
)
from cmk.usecases.survey import KeySurvey, Survey, survey, survey_chunks

__all__ = ["plan", "status", "sweep"]

log = logging.getLogger(__name__)

Row = tuple[KeySurvey, AccountRecord, Decision]


def _rows(found: Survey) -> list[Row]:
    return [
        (item, record, decision)
        for item in found.keys.values()
        for record, decision in zip(item.records, item.decisions, strict=False)
    ]


#: The ledger rows a sweep needs to know of: moves under way, and moves that failed.
#: How long a key may stay unreadable for a transient reason (throttled, unavailable,
#: unreachable) on every sweep before it is alerted as key_unreadable.
UNREADABLE_GRACE = timedelta(hours=1)
_OPEN_STATES = frozenset({LedgerState.PLANNED, LedgerState.SUBMITTED, LedgerState.FAILED})
_IN_FLIGHT = frozenset({LedgerState.PLANNED, LedgerState.SUBMITTED})


def _slot(account: AccountRecord | LedgerEntry, version: str) -> tuple[str, str]:
    return (str(account.account_id).lower(), version.lower())


async def _entries(
    engine: Engine, wanted: set[tuple[str, str]], states: frozenset[LedgerState]
) -> dict[tuple[str, str], LedgerEntry]:
    """The ledger rows in ``states`` for the (account, version) pairs ``wanted``: one
    filtered, paged query, not one point read per account."""
    found: dict[tuple[str, str], LedgerEntry] = {}
    if not wanted:
        return found
    async for entry in engine.ledger.iter_history(states=states):
        slot = _slot(entry, entry.to_version)
        if slot in wanted:
            found[slot] = entry
    return found


async def _target_entries(engine: Engine, rows: list[Row]) -> list[LedgerEntry | None]:
    """The open ledger row (planned, submitted or failed) of each move's target; None for
    bindings that do not move and for targets with no open row."""
    targets = [
        _slot(record, decision.target.version) if isinstance(decision, Move) else None
        for _, record, decision in rows
    ]
    found = await _entries(engine, {t for t in targets if t is not None}, _OPEN_STATES)
    return [None if target is None else found.get(target) for target in targets]


def _key_alerts(engine: Engine, item: KeySurvey, recovery: _Recovery) -> list[Alert]:
    """Problems of the key itself: a purgeable vault, expiry near with no successor — not
    when that latest version's own version_rejected alert is open (the same version, the
    same human act: one alert says it)."""
    latest, view = item.latest, item.view
    if latest is None or view is None:
        return []
    alerts = []
    if "purgeable" in (latest.recovery_level or "").lower():
        alerts.append(alerting.vault_not_recoverable(latest))
    margin = engine.settings.expiry_margin
    near = latest.expires is not None and latest.expires <= engine.now() + margin
    if near and view.newest_bindable(engine.policy, engine.now()) is None:
        assert latest.expires is not None
        subject = str(latest.key_id.versionless())
        if recovery.was_open(subject, latest.version, AlertType.VERSION_REJECTED):
            return alerts
        cause = f"latest version {latest.version} expires {latest.expires} with no successor"
        lifetime = latest.expires - (latest.not_before or latest.created)
        alerts.append(
            alerting.near_expiry_unrotated(latest.key_id, cause, lifetime=lifetime, margin=margin)
        )
    return alerts


def _unique(alerts: Iterable[Alert]) -> list[Alert]:
    return list({alert.dedup_key: alert for alert in alerts}.values())


def _key_findings(alerts: list[Alert], found: Survey) -> list[FindingReport]:
    findings = [
        FindingReport(a.subject, a.type.value, a.cause, a.key_id, a.from_version) for a in alerts
    ]
    for item in found.keys.values():
        if item.error:
            for record in item.records:
                subject = str(record.account_id)
                findings.append(FindingReport(subject, "key_unreadable", item.error, item.key))
    return findings


async def _unread(
    engine: Engine, found: Survey, open_rows: _OpenRows
) -> tuple[list[Alert], list[Assessment]]:
    """Keys the sweep could not read: one alert per key naming its accounts, and each
    account judged on what ARM alone says (a Failed update, a missing identity).

    A throttled or unavailable vault is read again by the next sweep, not alerted — until
    it has been unreadable on every sweep for :data:`UNREADABLE_GRACE`: a vault that was
    deleted does not answer 404, its host name stops resolving (a connection error, like
    an outage). The first such sweep records the key; a sweep that reads it forgets it."""
    alerts: list[Alert] = []
    judged: list[Assessment] = []
    marks = await _unreadable_marks(engine, found)
    now = engine.now()
    for item in found.keys.values():
        key = str(item.key.versionless()).lower()
        if not item.error:
            if key in marks and not engine.dry_run:
                await engine.ledger.clear_unreadable(key)
            continue
        accounts = [record.account_id for record in item.records]
        since = marks.get(key)
        if not item.transient:
            alerts.append(alerting.key_unreadable(item.key, accounts, item.error))
        elif since is not None and now - since >= UNREADABLE_GRACE:
            cause = f"unreadable on every sweep since {since:%Y-%m-%d %H:%M} UTC: {item.error}"
            alerts.append(alerting.key_unreadable(item.key, accounts, cause))
        elif since is None and not engine.dry_run:
            await engine.ledger.note_unreadable(key, now)
        for record in item.records:
            failed = await open_rows.of(record, None)
            judged.append(assess_unread(record, item.error, failed))
    return alerts, judged


async def _unreadable_marks(engine: Engine, found: Survey) -> dict[str, datetime]:
    """The keys earlier sweeps found unreadable (none without storage, or when this sweep
    read every key and none is recorded: one query either way)."""
    if engine.settings.storage is None:
        return {}
    try:
        return await engine.ledger.unreadable_keys()
    except CmkError as error:
        if any(item.error for item in found.keys.values()):
            log.warning("cannot read which keys were unreadable before: %s", error)
        return {}


@dataclass
class _Judged:
    """One account the sweep keeps: a move, or an account with a problem."""

    record: AccountRecord
    decision: Decision
    assessment: Assessment


class _OpenRows:
    """The open ledger rows (planned, submitted, failed) by (account, target version): one
    filtered, paged query, not one point read per move.

    It also closes what ARM shows is over: an open row whose account is on that very
    version (Succeeded) is recorded succeeded — a failed one too: a job that gave up
    because nothing could verify its update (ARM unreachable until its retries ran out)
    while the update itself landed — and a planned or submitted row whose account is on the
    key's newest valid version while the row names another is recorded skipped
    (superseded) — rows an interrupted ``cmk rotate`` or a lost job leaves behind, which
    would otherwise count as moves in flight for ever (``cmk versions``). A dry run (or
    an app without storage) reads the rows only when a move needs them and closes none.
    """

    def __init__(self, engine: Engine, run_id: str) -> None:
        self._engine = engine
        self.run_id = run_id
        self._closing = not engine.dry_run and engine.settings.storage is not None
        self._rows: dict[tuple[str, str], LedgerEntry] | None = None
        self._by_account: dict[str, list[LedgerEntry]] = {}
        self._failed: dict[str, list[LedgerEntry]] = {}
        self.closed: list[tuple[LedgerEntry, LedgerEntry]] = []

    async def _load(self) -> dict[tuple[str, str], LedgerEntry]:
        if self._rows is None:
            self._rows = {}
            async for entry in self._engine.ledger.iter_history(states=_OPEN_STATES):
                self._rows[_slot(entry, entry.to_version)] = entry
                account = str(entry.account_id).lower()
                self._by_account.setdefault(account, []).append(entry)
                if entry.state is LedgerState.FAILED:
                    self._failed.setdefault(account, []).append(entry)
        return self._rows

    async def of(self, record: AccountRecord, move: Move | None) -> LedgerEntry | None:
        """The open row of ``move``'s target for ``record``, if any. With no move, the
        failed move on record that left the account where it is (its ``from_version``, or
        its target, is the account's version; the latest such) — read only when ARM shows
        a problem that such a failure, already alerted by the worker, explains. A failure
        the account has moved on from since explains nothing: a new problem is alerted."""
        if move is not None:
            return (await self._load()).get(_slot(record, move.target.version))
        if not arm_problem(record) or record.binding is None:
            return None
        await self._load()
        bound = (record.binding.key_id.version or "").lower()
        left_here = [
            entry
            for entry in self._failed.get(str(record.account_id).lower(), [])
            if bound in ((entry.from_version or "").lower(), entry.to_version.lower())
        ]
        return max(left_here, key=lambda entry: entry.updated, default=None)

    async def settle(
        self, record: AccountRecord, decision: Decision, view: KeyVersions | None
    ) -> None:
        """Note the in-flight rows of ``record`` that ARM shows are over (see above). A
        row is called superseded only when its version is older than the account's (read
        from Key Vault if the sweep has not read it): one that cannot be read, or is newer
        (created since the sweep read the key), is left alone."""
        if not self._closing or record.binding is None:
            return
        await self._load()
        bound = (record.binding.key_id.version or "").lower()
        done = record.provisioning_state.lower() == "succeeded"
        now = self._engine.now()
        for entry in self._by_account.pop(str(record.account_id).lower(), []):
            if entry.to_version.lower() == bound and done:
                cause = f"verified on the account by {self.run_id}"
                if entry.state is LedgerState.FAILED:
                    cause += f" (recorded failed: {entry.cause})"
                state = LedgerState.SUCCEEDED
            elif entry.state is LedgerState.FAILED:
                continue  # a failure stays on record until the account shows otherwise
            elif isinstance(decision, UpToDate) and await self._older(view, entry, decision):
                cause = f"superseded: the account is on {bound}, the newest valid version"
                state = LedgerState.SKIPPED
            else:
                continue
            self.closed.append((entry, replace(entry, state=state, cause=cause, updated=now)))

    async def _older(self, view: KeyVersions | None, entry: LedgerEntry, now: UpToDate) -> bool:
        known = view.get(entry.to_version) if view is not None else None
        if known is None:
            try:
                known = await self._engine.keys.get_version(
                    entry.key_id.with_version(entry.to_version)
                )
            except CmkError:
                return False
        current = view.latest.version if view is not None else None
        return version_order(known, current) < version_order(now.version, current)

    async def write(self) -> None:
        """Record the rows :meth:`settle` closed, each only if nobody wrote it since it
        was read (a worker finishing it meanwhile wins)."""
        limit = self._engine.settings.max_concurrency
        ledger = self._engine.ledger
        await gather_bounded(
            limit, (ledger.replace_unchanged(seen, closed) for seen, closed in self.closed)
        )
        if self.closed:
            log.info(
                "%s: closed %d ledger row(s) whose move is over",
                self.run_id,
                len(self.closed),
                extra={"cmk_step": "sweep"},
            )


class _Sender:
    """Jobs sent while the survey streams: each chunk's in the background, one chunk after
    another, so the sends fill the waits for Resource Graph's quota instead of following
    the survey (nothing in a dry run)."""

    def __init__(self, engine: Engine, group: asyncio.TaskGroup) -> None:
        self._engine = engine
        self._group = group
        self._turn = asyncio.Lock()  # first come, first served: chunks go in order
        self.enqueued = 0

    def send(self, jobs: list[RotationJob]) -> None:
        if jobs and not self._engine.dry_run:
            self._group.create_task(self._send(jobs))

    async def _send(self, jobs: list[RotationJob]) -> None:
        async with self._turn:
            self.enqueued += await self._engine.jobs.enqueue_many(jobs)


class _Recovery:
    """The accounts this sweep found healthy that have an open alert, by key.

    An account is healthy when its assessment raised no alert and no failed update of it
    is on record (the worker alerted that one; its success resolves it). The open alerts
    are read once, when the sweep begins (:meth:`begin`), so 100,000 healthy accounts cost
    one query, not 100,000, and only those with an open alert are kept. A dry run, or an
    app without storage (no alert rows), reads and resolves nothing.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.active = not engine.dry_run and engine.settings.storage is not None
        #: The subjects (lowercase) of the alerts open when the sweep began.
        self.open_subjects: frozenset[str] = frozenset()
        self._by_key: dict[KeyId, set[str]] = {}
        #: The alerts open when the sweep began (subject, to_version, group): only those
        #: can be what it judged cleared — one raised while it ran (a job failing beside
        #: it, an event) is about something it did not see, and stays open.
        self._before: frozenset[tuple[str, str, str]] = frozenset()

    async def begin(self) -> None:
        """Note the open alerts, before anything is read (one query)."""
        if self.active:
            self._before = frozenset(await self._engine.alerts.open_alerts())
            self.open_subjects = frozenset(subject for subject, _, _ in self._before)

    def was_open(self, subject: str, version: str, kind: AlertType) -> bool:
        """Whether ``kind``'s alert for ``subject`` and ``version`` was open when the sweep
        began."""
        return (subject.lower(), version.lower(), alert_group(kind)) in self._before

    def seen_open(self, subject: str) -> Callable[[str, str], Awaitable[bool]]:
        """``still_open`` for closing ``subject``'s alerts: keeps those not open when the
        sweep began."""
        before, subject = self._before, subject.lower()

        async def still_open(version: str, group: str) -> bool:
            return (subject, version.lower(), group) not in before

        return still_open

    async def judged(self, key: KeyId, record: AccountRecord, assessment: Assessment) -> None:
        """Note one judged account (kept only if healthy with an open alert)."""
        if not self.active or not assessment.healthy:
            return
        subject = str(record.account_id).lower()
        if subject in self.open_subjects:
            self._by_key.setdefault(key, set()).add(subject)

    def forget(self, key: KeyId) -> None:
        """Take back the accounts of a key that turned out unreadable (not judged)."""
        self._by_key.pop(key, None)

    async def resolve(self) -> int:
        """Close the open alerts of the recovered accounts; returns how many.

        A problem fixed by hand is thus closed, and raised again if it comes back.
        Accounts whose key could not be read or that are outside the allow-list were not
        judged, so their alerts stay open.
        """
        recovered = sorted(set[str]().union(*self._by_key.values()))
        limit = self._engine.settings.max_concurrency
        resolve = self._engine.alerts.resolve
        closed = await gather_bounded(
            limit, (resolve(s, still_open=self.seen_open(s)) for s in recovered)
        )
        return sum(closed)


#: Key- and vault-level alerts a sweep closes once what they report no longer holds (an
#: event that failed for good is over once the sweep reads its key — it moves the
#: accounts — and the key has a valid version no near-expiry notice concerns).
_KEY_GROUPS = (
    AlertType.KEY_UNREADABLE,
    AlertType.KEY_NEAR_EXPIRY_UNROTATED,
    AlertType.VERSION_REJECTED,
    AlertType.EVENT_FAILED,
)


def _lasting(engine: Engine, newest: KeyVersion | None) -> bool:
    """Whether ``newest`` is a valid version no near-expiry notice concerns yet (the event
    handler's window: the margin, or Key Vault's default notice, whichever is longer)."""
    if newest is None:
        return False
    horizon = engine.now() + max(engine.settings.expiry_margin, DEFAULT_NOTICE)
    return newest.expires is None or newest.expires > horizon


async def _resolve_keys(
    engine: Engine, found: Survey, raised: list[Alert], recovery: _Recovery
) -> int:
    """Close the key-level alerts of the keys this sweep read whose condition cleared: a
    key readable again (key_unreadable), no longer near expiry without a successor, whose
    newest version is valid now (version_rejected), a vault purge-protected now. What
    still holds — raised (or deduplicated) by this very sweep — stays open."""
    if not recovery.active:
        return 0
    still = {(alert.subject.lower(), alert.dedup_key[2]) for alert in raised}
    open_subjects = recovery.open_subjects
    closing: list[tuple[str, list[str]]] = []
    vaults: set[str] = set()
    for item in found.keys.values():
        latest, view = item.latest, item.view
        if item.error or latest is None or view is None:
            continue
        subject = str(item.key.versionless()).lower()
        groups = [group.value for group in _KEY_GROUPS if (subject, group.value) not in still]
        newest = view.newest_bindable(engine.policy, engine.now())
        if newest is None or newest.version != latest.version:  # the newest is still rejected
            groups = [group for group in groups if group != AlertType.VERSION_REJECTED.value]
        if not _lasting(engine, newest):  # no successor that outlives any near-expiry notice
            # ... nor over a failed event: a KeyNearExpiry or KeyExpired that could not be
            # handled (no version created) is over only once such a successor exists.
            lasting_only = (AlertType.KEY_NEAR_EXPIRY_UNROTATED.value, AlertType.EVENT_FAILED.value)
            groups = [g for g in groups if g not in lasting_only]
        if subject in open_subjects and groups:
            closing.append((subject, groups))
        vault = latest.key_id.vault_url.lower()
        if "purgeable" not in (latest.recovery_level or "").lower():
            vaults.add(vault)
    group = AlertType.VAULT_NOT_RECOVERABLE.value
    closing += [
        (vault, [group])
        for vault in sorted(vaults)
        if vault in open_subjects and (vault, group) not in still
    ]
    limit = engine.settings.max_concurrency
    closed = await gather_bounded(
        limit,
        (
            engine.alerts.resolve(subject, groups=groups, still_open=recovery.seen_open(subject))
            for subject, groups in closing
        ),
    )
    return sum(closed)


async def _judge(
    engine: Engine, found: Survey, recovery: _Recovery, open_rows: _OpenRows
) -> tuple[dict[KeyId, list[_Judged]], int]:
    """Stream the survey, judge each account as it comes and send each chunk's jobs; keep
    only the moves and the accounts with a problem, by key (in the survey's key order).
    Returns them and how many jobs were sent.

    Keys found unreadable are left out (see ``_unread``): when a key fails in a later chunk,
    the jobs of its earlier chunks are already queued. That is safe (a job is a pointer:
    the worker reads the key and the account again and moves nothing it cannot validate),
    and the report counts them as enqueued.
    """
    kept: dict[KeyId, list[_Judged]] = {}
    run_id = open_rows.run_id
    async with task_scope() as group:
        sender = _Sender(engine, group)
        async for chunk in survey_chunks(engine, found):
            jobs: list[RotationJob] = []
            for item, record, decision in chunk:
                move = decision if isinstance(decision, Move) else None
                entry = await open_rows.of(record, move)
                assessment = assess(engine, record, decision, entry, run_id)
                await open_rows.settle(record, decision, item.view)
                await recovery.judged(item.key, record, assessment)
                if move is not None or not assessment.healthy:
                    kept.setdefault(item.key, []).append(_Judged(record, decision, assessment))
                if assessment.job is not None:
                    jobs.append(assessment.job)
            sender.send(jobs)
    await open_rows.write()
    for item in found.keys.values():
        if item.error:
            kept.pop(item.key, None)
            recovery.forget(item.key)
    return {key: kept[key] for key in found.keys if key in kept}, sender.enqueued


async def sweep(engine: Engine) -> SweepReport:
    """Inventory the scope, enqueue stale bindings and alert findings (nothing in a dry run)."""
    run_id = f"sweep:{engine.now():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    flushed = await alerting.flush_pending(engine)  # what earlier runs could not deliver
    found = Survey()
    recovery = _Recovery(engine)
    await recovery.begin()
    open_rows = _OpenRows(engine, run_id)
    kept, enqueued = await _judge(engine, found, recovery, open_rows)
    kept_rows = [judged for bucket in kept.values() for judged in bucket]
    judged = [j.assessment for j in kept_rows]
    key_alerts = _unique(
        a for item in found.keys.values() for a in _key_alerts(engine, item, recovery)
    )
    unread_alerts, unread = await _unread(engine, found, open_rows)
    alerts = _unique(
        [
            *key_alerts,
            *unread_alerts,
            *(a for assessment in [*judged, *unread] for a in assessment.alerts),
        ]
    )
    raised, published = await alerting.publish(engine, alerts)
    resolved = 0
    if not engine.dry_run and engine.settings.storage is not None:  # no storage: no alert rows
        resolved = await recovery.resolve()
        resolved += await _resolve_keys(engine, found, alerts, recovery)
    report = SweepReport(
        run_id=run_id,
        dry_run=engine.dry_run,
        accounts=found.accounts,
        keys_read=len(found.keys) - len(found.errors),
        out_of_scope=found.out_of_scope_accounts,
        moves=tuple(
            PlannedMove.from_move(j.decision) for j in kept_rows if isinstance(j.decision, Move)
        ),
        findings=tuple(
            [
                *_key_findings(key_alerts, found),
                *(f for a in [*judged, *unread] for f in a.findings),
            ]
        ),
        alerts=raised,
        alerts_published=published + flushed,
        enqueued=enqueued,
        errors=tuple(found.errors),
    )
    log.info(
        "%s: %d accounts, %d keys, %d moves, %d enqueued, %d alerts (%d new, %d resolved)%s",
        run_id,
        report.accounts,
        report.keys_read,
        len(report.moves),
        enqueued,
        len(raised),
        published,
        resolved,
        " [dry run]" if engine.dry_run else "",
        extra={"cmk_step": "sweep"},
    )
    return report


async def plan(engine: Engine) -> SweepReport:
    """What a sweep would do now: the same report, with nothing written anywhere."""
    return await sweep(replace(engine, settings=replace(engine.settings, dry_run=True)))


async def _bound_since(engine: Engine, rows: list[Row]) -> list[LedgerEntry | None]:
    """The SUCCEEDED ledger row of each account's bound version (since when it is on it)."""
    bound = [
        _slot(record, record.binding.key_id.version or "") if record.binding else None
        for _, record, _ in rows
    ]
    succeeded = frozenset({LedgerState.SUCCEEDED})
    found = await _entries(engine, {b for b in bound if b is not None}, succeeded)
    return [None if slot is None else found.get(slot) for slot in bound]


def _status(
    engine: Engine, row: Row, judged: Assessment, since: LedgerEntry | None
) -> AccountStatus:
    item, record, _ = row
    assert record.binding is not None
    newest = item.view.newest_bindable(engine.policy, engine.now()) if item.view else None
    return AccountStatus(
        account_id=record.account_id,
        subscription_id=record.account_id.subscription_id,
        key_id=item.key,
        bound_version=record.binding.key_id.version,
        newest_version=newest.version if newest else None,
        state=judged.state,
        bound_since=since.updated if since else None,
        age=engine.now() - since.updated if since else None,
        detail=judged.detail,
    )


def _other(record: AccountRecord, state: BindingState, detail: str) -> AccountStatus:
    binding = record.binding
    return AccountStatus(
        account_id=record.account_id,
        subscription_id=record.account_id.subscription_id,
        key_id=binding.key_id.versionless() if binding else None,
        bound_version=binding.key_id.version if binding else None,
        newest_version=None,
        state=state,
        detail=detail,
    )


async def status(engine: Engine) -> list[AccountStatus]:
    """Every CMK account in scope: bound and newest version, state, and since when (no writes)."""
    found = await survey(engine)
    rows = _rows(found)
    entries = await _target_entries(engine, rows)
    since = await _bound_since(engine, rows)
    result = [
        _status(engine, row, assess(engine, row[1], row[2], entry, "status"), bound)
        for row, entry, bound in zip(rows, entries, since, strict=True)
    ]
    for item in found.keys.values():
        if item.error:
            result += [_other(r, BindingState.UNSAFE, item.error) for r in item.records]
    result += [
        _other(r, BindingState.OUT_OF_SCOPE, "vault not in the allow-list")
        for r in found.out_of_scope
    ]
    return sorted(result, key=lambda row: str(row.account_id))
