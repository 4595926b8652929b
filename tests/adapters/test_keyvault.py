"""KeyVaultKeys against the sandbox's Key Vault and Managed HSM, through the real SDK."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from adapter_world import SUB2, Cloud

from cmk.adapters import keyvault
from cmk.errors import AccessDenied, InvalidInput, NotFound, ServiceUnavailable, ThrottledError
from cmk.keyid import KeyId
from cmk.ports import KeyRotation
from cmk.sandbox.world import RotationPolicy, VaultState
from cmk.wiring import Services


def _key(vault: VaultState, name: str = "cmk") -> KeyId:
    return KeyId(vault.url, name)


class TestKeyVaultKeys:
    async def test_latest_maps_every_property(self, cloud: Cloud, services: Services) -> None:
        """latest() returns the newest version as a KeyVersion with size, ops and recovery level."""
        expires = datetime(2031, 5, 1, 12, 0, tzinfo=UTC)
        cloud.add_version(cloud.vault)
        newest = cloud.add_version(cloud.vault, key_ops=["wrapKey", "unwrapKey"], expires=expires)
        found = await services.keys.latest(_key(cloud.vault))
        assert found.version == newest.version
        assert found.key_id == _key(cloud.vault).with_version(newest.version)
        assert (found.kty, found.size, found.enabled) == ("RSA", 2048, True)
        assert found.key_ops == frozenset({"wrapKey", "unwrapKey"})
        assert found.expires == expires
        assert found.created.tzinfo is not None
        # Plain text, not the SDK's str-enum (whose str() is DeletionRecoveryLevel.RECOVERABLE)
        assert found.recovery_level == "Recoverable" and type(found.recovery_level) is str

    async def test_get_version_reads_an_older_version(
        self, cloud: Cloud, services: Services
    ) -> None:
        """get_version() returns the named version, not the latest."""
        old = cloud.add_version(cloud.vault, enabled=False)
        cloud.add_version(cloud.vault)
        found = await services.keys.get_version(_key(cloud.vault).with_version(old.version))
        assert found.version == old.version
        assert found.enabled is False

    async def test_get_version_needs_a_version(self, cloud: Cloud, services: Services) -> None:
        """get_version() of an unversioned id is refused before any request."""
        with pytest.raises(InvalidInput):
            await services.keys.get_version(_key(cloud.vault))

    async def test_missing_key_is_not_found(self, cloud: Cloud, services: Services) -> None:
        """A key that does not exist raises NotFound, not an SDK error."""
        with pytest.raises(NotFound):
            await services.keys.latest(_key(cloud.vault, "nope"))

    async def test_list_versions_reads_full_properties(
        self, cloud: Cloud, services: Services
    ) -> None:
        """list_versions() returns every version with type and size filled in."""
        made = {
            cloud.add_version(cloud.vault, size=size).version: size for size in (2048, 3072, 4096)
        }
        found = await services.keys.list_versions(_key(cloud.vault))
        assert {version.version: version.size for version in found} == made
        assert all(version.kty == "RSA" for version in found)

    async def test_managed_hsm_keys_are_rsa_hsm(self, cloud: Cloud, services: Services) -> None:
        """A Managed HSM key reads as RSA-HSM (its token audience found by challenge)."""
        made = cloud.add_version(cloud.hsm, kty="RSA-HSM")
        found = await services.keys.latest(_key(cloud.hsm))
        assert found.version == made.version
        assert found.kty == "RSA-HSM"
        assert found.key_id.is_managed_hsm

    async def test_rotate_creates_a_newer_version(self, cloud: Cloud, services: Services) -> None:
        """rotate() creates a new version that becomes the latest."""
        first = cloud.add_version(cloud.vault)
        rotated = await services.keys.rotate(_key(cloud.vault))
        assert rotated.version != first.version
        assert (await services.keys.latest(_key(cloud.vault))).version == rotated.version
        assert len(cloud.vault.keys["cmk"].versions) == 2

    @pytest.mark.parametrize("operation", ["rotate", "create"])
    async def test_version_creation_is_sent_once(
        self, cloud: Cloud, services: Services, operation: str
    ) -> None:
        """A create or rotate answered 503 is not re-sent by the SDK (a re-sent create whose
        first answer was lost makes a second version): the caller gets the error."""
        cloud.add_version(cloud.vault)
        template = await services.keys.latest(_key(cloud.vault))
        rule = cloud.sandbox.faults.add(
            host=cloud.vault.host, path=f"/keys/cmk/{operation}", method="POST", status=503
        )
        with pytest.raises(ServiceUnavailable):
            if operation == "rotate":
                await services.keys.rotate(_key(cloud.vault))
            else:
                await services.keys.create_like(template)
        assert rule.hits == 1
        assert len(cloud.vault.keys["cmk"].versions) == 1

    @pytest.mark.parametrize("operation", ["rotate", "create"])
    async def test_version_creation_gives_up_at_its_timeout(
        self,
        cloud: Cloud,
        services: Services,
        operation: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A creating request whose answer never comes is given up at its own read timeout
        (CREATE_TIMEOUT; shortened here), not the transport's default of minutes: a
        near-expiry claim checked right before it must outlast it."""
        monkeypatch.setitem(keyvault._CREATE_TIMEOUTS, "read_timeout", 0.5)
        cloud.add_version(cloud.vault)
        template = await services.keys.latest(_key(cloud.vault))
        release = threading.Event()
        rule = cloud.sandbox.faults.add(
            host=cloud.vault.host, path=f"/keys/cmk/{operation}", method="POST", hold=release
        )
        try:
            with pytest.raises(ServiceUnavailable):
                if operation == "rotate":
                    await services.keys.rotate(_key(cloud.vault))
                else:
                    await services.keys.create_like(template)
        finally:
            release.set()
        assert rule.hits == 1

    @pytest.mark.parametrize("vault_name", ["vault", "hsm"])
    async def test_create_like_copies_type_size_ops_and_lifetime(
        self, cloud: Cloud, services: Services, vault_name: str
    ) -> None:
        """create_like() copies the template's type, size, operations and validity period."""
        vault = getattr(cloud, vault_name)
        kty = "RSA-HSM" if vault_name == "hsm" else "RSA"
        now = cloud.world.clock.now()
        cloud.add_version(
            vault, kty=kty, size=3072, key_ops=["wrapKey", "unwrapKey"],
            created=now - timedelta(days=300), expires=now + timedelta(days=65),
        )  # fmt: skip
        template = await services.keys.latest(_key(vault))
        created = await services.keys.create_like(template)
        assert created.version != template.version
        assert (created.kty, created.size) == (kty, 3072)
        assert created.key_ops == frozenset({"wrapKey", "unwrapKey"})
        assert created.expires is not None
        lifetime = created.expires - datetime.now(UTC)
        assert timedelta(days=364) < lifetime <= timedelta(days=365, seconds=5)

    async def test_create_like_refuses_non_rsa(self, cloud: Cloud, services: Services) -> None:
        """create_like() of an EC template raises InvalidInput and creates nothing."""
        cloud.add_version(cloud.vault, kty="EC")
        template = await services.keys.latest(_key(cloud.vault))
        with pytest.raises(InvalidInput):
            await services.keys.create_like(template)
        assert len(cloud.vault.keys["cmk"].versions) == 1

    async def test_rotation_policy_with_rotate_action(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A policy with a Rotate lifetime action counts as a rotation policy."""
        cloud.add_version(cloud.vault)
        cloud.vault.keys["cmk"].rotation_policy = RotationPolicy(
            expiry_time="P90D",
            lifetime_actions=[
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Rotate"}}
            ],
        )
        assert await services.keys.has_rotation_policy(_key(cloud.vault)) is True

    async def test_rotation_policy_gives_the_expiry_time(
        self, cloud: Cloud, services: Services
    ) -> None:
        """A rotation policy's expiryTime is what Key Vault's rotate gives a new version;
        none without an expiryTime, and no policy without a policy."""
        cloud.add_version(cloud.vault)
        assert await services.keys.rotation_policy(_key(cloud.vault)) is None
        rotate = [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Rotate"}}]
        policy = RotationPolicy(expiry_time="P90D", lifetime_actions=rotate)
        cloud.vault.keys["cmk"].rotation_policy = policy
        assert await services.keys.rotation_policy(_key(cloud.vault)) == KeyRotation(
            expiry=timedelta(days=90)
        )
        policy.expiry_time = None
        assert await services.keys.rotation_policy(_key(cloud.vault)) == KeyRotation(expiry=None)

    async def test_no_rotation_policy(self, cloud: Cloud, services: Services) -> None:
        """A key without a policy (or with Notify only) has no rotation policy."""
        cloud.add_version(cloud.vault)
        assert await services.keys.has_rotation_policy(_key(cloud.vault)) is False
        cloud.vault.keys["cmk"].rotation_policy = RotationPolicy(
            lifetime_actions=[
                {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}
            ],
        )
        assert await services.keys.has_rotation_policy(_key(cloud.vault)) is False

    async def test_forbidden_is_access_denied(self, cloud: Cloud, services: Services) -> None:
        """Without a role on the vault, reads raise AccessDenied."""
        foreign = cloud.add_vault("kvforeign", subscription=SUB2, grant=False)
        cloud.add_version(foreign)
        with pytest.raises(AccessDenied):
            await services.keys.latest(_key(foreign))

    async def test_throttling_is_retried(self, cloud: Cloud, services: Services) -> None:
        """Two 429s are retried by the SDK and the read succeeds."""
        cloud.add_version(cloud.vault)
        rule = cloud.sandbox.faults.add(
            host=cloud.vault.host,
            path="/keys/cmk",
            method="GET",
            status=429,
            retry_after=1,
            count=2,
        )
        assert (await services.keys.latest(_key(cloud.vault))).kty == "RSA"
        assert rule.hits == 2

    async def test_persistent_throttling_is_throttled_error(
        self, cloud: Cloud, services: Services
    ) -> None:
        """429s beyond the retry budget raise ThrottledError with the Retry-After hint."""
        cloud.add_version(cloud.vault)
        cloud.sandbox.faults.add(
            host=cloud.vault.host, path="/keys/cmk", method="GET", status=429, retry_after=7
        )
        with pytest.raises(ThrottledError) as caught:
            await services.keys.latest(_key(cloud.vault))
        assert caught.value.retry_after == 7


def _reads(cloud: Cloud, version: str) -> int:
    """GETs of one version that Key Vault answered (not the auth challenge's 401)."""
    records = cloud.sandbox.counters.matching(path=version, method="GET")
    return sum(1 for record in records if record.status == 200)


class TestVersionCacheOnKeyVault:
    """get_version reads Key Vault once per version and process, until forgotten."""

    async def test_one_read_per_version_until_forgotten(
        self, cloud: Cloud, services: Services
    ) -> None:
        """Fifty concurrent get_version calls make one GET; forget() makes the next one read
        again and see a version disabled meanwhile."""
        state = cloud.add_version(cloud.vault)
        key = _key(cloud.vault).with_version(state.version)
        cloud.sandbox.counters.reset()

        found = await asyncio.gather(*(services.keys.get_version(key) for _ in range(50)))

        assert _reads(cloud, state.version) == 1 and all(v.enabled for v in found)
        state.enabled = False
        assert (await services.keys.get_version(key)).enabled is True  # cached
        services.keys.forget(key.versionless())
        assert (await services.keys.get_version(key)).enabled is False
        assert _reads(cloud, state.version) == 2
