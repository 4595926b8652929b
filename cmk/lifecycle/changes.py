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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from enum import StrEnum

from cmk.errors import AccountBusy, TransientError, UpdateUnanswered
from cmk.keyid import KeyId
from cmk.lifecycle.check import AccountCheck, evaluate_account
from cmk.lifecycle.context import Lifecycle
from cmk.lifecycle.model import AccountIdentity
from cmk.lifecycle.requirements import KEY_ACCESS, Requirement
from cmk.ports import LedgerEntry, LedgerState, UpdateOutcome
from cmk.resource_id import AccountId
from cmk.usecases.worker import account_lease_name

__all__ = ["MICROSOFT_MANAGED", "Change", "ChangeOutcome", "disable", "enable", "switch"]

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


def _refusal(requirements: tuple[Requirement, ...]) -> str:
    lines = [
        f"{r.name}: {r.detail}" + (f" -> fix: {r.fix}" if r.fix else "")
        for r in requirements
        if r.failed
    ]
    return "refused, nothing written: " + "; ".join(lines)


@asynccontextmanager
async def _one_writer(lc: Lifecycle, account_id: AccountId, purpose: str) -> AsyncIterator[None]:
    """Hold the account's write lease — the rotation worker's — while changing it: no job
    moves the account between this change's read and its PATCH (a job's PATCH carries the
    key it read, and would undo a switch). Held by a job: AccountBusy, nothing written.
    A PATCH that got no answer (or a run cancelled while it was out) may still land: the
    lease is then kept until it expires, as the worker keeps its own."""
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
        keep = True  # cancelled while writing: the PATCH may be out
        raise
    finally:
        if keep:
            log.warning("write lease of %s kept until it expires: the PATCH is unsettled", name)
        else:
            await _give_back(lc, name, token)


async def _give_back(lc: Lifecycle, name: str, token: str) -> None:
    """Release the lease; if that fails it simply expires (the change's outcome stands)."""
    try:
        await lc.ledger.release_lease(name, token)
    except TransientError as error:
        log.warning("write lease %s not released (it expires): %s", name, error)


async def _record(
    lc: Lifecycle, change: Change, key: KeyId, to_version: str, from_version: str | None
) -> None:
    now = lc.now()
    state = LedgerState.SUCCEEDED
    if change.outcome is ChangeOutcome.IN_PROGRESS:
        state = LedgerState.SUBMITTED
    await lc.ledger.record(
        LedgerEntry(
            account_id=change.account_id,
            key_id=key.versionless(),
            to_version=to_version,
            from_version=from_version,
            state=state,
            attempts=1,
            cause=change.detail,
            trigger=f"{lc.trigger}:{change.action}",
            created=now,
            updated=now,
        )
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
) -> Change:
    """Preflight, then set the encryption to the checked version, verify, record."""
    record = await lc.accounts.get(account_id)
    identity = await lc.writer.identity(account_id)
    enabled = False
    if client_id is None and previous is None and identity.type.lower() == "none" and not dry_run:
        identity = await lc.writer.enable_system_identity(account_id)
        enabled = True
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
    wait = lc.settings.update_timeout
    async with _one_writer(lc, account_id, f"{action} to {check.key}"):
        result = await lc.writer.set_encryption(account_id, check.key, client_id, wait)
        done = result is UpdateOutcome.SUCCEEDED
        outcome = ChangeOutcome.DONE if done else ChangeOutcome.IN_PROGRESS
        verb = "bound and verified" if outcome is ChangeOutcome.DONE else "update submitted for"
        change = replace(base, outcome=outcome, detail=f"{action}: {verb} {check.key}")
        from_version = previous.version if previous is not None else None
        await _record(lc, change, check.key, check.key.version or "", from_version)
    return change


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
) -> Change:
    """Turn on CMK with ``key`` (versioned, or versionless: its newest valid version)."""
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is not None:
        if bound.key_id.same_key(key):
            detail = f"already uses {bound.key_id}; rotation keeps it on the newest version"
            return Change("enable", account_id, ChangeOutcome.UNCHANGED, detail, bound.key_id)
        detail = f"already uses {bound.key_id}; use `cmk switch` to change the key"
        return Change("enable", account_id, ChangeOutcome.REFUSED, detail, previous=bound.key_id)
    client_id = identity_client_id.lower() if identity_client_id else None
    return await _bind(
        lc, "enable", account_id, key, client_id=client_id, dry_run=dry_run, previous=None
    )


async def switch(
    lc: Lifecycle, account_id: AccountId, key: KeyId, *, dry_run: bool = False
) -> Change:
    """Move a CMK account to another key of the same vault."""
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is None:
        detail = "the account uses Microsoft-managed keys; use `cmk enable`"
        return Change("switch", account_id, ChangeOutcome.REFUSED, detail)
    if bound.key_id.same_key(key):
        detail = f"already uses {bound.key_id}; rotation moves versions, not `cmk switch`"
        return Change("switch", account_id, ChangeOutcome.UNCHANGED, detail, bound.key_id)
    return await _bind(
        lc,
        "switch",
        account_id,
        key,
        client_id=bound.identity_client_id,
        dry_run=dry_run,
        previous=bound.key_id,
    )


async def disable(
    lc: Lifecycle, account_id: AccountId, *, confirmed: bool, dry_run: bool = False
) -> Change:
    """Take the account back to Microsoft-managed keys. Refused (nothing written) without
    ``confirmed`` and in a dry run."""
    record = await lc.accounts.get(account_id)
    bound = record.binding
    if bound is None:
        detail = "already uses Microsoft-managed keys"
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
    async with _one_writer(lc, account_id, "disable: back to Microsoft-managed keys"):
        result = await lc.writer.use_microsoft_keys(account_id, lc.settings.update_timeout)
        done = result is UpdateOutcome.SUCCEEDED
        change = replace(
            base,
            outcome=ChangeOutcome.DONE if done else ChangeOutcome.IN_PROGRESS,
            detail=f"disable: {'now uses' if done else 'switching to'} Microsoft-managed keys"
            f" (was {bound.key_id})",
        )
        await _record(lc, change, bound.key_id, MICROSOFT_MANAGED, bound.key_id.version)
    return change
