"""The sweep's survey streams: chunk by chunk it decides what it would decide at once, and
keeps only what it acts on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from usecase_rig import SUB_B, Rig

from cmk.usecases import plan, sweep
from cmk.usecases import survey as survey_module
from cmk.usecases.report import SweepReport, to_jsonable
from cmk.usecases.survey import Survey, survey_chunks

GRAPH = "management.azure.com"


def _seed(rig: Rig) -> dict[str, Any]:
    """Accounts named so the inventory (ordered by id) returns current ones before stale
    ones: a current, two stale, one without identity, an HSM key near expiry, one outside."""
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
        "a-current": estate.account("a-current", estate.kv, v2.version),
        "b-stale": estate.account("b-stale", estate.kv, v1.version),
        "c-noid": estate.account("c-noid", estate.kv, v2.version),
        "d-stale": estate.account("d-stale", estate.kv, v1.version, user_assigned=True),
        "hsm": estate.account("hsm", estate.hsm, hsm.version, key="hsmkey", sub=SUB_B),
        "outside": estate.account("outside", estate.outside, out.version, sub=SUB_B),
    }
    accounts["c-noid"].identity.system = None
    return {"v1": v1, "v2": v2, **accounts}


def _comparable(report: SweepReport) -> dict[str, Any]:
    """The report without what differs between two runs (run id, alert ids)."""
    document: dict[str, Any] = to_jsonable(report)
    document.pop("run_id", None)
    document.pop("alerts", None)
    return document


def _graph_queries(rig: Rig) -> int:
    served = rig.estate.sandbox.counters.by_status()
    return sum(n for (endpoint, _), n in served.items() if f"POST {GRAPH}" in endpoint)


class TestSurveyChunks:
    async def test_keeps_no_record_of_a_readable_key(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Streamed one account at a time, the survey counts every account and decides every
        in-scope one, but keeps no record of a key it could read."""
        _seed(rig)
        monkeypatch.setattr(survey_module, "CHUNK_SIZE", 1)
        found = Survey()
        chunks = [chunk async for chunk in survey_chunks(rig.engine, found)]

        assert found.accounts == 6 and found.out_of_scope_accounts == 1
        assert found.out_of_scope == []
        assert sum(len(chunk) for chunk in chunks) == 5 == len(chunks)
        assert all(item.records == [] and item.decisions == [] for item in found.keys.values())
        assert sorted(item.accounts for item in found.keys.values()) == [1, 4]

    async def test_plan_in_chunks_of_one_is_the_plan_at_once(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A plan decided one account at a time reports the same moves, findings and counts,
        in the same order, as a plan decided over the whole inventory at once."""
        _seed(rig)
        at_once = await plan(rig.engine)
        monkeypatch.setattr(survey_module, "CHUNK_SIZE", 1)

        one_by_one = await plan(rig.engine)

        assert _comparable(one_by_one) == _comparable(at_once)
        assert len(at_once.moves) == 2 and at_once.findings

    async def test_key_unreadable_in_a_later_chunk_is_unreadable_for_all_its_accounts(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When a bound version cannot be read in a later chunk, every account of the key is
        unreadable, those decided in earlier chunks too: nothing of it is enqueued, and the
        report is the one a survey at once gives (at one more query, for the key's accounts)."""
        seeded = _seed(rig)
        rig.estate.sandbox.faults.add(
            host="*.vault.azure.net", path=f"/keys/cmk/{seeded['v1'].version}", status=403
        )
        at_once = await plan(rig.engine)
        monkeypatch.setattr(survey_module, "CHUNK_SIZE", 1)
        rig.estate.sandbox.counters.reset()

        report = await sweep(rig.engine)

        assert _graph_queries(rig) == 2  # the inventory, then the unreadable key's accounts
        assert _comparable(report) | {"dry_run": True, "alerts_published": 0} == _comparable(
            at_once
        )
        assert report.moves == () and report.enqueued == 0 and len(report.errors) == 1
        unreadable = {f.subject for f in report.findings if f.kind == "key_unreadable"}
        assert {s.rsplit("/", 1)[-1] for s in unreadable} == {
            "a-current",
            "b-stale",
            "c-noid",
            "d-stale",
        }
        assert await rig.queue_length() == 0


class TestSweepSendsWhileStreaming:
    async def test_sends_each_stale_account_once_in_chunks_of_one(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Jobs sent chunk by chunk (while the survey still streams) are one per stale
        account, and the report counts them."""
        _seed(rig)
        monkeypatch.setattr(survey_module, "CHUNK_SIZE", 1)

        report = await sweep(rig.engine)

        assert report.enqueued == 2 == await rig.queue_length()
        assert {job.account_id for job in await rig.queued()} == {
            move.account_id for move in report.moves
        }

    async def test_jobs_sent_before_the_key_proves_unreadable_stay_queued(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A job sent for a key that a later chunk finds unreadable stays queued and counted
        (the worker reads everything again before acting); the report lists no move of it."""
        estate = rig.estate
        now = estate.world.clock.now()
        v1 = estate.version(estate.kv, created=now - timedelta(days=90))
        v2 = estate.version(estate.kv, created=now - timedelta(days=60))
        estate.version(estate.kv, created=now - timedelta(days=2))
        estate.account("a-oldest", estate.kv, v1.version)
        estate.account("b-older", estate.kv, v2.version)
        estate.sandbox.faults.add(
            host="*.vault.azure.net", path=f"/keys/cmk/{v2.version}", status=403
        )
        monkeypatch.setattr(survey_module, "CHUNK_SIZE", 1)

        report = await sweep(rig.engine)

        assert report.moves == () and len(report.errors) == 1
        assert report.enqueued == 1 == await rig.queue_length()
        assert [job.account_id.name for job in await rig.queued()] == ["a-oldest"]
