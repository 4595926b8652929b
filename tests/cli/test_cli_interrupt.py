"""Ctrl-C: an interrupted `cmk rotate` or `cmk sweep` (a real process, a real SIGINT) says
what it did, what it did not, and the command that finishes the work; no traceback, exit
130. Each interruption point is made to happen: the sandbox holds one request open (a
latency fault) and the signal is sent once that request has arrived."""

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from cli_rig import SCHEMAS, World

from cmk.runtime import Runtime
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import key_event
from cmk.sandbox.platform.faults import FaultRule
from cmk.sandbox.world import KeyEventType
from cmk.settings import Settings
from cmk.usecases.worker import account_lease_name

CMK = Path(sys.executable).parent / "cmk"
#: Only bounds a hang: the signal is sent when the held request has arrived.
CEILING_SECONDS = 60
HOLD_SECONDS = 15

PATCH_ACCOUNT = {"host": "management.azure.com", "path": r"/accounts/", "method": "PATCH"}
CREATE_VERSION = {"host": "*.vault.azure.net", "path": r"/keys/ai-cmk/(create|rotate)"}
RESOURCE_GRAPH = {"host": "management.azure.com", "path": r"Microsoft\.ResourceGraph/resources"}


#: Runs ARGV with SIGINT at its default. A suite started in the background (`make test &`,
#: nohup) inherits SIGINT ignored, and a Python started with SIGINT ignored keeps ignoring
#: it, as a background job should: `cmk` would run to the end and these tests would fail.
#: (Not a preexec_fn: the sandbox's threads make forking with one unsafe.)
CTRL_C_DEFAULT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def _interrupt(
    world: World, argv: list[str], hold: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run `cmk ARGV`, hold the first request matching ``hold``, SIGINT the process once
    it is waiting on it, and return how it ended."""
    rule: FaultRule = world.sandbox.faults.add(latency=HOLD_SECONDS, **hold)
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
            assert time.monotonic() < deadline, "the held request never arrived"
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=CEILING_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        world.sandbox.faults.remove(rule)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


_SENT = re.compile(
    r"(\d+) update\(s\) were sent and may still land; their accounts' write leases run out"
    r" at (\d\d:\d\d:\d\d) UTC; run `cmk sweep` after that"
)


def _held_leases(world: World, vault: str, key: str) -> list[datetime]:
    """When the write leases still held on the accounts of ``key`` run out (a probe
    asks for each; a lease that is free is taken by the probe and given back)."""

    async def probe() -> list[datetime]:
        async with Runtime(Settings.from_environ(os.environ)) as runtime:
            ledger, now, held = runtime.services.ledger, datetime.now(UTC), []
            for account in world.accounts_on(vault, key):
                name = account_lease_name(account.resource_id)
                grant = await ledger.acquire_lease(name, "probe", now, timedelta(seconds=1))
                if grant.granted:
                    await ledger.release_lease(name, "probe")
                else:
                    held.append(grant.expires)
            return held

    return asyncio.run(probe())


class TestInterruptedRotate:
    def test_during_the_moves(self, world: World):
        """Interrupted while accounts move: it names the created version, how many accounts
        finished, what is left, and `cmk sweep`; exit 130, no traceback."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        ended = _interrupt(world, ["rotate", world.key_id("kv-demo-neu", "ai-cmk")], PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        created = key.versions[before].version
        assert f"created version {created}" in ended.stderr
        assert "of 10 account(s) finished" in ended.stderr
        assert "not verified on the new version" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr

    def test_says_when_the_kept_write_leases_run_out(self, world: World):
        """Interrupted with PATCHes out: it says how many updates were sent and may still
        land, and when their accounts' write leases run out (the `cmk sweep` it suggests
        would only wait before then); as many leases are held, running out no earlier
        than it says less the time the PATCH was held. No per-account log line."""
        ended = _interrupt(world, ["rotate", world.key_id("kv-demo-neu", "ai-cmk")], PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        found = _SENT.search(ended.stderr)
        assert found, ended.stderr
        sent, shown = int(found[1]), found[2]
        held = _held_leases(world, "kv-demo-neu", "ai-cmk")
        assert sent == len(held) >= 1
        last = max(held)
        said = datetime.combine(last.date(), datetime.strptime(shown, "%H:%M:%S").time(), UTC)
        if said < last - timedelta(hours=12):  # across midnight
            said += timedelta(days=1)
        # said: when the job logged it kept the lease (after the PATCH), plus the lease's
        # time to live; the lease was renewed before the PATCH, so it runs out no later
        assert last - timedelta(seconds=1) <= said <= last + timedelta(seconds=HOLD_SECONDS + 5)
        assert f"to finish: cmk sweep (after {shown} UTC)" in ended.stderr
        assert "write lease kept" not in ended.stderr and "WARNING" not in ended.stderr

    def test_while_creating_the_version(self, world: World):
        """Interrupted while the version is being created: nothing moved, and how to tell
        whether the version exists (`cmk versions`) before `cmk sweep` or a new rotate."""
        key_id = world.key_id("kv-demo-weu", "ai-cmk")
        ended = _interrupt(world, ["rotate", key_id], CREATE_VERSION)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "while creating a new version" in ended.stderr
        assert "no account was moved" in ended.stderr
        assert f"cmk versions {key_id}" in ended.stderr and "cmk sweep" in ended.stderr

    def test_json_gets_an_interrupted_document(self, world: World):
        """With --json, stdout holds one error document of kind `interrupted`, exit 130."""
        argv = ["rotate", world.key_id("kv-demo-neu", "ai-cmk"), "--json"]
        ended = _interrupt(world, argv, PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        document = json.loads(ended.stdout)
        jsonschema.validate(document, SCHEMAS["error"])
        error = document["error"]
        assert error["kind"] == "interrupted" and error["exit_code"] == 130
        assert re.fullmatch(r"run `cmk sweep` \(after \d\d:\d\d:\d\d UTC\)", error["fix"])


def _interrupt_on(world: World, argv: list[str], marker: str) -> tuple[int, str]:
    """Run `cmk ARGV`, SIGINT it once stderr has a line containing ``marker``, and return
    its exit code and whole stderr (stdout is discarded)."""
    process = subprocess.Popen(
        [*CTRL_C_DEFAULT, str(CMK), *argv],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    hang = threading.Timer(CEILING_SECONDS, process.kill)  # only bounds a hang
    hang.start()
    seen: list[str] = []
    try:
        assert process.stderr is not None
        for line in process.stderr:
            seen.append(line)
            if marker in line:
                process.send_signal(signal.SIGINT)
                break
        seen.append(process.communicate(timeout=CEILING_SECONDS)[1])
    finally:
        hang.cancel()
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, "".join(seen)


def _hold_leases(world: World, vault: str, key: str, ttl: timedelta) -> datetime:
    """Write leases on every account of ``key``, as an earlier interrupted run leaves
    them (their PATCH may still land); returns when they run out."""

    async def hold() -> datetime:
        async with Runtime(Settings.from_environ(os.environ)) as runtime:
            ledger, now = runtime.services.ledger, datetime.now(UTC)
            for account in world.accounts_on(vault, key):
                name = account_lease_name(account.resource_id)
                grant = await ledger.acquire_lease(name, "earlier-run", now, ttl)
                assert grant.granted
            return now + ttl

    return asyncio.run(hold())


class TestInterruptedUrgentMoves:
    def test_unsafe_versions_are_not_called_still_valid(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ):
        """Interrupted while moving accounts whose bound version is expiring: the summary
        says their current version is NOT safe and why, never "still valid"."""
        # the key's version expires in 35 days: inside a 40-day margin, so unsafe
        monkeypatch.setenv("CMK_EXPIRY_MARGIN_DAYS", "40")
        key_id = world.key_id("kv-demo-weu", "ai-cmk-exp")
        versions = subprocess.run(
            [str(CMK), "versions", key_id, "--json"],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
        assert versions.returncode == 1  # an account is bound to a version failing the policy
        ended = _interrupt(world, ["rotate", key_id], PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        assert "still valid" not in ended.stderr
        assert "for all of them it is NOT safe" in ended.stderr
        assert "within the" in ended.stderr and "finish this soon" in ended.stderr
        assert "Traceback" not in ended.stderr

    def test_waiting_on_an_earlier_runs_leases_says_when_to_sweep(self, world: World):
        """A sweep whose jobs wait for write leases an earlier interrupted run left,
        interrupted while waiting: `to finish: cmk sweep (after HH:MM:SS UTC)` names when
        those leases run out (the latest), and says the jobs were waiting for them."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        until = _hold_leases(world, "hsm-demo-weu", "ai-cmk-hsm", timedelta(minutes=10))
        code, err = _interrupt_on(world, ["sweep", "-v"], "waits for its write lease")
        assert code == 130, err
        shown = f"{until:%H:%M:%S}"
        assert f"to finish: cmk sweep (after {shown} UTC)" in err
        assert "jobs were waiting for write leases held by another job" in err
        assert f"until {shown} UTC" in err and "Traceback" not in err


class TestInterruptedSweep:
    def test_during_the_inventory(self, world: World):
        """Interrupted while taking the inventory: nothing moved; run the sweep again."""
        ended = _interrupt(world, ["sweep"], RESOURCE_GRAPH)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "while taking the inventory" in ended.stderr
        assert "no account was moved" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr

    @pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
    def test_during_the_moves(self, world: World, verbose: bool):
        """Interrupted while stale accounts move: how many finished, and `cmk sweep`."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        argv = ["sweep", *(["-v"] if verbose else [])]
        ended = _interrupt(world, argv, PATCH_ACCOUNT)
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert "of 6 account(s) finished" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr


class TestInterruptedDemo:
    def test_between_acts(self, tmp_path: Path):
        """`cmk demo` interrupted once act 2 has begun: the acts so far are on stdout, one
        line on stderr says it stopped and how to run it again; exit 130, no traceback."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
        env.pop("AzureWebJobsStorage", None)
        process = subprocess.Popen(
            [*CTRL_C_DEFAULT, str(CMK), "demo"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        seen = []
        try:
            for line in process.stdout:  # bounded by the demo itself
                seen.append(line)
                if line.startswith("Act 2"):
                    process.send_signal(signal.SIGINT)
                    break
            rest, err = process.communicate(timeout=CEILING_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, err
        assert "Traceback" not in err
        assert "cmk demo: interrupted" in err and "run `cmk demo` again" in err
        assert any(line.startswith("Act 1") for line in seen)
        assert "demo finished" not in rest

    def test_json_document_claims_nothing_it_cannot_know(self, tmp_path: Path):
        """`cmk demo --json` interrupted once act 2 has begun (its story is on stderr): the
        error document says it was interrupted and how to run it again, and does not claim
        that nothing was left half-done (a command without a journal cannot know)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
        env.pop("AzureWebJobsStorage", None)
        process = subprocess.Popen(
            [*CTRL_C_DEFAULT, str(CMK), "demo", "--json"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        try:
            for line in process.stderr:  # bounded by the demo itself
                if line.startswith("cmk demo: Act 2"):
                    process.send_signal(signal.SIGINT)
                    break
            out, err = process.communicate(timeout=CEILING_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 130, err
        error = json.loads(out)["error"]
        assert error["kind"] == "interrupted" and error["exit_code"] == 130
        assert error["message"].startswith("cmk demo: interrupted")
        assert "half-done" not in error["message"]
        assert "run `cmk demo` again" in error["fix"]


class TestJournalOfUpdatesStillRunning:
    """An update that outlasted its job's wait hands the account's write lease to its
    VERIFY job; interrupted before that verify ran here, the lease stays until it runs
    out, and the summary says so (pure: the journal the commands keep)."""

    def test_unverified_update_names_when_its_lease_runs_out(self):
        from cmk.commands.interrupt import Journal  # noqa: PLC0415 (only this class)
        from cmk.keyid import KeyId  # noqa: PLC0415
        from cmk.ports import RotationJob  # noqa: PLC0415
        from cmk.resource_id import AccountId  # noqa: PLC0415
        from cmk.usecases import JobReport  # noqa: PLC0415

        key = KeyId("https://kv-demo.vault.azure.net", "k", "a" * 32)
        accounts = [
            AccountId("00000000-0000-0000-0000-000000000001", "rg", f"ai-{n}") for n in "abc"
        ]
        journal = Journal("rotate")
        journal.moving([RotationJob(a, key, "t") for a in accounts], finish="cmk sweep")
        until = datetime(2026, 12, 7, 21, 30, 5, tzinfo=UTC)
        journal.submitted(accounts[0], until - timedelta(minutes=1))
        journal.submitted(accounts[1], until)

        text = journal.message()
        assert "2 update(s) were still running in Azure and not verified" in text
        assert "write leases run out at 21:30:05 UTC" in text
        assert "to finish: cmk sweep (after 21:30:05 UTC)" in text

        verified = JobReport.skipped(RotationJob(accounts[1], key, "t"), "already on target")
        journal.job_done(verified)  # the second account's verify ran here after all
        assert "1 update(s) were still running" in journal.message()
        assert "(after 21:29:05 UTC)" in journal.message()


class TestInterruptedReplay:
    def test_during_the_moves_names_the_events_handled(self, world: World, tmp_path: Path):
        """`cmk replay --inline` interrupted while its accounts move: it names the event it
        handled, how many accounts finished, and `cmk sweep` — not "done: nothing"."""
        world.new_version("kv-demo-neu", "ai-cmk")
        vault = world.vault("kv-demo-neu")
        state = vault.keys["ai-cmk"]
        event = shape_event(
            key_event(
                world.sandbox.world, KeyEventType.NEW_VERSION, vault, state, state.versions[-1]
            ),
            "EventGridSchema",
        )
        path = tmp_path / "deadletter.json"
        path.write_text(json.dumps([event]))

        ended = _interrupt(world, ["replay", "--inline", str(path)], PATCH_ACCOUNT)

        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr
        assert f"event 1 ({event['id']}): fanned_out" in ended.stderr, ended.stderr
        assert "done: nothing" not in ended.stderr
        assert "of 10 account(s) finished" in ended.stderr
        assert "to finish: cmk sweep" in ended.stderr
