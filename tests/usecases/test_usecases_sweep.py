"""sweep, plan and status over a seeded estate (Resource Graph inventory, real adapters)."""

from __future__ import annotations

from datetime import timedelta

from usecase_rig import SUB_B, SUB_C, Rig

from cmk.keyid import KeyId
from cmk.ports import LedgerEntry, LedgerState, RotationJob
from cmk.resource_id import AccountId
from cmk.sandbox.world import Principal
from cmk.usecases import BindingState, alerting, plan, status, sweep
from cmk.usecases.report import to_jsonable


def _seed(rig: Rig) -> dict[str, object]:
    """A stale, a current, an identity-less, an unrotated-HSM and an out-of-scope account."""
    estate = rig.estate
    now = estate.world.clock.now()
    v1 = estate.version(estate.kv, created=now - timedelta(days=60))
    v2 = estate.version(estate.kv, created=now - timedelta(days=2))
    hsm = estate.version(
        estate.hsm, "hsmkey", kty="RSA-HSM", created=now - timedelta(days=355),
        expires=now + timedelta(days=10),
    )  # fmt: skip
    out = estate.version(estate.outside)
    accounts = {
        "stale": estate.account("stale", estate.kv, v1.version),
        "stale2": estate.account("stale2", estate.kv, v1.version, sub=SUB_B, user_assigned=True),
        "current": estate.account("current", estate.kv, v2.version),
        "noid": estate.account("noid", estate.kv, v2.version, sub=SUB_B),
        "hsm": estate.account("hsm", estate.hsm, hsm.version, key="hsmkey", sub=SUB_B),
        "outside": estate.account("outside", estate.outside, out.version, sub=SUB_C),
    }
    accounts["noid"].identity.system = None
    return {"v1": v1, "v2": v2, "hsm": hsm, **accounts}


class TestSweep:
    async def test_enqueues_stale_bindings_and_raises_findings(self, rig: Rig) -> None:
        """Stale accounts are enqueued and moved, not alerted (this run repairs them); every
        other finding is alerted once."""
        seeded = _seed(rig)
        counters = rig.estate.sandbox.counters
        counters.reset()

        report = await sweep(rig.engine)

        snapshot = counters.snapshot()
        print("sweep requests:", snapshot)  # the figure the benchmark counts
        served = counters.by_status()
        vault_reads = sum(n for (e, code), n in served.items() if ".vault." in e and code == 200)
        assert vault_reads == 2  # latest of the key + its one stale bound version
        graph = sum(n for (e, code), n in served.items() if "management.azure.com" in e)
        assert graph == 1  # one Resource Graph page, no per-account ARM read
        assert report.accounts == 6 and report.out_of_scope == 1
        assert report.enqueued == 2
        assert {str(m.account_id).rsplit("/", 1)[-1] for m in report.moves} == {"stale", "stale2"}
        kinds = {f.kind for f in report.findings}
        assert {"identity_missing", "no_valid_version"} <= kinds
        assert "key_near_expiry_unrotated" in kinds
        assert "binding_stale" not in kinds
        types = {e["type"].split(".")[1] for e in rig.alerts()}
        assert types == {"identity_missing", "binding_unsafe", "key_near_expiry_unrotated"}
        await rig.drain()
        assert seeded["stale"].encryption.key_version == seeded["v2"].version  # type: ignore[attr-defined]
        rig.check_invariants()
        await rig.check_ledger()

    async def test_second_sweep_does_not_realert(self, rig: Rig) -> None:
        """An hourly sweep over unchanged problems publishes no new alert."""
        _seed(rig)
        first = await sweep(rig.engine)
        published = len(rig.alerts())

        second = await sweep(rig.engine)

        assert first.alerts_published == published > 0
        assert second.alerts_published == 0
        assert len(rig.alerts()) == published

    async def test_purgeable_vault_is_a_finding(self, rig: Rig) -> None:
        """A vault without purge protection raises VAULT_NOT_RECOVERABLE and moves nothing."""
        _seed(rig)
        rig.estate.kv.purge_protection = False

        report = await sweep(rig.engine)

        assert report.enqueued == 0
        assert len(rig.alerts("vault_not_recoverable")) == 1

    async def test_plan_and_dry_run_write_nothing(self, rig: Rig) -> None:
        """plan() reports the moves and alerts a sweep would make, and writes nothing."""
        _seed(rig)

        report = await plan(rig.engine)
        dry = await sweep(rig.dry())

        assert report.dry_run and len(report.moves) == 2 and report.alerts
        assert dry.enqueued == report.enqueued == 0
        assert await rig.queue_length() == 0
        assert rig.alerts() == []
        assert await rig.engine.ledger.history() == []
        assert to_jsonable(report)["moves"][0]["to_version"]  # type: ignore[index]


class TestSweepResolves:
    async def test_fixed_by_hand_is_resolved_and_alerts_again_when_broken(self, rig: Rig) -> None:
        """An identity_missing account alerted by one sweep and then fixed in the world is
        resolved by the next sweep (not by a plan), and alerts again when broken again."""
        seeded = _seed(rig)
        noid = seeded["noid"]
        subject = str(noid.resource_id).lower()  # type: ignore[attr-defined]
        identity = Principal.new("noid-system", rig.world.tenant_id)

        await sweep(rig.engine)
        assert len(rig.alerts("identity_missing")) == 1
        assert subject in await rig.engine.alerts.open_subjects()

        noid.identity.system = identity  # type: ignore[attr-defined]
        await plan(rig.engine)
        assert subject in await rig.engine.alerts.open_subjects()  # a dry run resolves nothing
        await sweep(rig.engine)
        assert subject not in await rig.engine.alerts.open_subjects()
        assert len(rig.alerts("identity_missing")) == 1

        noid.identity.system = None  # type: ignore[attr-defined]
        third = await sweep(rig.engine)

        assert len(rig.alerts("identity_missing")) == 2
        assert third.alerts_published == 1
        assert subject in await rig.engine.alerts.open_subjects()

    async def test_open_problems_and_worker_failures_stay_open(self, rig: Rig) -> None:
        """A sweep keeps the alerts of accounts still failing: one it alerts again, and one
        whose update failed in the worker (the sweep does not re-alert that, and it is not
        fixed)."""
        seeded = _seed(rig)
        stale = seeded["stale"]
        account_id = AccountId.parse(stale.resource_id)  # type: ignore[attr-defined]
        target = rig.estate.version(rig.estate.kv).version  # new: within the grace period
        now = rig.world.clock.now()
        key = KeyId.from_parts(rig.estate.kv.url, "cmk")
        old = seeded["v1"].version  # type: ignore[attr-defined]
        await rig.engine.ledger.record(
            LedgerEntry(
                account_id, key, target, old, LedgerState.FAILED, 1, "KeyVaultAccessDenied",
                "event-1", now, now,
            )
        )  # fmt: skip
        job = RotationJob(account_id, key.with_version(target), "event-1", from_version=old)
        await rig.engine.alerts.raise_alert(alerting.account_failed(job, "KeyVaultAccessDenied"))

        await sweep(rig.engine)
        await sweep(rig.engine)

        open_now = await rig.engine.alerts.open_subjects()
        assert str(account_id).lower() in open_now
        assert str(seeded["noid"].resource_id).lower() in open_now  # type: ignore[attr-defined]
        assert len(rig.alerts("account_update_failed")) == 1


class TestStatus:
    async def test_every_account_with_its_state(self, rig: Rig) -> None:
        """status() lists each CMK account with bound and newest version and its state."""
        seeded = _seed(rig)

        rows = {str(r.account_id).rsplit("/", 1)[-1]: r for r in await status(rig.engine)}

        assert rows["stale"].state is BindingState.STALE
        assert rows["stale"].newest_version == seeded["v2"].version  # type: ignore[attr-defined]
        assert rows["current"].state is BindingState.CURRENT
        assert rows["noid"].state is BindingState.FAILING
        assert rows["hsm"].state is BindingState.UNSAFE
        assert rows["outside"].state is BindingState.OUT_OF_SCOPE
        assert await rig.queue_length() == 0 and rig.alerts() == []

    async def test_bound_since_comes_from_the_ledger(self, rig: Rig) -> None:
        """After a sweep moved an account, status shows since when it uses the version."""
        _seed(rig)
        await sweep(rig.engine)
        await rig.drain()

        rows = {str(r.account_id).rsplit("/", 1)[-1]: r for r in await status(rig.engine)}

        assert rows["stale"].state is BindingState.CURRENT
        assert rows["stale"].bound_since is not None and rows["stale"].age is not None
