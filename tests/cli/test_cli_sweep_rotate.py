"""``cmk sweep`` and ``cmk rotate``: accounts moved in-process, dry runs, the queue path,
and a failing account."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.queue import QueueClient
from cli_rig import World

from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.usecases.worker import account_lease_name


def _queued(connection: str, queue: str) -> int:
    with QueueClient.from_connection_string(connection, queue) as client:
        return int(client.get_queue_properties().approximate_message_count or 0)


class TestSweep:
    def test_moves_stale_accounts_inline(self, world: World, cmk):
        """A sweep moves every stale account in this process and reports each one."""
        version = world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        run = cmk("sweep", "--json")
        document = run.valid("sweep")
        assert run.code == 0, run.err
        assert document["summary"]["succeeded"] == 6 and document["sweep"]["enqueued"] == 0
        accounts = world.accounts_on("hsm-demo-weu", "ai-cmk-hsm")
        assert {a.encryption.key_version for a in accounts} == {version}

    def test_dry_run_writes_nothing(self, world: World, cmk):
        """--dry-run shows the PATCH each account would get and moves none."""
        version = world.new_version("kv-demo-neu", "ai-cmk")
        run = cmk("sweep", "--dry-run")
        assert run.code == 0, run.err
        assert run.out.count("would_update") >= 10
        # its progress says what it does: plan, not move
        assert "planning the updates (dry run): " in run.err and "moving" not in run.err
        assert all(
            a.encryption.key_version != version for a in world.accounts_on("kv-demo-neu", "ai-cmk")
        )


class TestRotate:
    def test_creates_one_version_and_moves_every_account(self, world: World, cmk):
        """rotate creates exactly one version and every bound account converges on it."""
        key = world.vault("kv-demo-neu").keys["ai-cmk"]
        before = len(key.versions)
        run = cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk"))
        assert run.code == 0, run.err
        assert len(key.versions) == before + 1
        latest = key.versions[-1].version
        assert "10 succeeded" in run.out and latest in run.out
        assert {a.encryption.key_version for a in world.accounts_on("kv-demo-neu", "ai-cmk")} == {
            latest
        }

    def test_enqueue_hands_jobs_to_the_queue(self, world: World, cmk, azurite: str):
        """--enqueue creates the version and leaves one job per account on the app's queue."""
        run = cmk("rotate", world.key_id("kv-demo-weu", "ai-cmk-exp"), "--enqueue", "--json")
        document = run.valid("rotate")
        assert run.code == 0 and document["jobs"] == []
        assert document["rotation"]["enqueued"] == 8
        assert _queued(azurite, os.environ["CMK_JOB_QUEUE"]) == 8

    def test_dry_run_creates_nothing(self, world: World, cmk):
        """--dry-run creates no version."""
        key = world.vault("kv-demo-weu").keys["ai-cmk"]
        before = len(key.versions)
        run = cmk("rotate", world.key_id("kv-demo-weu", "ai-cmk"), "--dry-run", "--json")
        assert run.code == 0 and run.valid("rotate")["rotation"]["created_version"] is None
        assert len(key.versions) == before

    def test_dry_run_marks_moves_off_an_unsafe_version_urgent(self, world: World, cmk):
        """Accounts bound to a version that fails the policy (here: disabled) would move
        urgently, and the dry run says why; accounts on a valid version are routine moves."""
        accounts = world.accounts_on("kv-demo-weu", "ai-cmk")
        key = world.vault("kv-demo-weu").keys["ai-cmk"]
        unsafe = accounts[0].encryption.key_version
        [version] = [v for v in key.versions if v.version == unsafe]
        version.enabled = False
        run = cmk("rotate", world.key_id("kv-demo-weu", "ai-cmk"), "--dry-run", "--json")
        moves = run.valid("rotate")["rotation"]["moves"]
        urgent = {m["from_version"] == unsafe for m in moves if m["urgent"]}
        assert urgent == {True} and len(moves) == len(accounts)
        assert all("unsafe version" in m["reason"] for m in moves if m["urgent"])
        assert any(not m["urgent"] for m in moves) is (
            len({a.encryption.key_version for a in accounts}) > 1
        )

    def test_identity_without_access_fails_with_one_alert(self, world: World, cmk):
        """An account whose identity lost its grant fails, with an alert; exit 1."""
        victim = world.accounts_on("kv-demo-neu", "ai-cmk")[0]
        assert victim.identity.system is not None
        world.sandbox.world.revoke(victim.identity.system.object_id)
        run = cmk("rotate", world.key_id("kv-demo-neu", "ai-cmk"), "--json")
        document = run.valid("rotate")
        assert run.code == 1
        assert document["summary"] == {**document["summary"], "succeeded": 9, "failed": 1}
        [failed] = [j for j in document["jobs"] if j["result"] == "failed"]
        assert failed["account_id"].endswith(victim.name)
        assert failed["alert"]["type"] == "identity_missing"
        topic = world.sandbox.eventgrid.topic("cmk-alerts")
        assert len(topic.events) == 1


def _dead_job_lease(account_resource_id: str) -> None:
    """A write lease on the account left by a job that died an hour ago (expired)."""

    async def plant() -> None:
        async with Runtime(Settings.from_environ(os.environ)) as runtime:
            await runtime.prepare_storage()
            name, then = account_lease_name(account_resource_id), datetime.now(UTC)
            grant = await runtime.services.ledger.acquire_lease(
                name, "dead-job", then - timedelta(hours=1), timedelta(minutes=1), purpose="test"
            )
            assert grant.granted

    asyncio.run(plant())


class TestConsoleLog:
    @pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
    def test_a_failed_account_is_one_row_not_a_log_line(self, world: World, cmk, verbose):
        """A failed account is in the jobs table and the summary's counts; its
        `ERROR cmk.usecases.worker: rotation failed` line shows only with -v."""
        victim = world.accounts_on("kv-demo-neu", "ai-cmk")[0]
        assert victim.identity.system is not None
        world.sandbox.world.revoke(victim.identity.system.object_id)
        argv = ["rotate", world.key_id("kv-demo-neu", "ai-cmk"), *(["-v"] if verbose else [])]
        run = cmk(*argv)
        assert run.code == 1, run.err
        assert [line for line in run.out.splitlines() if victim.name in line and "failed" in line]
        [summary] = [line for line in run.out.splitlines() if line.startswith("rotate ")]
        assert "1 failed" in summary
        logged = "ERROR cmk.usecases.worker: rotation failed" in run.err
        assert logged is verbose, run.err

    @pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
    def test_a_lease_taken_over_is_counted(self, world: World, cmk, verbose):
        """A sweep that takes over a dead job's expired write lease says so once at the
        end; the `took over write lease` line shows only with -v."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        _dead_job_lease(world.accounts_on("hsm-demo-weu", "ai-cmk-hsm")[0].resource_id)
        run = cmk("sweep", *(["-v"] if verbose else []))
        assert run.code == 0, run.err
        logged = "WARNING cmk.adapters.leases: took over write lease" in run.err
        counted = "cmk: took over 1 expired write lease(s)" in run.err
        assert (logged, counted) == (verbose, not verbose), run.err
