"""Ctrl-C during ``cmk enable / switch / disable``: a real process and a real SIGINT while
its PATCH is out (the sandbox holds it). The command says the update was sent and may land,
and what finishes it; no raw log line, exit 130; the ledger row written before the PATCH
stays ``planned``, so ``cmk history`` shows the change. A later run that finds the change
made settles that row."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient
from azure.data.tables.aio import TableClient as AsyncTableClient
from lifecycle_rig import ENCRYPTION_USER, SUB, Land, Wired, account_id, environ_for, settings_for

from cmk.adapters.account_lifecycle import AccountLifecycle
from cmk.adapters.ledger import TableLedger, account_partition, table_key
from cmk.keyid import KeyId
from cmk.lifecycle.changes import MICROSOFT_MANAGED, ChangeOutcome, disable, enable, switch
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId
from cmk.runtime import Runtime
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import AccountState, Encryption, Principal, UserAssignedIdentity
from cmk.settings import Settings
from cmk.usecases.worker import account_lease_name

CMK = Path(sys.executable).parent / "cmk"
#: Only bounds a hang: the signal is sent once the held PATCH has arrived.
CEILING_SECONDS = 60
PATCH_ACCOUNT = {"host": "management.azure.com", "path": r"/accounts/", "method": "PATCH"}

#: Runs ARGV with SIGINT at its default (a suite started in the background inherits SIGINT
#: ignored; see tests/cli/test_cli_interrupt.py).
CTRL_C_DEFAULT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


@pytest.fixture
def cli_land(sandbox: Sandbox, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Land]:
    """The land, with the CLI's CMK_* settings in the environment a `cmk` process gets."""
    land = Land(sandbox, sandbox.world)
    for name, value in environ_for(settings_for(land, azurite)).items():
        monkeypatch.setenv(name, value)
    return land


def _interrupt(land: Land, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `cmk ARGV`, hold its account PATCH, SIGINT the process once the PATCH has
    arrived, and return how it ended (the PATCH is let go afterwards)."""
    held = threading.Event()
    rule = land.sandbox.faults.add(hold=held, count=1, **PATCH_ACCOUNT)
    process = subprocess.Popen(
        [*CTRL_C_DEFAULT, str(CMK), *argv],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + CEILING_SECONDS
        while rule.hits == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "the held PATCH never arrived"
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=CEILING_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        held.set()
        land.sandbox.faults.remove(rule)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def _rows(account: AccountState) -> list[LedgerEntry]:
    async def read() -> list[LedgerEntry]:
        async with Runtime(Settings.from_environ(os.environ)) as runtime:
            return await runtime.services.ledger.history(account_id(account))

    return asyncio.run(read())


def _short(account: AccountState) -> str:
    return f"rg-ai/{account.name}"


def _assert_told(ended: subprocess.CompletedProcess[str], again: str) -> None:
    """Exit 130; the update named as sent and maybe landing; the command that finishes
    it, after the write lease runs out; the JSON document's fix says the same; no
    traceback and no raw log line."""
    assert ended.returncode == 130, ended.stderr
    err = ended.stderr
    assert "Traceback" not in err and "WARNING" not in err, err
    assert "interrupted while waiting for the answer" in err, err
    assert re.search(r"done: sent the update of \S+ to .+, no answer yet", err), err
    assert "1 update(s) were sent and may still land" in err, err
    assert "ledger row stays planned" in err, err
    assert re.search(rf"to finish: {re.escape(again)} \(after \d\d:\d\d:\d\d UTC\)", err), err
    error = json.loads(ended.stdout)["error"]
    assert error["kind"] == "interrupted" and error["exit_code"] == 130
    assert re.fullmatch(rf"run `{re.escape(again)}` \(after \d\d:\d\d:\d\d UTC\)", error["fix"])


class TestInterruptedWhilePatching:
    def test_disable_says_the_account_may_have_left_cmk(self, cli_land: Land) -> None:
        """`cmk disable --yes` stopped with its PATCH out: not "done: nothing" but the
        update sent, `cmk disable … --yes` to finish after the lease; a planned row."""
        account = cli_land.bound("ai-off", cli_land.kv, cli_land.first.version)
        ended = _interrupt(cli_land, ["disable", _short(account), "--yes", "--json"])
        _assert_told(ended, f"cmk disable {_short(account)} --yes")
        [row] = _rows(account)
        assert (row.state, row.to_version, row.trigger) == (
            LedgerState.PLANNED,
            MICROSOFT_MANAGED,
            "cli:disable",
        )
        assert row.from_version == cli_land.first.version

    def test_enable_says_the_key_may_be_bound(self, cli_land: Land) -> None:
        """`cmk enable` stopped with its PATCH out: the same, with a planned row to the
        key's version."""
        account = cli_land.account("ai-on")
        cli_land.grant(account, cli_land.kv)
        key = cli_land.key_id(cli_land.kv)
        ended = _interrupt(cli_land, ["enable", _short(account), "--key", key, "--json"])
        _assert_told(ended, f"cmk enable {_short(account)} --key {key}")
        [row] = _rows(account)
        assert (row.state, row.to_version, row.from_version, row.trigger) == (
            LedgerState.PLANNED,
            cli_land.first.version,
            None,
            "cli:enable",
        )

    def test_switch_says_the_other_key_may_be_bound(self, cli_land: Land) -> None:
        """`cmk switch` stopped with its PATCH out: the same, with a planned row to the
        other key's version, from the bound one."""
        account = cli_land.bound("ai-sw", cli_land.kv, cli_land.first.version)
        other = cli_land.version(cli_land.kv, "other")
        cli_land.grant(account, cli_land.kv, "other")
        key = cli_land.key_id(cli_land.kv, "other")
        ended = _interrupt(cli_land, ["switch", _short(account), "--key", key, "--json"])
        _assert_told(ended, f"cmk switch {_short(account)} --key {key}")
        [row] = _rows(account)
        assert (row.state, row.to_version, row.from_version, row.trigger) == (
            LedgerState.PLANNED,
            other.version,
            cli_land.first.version,
            "cli:switch",
        )

    def test_enable_with_a_user_assigned_identity_names_it_in_the_finish(
        self, cli_land: Land
    ) -> None:
        """`cmk enable --identity-client-id ID` stopped with its PATCH out: the command
        that finishes it passes the same identity (without it, enable would pick the
        system-assigned one, or find none)."""
        land = cli_land
        identity = UserAssignedIdentity(
            f"/subscriptions/{SUB}/resourceGroups/rg-ai/providers"
            "/Microsoft.ManagedIdentity/userAssignedIdentities/uai-on",
            Principal.new("uai-on", land.world.tenant_id),
        )
        account = land.account("ai-on-uai", identity=False, user_assigned=[identity])
        with land.world.lock:
            scope = f"{land.kv.resource_id}/keys/cmk"
            land.world.grant(identity.principal.object_id, scope, ENCRYPTION_USER)
        key = land.key_id(land.kv)
        client_id = identity.principal.client_id
        argv = ["enable", _short(account), "--key", key, "--identity-client-id", client_id]

        ended = _interrupt(land, [*argv, "--json"])

        _assert_told(ended, f"cmk {' '.join(argv)}")
        [row] = _rows(account)
        assert (row.state, row.to_version) == (LedgerState.PLANNED, land.first.version)


class _Journal:
    """A :class:`~cmk.lifecycle.changes.ChangeWatch` that notes, when told an update is
    being sent, the state of the change's ledger row as Azurite holds it then (None: no
    row) and how many PATCHes of the account the sandbox has had."""

    def __init__(self, wired: Wired, account: AccountState, to_version: str) -> None:
        self.wired, self.account, self.to_version = wired, account, to_version
        self.sent: list[tuple[str | None, int]] = []

    def did(self, what: str) -> None:
        pass

    def sending(self, what: str) -> None:
        settings = self.wired.lc.settings
        connection = settings.storage.connection_string or ""
        partition = account_partition(account_id(self.account))
        with TableClient.from_connection_string(connection, settings.ledger_table) as table:
            try:
                row = table.get_entity(partition, table_key(self.to_version.lower()))
            except ResourceNotFoundError:
                state = None
            else:
                state = str(row["State"])
        counters = self.wired.land.sandbox.counters
        patches = counters.matching(path=self.account.name, method="PATCH")
        self.sent.append((state, len(patches)))

    def settled(self, what: str) -> None:
        pass


class TestJournalSaysSent:
    """The journal of `enable / switch / disable` is told an update is being sent only
    once its ledger row is written planned, right before the PATCH: a Ctrl-C or a Table
    error while the row is written leaves nothing sent, and the journal must not say
    "sent …, may land" then."""

    async def test_switch(self, wired: Wired) -> None:
        """`switch`: the planned row is there, no PATCH yet, when the journal hears it."""
        land = wired.land
        account = land.bound("ai-told", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        journal = _Journal(wired, account, other.version)
        key = KeyId.parse(land.key_id(land.kv, "other"))

        change = await switch(wired.lc, account_id(account), key, watch=journal)

        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert journal.sent == [(LedgerState.PLANNED.value, 0)]

    async def test_disable(self, wired: Wired) -> None:
        """`disable --yes`: the same."""
        land = wired.land
        account = land.bound("ai-told-off", land.kv, land.first.version)
        journal = _Journal(wired, account, MICROSOFT_MANAGED)

        change = await disable(wired.lc, account_id(account), confirmed=True, watch=journal)

        assert change.outcome is ChangeOutcome.DONE, change.detail
        assert journal.sent == [(LedgerState.PLANNED.value, 0)]


class _TableRelay:
    """A TCP relay in front of Azurite's Table endpoint that holds, never forwarding, a
    request whose bytes hold ``marker`` — as the sandbox's hold faults do for Azure — so a
    test can stop a command while one of its Table writes is in the network. ``held`` is
    set once such a request arrived; its connection is closed when its client gives up."""

    def __init__(self, connection_string: str, marker: bytes) -> None:
        self.connection_string = connection_string
        self.marker = marker
        self.held = asyncio.Event()
        endpoint = re.search(r"TableEndpoint=http://127\.0\.0\.1:(\d+)/", connection_string)
        assert endpoint is not None, connection_string
        self.upstream_port = int(endpoint[1])
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        """Start; the connection string whose Table endpoint is the relay."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return self.connection_string.replace(f":{self.upstream_port}/", f":{port}/")

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _relay(self, client: asyncio.StreamReader, answer: asyncio.StreamWriter) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def up() -> None:
            while data := await client.read(65536):
                if self.marker in data:
                    self.held.set()
                    while await client.read(65536):  # held until its client gives up
                        pass
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        async def down() -> None:
            while data := await reader.read(65536):
                answer.write(data)
                await answer.drain()
            answer.close()

        await asyncio.gather(up(), down(), return_exceptions=True)
        writer.close()
        answer.close()


async def _assert_nothing_sent(
    wired: Wired,
    account: AccountState,
    journal: _Journal,
    stopped: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A change cancelled before its PATCH went out: cancelled, the journal never told
    "sent", no PATCH at the sandbox, no lease kept — a job takes it at once."""
    assert isinstance(stopped, asyncio.CancelledError), stopped
    assert journal.sent == []
    assert wired.land.sandbox.counters.matching(path=account.name, method="PATCH") == []
    assert "write lease kept" not in caplog.text
    lease = account_lease_name(account_id(account))
    job = await wired.lc.ledger.acquire_lease(
        lease, "job-1", wired.lc.now(), wired.lc.settings.write_lease_ttl
    )
    assert job.granted, job


class TestStoppedBeforeSending:
    async def test_a_ctrl_c_while_the_planned_row_is_written_gives_the_lease_back(
        self, wired: Wired, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`switch` stopped (cancelled, as Ctrl-C does) while its planned ledger row is in
        the network: nothing was sent — the journal is not told "sent", no PATCH reached
        ARM — so the write lease is given back, not kept as for a PATCH that may land (the
        CLI would count a kept lease as an update sent that may still land)."""
        land = wired.land
        account = land.bound("ai-early", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        journal = _Journal(wired, account, other.version)
        settings = wired.lc.settings
        relay = _TableRelay(settings.storage.connection_string or "", b'"planned"')
        async with (
            relay as relayed,
            AsyncTableClient.from_connection_string(relayed, settings.ledger_table) as table,
        ):
            lc = replace(wired.lc, ledger=TableLedger(table))
            change = asyncio.create_task(switch(lc, account_id(account), key, watch=journal))
            await asyncio.wait_for(relay.held.wait(), CEILING_SECONDS)
            change.cancel()
            [stopped] = await asyncio.gather(change, return_exceptions=True)

        await _assert_nothing_sent(wired, account, journal, stopped, caplog)

    async def test_a_ctrl_c_during_the_last_check_before_the_patch_leaves_no_trace(
        self, wired: Wired, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`switch` stopped during the account's last read before the PATCH (is another
        update running?): nothing was sent, so no ledger row says it was, the journal is
        not told "sent", and the write lease is given back."""
        land = wired.land
        account = land.bound("ai-check", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        journal = _Journal(wired, account, other.version)
        accounts = wired.services.accounts
        reading, release = asyncio.Event(), asyncio.Event()

        class _HeldRead:
            """The account store; its ``hold``-th ``read`` (counting from 1) is held."""

            def __init__(self, hold: int | None) -> None:
                self.hold, self.reads = hold, 0

            def __getattr__(self, name: str) -> Any:
                return getattr(accounts, name)

            async def read(self, account: AccountId) -> Any:
                self.reads += 1
                if self.reads == self.hold:
                    reading.set()
                    await release.wait()
                return await accounts.read(account)

        probe_account = land.bound("ai-probe", land.kv, land.first.version)
        land.grant(probe_account, land.kv, "other")
        probe = _HeldRead(None)
        done = await switch(
            replace(wired.lc, writer=AccountLifecycle(probe)), account_id(probe_account), key
        )  # type: ignore[arg-type]
        assert done.outcome is ChangeOutcome.DONE, done.detail
        last = _HeldRead(probe.reads)  # the writer's busy check, right before the PATCH
        lc = replace(wired.lc, writer=AccountLifecycle(last))  # type: ignore[arg-type]
        change = asyncio.create_task(switch(lc, account_id(account), key, watch=journal))
        await asyncio.wait_for(reading.wait(), CEILING_SECONDS)  # bounds a hang only
        change.cancel()
        [stopped] = await asyncio.gather(change, return_exceptions=True)

        await _assert_nothing_sent(wired, account, journal, stopped, caplog)
        assert await wired.ledger(account) == []

    async def test_a_ctrl_c_while_the_write_budget_holds_the_patch_leaves_no_trace(
        self, wired: Wired, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`switch` stopped while its PATCH waits for ARM's write budget (spent, so the
        pacing holds it back): nothing was sent — no ledger row, the journal not told
        "sent", no PATCH reached ARM — and the write lease is given back."""
        land = wired.land
        account = land.bound("ai-paced", land.kv, land.first.version)
        other = land.version(land.kv, "other")
        land.grant(account, land.kv, "other")
        key = KeyId.parse(land.key_id(land.kv, "other"))
        journal = _Journal(wired, account, other.version)
        writes = wired.services.arm_budget.bucket(SUB, "writes")
        writes.throttled(600.0)  # ARM's 429: nothing may be written for ten minutes

        change = asyncio.create_task(switch(wired.lc, account_id(account), key, watch=journal))
        for _ in range(CEILING_SECONDS * 100):  # bounds a hang only
            if writes.lock.locked() or change.done():  # waiting for a write token
                break
            await asyncio.sleep(0.01)
        assert writes.lock.locked(), change
        change.cancel()
        [stopped] = await asyncio.gather(change, return_exceptions=True)

        await _assert_nothing_sent(wired, account, journal, stopped, caplog)
        assert await wired.ledger(account) == []


class TestLaterRunSettles:
    async def test_disable_again_settles_the_planned_row(self, wired: Wired) -> None:
        """The PATCH of an interrupted disable landed: `disable` again finds the account
        on Microsoft-managed keys (unchanged) and settles its planned row succeeded."""
        land = wired.land
        account = land.bound("ai-late", land.kv, land.first.version)
        target = KeyId.parse(f"{land.key_id(land.kv)}/{land.first.version}")
        now = wired.lc.now()
        planned = LedgerEntry(
            account_id(account),
            target.versionless(),
            MICROSOFT_MANAGED,
            land.first.version,
            LedgerState.PLANNED,
            1,
            "disable: sent, not verified yet",
            "cli:disable",
            now,
            now,
        )
        await wired.lc.ledger.record(planned)
        with land.world.lock:  # the interrupted run's PATCH lands
            account.encryption = Encryption("Microsoft.CognitiveServices")

        change = await disable(wired.lc, account_id(account), confirmed=True)

        assert change.outcome is ChangeOutcome.UNCHANGED
        [row] = await wired.ledger(account)
        assert row.state is LedgerState.SUCCEEDED and row.trigger == "cli:disable"
        assert "verified by a later run" in (row.cause or "")

    @pytest.mark.parametrize("state", ["Failed", "Updating"])
    async def test_enable_leaves_the_row_open_while_the_account_is_not_succeeded(
        self, wired: Wired, state: str
    ) -> None:
        """An interrupted enable's PATCH left the account on the key but its
        provisioningState is Failed (or the update is still running): `enable` again
        answers unchanged but does not settle the planned row succeeded — the change is
        not verified made."""
        land = wired.land
        account = land.bound("ai-unsettled", land.kv, land.first.version)
        now = wired.lc.now()
        planned = LedgerEntry(
            account_id(account), KeyId.parse(land.key_id(land.kv)), land.first.version,
            None, LedgerState.PLANNED, 1, "enable: sent, not verified yet", "cli:enable",
            now, now,
        )  # fmt: skip
        await wired.lc.ledger.record(planned)
        with land.world.lock:
            account.provisioning_state = state

        change = await enable(wired.lc, account_id(account), KeyId.parse(land.key_id(land.kv)))

        assert change.outcome is ChangeOutcome.UNCHANGED, change.detail
        [row] = await wired.ledger(account)
        assert (row.state, row.cause) == (LedgerState.PLANNED, planned.cause)

    async def test_disable_without_yes_settles_nothing(self, wired: Wired) -> None:
        """The PATCH of an interrupted disable landed, but `disable` runs again without
        confirmation (or as a dry run): it writes nothing, so the planned row stays
        open."""
        land = wired.land
        account = land.account("ai-late-unconfirmed")
        now = wired.lc.now()
        planned = LedgerEntry(
            account_id(account), KeyId.parse(land.key_id(land.kv)), MICROSOFT_MANAGED,
            land.first.version, LedgerState.PLANNED, 1, "disable: sent, not verified yet",
            "cli:disable", now, now,
        )  # fmt: skip
        await wired.lc.ledger.record(planned)

        unconfirmed = await disable(wired.lc, account_id(account), confirmed=False)
        dry = await disable(wired.lc, account_id(account), confirmed=True, dry_run=True)

        assert unconfirmed.outcome is dry.outcome is ChangeOutcome.UNCHANGED
        [row] = await wired.ledger(account)
        assert (row.state, row.cause) == (LedgerState.PLANNED, planned.cause)

    async def test_a_skipped_row_stays_skipped(self, wired: Wired) -> None:
        """A switch row closed skipped (its PATCH was answered with an error) is not
        credited to the switch when the account shows that version later (bound by other
        means): `switch` again answers unchanged and the row keeps its cause. Nor is a
        rotation's skipped row touched."""
        land = wired.land
        other = land.version(land.kv, "other")
        switched = land.bound("ai-sk", land.kv, other.version, key="other")
        rotated = land.bound("ai-sk-rot", land.kv, land.first.version)
        now = wired.lc.now()
        refused = "switch not done: (HTTP 400) BadRequest"
        for account, version, trigger, cause in (
            (switched, other.version, "cli:switch", refused),
            (rotated, land.first.version, "sweep:run-1", "already on the target"),
        ):
            key = KeyId.parse(land.key_id(land.kv, account.encryption.key_name or ""))
            await wired.lc.ledger.record(
                LedgerEntry(
                    account_id(account), key, version, None, LedgerState.SKIPPED, 1, cause,
                    trigger, now, now,
                )
            )  # fmt: skip

        again = await switch(
            wired.lc, account_id(switched), KeyId.parse(land.key_id(land.kv, "other"))
        )
        kept = await enable(wired.lc, account_id(rotated), KeyId.parse(land.key_id(land.kv)))

        assert again.outcome is kept.outcome is ChangeOutcome.UNCHANGED
        [row] = await wired.ledger(switched)
        assert (row.state, row.cause) == (LedgerState.SKIPPED, refused)
        [row] = await wired.ledger(rotated)
        assert (row.state, row.cause) == (LedgerState.SKIPPED, "already on the target")

    async def test_a_refused_patch_closes_its_row_skipped(self, wired: Wired) -> None:
        """An enable whose PATCH is answered 400: the error is raised, and the row written
        before the PATCH is closed skipped with that error (not left in flight)."""
        land = wired.land
        account = land.account("ai-refused")
        land.grant(account, land.kv)
        land.sandbox.faults.add(status=400, count=1, **PATCH_ACCOUNT)
        key = KeyId.parse(land.key_id(land.kv))

        with pytest.raises(Exception):  # noqa: B017 (the adapter's error for a 400)
            await enable(wired.lc, account_id(account), key)

        [row] = await wired.ledger(account)
        assert row.state is LedgerState.SKIPPED and row.to_version == land.first.version
        assert (row.cause or "").startswith("enable not done: ")
