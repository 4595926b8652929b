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
from pathlib import Path

import pytest
from lifecycle_rig import Land, Wired, account_id, environ_for, settings_for

from cmk.keyid import KeyId
from cmk.lifecycle.changes import MICROSOFT_MANAGED, ChangeOutcome, disable, enable
from cmk.ports import LedgerEntry, LedgerState
from cmk.runtime import Runtime
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import AccountState, Encryption
from cmk.settings import Settings

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
