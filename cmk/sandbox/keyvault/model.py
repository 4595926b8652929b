"""Key Vault keys in the sandbox world: add versions, rotate, and fire the expiry events.

These helpers are how every part of the sandbox (scenario loader, CLI, tests, and the
REST front end in :mod:`cmk.sandbox.keyvault.service`) makes key versions, so a version looks
and announces itself the same whichever way it came to be. They validate what Key Vault
validates (key type per vault kind, RSA sizes, curves, operations) and raise
:class:`KeyParameterError` (a ``ValueError``) or :class:`KeyNotFoundError` (a ``LookupError``).

Events are emitted after ``world.lock`` is released, so listeners may read the world.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from cmk.durations import parse_iso_duration
from cmk.sandbox.world import (
    KeyEvent,
    KeyEventType,
    KeyState,
    KeyVersionState,
    VaultKind,
    VaultState,
    World,
    new_key_version_id,
)

RSA_SIZES = (2048, 3072, 4096)
OCT_SIZES = (128, 192, 256)
#: Curve name -> bytes per coordinate.
CURVE_BYTES = {"P-256": 32, "P-384": 48, "P-521": 66, "P-256K": 32}
KEY_OPERATIONS = (
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
    "import",
    "export",
)
#: Key type -> family ("RSA", "EC", "oct").
KEY_FAMILIES = {
    "RSA": "RSA",
    "RSA-HSM": "RSA",
    "EC": "EC",
    "EC-HSM": "EC",
    "oct": "oct",
    "oct-HSM": "oct",
}
_DEFAULT_OPS = {
    "RSA": ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"),
    "EC": ("sign", "verify"),
    "oct": ("encrypt", "decrypt", "wrapKey", "unwrapKey"),
}
_KEY_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
DEFAULT_NOTIFY_BEFORE_EXPIRY = timedelta(days=30)


class KeyParameterError(ValueError):
    """A key parameter Key Vault rejects (the REST API answers 400 ``BadParameter``)."""


class KeyNotFoundError(LookupError):
    """No key of that name (or no such version) in the vault (REST: 404 ``KeyNotFound``)."""


def valid_key_name(name: str) -> bool:
    """Key names are 1-127 letters, digits and dashes."""
    return bool(_KEY_NAME.fullmatch(name))


def check_key_shape(
    vault: VaultState, kty: str, size: int | None, curve: str | None
) -> tuple[int | None, str | None]:
    """Validate type, size and curve for ``vault``; return the normalized (size, curve)."""
    family = KEY_FAMILIES.get(kty)
    if family is None:
        raise KeyParameterError(
            f"Invalid key type (kty) '{kty}'. Supported: {', '.join(KEY_FAMILIES)}."
        )
    hsm_type = kty.endswith("-HSM")
    if vault.kind is VaultKind.MANAGED_HSM and not hsm_type:
        raise KeyParameterError(
            f"Key type '{kty}' is not supported by Managed HSM; use '{kty}-HSM'."
        )
    if vault.kind is VaultKind.VAULT and family == "oct":
        raise KeyParameterError(f"Key type '{kty}' is only supported by Managed HSM.")
    if family == "RSA":
        if curve is not None:
            raise KeyParameterError("The 'crv' parameter is not valid for RSA keys.")
        size = 2048 if size is None else size
        if size not in RSA_SIZES:
            raise KeyParameterError(
                f"Invalid RSA key size {size}. Supported: {', '.join(map(str, RSA_SIZES))}."
            )
        return size, None
    if family == "EC":
        curve = curve or "P-256"
        if curve not in CURVE_BYTES:
            raise KeyParameterError(
                f"Invalid curve name '{curve}'. Supported: {', '.join(CURVE_BYTES)}."
            )
        return None, curve
    size = 256 if size is None else size
    if size not in OCT_SIZES:
        raise KeyParameterError(
            f"Invalid symmetric key size {size}. Supported: {', '.join(map(str, OCT_SIZES))}."
        )
    return size, None


def check_key_ops(key_ops: Iterable[str]) -> list[str]:
    """Validate operation names (case-sensitive, as Key Vault); keep order, drop duplicates."""
    result: list[str] = []
    for op in key_ops:
        if op not in KEY_OPERATIONS:
            raise KeyParameterError(
                f"Invalid key operation '{op}'. Supported: {', '.join(KEY_OPERATIONS)}."
            )
        if op not in result:
            result.append(op)
    return result


def default_key_ops(kty: str) -> list[str]:
    """The operations Key Vault grants a new key of this type when none are asked for."""
    return list(_DEFAULT_OPS[KEY_FAMILIES[kty]])


def whole_seconds(when: datetime | None) -> datetime | None:
    """``when`` in UTC, truncated to seconds (Key Vault keeps unix seconds); naive means UTC."""
    if when is None:
        return None
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.replace(microsecond=0)


def _random_modulus(size: int) -> bytes:
    """Random bytes standing in for an RSA modulus: top bit set (full length) and odd."""
    modulus = bytearray(secrets.token_bytes(size // 8))
    modulus[0] |= 0x80
    modulus[-1] |= 0x01
    return bytes(modulus)


def key_event(
    world: World, kind: KeyEventType, vault: VaultState, key: KeyState, version: KeyVersionState
) -> KeyEvent:
    """The event Key Vault publishes about ``version``, stamped with the sandbox clock."""
    return KeyEvent(
        event_type=kind,
        vault=vault.name,
        vault_resource_id=vault.resource_id,
        vault_host=vault.host,
        key_name=key.name,
        version=version.version,
        not_before=version.not_before,
        expires=version.expires,
        time=world.clock.now(),
    )


def find_key(vault: VaultState, key_name: str) -> KeyState:
    """The key named ``key_name`` (case-insensitive) with at least one version."""
    key = vault.keys.get(key_name.lower())
    if key is None or not key.versions:
        raise KeyNotFoundError(f"A key with (name/id) {key_name} was not found in {vault.host}.")
    return key


def add_key_version(
    world: World,
    vault: VaultState,
    key_name: str,
    *,
    kty: str = "RSA",
    size: int | None = 2048,
    curve: str | None = None,
    key_ops: list[str] | None = None,
    enabled: bool = True,
    not_before: datetime | None = None,
    expires: datetime | None = None,
    created: datetime | None = None,
    tags: dict[str, str] | None = None,
    emit: bool = True,
) -> KeyVersionState:
    """Add a new version of ``key_name`` (creating the key if missing) and make it current.

    ``size`` is ignored for EC keys (``curve`` defaults to P-256); oct-HSM keys need a
    size of 128, 192 or 256. ``created`` defaults to the sandbox clock. The version's
    public key is random bytes of the right length, not a usable key. Emits
    ``KeyNewVersionCreated`` unless ``emit`` is False.
    """
    version = _new_version(world, vault, key_name, kty=kty, size=size, curve=curve)
    version.key_ops = check_key_ops(key_ops) if key_ops is not None else default_key_ops(kty)
    version.enabled = enabled
    version.not_before = whole_seconds(not_before)
    version.expires = whole_seconds(expires)
    version.tags = dict(tags or {})
    if created is not None:
        version.created = version.updated = whole_seconds(created) or version.created
    return _store(world, vault, key_name, version, emit=emit)


def rotate_key(world: World, vault: VaultState, key_name: str) -> KeyVersionState:
    """Key Vault's rotate: a new version with the latest one's type, size, curve, operations
    and tags; it expires after the rotation policy's ``expiryTime`` if one is set. Works
    without a policy. Raises :class:`KeyNotFoundError`. Emits ``KeyNewVersionCreated``."""
    with world.lock:
        key = find_key(vault, key_name)
        latest = key.latest()
        assert latest is not None
        version = _new_version(
            world, vault, key.name, kty=latest.kty, size=latest.size, curve=latest.curve
        )
        version.key_ops = list(latest.key_ops)
        version.tags = dict(latest.tags)
        policy = key.rotation_policy
        if policy is not None and policy.expiry_time:
            version.expires = whole_seconds(
                world.clock.now() + parse_iso_duration(policy.expiry_time)
            )
        key.versions.append(version)
    world.emit(key_event(world, KeyEventType.NEW_VERSION, vault, key, version))
    return version


def _new_version(
    world: World, vault: VaultState, key_name: str, *, kty: str, size: int | None, curve: str | None
) -> KeyVersionState:
    """A validated, not yet stored version created now, with the type's default operations."""
    if not valid_key_name(key_name):
        raise KeyParameterError(
            f"Invalid key name '{key_name}': use 1-127 letters, digits and dashes."
        )
    if KEY_FAMILIES.get(kty) == "EC":
        size = None
    size, curve = check_key_shape(vault, kty, size, curve)
    now = whole_seconds(world.clock.now())
    assert now is not None
    rsa = KEY_FAMILIES[kty] == "RSA"
    return KeyVersionState(
        version=new_key_version_id(),
        kty=kty,
        size=size,
        curve=curve,
        key_ops=default_key_ops(kty),
        enabled=True,
        created=now,
        updated=now,
        modulus=_random_modulus(size) if rsa and size else b"",
    )


def _store(
    world: World, vault: VaultState, key_name: str, version: KeyVersionState, *, emit: bool
) -> KeyVersionState:
    """Append ``version`` to its key (creating the key), then announce it."""
    with world.lock:
        key = vault.keys.get(key_name.lower())
        if key is None:
            key = vault.keys[key_name.lower()] = KeyState(name=key_name)
        key.versions.append(version)
    if emit:
        world.emit(key_event(world, KeyEventType.NEW_VERSION, vault, key, version))
    return version


def notify_before_expiry(key: KeyState) -> timedelta:
    """How long before expiry ``KeyNearExpiry`` fires: the policy's Notify action, or 30 days."""
    if key.rotation_policy is None:
        return DEFAULT_NOTIFY_BEFORE_EXPIRY
    return key.rotation_policy.notify_before_expiry()


def emit_due_expiry_events(world: World, *, latest_only: bool = True) -> int:
    """Emit ``KeyNearExpiry`` (at expiry minus the notify time) and ``KeyExpired`` (at
    expiry) for enabled versions with an expiry, each at most once per version, as of
    ``world.clock``. By default only each key's current version counts, as Azure documents
    for both events; ``latest_only=False`` lets older versions fire too. Returns how many
    events were emitted."""
    now = world.clock.now()
    due: list[KeyEvent] = []
    with world.lock:
        for vault in list(world.vaults.values()):
            for key in list(vault.keys.values()):
                notify = notify_before_expiry(key)
                versions = key.versions[-1:] if latest_only else key.versions
                for version in versions:
                    if not version.enabled or version.expires is None:
                        continue
                    if not version.near_expiry_emitted and now >= version.expires - notify:
                        version.near_expiry_emitted = True
                        due.append(key_event(world, KeyEventType.NEAR_EXPIRY, vault, key, version))
                    if not version.expired_emitted and now >= version.expires:
                        version.expired_emitted = True
                        due.append(key_event(world, KeyEventType.EXPIRED, vault, key, version))
    for event in due:
        world.emit(event)
    return len(due)
