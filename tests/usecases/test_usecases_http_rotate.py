"""POST /api/rotate (cmk.entrypoints.http_rotate): a cool-down per key, strict key ids."""

from __future__ import annotations

from datetime import timedelta

from usecase_rig import Rig

from cmk.entrypoints import http_rotate


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
        assert status == 400 and "versionless" in body["error"]["message"]  # type: ignore[index]
        assert body["error"]["exit_code"] == 2  # type: ignore[index]
        assert len(estate.kv.keys["cmk"].versions) == 1
