"""``switch`` and ``disable`` against the sandbox and Azurite."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from lifecycle_rig import Land, Wired, account_id

from cmk.errors import AccountBusy, UpdateUnanswered
from cmk.keyid import KeyId
from cmk.lifecycle.changes import MICROSOFT_MANAGED, Change, ChangeOutcome, disable, switch
from cmk.ports import LedgerState
from cmk.sandbox.arm.cognitive.accounts import rp_for
from cmk.sandbox.platform.faults import FaultRule
from cmk.sandbox.world import AccountState
from cmk.usecases.worker import account_lease_name


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition()``; the ceiling only bounds a hang, it decides nothing."""
    for _ in range(6000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _unverifiable(
    land: Land, account: AccountState, change: Coroutine[Any, Any, Change], status: int = 503
) -> tuple[Change, FaultRule]:
    """Run ``change`` with its PATCH accepted and its operation ended, but every GET of
    the account after the operation's own final GET answered ``status``: the GET that verifies
    the change. The sandbox holds the PATCH, then that final GET, to add the 503 rule
    between them. Returns the change and the 503 rule (``hits``: the GETs it answered)."""
    patch_out, final_read = threading.Event(), threading.Event()
    arm = {"host": "management.azure.com", "path": f"/accounts/{account.name}$"}
    faults = land.sandbox.faults
    patch = faults.add(method="PATCH", hold=patch_out, count=1, **arm)
    task = asyncio.create_task(change)
    try:
        await _until(lambda: patch.hits == 1 or task.done(), "the PATCH to reach the sandbox")
        final = faults.add(method="GET", hold=final_read, count=1, **arm)
        patch_out.set()
        await _until(lambda: final.hits == 1 or task.done(), "the operation's final GET")
        unreadable = faults.add(method="GET", status=status, **arm)
        final_read.set()
        return await task, unreadable
    finally:
        patch_out.set()
        final_read.set()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class TestVerifyingReadUnanswered:
    """The PATCH was accepted and its operation ended, but the GET that verifies the change
    answers 503 (or 403 or 404, as a status poll may): the change is in Azure's hands, so
    the command reports it in progress
    and its ledger row is settled submitted — not closed skipped ("not done") while ARM
    shows it made. A later run finds it made and settles the row succeeded."""

    @pytest.mark.parametrize("status", [503, 403, 404])
    async def test_switch(self, wired: Wired, status: int) -> None:
        """`cmk switch`: in progress, row submitted; switch again settles it."""
        land = wired.land
        account = land.bound("ai-unread", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))

        change, unreadable = await _unverifiable(
            land, account, switch(wired.lc, account_id(account), key), status
        )

        assert unreadable.hits >= 1  # the verifying GET met the 503
        assert change.outcome is ChangeOutcome.IN_PROGRESS, change.detail
        land.sandbox.faults.remove(unreadable)
        assert (account.encryption.key_name, account.encryption.key_version) == (
            "other",
            other.version,
        )
        [row] = await wired.ledger(account)
        assert (row.state, row.to_version) == (LedgerState.SUBMITTED, other.version)
        again = await switch(wired.lc, account_id(account), key)
        assert again.outcome is ChangeOutcome.UNCHANGED, again.detail
        [row] = await wired.ledger(account)
        assert row.state is LedgerState.SUCCEEDED
        assert "verified by a later run" in (row.cause or "")

    @pytest.mark.parametrize("status", [503, 403, 404])
    async def test_disable(self, wired: Wired, status: int) -> None:
        """`cmk disable --yes`: in progress, row submitted; disable again settles it."""
        land = wired.land
        account = land.bound("ai-unread-off", land.kv, land.first.version)

        change, unreadable = await _unverifiable(
            land, account, disable(wired.lc, account_id(account), confirmed=True), status
        )

        assert unreadable.hits >= 1
        assert change.outcome is ChangeOutcome.IN_PROGRESS, change.detail
        land.sandbox.faults.remove(unreadable)
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
        [row] = await wired.ledger(account)
        assert (row.state, row.to_version) == (LedgerState.SUBMITTED, MICROSOFT_MANAGED)
        again = await disable(wired.lc, account_id(account), confirmed=True)
        assert again.outcome is ChangeOutcome.UNCHANGED, again.detail
        [row] = await wired.ledger(account)
        assert row.state is LedgerState.SUCCEEDED


class TestSwitch:
    async def test_switches_to_another_key_in_the_same_vault(self, wired: Wired) -> None:
        """A granted key in the same vault: bound, verified, recorded with the old version."""
        land = wired.land
        account = land.bound("ai-sw", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        change = await switch(wired.lc, account_id(account), key)
        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert (account.encryption.key_name, account.encryption.key_version) == (
            "other",
            other.version,
        )
        rows = await wired.ledger(account)
        assert [(r.to_version, r.from_version) for r in rows] == [
            (other.version, land.first.version)
        ]

    async def test_a_status_poll_answered_503_is_retried(self, wired_as_deployed: Wired) -> None:
        """The PATCH is sent once (retry_total=0), but its status polls are ordinary reads:
        one answered 503 is retried by the client and the switch completes."""
        wired = wired_as_deployed
        land = wired.land
        account = land.bound("ai-poll", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        land.sandbox.faults.add(
            host="management.azure.com", path="operationStatuses", method="GET", status=503,
            count=1,
        )  # fmt: skip

        change = await switch(wired.lc, account_id(account), key)

        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert account.encryption.key_version == other.version
        polls = land.sandbox.counters.matching(path="operationStatuses", method="GET")
        assert [record.status for record in polls][:2] == [503, 200]

    async def test_status_unreadable_after_acceptance_is_in_progress(self, wired: Wired) -> None:
        """The PATCH is accepted but every status poll answers 503: the update runs on in
        Azure, so the switch reports it in progress (not failed, the ledger row
        submitted), and the account lands on the key."""
        land = wired.land
        account = land.bound("ai-unpolled", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        rule = land.sandbox.faults.add(
            host="management.azure.com", path="operationStatuses", method="GET", status=503
        )

        change = await switch(wired.lc, account_id(account), key)

        assert change.outcome is ChangeOutcome.IN_PROGRESS, change.detail
        land.sandbox.faults.remove(rule)
        rp_for(land.world).finish_now(account.resource_id)
        assert (account.encryption.key_name, account.encryption.key_version) == (
            "other",
            other.version,
        )
        [row] = await wired.ledger(account)
        assert row.state is LedgerState.SUBMITTED

    async def test_key_in_another_vault_is_refused(self, wired: Wired) -> None:
        """Another vault: refused with the same-vault reason; the account is unchanged."""
        land = wired.land
        account = land.bound("ai-sw2", land.kv, land.first.version)
        elsewhere = land.vault("kvother" + land.kv.name[2:8])
        land.version(elsewhere)
        land.grant(account, elsewhere)
        lc = replace(
            wired.lc,
            settings=replace(
                wired.lc.settings,
                vault_allowlist=wired.lc.settings.vault_allowlist | {elsewhere.url},
            ),
        )
        before = copy.deepcopy(account.encryption)
        change = await switch(lc, account_id(account), KeyId.parse(land.key_id(elsewhere)))
        assert change.outcome is ChangeOutcome.REFUSED
        assert [r.name for r in change.requirements if r.failed] == [
            "same vault as the current key"
        ]
        assert "only be changed to another key in the same vault" in change.detail
        assert account.encryption == before
        assert await wired.ledger(account) == []

    async def test_microsoft_managed_account_is_refused(self, wired: Wired) -> None:
        """An account without CMK cannot switch: it is told to enable."""
        land = wired.land
        account = land.account("ai-sw3")
        change = await switch(wired.lc, account_id(account), KeyId.parse(land.key_id(land.kv)))
        assert change.outcome is ChangeOutcome.REFUSED and "cmk enable" in change.detail


class TestDisable:
    async def test_without_yes_changes_nothing(self, wired: Wired) -> None:
        """No confirmation: refused, encryption and ledger untouched."""
        land = wired.land
        account = land.bound("ai-off", land.kv, land.first.version)
        before = copy.deepcopy(account.encryption)
        change = await disable(wired.lc, account_id(account), confirmed=False)
        assert change.outcome is ChangeOutcome.REFUSED and "--yes" in change.detail
        assert account.encryption == before
        assert await wired.ledger(account) == []

    async def test_dry_run_is_refused_even_with_yes(self, wired: Wired) -> None:
        """A dry run never disables."""
        land = wired.land
        account = land.bound("ai-off2", land.kv, land.first.version)
        change = await disable(wired.lc, account_id(account), confirmed=True, dry_run=True)
        assert change.outcome is ChangeOutcome.REFUSED
        assert account.encryption.key_source == "Microsoft.KeyVault"

    async def test_with_yes_goes_back_to_microsoft_managed_keys(self, wired: Wired) -> None:
        """Confirmed: keySource Microsoft.CognitiveServices, recorded in the ledger."""
        land = wired.land
        account = land.bound("ai-off3", land.kv, land.first.version)
        change = await disable(wired.lc, account_id(account), confirmed=True)
        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
        rows = await wired.ledger(account)
        assert [(r.to_version, r.from_version, r.trigger) for r in rows] == [
            (MICROSOFT_MANAGED, land.first.version, "cli:disable")
        ]
        again = await disable(wired.lc, account_id(account), confirmed=True)
        assert again.outcome is ChangeOutcome.UNCHANGED


class TestOneWriter:
    """A lifecycle change takes the account's write lease, the rotation worker's: while a
    job holds it, switch and disable write nothing; once it is released, they run."""

    async def test_switch_and_disable_wait_for_a_rotation_job(self, wired: Wired) -> None:
        land = wired.land
        account = land.bound("ai-busy", land.kv, land.first.version)
        land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        lease = account_lease_name(account_id(account))
        ttl = wired.lc.settings.write_lease_ttl
        held = await wired.lc.ledger.acquire_lease(
            lease, "job-1", wired.lc.now(), ttl, purpose="move to abc"
        )
        assert held.granted

        with pytest.raises(AccountBusy, match="move to abc"):
            await switch(wired.lc, account_id(account), key)
        with pytest.raises(AccountBusy):
            await disable(wired.lc, account_id(account), confirmed=True)
        assert account.encryption.key_name == "cmk"
        assert await wired.ledger(account) == []

        await wired.lc.ledger.release_lease(lease, "job-1")
        change = await switch(wired.lc, account_id(account), key)
        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert account.encryption.key_name == "other"
        regained = await wired.lc.ledger.acquire_lease(lease, "job-2", wired.lc.now(), ttl)
        assert regained.granted  # the change gave the lease back

    async def test_unanswered_switch_keeps_the_lease(self, wired: Wired) -> None:
        """The switch's PATCH loses its connection: it may still land, so the command
        fails as unanswered and keeps the lease; a rotation job is deferred meanwhile. Its
        ledger row stays planned (not closed skipped: the change may yet be made)."""
        land = wired.land
        account = land.bound("ai-lost", land.kv, land.first.version)
        land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        land.sandbox.faults.add(
            host="management.azure.com", path="ai-lost", method="PATCH", drop=True, count=1
        )

        with pytest.raises(UpdateUnanswered):
            await switch(wired.lc, account_id(account), key)

        lease = account_lease_name(account_id(account))
        ttl = wired.lc.settings.write_lease_ttl
        job = await wired.lc.ledger.acquire_lease(lease, "job-1", wired.lc.now(), ttl)
        assert not job.granted
        [row] = await wired.ledger(account)
        assert (row.state, row.trigger) == (LedgerState.PLANNED, "cli:switch"), row.cause
