"""Tests for cmk.sandbox.keyvault.model: world helpers that add, rotate and expire versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cmk.sandbox.keyvault import service as keyvault
from cmk.sandbox.keyvault.model import (
    KeyNotFoundError,
    KeyParameterError,
    add_key_version,
    emit_due_expiry_events,
    rotate_key,
)
from cmk.sandbox.world import KeyEvent, KeyEventType, RotationPolicy, VaultKind, VaultState, World

SUB = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
def world() -> World:
    world = World()
    world.clock.set(datetime(2030, 1, 1, tzinfo=UTC))
    return world


@pytest.fixture
def events(world: World) -> list[KeyEvent]:
    seen: list[KeyEvent] = []
    world.add_key_event_listener(seen.append)
    return seen


def _vault(world: World, name: str, kind: VaultKind = VaultKind.VAULT) -> VaultState:
    suffix = "vault.azure.net" if kind is VaultKind.VAULT else "managedhsm.azure.net"
    vault = VaultState(name, kind, SUB, "rg-keys", "westeurope", world.tenant_id, dns_suffix=suffix)
    world.vaults[vault.host] = vault
    return vault


@pytest.fixture
def vault(world: World) -> VaultState:
    return _vault(world, "kv-model")


class TestAddKeyVersion:
    """add_key_version: seed a version the way Key Vault would create it."""

    def test_creates_the_key_and_makes_the_version_current(
        self, world: World, vault: VaultState
    ) -> None:
        """The first call creates the key; later calls append versions, the last is current."""
        first = add_key_version(world, vault, "CmkKey")
        second = add_key_version(world, vault, "cmkkey")
        key = vault.keys["cmkkey"]
        assert key.name == "CmkKey"
        assert [v.version for v in key.versions] == [first.version, second.version]
        assert key.latest() is second

    def test_rsa_modulus_has_the_size_and_top_bit(self, world: World, vault: VaultState) -> None:
        """The stand-in modulus is size/8 bytes with the top bit set, exponent 65537."""
        version = add_key_version(world, vault, "k", size=3072)
        assert len(version.modulus) == 384
        assert version.modulus[0] & 0x80
        assert version.exponent == b"\x01\x00\x01"

    def test_defaults_match_a_new_rsa_key(self, world: World, vault: VaultState) -> None:
        """Without arguments: RSA 2048, enabled, six operations, times from the sandbox clock."""
        version = add_key_version(world, vault, "k")
        assert (version.kty, version.size, version.enabled) == ("RSA", 2048, True)
        assert version.key_ops == ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
        assert version.created == version.updated == datetime(2030, 1, 1, tzinfo=UTC)
        assert len(version.version) == 32

    def test_times_are_whole_utc_seconds(self, world: World, vault: VaultState) -> None:
        """Key Vault keeps unix seconds, so given times are truncated (naive means UTC)."""
        version = add_key_version(
            world,
            vault,
            "k",
            expires=datetime(2031, 5, 1, 12, 0, 0, 999_999),
            created=datetime(2029, 1, 1, 0, 0, 1, 500_000, tzinfo=UTC),
        )
        assert version.expires == datetime(2031, 5, 1, 12, 0, 0, tzinfo=UTC)
        assert version.created == datetime(2029, 1, 1, 0, 0, 1, tzinfo=UTC)

    def test_emits_new_version_event(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """A new version is announced as KeyNewVersionCreated with its id, vault and times."""
        exp = datetime(2031, 1, 1, tzinfo=UTC)
        before = world.clock.now()
        version = add_key_version(world, vault, "k", expires=exp)
        [event] = events
        assert event.event_type is KeyEventType.NEW_VERSION
        assert (event.vault, event.vault_host, event.key_name) == ("kv-model", vault.host, "k")
        assert event.vault_resource_id == vault.resource_id
        assert (event.version, event.expires, event.not_before) == (version.version, exp, None)
        assert before <= event.time <= world.clock.now()

    def test_emit_false_stays_silent(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """Seeding with emit=False adds the version without an event."""
        add_key_version(world, vault, "k", emit=False)
        assert events == []
        assert len(vault.keys["k"].versions) == 1

    def test_ec_keys_ignore_size_and_default_the_curve(
        self, world: World, vault: VaultState
    ) -> None:
        """EC keys get P-256 and sign/verify by default; the RSA default size does not apply."""
        version = add_key_version(world, vault, "ec", kty="EC")
        assert (version.size, version.curve, version.key_ops) == (None, "P-256", ["sign", "verify"])

    @pytest.mark.parametrize(
        ("kty", "size", "curve"),
        [("RSA", 1024, None), ("RSA", 2049, None), ("EC", None, "P-999"), ("DSA", 2048, None)],
    )
    def test_rejects_what_key_vault_rejects(
        self, world: World, vault: VaultState, kty: str, size: int | None, curve: str | None
    ) -> None:
        """Unsupported sizes, curves and key types raise KeyParameterError."""
        with pytest.raises(KeyParameterError):
            add_key_version(world, vault, "k", kty=kty, size=size, curve=curve)
        assert "k" not in vault.keys

    def test_rejects_bad_names_and_operations(self, world: World, vault: VaultState) -> None:
        """Names outside [0-9a-zA-Z-]{1,127} and unknown operations are refused."""
        with pytest.raises(KeyParameterError, match="name"):
            add_key_version(world, vault, "bad_name")
        with pytest.raises(KeyParameterError, match="operation"):
            add_key_version(world, vault, "k", key_ops=["wrapkey"])

    def test_managed_hsm_needs_hsm_key_types(self, world: World) -> None:
        """A Managed HSM takes RSA-HSM but not software RSA."""
        hsm = _vault(world, "hsm-model", VaultKind.MANAGED_HSM)
        with pytest.raises(KeyParameterError, match="Managed HSM"):
            add_key_version(world, hsm, "k", kty="RSA")
        assert add_key_version(world, hsm, "k", kty="RSA-HSM").kty == "RSA-HSM"

    def test_is_reexported_by_the_service_module(self) -> None:
        """cmk.sandbox.keyvault.service exposes the helpers the sandbox core calls."""
        assert keyvault.add_key_version is add_key_version
        assert keyvault.rotate_key is rotate_key
        assert keyvault.emit_due_expiry_events is emit_due_expiry_events


class TestRotateKey:
    """rotate_key: Key Vault's rotate operation on the world."""

    def test_copies_the_latest_versions_parameters(self, world: World, vault: VaultState) -> None:
        """The new version keeps type, size, operations and tags, and becomes current."""
        old = add_key_version(
            world, vault, "k", size=4096, key_ops=["wrapKey", "unwrapKey"], tags={"env": "prod"}
        )
        new = rotate_key(world, vault, "K")
        assert new.version != old.version
        assert (new.kty, new.size, new.key_ops, new.tags) == (
            "RSA",
            4096,
            ["wrapKey", "unwrapKey"],
            {"env": "prod"},
        )
        assert vault.keys["k"].latest() is new

    def test_without_policy_the_new_version_does_not_expire(
        self, world: World, vault: VaultState
    ) -> None:
        """Rotating works without a policy; the old expiry is not carried over."""
        add_key_version(world, vault, "k", expires=datetime(2030, 6, 1, tzinfo=UTC))
        assert rotate_key(world, vault, "k").expires is None

    def test_policy_expiry_time_sets_expiry(self, world: World, vault: VaultState) -> None:
        """With a policy expiryTime of P90D the new version expires 90 days from now."""
        add_key_version(world, vault, "k")
        vault.keys["k"].rotation_policy = RotationPolicy(expiry_time="P90D")
        version = rotate_key(world, vault, "k")
        assert version.expires == datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=90)

    def test_emits_new_version_event(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """A rotation is announced like any new version."""
        add_key_version(world, vault, "k", emit=False)
        version = rotate_key(world, vault, "k")
        assert [(e.event_type, e.version) for e in events] == [
            (KeyEventType.NEW_VERSION, version.version)
        ]

    def test_missing_key_raises(self, world: World, vault: VaultState) -> None:
        """Rotating a key that does not exist raises KeyNotFoundError."""
        with pytest.raises(KeyNotFoundError):
            rotate_key(world, vault, "absent")


class TestEmitDueExpiryEvents:
    """emit_due_expiry_events: KeyNearExpiry / KeyExpired on the sandbox clock."""

    EXP = datetime(2030, 3, 1, tzinfo=UTC)

    def _kinds(self, events: list[KeyEvent]) -> list[KeyEventType]:
        return [e.event_type for e in events]

    def test_near_expiry_fires_once_thirty_days_before(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """Nothing a second before exp-30d; one KeyNearExpiry at exp-30d; none again after."""
        add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        world.clock.set(self.EXP - timedelta(days=30, seconds=1))
        assert emit_due_expiry_events(world) == 0
        world.clock.set(self.EXP - timedelta(days=30))
        assert emit_due_expiry_events(world) == 1
        world.clock.advance(timedelta(days=1))
        assert emit_due_expiry_events(world) == 0
        assert self._kinds(events) == [KeyEventType.NEAR_EXPIRY]
        assert events[0].expires == self.EXP

    def test_policy_notify_time_is_honoured(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """A Notify action with timeBeforeExpiry P10D moves KeyNearExpiry to exp-10d."""
        add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        vault.keys["k"].rotation_policy = RotationPolicy(
            lifetime_actions=[
                {"trigger": {"timeBeforeExpiry": "P10D"}, "action": {"type": "Notify"}}
            ]
        )
        world.clock.set(self.EXP - timedelta(days=11))
        assert emit_due_expiry_events(world) == 0
        world.clock.set(self.EXP - timedelta(days=10))
        assert emit_due_expiry_events(world) == 1

    def test_expired_fires_once_at_expiry(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """KeyExpired fires at exp, once, after the near-expiry event."""
        add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        world.clock.set(self.EXP - timedelta(days=1))
        emit_due_expiry_events(world)
        world.clock.set(self.EXP)
        assert emit_due_expiry_events(world) == 1
        assert emit_due_expiry_events(world) == 0
        assert self._kinds(events) == [KeyEventType.NEAR_EXPIRY, KeyEventType.EXPIRED]

    def test_jumping_past_expiry_emits_both_in_order(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """A clock jump past exp emits near-expiry then expired in one call."""
        version = add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        world.clock.set(self.EXP + timedelta(days=5))
        assert emit_due_expiry_events(world) == 2
        assert self._kinds(events) == [KeyEventType.NEAR_EXPIRY, KeyEventType.EXPIRED]
        assert {e.version for e in events} == {version.version}

    def test_disabled_and_unexpiring_versions_are_skipped(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """Disabled versions and versions without exp never fire."""
        add_key_version(world, vault, "k", expires=self.EXP, enabled=False, emit=False)
        add_key_version(world, vault, "k", emit=False)
        world.clock.set(self.EXP + timedelta(days=1))
        assert emit_due_expiry_events(world) == 0
        assert events == []

    def test_only_the_current_version_counts_by_default(
        self, world: World, vault: VaultState, events: list[KeyEvent]
    ) -> None:
        """As Azure documents, only a key's current version fires; latest_only=False adds older."""
        add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        newest = add_key_version(world, vault, "k", expires=self.EXP, emit=False)
        world.clock.set(self.EXP - timedelta(days=1))
        assert emit_due_expiry_events(world) == 1
        assert events[0].version == newest.version
        assert emit_due_expiry_events(world, latest_only=False) == 1
