"""What the CLI says at the edges: event files in another encoding, scope warnings that
name the real mistake, every usage error with a fix, dry-run lines in plain words, empty
results that say so, and progress and summaries that tell waiting from failing."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_rig import World
from rich.console import Console

from cmk.cli import build_parser
from cmk.commands.output import LineTicker
from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState
from cmk.resource_id import AccountId
from cmk.runtime import Runtime
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import key_event
from cmk.sandbox.world import KeyEventType
from cmk.settings import Settings
from cmk.usecases.worker import account_lease_name

EVENT = {
    "id": "e1",
    "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
    "subject": "ai-cmk",
    "eventTime": "2025-01-01T00:00:00Z",
    "dataVersion": "1",
    "data": {},
}
#: Only bounds a hang.
CEILING_SECONDS = 60


class TestReplayFiles:
    @pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
    def test_unicode_with_a_byte_order_mark_is_read(self, world: World, cmk, tmp_path, encoding):
        """A file PowerShell wrote (UTF-16 with a BOM), or UTF-8/32 with one, is read as
        its events: the event is judged, not the file refused."""
        path = Path(tmp_path) / "dead.json"
        path.write_text(json.dumps([EVENT]), encoding=encoding)
        run = cmk("replay", str(path), "--dry-run", "--json")
        [event] = run.valid("replay")["events"]
        assert event["event_id"] == "e1", run.err

    def test_binary_is_a_usage_error_with_a_fix(self, world: World, cmk, tmp_path):
        """A file that is not UTF-8 text: exit 2, kind usage, saying so, with a fix."""
        path = Path(tmp_path) / "dead.json"
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
        run = cmk("replay", str(path), "--json")
        error = run.valid("error")["error"]
        assert run.code == 2 and error["kind"] == "usage"
        assert "is not UTF-8 text" in error["message"] and "UTF-8" in error["fix"]
        assert "Traceback" not in run.err

    def test_invalid_json_has_a_fix(self, world: World, cmk, tmp_path):
        """A broken JSON file: the error document names line and column, and a fix."""
        path = Path(tmp_path) / "dead.json"
        path.write_text(json.dumps([EVENT], indent=2)[:-8])
        error = cmk("replay", str(path), "--json").valid("error")["error"]
        assert "line" in error["message"] and error["fix"]


class TestUsageErrorsHaveAFix:
    def test_check_without_arguments(self, world: World, cmk):
        """`cmk check --json` with nothing to check: exit 2 with a fix naming --all."""
        run = cmk("check", "--json")
        error = run.valid("error")["error"]
        assert run.code == 2 and error["kind"] == "usage" and "--all" in error["fix"]

    def test_allowlist_that_is_not_vault_urls(self, world: World, cmk, monkeypatch):
        """CMK_VAULT_ALLOWLIST=http://x names the setting and says it takes vault URLs,
        not "invalid key id"."""
        monkeypatch.setenv("CMK_VAULT_ALLOWLIST", "http://x")
        run = cmk("status")
        assert run.code == 2 and "invalid key id" not in run.err
        assert "CMK_VAULT_ALLOWLIST='http://x': invalid vault URL 'http://x'" in run.err
        assert "a vault URL is https://{vault}.vault.azure.net" in run.err

    def test_key_id_with_extra_segments_reads_as_a_path(self, world: World, cmk):
        """A key id with segments after the version names them as a path, not a list."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk") + "/" + "0" * 32 + "/abc"
        run = cmk("versions", key_id)
        assert run.code == 2
        assert "unexpected path segments after the version: /abc" in run.err
        assert "['abc']" not in run.err


class TestScopeWarnings:
    def test_empty_allowlist_says_accounts_exist_out_of_it(self, world: World, cmk, monkeypatch):
        """An empty CMK_VAULT_ALLOWLIST with CMK accounts in the subscriptions: the warning
        says they all use vaults outside the allow-list, not "check the ids"."""
        monkeypatch.setenv("CMK_VAULT_ALLOWLIST", "")
        run = cmk("sweep", "--dry-run")
        assert run.code == 1
        assert "all use vaults outside CMK_VAULT_ALLOWLIST (it is empty)" in run.err
        assert "check the ids" not in run.err


class TestPlainWords:
    def test_disable_dry_run(self, world: World, cmk):
        """disable --dry-run: one sentence, no enum value, no repeated "dry run"."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        run = cmk("disable", account.resource_id, "--dry-run")
        [line] = run.out.splitlines()
        assert run.code == 0
        assert line.startswith(f"disable {account.resource_id} (dry run): nothing written;")
        assert "dry_run" not in line and line.count("dry run") == 1

    def test_enable_refused_says_refused_once(self, world: World, cmk):
        """enable --dry-run of an account that already has a key: refused, said once."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")  # another key: refused
        run = cmk("enable", account.resource_id, "--key", key_id, "--dry-run")
        assert run.code == 1
        assert run.out.count("refused") == 1 and "refused;" not in run.out

    def test_query_that_matches_nothing_prints_nothing(self, world: World, cmk):
        """--query nonexistent prints nothing (the Azure CLI does not print `null`)."""
        run = cmk("status", "--query", "nonexistent")
        assert run.out == ""

    def test_history_of_an_unknown_account_says_so(self, world: World, cmk):
        """history --account rg-nope/x: no empty table; a line saying there are no ledger
        rows for that account."""
        run = cmk("history", "--account", "rg-nope/x")
        assert run.code == 0 and "┃" not in run.out
        assert "no ledger rows for account rg-nope/x" in run.err

    def test_check_takes_group_and_name(self, world: World, cmk):
        """check rg/name finds the account as history does; an unknown one is not found."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        short = f"{account.resource_id.split('/')[4]}/{account.name}"
        run = cmk("check", short, "--json")
        [check] = run.json["checks"]
        assert run.code == 0 and check["account_id"].lower() == account.resource_id.lower()
        missing = cmk("check", "rg-nope/x", "--json")
        assert missing.code == 2 and missing.valid("error")["error"]["kind"] == "not_found"

    def test_disable_and_switch_take_group_and_name(self, world: World, cmk):
        """disable and switch take RESOURCE_GROUP/NAME as check does (every table prints
        it): they act on the account of that full id; the real disable changes it; an
        unknown one is not found (exit 2), for every lifecycle command."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        short = f"{account.resource_id.split('/')[4]}/{account.name}"
        dry = cmk("disable", short, "--yes", "--dry-run")
        assert dry.code == 0, dry.err
        assert dry.out.startswith(f"disable {account.resource_id} (dry run)")
        other = world.key_id("kv-demo-weu", "ai-cmk-exp")
        switch = cmk("switch", short, "--key", other, "--dry-run", "--json")
        assert switch.code != 2, switch.err
        assert switch.json["change"]["account_id"].lower() == account.resource_id.lower()
        done = cmk("disable", short, "--yes")
        assert done.code == 0, done.err
        assert account.encryption.key_source == "Microsoft.CognitiveServices"
        for argv in (
            ["disable", "rg-nope/nope", "--yes"],
            ["switch", "rg-nope/nope", "--key", other],
            ["enable", "rg-nope/nope", "--key", other],
        ):
            missing = cmk(*argv, "--json")
            assert missing.code == 2 and missing.valid("error")["error"]["kind"] == "not_found"

    def test_enable_takes_group_and_name_of_an_account_without_cmk(self, world: World, cmk):
        """enable RESOURCE_GROUP/NAME finds an account that has no customer-managed key
        (so is not in the CMK inventory) by reading it in each subscription in scope: its
        preflight runs on that account (refused here: it has no identity), not exit 2."""
        account = next(
            a
            for a in world.sandbox.world.accounts.values()
            if a.encryption.key_source != "Microsoft.KeyVault"
        )
        short = f"{account.resource_id.split('/')[4]}/{account.name}"
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        run = cmk("enable", short, "--key", key_id, "--dry-run")
        assert run.code == 1, run.err
        assert f"enable {account.resource_id}" in run.out
        assert "managed identity" in run.out


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestProgressLines:
    def test_a_line_at_least_every_ten_seconds(self):
        """Off a terminal, progress prints a line when 10 s passed without one, even when
        no tenth of the work was reached (a slow update), and none before."""
        out, clock = io.StringIO(), _Clock()
        ticker = LineTicker(Console(file=out, width=200), "moving accounts", 100, clock=clock)
        clock.now += 9.9
        ticker.remind()
        assert out.getvalue() == ""
        clock.now += 0.2
        ticker.remind()
        clock.now += 10
        ticker.waited()
        clock.now += 11
        ticker.waited(datetime(2026, 12, 7, 14, 32, 5, tzinfo=UTC))
        clock.now += 11
        ticker.waited(datetime(2026, 12, 7, 14, 30, 0, tzinfo=UTC))  # an earlier one
        assert out.getvalue().splitlines() == [
            "moving accounts: 0/100 (10s)",
            "moving accounts: 0/100, 1 waits for a write lease (20s)",
            "moving accounts: 0/100, 2 waits for a write lease, the latest held until"
            " 14:32:05 UTC (31s)",
            "moving accounts: 0/100, 3 waits for a write lease, the latest held until"
            " 14:32:05 UTC (42s)",
        ]

    def test_tenths_still_print(self):
        """A tenth of the work prints a line at once, whatever the clock says."""
        out, clock = io.StringIO(), _Clock()
        ticker = LineTicker(Console(file=out, width=200), "moving accounts", 10, clock=clock)
        ticker.advance()
        assert out.getvalue().splitlines() == ["moving accounts: 1/10 (0s)"]


def _record_submitted(world: World, when: datetime) -> list[AccountId]:
    """The update of each stale account of kv-demo-neu/ai-cmk already submitted (by the
    app's worker, say): a SUBMITTED ledger row for its move."""
    version = world.new_version("kv-demo-neu", "ai-cmk")
    key = KeyId.parse(world.key_id("kv-demo-neu", "ai-cmk"))
    accounts = [AccountId.parse(a.resource_id) for a in world.accounts_on("kv-demo-neu", "ai-cmk")]
    bound = {
        a.resource_id.lower(): a.encryption.key_version
        for a in world.accounts_on("kv-demo-neu", "ai-cmk")
    }

    async def record() -> None:
        async with Runtime(Settings.from_environ(os.environ)) as runtime:
            await runtime.prepare_storage()
            for account in accounts:
                await runtime.services.ledger.record(
                    LedgerEntry(
                        account_id=account,
                        key_id=key,
                        to_version=version,
                        from_version=bound[str(account).lower()],
                        state=LedgerState.SUBMITTED,
                        attempts=1,
                        cause=None,
                        trigger="queue",
                        created=when,
                        updated=when,
                    )
                )

    asyncio.run(record())
    return accounts


class TestSweepSummary:
    def test_moves_in_flight_are_not_nothing_to_move(self, world: World, cmk):
        """Every move already submitted: the summary says they are in flight since when,
        not re-sent, instead of "nothing to move" under a table that lists them."""
        when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        accounts = _record_submitted(world, when)
        run = cmk("sweep")
        assert "Moves" in run.out, run.err
        [summary] = [line for line in run.out.splitlines() if line.startswith("sweep: ")]
        assert (
            f"{len(accounts)} already in flight (submitted at {when.isoformat()}), not re-sent"
            in summary
        )
        assert "nothing to move" not in summary

    def test_a_held_write_lease_is_a_wait_not_a_retry(self, world: World, cmk):
        """A job that finds its account's write lease held by another job waits for it; the
        summary says it waited for the lease, not that transient errors were retried.
        (The other job gives the lease back once the sweep has logged its wait.)"""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        account = world.accounts_on("hsm-demo-weu", "ai-cmk-hsm")[0]
        held, waited = threading.Event(), threading.Event()

        class _Waits(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if "waits for its write lease" in record.getMessage():
                    waited.set()

        async def other_job() -> None:
            async with Runtime(Settings.from_environ(os.environ)) as runtime:
                await runtime.prepare_storage()
                ledger, name = runtime.services.ledger, account_lease_name(account.resource_id)
                grant = await ledger.acquire_lease(
                    name, "other-job", datetime.now(UTC), timedelta(minutes=5), purpose="test"
                )
                assert grant.granted
                held.set()
                await asyncio.to_thread(waited.wait, CEILING_SECONDS)
                await ledger.release_lease(name, "other-job")

        holder = threading.Thread(target=lambda: asyncio.run(other_job()))
        holder.start()
        assert held.wait(CEILING_SECONDS)
        handler = _Waits()
        logging.getLogger("cmk.commands.inline").addHandler(handler)
        try:
            run = cmk("sweep", "-v")
        finally:
            logging.getLogger("cmk.commands.inline").removeHandler(handler)
            waited.set()
            holder.join(CEILING_SECONDS)
        assert run.code == 0, run.err
        [summary] = [line for line in run.out.splitlines() if line.startswith("sweep: ")]
        assert "6 succeeded" in summary
        assert "for an account's write lease, held by another job" in summary
        assert "transient errors retried" not in summary


class TestPolish:
    """Small things an operator reads: dry-run notes, id hints, help, wording."""

    @pytest.mark.parametrize(
        "argv", [["sweep"], ["rotate", "kv-demo-weu/ai-cmk"]], ids=["sweep", "rotate"]
    )
    def test_cmk_dry_run_setting_is_said_once(self, world: World, cmk, monkeypatch, argv):
        """CMK_DRY_RUN=true turns sweep/rotate into a dry run: stderr says so once; with
        --dry-run given it is the option's doing, and nothing is said."""
        if argv[0] == "rotate":
            vault, key = argv[1].split("/")
            argv = ["rotate", world.key_id(vault, key)]
        monkeypatch.setenv("CMK_DRY_RUN", "true")
        run = cmk(*argv)
        assert run.code == 0, run.err
        assert run.err.count("dry run: CMK_DRY_RUN=true is set") == 1
        assert "dry run: CMK_DRY_RUN" not in cmk(*argv, "--dry-run").err

    @pytest.mark.parametrize(
        "argv", [["history", "--account", "nope"], ["check", "nope"]], ids=["history", "check"]
    )
    def test_a_bad_account_id_names_the_short_form(self, world: World, cmk, argv):
        """A bad account id's fix names RESOURCE_GROUP/NAME as well as the ARM id; exit 2."""
        run = cmk(*argv)
        assert run.code == 2
        assert "RESOURCE_GROUP/NAME" in run.err and "/subscriptions/<id>" in run.err

    def test_check_names_each_account_once(self, world: World, cmk):
        """cmk check A A (or A and its full id) checks A once."""
        account = world.accounts_on("kv-demo-weu", "ai-cmk")[0]
        short = f"{account.resource_group}/{account.name}"
        run = cmk("check", short, short, account.resource_id, "--json")
        assert [c["account_id"] for c in run.json["checks"]] == [account.resource_id]

    def test_help_reads_plainly(self):
        """No backticks in any help; KEY_ID and N as the descriptions say; sandbox up
        has a description."""
        parser = build_parser()
        [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert "`" not in parser.format_help()
        for name, command in sub.choices.items():
            assert "`" not in command.format_help(), name
        assert "--key KEY_ID" in sub.choices["check"].format_help()
        assert "--key KEY_ID" in sub.choices["enable"].format_help()
        assert "--instances N" in sub.choices["demo"].format_help()
        sandbox = sub.choices["sandbox"]._actions
        [up] = [a for a in sandbox if isinstance(a, argparse._SubParsersAction)]
        assert up.choices["up"].description

    def test_rotate_says_created_version(self, world: World, cmk):
        """rotate's summary: `created version X`, not `new version created; new version X`."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        run = cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk"))
        assert run.code == 0, run.err
        summary = run.out.splitlines()[-1]
        assert f"created version {key.versions[-1].version}; 10 succeeded" in summary
        assert "new version created" not in summary

    def test_one_event_is_singular(self, world: World, cmk, tmp_path: Path):
        """A replay of one event is titled `1 event from FILE`."""
        state = world.vault("kv-demo-neu").keys["ai-cmk"]
        event = key_event(
            world.sandbox.world,
            KeyEventType.NEW_VERSION,
            world.vault("kv-demo-neu"),
            state,
            state.versions[-1],
        )
        path = tmp_path / "one.json"
        path.write_text(json.dumps([shape_event(event, "EventGridSchema")]))
        run = cmk("replay", str(path), "--dry-run")
        assert f"1 event from {path}" in run.out and "1 events" not in run.out
