"""Key Vault and Managed HSM keys: the :class:`~cmk.ports.KeyStore` over ``KeyClient`` (aio).

One ``azure.keyvault.keys.aio.KeyClient`` per vault URL, created on first use and
closed by :meth:`KeyVaultKeys.close`. The client's challenge authentication finds the
token audience (Key Vault or Managed HSM, any cloud) from the vault's 401 answer.

Every version comes back as our :class:`~cmk.policy.KeyVersion`; its ``key_id`` is built
from the id we asked for plus the version Key Vault returned, so a response can never
make us act on another vault or key. ``size`` is the bit length of the RSA modulus.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.keyvault.keys import KeyVaultKey
from azure.keyvault.keys.aio import KeyClient

from cmk.adapters._errors import azure_errors
from cmk.adapters._sdk import text_of
from cmk.adapters.http_transport import transport_options
from cmk.adapters.version_cache import VersionCache
from cmk.durations import parse_iso_duration
from cmk.errors import InvalidInput, NotFound, ServiceUnavailable
from cmk.keyid import KeyId
from cmk.policy import KeyVersion
from cmk.ports import KeyRotation

__all__ = ["CREATE_TIMEOUT", "KeyVaultKeys", "key_version"]

_RSA_TYPES = frozenset({"RSA", "RSA-HSM"})
#: The longest a creating call (create, rotate; sent once) may take, all included: its
#: token and Key Vault's challenge, connecting, waiting for the answer. A near-expiry
#: notice's claim is checked right before it, and must outlast it by far
#: (Engine.claim_lease, 10 minutes), so a run that lost its claim cannot be creating
#: while the claim's next holder does.
_CREATE_CONNECT_SECONDS, _CREATE_READ_SECONDS = 10, 60
CREATE_TIMEOUT = timedelta(seconds=_CREATE_CONNECT_SECONDS + _CREATE_READ_SECONDS)
_CREATE_TIMEOUTS: dict[str, Any] = {
    "connection_timeout": _CREATE_CONNECT_SECONDS,
    "read_timeout": _CREATE_READ_SECONDS,
}


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def key_version(requested: KeyId, key: KeyVaultKey) -> KeyVersion:
    """Our :class:`KeyVersion` for the SDK's ``key``, read for the key ``requested``."""
    properties = key.properties
    version = properties.version
    if not version:
        raise ServiceUnavailable(f"Key Vault returned {requested} without a version")
    created = _aware(properties.created_on)
    if created is None:
        raise ServiceUnavailable(f"Key Vault returned {requested}/{version} without 'created'")
    material = key.key
    modulus = getattr(material, "n", None)
    size = int.from_bytes(modulus, "big").bit_length() if modulus else None
    operations = key.key_operations or getattr(material, "key_ops", None) or []
    return KeyVersion(
        key_id=requested.with_version(version),
        kty=text_of(key.key_type) if key.key_type is not None else "",
        size=size,
        key_ops=frozenset(text_of(operation) for operation in operations),
        enabled=properties.enabled is True,
        not_before=_aware(properties.not_before),
        expires=_aware(properties.expires_on),
        created=created,
        recovery_level=(
            text_of(properties.recovery_level) if properties.recovery_level is not None else None
        ),
    )


class KeyVaultKeys:
    """The :class:`~cmk.ports.KeyStore` over Key Vault and Managed HSM.

    ``client_options`` go to every ``KeyClient`` (retry settings, transport).
    ``clock`` is the time new versions' expiry is computed from in :meth:`create_like`.
    ``max_concurrency`` bounds the parallel GETs of :meth:`list_versions`.
    ``cache_seconds`` keeps what :meth:`get_version` read for that long, shared by every
    caller of this adapter (:mod:`cmk.adapters.version_cache`; 0 turns it off).
    """

    def __init__(
        self,
        credential: AsyncTokenCredential,
        *,
        client_options: Mapping[str, Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_concurrency: int = 8,
        cache_seconds: float = 30.0,
    ) -> None:
        self.cache = VersionCache(cache_seconds)
        self._credential = credential
        self._options = dict(client_options or {})
        self._clock = clock
        self._max_concurrency = max(1, max_concurrency)
        self._clients: dict[str, KeyClient] = {}

    def client(self, vault_url: str) -> KeyClient:
        """The cached ``KeyClient`` of one vault (normalized URL)."""
        client = self._clients.get(vault_url)
        if client is None:
            client = KeyClient(vault_url, self._credential, **self._options, **transport_options())
            self._clients[vault_url] = client
        return client

    async def close(self) -> None:
        """Close every ``KeyClient`` this adapter created."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def latest(self, key: KeyId) -> KeyVersion:
        """The newest version of ``key`` (one GET). NotFound if the key does not exist."""
        base = key.versionless()
        with azure_errors(f"reading the latest version of {base}"):
            found = await self.client(base.vault_url).get_key(base.name)
        version = key_version(base, found)
        self.cache.put(version)
        return version

    async def get_version(self, key: KeyId) -> KeyVersion:
        """One named version (``key.version`` must be set), from the cache while fresh."""
        if key.version is None:
            raise InvalidInput(f"get_version needs a versioned key id, got {key}")
        return await self.cache.get(key, lambda: self._read(key))

    def forget(self, key: KeyId) -> None:
        """Drop what is cached about ``key`` (every version of it when versionless)."""
        self.cache.forget(key)

    async def _read(self, key: KeyId) -> KeyVersion:
        assert key.version is not None
        with azure_errors(f"reading {key}"):
            found = await self.client(key.vault_url).get_key(key.name, key.version)
        version = key_version(key.versionless(), found)
        self.cache.put(version)
        return version

    async def list_versions(self, key: KeyId) -> list[KeyVersion]:
        """Every version of ``key`` with full properties, in no particular order."""
        base = key.versionless()
        client = self.client(base.vault_url)
        with azure_errors(f"listing the versions of {base}"):
            versions = [
                properties.version
                async for properties in client.list_properties_of_key_versions(base.name)
                if properties.version
            ]
        gate = asyncio.Semaphore(self._max_concurrency)

        async def read(version: str) -> KeyVersion:
            async with gate:
                return await self._read(base.with_version(version))  # fresh, never cached

        return list(await asyncio.gather(*(read(version) for version in versions)))

    async def has_rotation_policy(self, key: KeyId) -> bool:
        """Whether the key has a rotation policy that does something (see
        :meth:`rotation_policy`)."""
        return await self.rotation_policy(key) is not None

    async def rotation_policy(self, key: KeyId) -> KeyRotation | None:
        """The key's rotation policy if it does something: a ``Rotate`` lifetime action or
        an expiry for new versions (one GET).

        Key Vault answers a key without a policy with a default one holding only a
        ``Notify`` action (30 days before expiry), so that alone does not count; a 404
        or an empty policy is None.
        """
        base = key.versionless()
        try:
            with azure_errors(f"reading the rotation policy of {base}"):
                policy = await self.client(base.vault_url).get_key_rotation_policy(base.name)
        except NotFound:
            return None
        actions = policy.lifetime_actions or []
        rotates = any(text_of(action.action).lower() == "rotate" for action in actions)
        if not rotates and not policy.expires_in:
            return None
        return KeyRotation(expiry=_duration(policy.expires_in))

    async def rotate(self, key: KeyId) -> KeyVersion:
        """Create a new version with Key Vault's rotate operation. Sent once: the SDK would
        re-send it after a 5xx or a lost answer, and a re-sent create makes a second
        version; the caller (a claim, a redelivery) decides again instead. Bounded by
        :data:`CREATE_TIMEOUT`, far inside the claim a caller holds while creating."""
        base = key.versionless()
        with azure_errors(f"rotating {base}"):
            async with asyncio.timeout(CREATE_TIMEOUT.total_seconds()):
                rotated = await self.client(base.vault_url).rotate_key(
                    base.name, retry_total=0, **_CREATE_TIMEOUTS
                )
        version = key_version(base, rotated)
        self.cache.put(version)
        return version

    async def create_like(self, template: KeyVersion) -> KeyVersion:
        """Create a new version with the same type, size and operations as ``template``.

        Only RSA / RSA-HSM templates of known size can be copied. When the template
        expires, the new version gets the same validity period, counted from now. Sent
        once, like :meth:`rotate`.
        """
        if template.kty not in _RSA_TYPES or template.size is None:
            raise InvalidInput(
                f"cannot create a version like {template.key_id}: only RSA/RSA-HSM keys of a"
                f" known size are supported (got {template.kty!r}, size {template.size})"
            )
        expires_on = None
        if template.expires is not None:
            lifetime = template.expires - (template.not_before or template.created)
            expires_on = self._clock() + lifetime
        base = template.key_id.versionless()
        with azure_errors(f"creating a new version of {base}"):
            async with asyncio.timeout(CREATE_TIMEOUT.total_seconds()):
                created = await self.client(base.vault_url).create_rsa_key(
                    base.name,
                    size=template.size,
                    hardware_protected=template.kty == "RSA-HSM",
                    key_operations=sorted(template.key_ops),
                    expires_on=expires_on,
                    retry_total=0,
                    **_CREATE_TIMEOUTS,
                )
        version = key_version(base, created)
        self.cache.put(version)
        return version


def _duration(text: str | None) -> timedelta | None:
    """An ISO 8601 duration, or None when there is none or it is in a form not known."""
    if not text:
        return None
    try:
        return parse_iso_duration(text)
    except ValueError:
        return None
