"""``cmk enable`` / ``switch`` / ``disable``: get an account into a CMK state rotation can keep,
move it to another key of the same vault, or take it back to Microsoft-managed keys.

Each reads Azure first and answers without writing when there is nothing to do. ``enable``
and ``switch`` run the preflight (:mod:`cmk.lifecycle.check`) and refuse while anything
fails — nothing is written then, except that ``enable`` first gives an account without any
identity a system-assigned one (its principal must exist before access can be granted to it;
the refusal names the exact grant, and a re-run completes). Then they PATCH the encryption
with the newest valid version, verify it by GET and record a ledger row. ``disable`` needs
``confirmed`` and no dry run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from cmk.errors import AccountBusy, CmkError, TransientError, UpdateUnanswered
from cmk.keyid import KeyId
from cmk.lifecycle.check import AccountCheck, evaluate_account
from cmk.lifecycle.context import Lifecycle
from cmk.lifecycle.model import AccountIdentity
from cmk.lifecycle.requirements import KEY_ACCESS, Requirement
from cmk.ports import LedgerEntry, LedgerState, UpdateOutcome
from cmk.resource_id import AccountId
from cmk.usecases.worker import account_lease_name

__all__ = [
    "MICROSOFT_MANAGED",
    "Change",
    "ChangeOutcome",
    "ChangeWatch",
    "disable",
    "enable",
    "switch",
]

log = logging.getLogger(__name__)

#: The ledger's ``to_version`` of a move back to Microsoft-managed keys.
MICROSOFT_MANAGED = "microsoft-managed"


class ChangeOutcome(StrEnum):
    DONE = "done"  # written and verified
    IN_PROGRESS = "in_progress"  # written; Azure is still applying it
    REFUSED = "refused"  # a requirement fails, or confirmation is missing: nothing written
    DRY_RUN = "dry_run"  # would change; nothing written
    UNCHANGED = "unchanged"  # already in the wanted state


@dataclass(frozen=True)
class Change:
    """What one lifecycle command did to one account."""

    action: str  # enable, switch, disable
    account_id: AccountId
    outcome: ChangeOutcome
    detail: str
    target: KeyId | None = None  # versioned key bound (or to bind)
    previous: KeyId | None = None  # the key bound before
    identity_enabled: bool = False
    principal_id: str | None = None
    requirements: tuple[Requirement, ...] = ()

    @property
    def failed(self) -> bool:
        return self.outcome is ChangeOutcome.REFUSED


class ChangeWatch(Protocol):
    """Hears what a change writes, so that an interrupted command can say what it left
    (``cmk enable / switch / disable`` tell it to their journal)."""

    def did(self, what: str) -> None:
        """``what`` was written and is settled (an identity enabled)."""

    def sending(self, what: str) -> None:
        """``what`` is about to be sent to Azure (its ledger row is written ``planned``):
        from now until :meth:`settled` it may land or not."""

    def settled(self, what: str) -> None:
        """The update sent was answered, and its ledger row written: ``what`` it did."""


class _Unwatched:
    def did(self, what: str) -> None:
        pass

    def sending(self, what: str) -> None:
        pass

    def settled(self, what: str) -> None:
        pass


def _refusal(requirements: tuple[Requirement, ...]) -> str:
    lines = [
        f"{r.name}: {r.detail}" + (f" -> fix: {r.fix}" if r.fix else "")
        for r in requirements
        if r.failed
    ]
    return "refused, nothing written: " + "; ".join(lines)


@asynccontextmanager
async def _one_writer(lc: Lifecycle, row: _Row, purpose: str) -> AsyncIterator[None]:
    """Hold the account's write lease — the rotation worker's — while changing it: no job
    moves the account between this change's read and its PATCH (a job's PATCH carries the
    key it read, and would undo a switch). Held by a job: AccountBusy, nothing written.
    A PATCH that got no answer (or a run cancelled while it was out: ``row.out``) may
    still land: the lease is then kept until it expires, as the worker keeps its own. A
    run cancelled before that (writing the planned row) gives the lease back."""
    account_id = row.account_id
    name = account_lease_name(account_id)
    token = f"{lc.trigger}:{uuid.uuid4().hex[:12]}"
    now = lc.now()
    try:
        grant = await lc.ledger.acquire_lease(
            name, token, now, lc.settings.write_lease_ttl, purpose=purpose
        )
    except BaseException:
        await _give_back(lc, name, token)  # the insert may have landed all the same
        raise
    if not grant.granted:
        doing = f" ({grant.purpose})" if grant.purpose else ""
        raise AccountBusy(
            f"account {account_id} is being changed by a rotation job{doing} until"
            f" {grant.expires:%H:%M:%S} UTC; nothing written, run the command again then",
            retry_after=max(1.0, (grant.expires - now).total_seconds()),
        )
    keep = False
    try:
        yield
    except UpdateUnanswered:
        keep = True
        raise
    except Exception:
        raise
    except BaseException:
        keep = row.out  # cancelled while the PATCH may be out
        raise
    finally:
        if keep:
            log.warning(
                "write lease kept until it expires: the PATCH to %s is unsettled",
                account_id,
                extra={
                    "cmk_account_id": str(account_id),
                    "cmk_step": "lease",
                    "cmk_lease_expires": grant.expires.isoformat(),
                },
            )
        else:
            await _give_back(lc, name, token)


async def _give_back(lc: Lifecycle, name: str, token: str) -> None:
    """Release the lease; if that fails it simply expires (the change's outcome stands)."""
    try:
        await lc.ledger.release_lease(name, token)
    except TransientError as error:
        log.warning("write lease %s not released (it expires): %s", name, error)


@dataclass
class _Row:
    """The ledger row of one change: ``planned`` before its PATCH, settled after."""

    lc: Lifecycle
    action: str
    account_id: AccountId
    key: KeyId
    to_version: str
    from_version: str | None
    created: datetime | None = None
    #: The PATCH may be out: set once the journal is told it is being sent.
    out: bool = False

    async def write(self, state: LedgerState, cause: str) -> None:
        now = self.lc.now()
        self.created = self.created or now
        await self.lc.ledger.record(
            LedgerEntry(
                account_id=self.account_id,
                key_id=self.key.versionless(),
                to_version=self.to_version,
                from_version=self.from_version,
                state=state,
                attempts=1,
                cause=cause,
                trigger=f"{self.lc.trigger}:{self.action}",
                created=self.created,
                updated=now,
            )
        )

    async def note(self, state: LedgerState, cause: str) -> None:
        """Write the row on the way out of a failed PATCH: a ledger that cannot be written
        then is logged, and the PATCH's own error is what the command reports."""
        try:
            await self.write(state, cause)
        except CmkError as error:
            log.warning(
                "ledger row of %s -> %s not written: %s",
                self.account_id,
                self.to_version,
                error,
                extra={"cmk_account_id": str(self.account_id), "cmk_step": "record"},
            )


async def _send(
    row: _Row,
    watch: ChangeWatch,
    what: str,
    patch: Callable[[Callable[[], Awaitable[None]]], Awaitable[UpdateOutcome]],
) -> UpdateOutcome:
    """Send the change: ``patch(sending)`` awaits ``sending`` right before its PATCH goes
    out (after its own checks and the wait for ARM's write budget), which records the row
    ``planned``, tells ``watch`` and sets ``row.out`` — until then nothing was sent, and
    neither the ledger, the command's journal nor a kept write lease may say otherwise.
    Unanswered (or stopped while it is out), it may still land: the row stays planned.
    Answered with an error: it is closed ``skipped`` with that error (refused before it
    went out — the account busy, the budget not back in time — no row is written).
    Accepted, but its end or the account unreadable for now, the writer answers in
    progress (not an error): the row is settled ``submitted``."""

    async def sending() -> None:
        await row.write(LedgerState.PLANNED, f"{row.action}: {what} sent, not verified yet")
        watch.sending(what)
        row.out = True

    try:
        return await patch(sending)
    except UpdateUnanswered as error:
        await row.note(LedgerState.PLANNED, f"{row.action}: {error}")
        raise
    except Exception as error:
        if row.created is not None:  # the planned row was written: the PATCH was answered
            await row.note(LedgerState.SKIPPED, f"{row.action} not done: {error}")
        raise


def _unsettled(entry: LedgerEntry) -> bool:
    """Whether ``entry`` is a row a run that finds its change made settles: one left
    open (planned, submitted). A row closed ``skipped`` stays so: its PATCH was answered
    with an error, so the change was not this row's, whatever the account shows later
    (an error after the PATCH was accepted leaves the row open: see ``_send``)."""
    return entry.state in (LedgerState.PLANNED, LedgerState.SUBMITTED)


async def _settle(lc: Lifecycle, account_id: AccountId, to_version: str, how: str) -> None:
    """The account already is where the command takes it: settle ``succeeded`` the row an
    earlier run left open (interrupted, or its PATCH unanswered: :func:`_unsettled`), as
    a sweep settles a move it finds done. Only over the row as read: a job writing it
    meanwhile wins."""
    try:
        entry = await lc.ledger.get(account_id, to_version)
        if entry is None or not _unsettled(entry):
            return
        cause = f"{entry.cause or entry.state.value}; verified by a later run: {how}"
        settled = replace(entry, state=LedgerState.SUCCEEDED, cause=cause, updated=lc.now())
        await lc.ledger.replace_unchanged(entry, settled)
    except CmkError as error:  # the answer (unchanged) stands; the row waits for a next run
        log.warning(
            "open ledger row of %s -> %s not settled: %s",
            account_id,
            to_version,
            error,
            extra={"cmk_account_id": str(account_id), "cmk_step": "record"},
        )


async def _bind(
    lc: Lifecycle,
    action: str,
    account_id: AccountId,
    key: KeyId,
    *,
    client_id: str | None,
    dry_run: bool,
    previous: KeyId | None,
    watch: ChangeWatch,
) -> Change:
    """Preflight, then set the encryption to the checked version, verify, record."""
    record = await lc.accounts.get(account_id)
    identity = await lc.writer.identity(account_id)
    enabled = False
    if client_id is None and previous is None and identity.type.lower() == "none" and not dry_run:
        identity = await lc.writer.enable_system_identity(account_id)
        enabled = True
        principal = identity.system_principal_id
        watch.did(f"enabled a system-assigned identity on {account_id} (principal {principal})")
    check = await evaluate_account(lc, record, identity, key, client_id, bound_key=previous)
    principal = identity.principal_for(client_id)
    base = Change(
        action,
        account_id,
        ChangeOutcome.REFUSED,
        "",
        target=check.key,
        previous=previous,
        identity_enabled=enabled,
        principal_id=principal,
        requirements=_pending_identity(check, identity, client_id, dry_run),
    )
    if any(r.failed for r in base.requirements) or check.key is None:
        return replace(base, detail=_refusal(base.requirements))
    if dry_run:
        return replace(base, outcome=ChangeOutcome.DRY_RUN, detail=f"would bind {check.key}")
    wait, target = lc.settings.update_timeout, check.key
    from_version = previous.version if previous is not None else None
    row = _Row(lc, action, account_id, target, target.version or "", from_version)
    async with _one_writer(lc, row, f"{action} to {target}"):
        result = await _send(
            row,
            watch,
            f"the update of {account_id} to {target}",
            lambda sending: lc.writer.set_encryption(
                account_id, target, client_id, wait, sending=sending
            ),
        )
        done = result is UpdateOutcome.SUCCEEDED
        outcome = ChangeOutcome.DONE if done else ChangeOutcome.IN_PROGRESS
        verb = "bound and verified" if outcome is ChangeOutcome.DONE else "update submitted for"
        change = replace(base, outcome=outcome, detail=f"{action}: {verb} {target}")
        await row.write(_state(outcome), change.detail)
    watch.settled(change.detail)
    return change


def _state(outcome: ChangeOutcome) -> LedgerState:
    """The ledger state of a change whose PATCH was answered."""
    return LedgerState.SUCCEEDED if outcome is ChangeOutcome.DONE else LedgerState.SUBMITTED


def _pending_identity(
    check: AccountCheck, identity: AccountIdentity, client_id: str | None, dry_run: bool
) -> tuple[Requirement, ...]:
    """In a dry run an account without identity would get one: not a failure yet. But
    that new identity holds no permission on any key, so the real run would create it and
    stop there, refused: the dry run says so, and refuses too."""
    if not (dry_run and client_id is None and identity.type.lower() == "none"):
        return check.requirements
    pending = Requirement(
        "managed identity", None, "none yet: enable would create a system-assigned identity"
    )
    no_access = Requirement(
        KEY_ACCESS,
        False,
        "the identity enable would create holds no permission on the key until it is granted",
        "enable without --dry-run creates the identity, stops before binding and prints the"
        " exact role assignment (or access policy) to grant; once it is granted, enable binds",
    )
    rules: list[Requirement] = []
    for requirement in check.requirements:
        if requirement.name == "managed identity":
            rules += [pending, no_access]
        elif requirement.name != KEY_ACCESS:
            rules.append(requirement)
    return tuple(rules)


async def enable(
    lc: Lifecycle,
    account_id: AccountId,
    key: KeyId,
    *,
    identity_client_id: str | None = None,
    dry_run: bool = False,
    watch: ChangeWatch | None = None,
) -> Change:
    """Turn on CMK with ``key`` (versioned, or versionless: its newest valid version)."""
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is not None:
        if bound.key_id.same_key(key):
            detail = f"already uses {bound.key_id}; rotation keeps it on the newest version"
            if not dry_run and record.provisioning_state.lower() == "succeeded":
                await _settle(lc, account_id, bound.key_id.version or "", f"enable: {detail}")
            return Change("enable", account_id, ChangeOutcome.UNCHANGED, detail, bound.key_id)
        detail = f"already uses {bound.key_id}; use `cmk switch` to change the key"
        return Change("enable", account_id, ChangeOutcome.REFUSED, detail, previous=bound.key_id)
    client_id = identity_client_id.lower() if identity_client_id else None
    return await _bind(
        lc,
        "enable",
        account_id,
        key,
        client_id=client_id,
        dry_run=dry_run,
        previous=None,
        watch=watch or _Unwatched(),
    )


async def switch(
    lc: Lifecycle,
    account_id: AccountId,
    key: KeyId,
    *,
    dry_run: bool = False,
    watch: ChangeWatch | None = None,
) -> Change:
    """Move a CMK account to another key of the same vault."""
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is None:
        detail = "the account uses Microsoft-managed keys; use `cmk enable`"
        return Change("switch", account_id, ChangeOutcome.REFUSED, detail)
    if bound.key_id.same_key(key):
        detail = f"already uses {bound.key_id}; rotation moves versions, not `cmk switch`"
        if not dry_run and record.provisioning_state.lower() == "succeeded":
            await _settle(lc, account_id, bound.key_id.version or "", f"switch: {detail}")
        return Change("switch", account_id, ChangeOutcome.UNCHANGED, detail, bound.key_id)
    return await _bind(
        lc,
        "switch",
        account_id,
        key,
        client_id=bound.identity_client_id,
        dry_run=dry_run,
        previous=bound.key_id,
        watch=watch or _Unwatched(),
    )


async def disable(
    lc: Lifecycle,
    account_id: AccountId,
    *,
    confirmed: bool,
    dry_run: bool = False,
    watch: ChangeWatch | None = None,
) -> Change:
    """Take the account back to Microsoft-managed keys. Refused (nothing written) without
    ``confirmed`` and in a dry run."""
    watch = watch or _Unwatched()
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is None:
        detail = "already uses Microsoft-managed keys"
        if confirmed and not dry_run and record.provisioning_state.lower() == "succeeded":
            await _settle(lc, account_id, MICROSOFT_MANAGED, f"disable: {detail}")
        return Change("disable", account_id, ChangeOutcome.UNCHANGED, detail)
    base = Change("disable", account_id, ChangeOutcome.REFUSED, "", previous=bound.key_id)
    if dry_run:
        detail = (
            "refused in dry run, nothing written: disable would take the account off"
            f" {bound.key_id} and back to Microsoft-managed keys"
        )
        return replace(base, detail=detail)
    if not confirmed:
        detail = (
            f"refused, nothing written: this takes the account off {bound.key_id} and back to"
            " Microsoft-managed keys; pass --yes to confirm"
        )
        return replace(base, detail=detail)
    row = _Row(lc, "disable", account_id, bound.key_id, MICROSOFT_MANAGED, bound.key_id.version)
    async with _one_writer(lc, row, "disable: back to Microsoft-managed keys"):
        result = await _send(
            row,
            watch,
            f"the update of {account_id} to Microsoft-managed keys",
            lambda sending: lc.writer.use_microsoft_keys(
                account_id, lc.settings.update_timeout, sending=sending
            ),
        )
        done = result is UpdateOutcome.SUCCEEDED
        change = replace(
            base,
            outcome=ChangeOutcome.DONE if done else ChangeOutcome.IN_PROGRESS,
            detail=f"disable: {'now uses' if done else 'switching to'} Microsoft-managed keys"
            f" (was {bound.key_id})",
        )
        await row.write(_state(change.outcome), change.detail)
    watch.settled(change.detail)
    return change
