"""POST /api/rotate (cmk.entrypoints.http_rotate): a cool-down per key, strict key ids."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from usecase_rig import Rig

from cmk.entrypoints import http_rotate, http_rotate_request, refuse_unknown_parameters
from cmk.errors import ServiceUnavailable
from cmk.usecases import sweep


class TestHttpRotate:
    """A doubled call creates one version; a versioned key id is refused."""

    async def test_second_call_within_cool_down_is_409_naming_the_version(self, rig: Rig) -> None:
        """The second call answers 409 with the version the first created; force=true and
        the end of the cool-down both let a new rotation through."""
        estate = rig.estate
        estate.version(estate.kv)
        key = f"{estate.kv.url}/keys/cmk"

        status, body = await http_rotate(rig.engine, key)
        assert status == 200
        created = body["rotation"]["created_version"]  # type: ignore[index]
        status, refused = await http_rotate(rig.engine, key)
        assert status == 409
        assert refused["created_version"] == created  # type: ignore[index]
        assert refused["error"]["kind"] == "conflict"  # type: ignore[index]
        assert "force=true" in refused["error"]["fix"]  # type: ignore[index]
        assert refused["cool_down_until"]  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 2

        status, _ = await http_rotate(rig.engine, key, force=True)
        assert status == 200 and len(estate.kv.keys["cmk"].versions) == 3
        estate.world.clock.advance(rig.engine.settings.rotate_cooldown + timedelta(seconds=1))
        status, _ = await http_rotate(rig.engine, key)
        assert status == 200 and len(estate.kv.keys["cmk"].versions) == 4

    async def test_versioned_key_id_is_400(self, rig: Rig) -> None:
        """A key id with a version is refused, not silently truncated; nothing is created."""
        estate = rig.estate
        version = estate.version(estate.kv)
        status, body = await http_rotate(rig.engine, f"{estate.kv.url}/keys/cmk/{version.version}")
        assert status == 400 and "names version" in body["error"]["message"]  # type: ignore[index]
        assert body["error"]["fix"] == f"pass the versionless id: key_id={estate.kv.url}/keys/cmk"  # type: ignore[index]
        assert body["error"]["exit_code"] == 2  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 1

    @pytest.mark.parametrize(
        ("params", "says"),
        [
            ({"dryrun": "true"}, "unknown query parameter(s): dryrun"),
            ({"force": "maybe"}, "force='maybe' is not true or false"),
            ({"dry_run": "2"}, "dry_run='2' is not true or false"),
        ],
    )
    async def test_parameters_it_does_not_know_are_refused_before_anything(
        self, rig: Rig, params: dict[str, str], says: str
    ) -> None:
        """A guessed parameter (or a flag that is not true/false) is a 400 naming it and
        what the endpoint takes — never ignored, which would rotate for real a call that
        meant a dry run. Nothing is created."""
        estate = rig.estate
        estate.version(estate.kv)
        request = {"key_id": f"{estate.kv.url}/keys/cmk", **params}

        status, body = await http_rotate_request(rig.engine, request)

        assert status == 400, body
        assert body["error"]["message"] == says  # type: ignore[index]
        fix = "/api/rotate takes key_id, force, dry_run" if "unknown" in says else "=true"
        assert fix in body["error"]["fix"]  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 1

    async def test_dry_run_parameter_creates_nothing(self, rig: Rig) -> None:
        """dry_run=true answers what a rotation would do, as with CMK_DRY_RUN: no version,
        no claim (a real call right after is not refused by the cool-down)."""
        estate = rig.estate
        version = estate.version(estate.kv)
        estate.account("acct-d", estate.kv, version.version)
        key = f"{estate.kv.url}/keys/cmk"

        status, body = await http_rotate_request(rig.engine, {"key_id": key, "dry_run": "true"})

        assert status == 200, body
        assert body["rotation"]["dry_run"] is True  # type: ignore[index]
        assert body["rotation"]["created_version"] is None  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 1
        status, body = await http_rotate_request(rig.engine, {"key_id": key, "code": "k"})
        assert status == 200 and body["rotation"]["dry_run"] is False  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 2

    async def test_hidden_subscription_refuses_before_creating(self, rig: Rig) -> None:
        """A subscription of CMK_SUBSCRIPTIONS the identity cannot see (a typo): its
        accounts would stay on the old version while the answer says success. Refused
        (500, kind configuration, the subscription named), nothing created."""
        estate = rig.estate
        estate.version(estate.kv)
        typo = "0b1f6471-1bf0-4dda-aec3-cb9272f0dead"
        settings = replace(
            rig.engine.settings, subscriptions=(*rig.engine.settings.subscriptions, typo)
        )
        status, body = await http_rotate(
            replace(rig.engine, settings=settings, subscriptions=rig.services.subscriptions),
            f"{estate.kv.url}/keys/cmk",
        )
        assert status == 500 and body["error"]["kind"] == "configuration"  # type: ignore[index]
        assert typo in body["error"]["message"]  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 1


class _Interleaved:
    """The ledger, with caller B stopped right after reading the rotation claim (its
    cool-down check) until caller A has taken the claim (``after="claimed"``; A then waits
    for B to finish) or has finished its whole rotation (``after="done"``)."""

    def __init__(self, ledger: Any, after: str) -> None:
        self._ledger = ledger
        self.after = after
        self.b_has_read = asyncio.Event()
        self.a_claimed = asyncio.Event()
        self.a_is_done = asyncio.Event()
        self.b_is_done = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def claim_record(self, name: str) -> Any:
        record = await self._ledger.claim_record(name)
        if _CALLER.get() == "B":
            self.b_has_read.set()
            await (self.a_claimed if self.after == "claimed" else self.a_is_done).wait()
        elif _CALLER.get() == "A":
            await self.b_has_read.wait()
        return record

    async def claim(self, *args: Any, **kwargs: Any) -> bool:
        won = bool(await self._ledger.claim(*args, **kwargs))
        if _CALLER.get() == "A" and self.after == "claimed":
            self.a_claimed.set()
            await self.b_is_done.wait()
        return won


_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")


class TestHttpRotateRaces:
    """Two calls at once whose cool-down checks both passed: the claim, taken over by an
    ETag-conditional write and never deleted, lets exactly one of them rotate."""

    @pytest.mark.parametrize(
        ("force", "after"),
        [(False, "done"), (False, "claimed"), (True, "claimed")],
        ids=["after-cool-down-B-late", "after-cool-down-overlapping", "force-overlapping"],
    )
    async def test_two_calls_create_one_version(self, rig: Rig, force: bool, after: str) -> None:
        estate = rig.estate
        estate.version(estate.kv)
        key = f"{estate.kv.url}/keys/cmk"
        assert (await http_rotate(rig.engine, key))[0] == 200  # an earlier rotation
        if not force:
            estate.world.clock.advance(rig.engine.settings.rotate_cooldown + timedelta(seconds=1))
        before = len(estate.kv.keys["cmk"].versions)
        ledger = _Interleaved(rig.engine.ledger, after)
        engine = replace(rig.engine, ledger=ledger)

        async def call(caller: str) -> tuple[int, Any]:
            _CALLER.set(caller)
            try:
                return await http_rotate(engine, key, force=force)
            finally:
                (ledger.a_is_done if caller == "A" else ledger.b_is_done).set()

        (a_status, _), (b_status, b_body) = await asyncio.gather(call("A"), call("B"))
        assert len(estate.kv.keys["cmk"].versions) - before == 1
        assert (a_status, b_status) == (200, 409)
        assert b_body["error"]["kind"] == "conflict"


class TestHttpRotateAfterAFailure:
    async def test_a_lost_answer_recording_the_version_keeps_the_cool_down(
        self, rig: Rig, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The version is created and recorded on the claim, but the Table's answer to
        that recording is lost (the SDK's retries run out): the call answers 503 naming
        the version, and its claim stays — a retry within the cool-down is answered 409,
        creating nothing."""
        estate = rig.estate
        estate.version(estate.kv)
        key = f"{estate.kv.url}/keys/cmk"
        ledger = rig.services.ledger
        complete = ledger.complete_claim
        lost = [True]

        async def answer_lost(*args: Any, **kwargs: Any) -> bool:
            done = await complete(*args, **kwargs)
            if lost and lost.pop():
                raise ServiceUnavailable("completing claim: answer lost (injected)")
            return done

        monkeypatch.setattr(ledger, "complete_claim", answer_lost)
        failed, answer = await http_rotate(rig.engine, key)
        assert failed == 503 and isinstance(answer, dict), answer
        assert answer["created_version"] == estate.kv.keys["cmk"].versions[-1].version
        assert len(estate.kv.keys["cmk"].versions) == 2

        status, body = await http_rotate(rig.engine, key)  # the caller retries at once

        assert status == 409, body
        assert len(estate.kv.keys["cmk"].versions) == 2

    async def test_a_failed_rotation_leaves_no_claim_behind(self, rig: Rig) -> None:
        """Key Vault answers the create 503: the call answers 503 saying nothing was
        created, and its claim is released, so the retry rotates at once instead of
        meeting "being rotated" for the cool-down."""
        estate = rig.estate
        estate.version(estate.kv)
        key = f"{estate.kv.url}/keys/cmk"
        estate.sandbox.faults.add(
            host=estate.kv.host, path=r"/keys/cmk/(create|rotate)", method="POST", status=503,
            count=1,
        )  # fmt: skip

        failed, answer = await http_rotate(rig.engine, key)  # a retry is due
        assert failed == 503 and isinstance(answer, dict), answer
        assert answer["created_version"] is None
        status, body = await http_rotate(rig.engine, key)
        assert status == 200, body
        assert len(estate.kv.keys["cmk"].versions) == 2

    async def test_a_failure_after_the_version_exists_keeps_it_for_the_cool_down(
        self, rig: Rig
    ) -> None:
        """The version is created, then moving its accounts fails (ARM answers 503): the
        call answers 503 naming it, and the caller's retry within the cool-down is
        answered 409 naming that version — not a second version. The next sweep moves
        the accounts."""
        estate = rig.estate
        bound = estate.version(estate.kv)
        account = estate.account("acct-h", estate.kv, bound.version)
        key = f"{estate.kv.url}/keys/cmk"
        rule = estate.sandbox.faults.add(host="management.azure.com", status=503)
        failed, answer = await http_rotate(rig.engine, key)
        estate.sandbox.faults.remove(rule)
        created = estate.kv.keys["cmk"].versions[-1].version
        assert created != bound.version
        assert failed == 503 and isinstance(answer, dict), answer
        assert answer["created_version"] == created

        status, body = await http_rotate(rig.engine, key)

        assert status == 409, body
        assert body["created_version"] == created
        assert len(estate.kv.keys["cmk"].versions) == 2
        await sweep(rig.engine)
        await rig.drain()
        assert account.encryption.key_version == created

    async def test_a_refusal_after_the_version_exists_still_names_it(self, rig: Rig) -> None:
        """ARM refuses the fan-out (403) after the version was created: the answer is
        500 `failed` naming that version — not 403 "may not rotate this key", which would
        hide a version that now exists."""
        estate = rig.estate
        bound = estate.version(estate.kv)
        estate.account("acct-403", estate.kv, bound.version)
        key = f"{estate.kv.url}/keys/cmk"
        rule = estate.sandbox.faults.add(host="management.azure.com", status=403)

        status, body = await http_rotate(rig.engine, key)

        estate.sandbox.faults.remove(rule)
        created = estate.kv.keys["cmk"].versions[-1].version
        assert created != bound.version
        assert status == 500 and isinstance(body, dict), body
        assert body["error"]["kind"] == "failed" and body["created_version"] == created
        assert created in body["error"]["message"]

    async def test_a_create_whose_answer_was_lost_is_adopted(self, rig: Rig) -> None:
        """Key Vault carried the create out but its answer was lost (the adapter raises
        ServiceUnavailable): the version that appeared is adopted — the call answers 200
        with it, and a retry is answered 409 — instead of a failure and a second create."""
        estate = rig.estate
        estate.version(estate.kv)
        key = f"{estate.kv.url}/keys/cmk"
        engine = replace(rig.engine, keys=_LostCreate(rig.engine.keys))

        status, body = await http_rotate(engine, key)

        newest = estate.kv.keys["cmk"].versions[-1].version
        assert status == 200, body
        assert body["rotation"]["created_version"] == newest
        assert (await http_rotate(engine, key))[0] == 409
        assert len(estate.kv.keys["cmk"].versions) == 2


class _LostCreate:
    """The Key Vault port, whose creates are carried out but answered with an error."""

    def __init__(self, keys: Any) -> None:
        self._keys = keys

    def __getattr__(self, name: str) -> Any:
        return getattr(self._keys, name)

    async def create_like(self, template: Any) -> Any:
        await self._keys.create_like(template)
        raise ServiceUnavailable("creating a version failed: connection lost after sending")

    async def rotate(self, key: Any) -> Any:
        await self._keys.rotate(key)
        raise ServiceUnavailable("rotating failed: connection lost after sending")


class TestHttpRotateDryRun:
    async def test_a_dry_run_says_what_it_would_do_and_creates_nothing(self, rig: Rig) -> None:
        """With CMK_DRY_RUN the endpoint creates no version and never says "rotated"."""
        estate = rig.estate
        version = estate.version(estate.kv)
        estate.account("acct-d", estate.kv, version.version)
        engine = replace(rig.engine, settings=replace(rig.engine.settings, dry_run=True))

        status, body = await http_rotate(engine, f"{estate.kv.url}/keys/cmk")

        assert status == 200, body
        assert body["rotation"]["outcome"] == "would_rotate"
        assert body["rotation"]["created_version"] is None
        assert len(estate.kv.keys["cmk"].versions) == 1


class TestOtherEndpointsParameters:
    @pytest.mark.parametrize("endpoint", ["status", "plan", "sweep"])
    def test_unknown_parameters_are_refused(self, endpoint: str) -> None:
        """GET /api/status, GET /api/plan and POST /api/sweep take no query parameters but
        the Functions key's ``code``: anything else is a 400 naming it (a sweep asked for a
        dry run is pointed at /api/plan)."""
        assert refuse_unknown_parameters(endpoint, {"code": "k"}) is None
        refused = refuse_unknown_parameters(endpoint, {"dry_run": "true", "code": "k"})
        assert refused is not None
        status, body = refused
        assert status == 400
        assert body["error"]["message"] == "unknown query parameter(s): dry_run"  # type: ignore[index]
        assert ("shows what a sweep would do" in body["error"]["fix"]) is (endpoint == "sweep")  # type: ignore[index]
