"""The Key Vault Event Grid subscriptions of the app, as infra/ wires them
(``infra/app/vault-event-subscriptions.bicep``): one per event type and function, from
the Key Vaults of the app's allow-list, key events only, with infra/'s retry policy.
Shared by ``cmk sandbox up --app`` and ``cmk demo``."""

from __future__ import annotations

from collections.abc import Mapping

from cmk.errors import InvalidKeyId
from cmk.keyid import parse_vault_url
from cmk.sandbox.core import Sandbox
from cmk.sandbox.world import KeyEventType, VaultKind

__all__ = [
    "EVENT_TTL_MINUTES",
    "KEYS_ONLY",
    "MAX_DELIVERY_ATTEMPTS",
    "SUBSCRIPTIONS",
    "app_key_vaults",
]

#: Event Grid subscriptions of the deployment (infra/app/vault-event-subscriptions.bicep).
SUBSCRIPTIONS = {
    "cmk-key-new-version": (KeyEventType.NEW_VERSION, "on_key_new_version"),
    "cmk-key-near-expiry": (KeyEventType.NEAR_EXPIRY, "on_key_near_expiry"),
    "cmk-key-expired": (KeyEventType.EXPIRED, "on_key_expired"),
}

#: The delivery settings of ``infra/app/vault-event-subscriptions.bicep``.
MAX_DELIVERY_ATTEMPTS = 30
EVENT_TTL_MINUTES = 1440
KEYS_ONLY = [{"operatorType": "StringIn", "key": "data.ObjectType", "values": ["Key"]}]


def _allowed(settings: Mapping[str, str]) -> frozenset[str]:
    """The vault URLs of ``CMK_VAULT_ALLOWLIST`` (normalized; an unparsable item is no
    vault: the app's settings check reports it)."""
    urls = set()
    for item in settings.get("CMK_VAULT_ALLOWLIST", "").split(","):
        try:
            urls.add(parse_vault_url(item.strip()))
        except InvalidKeyId:
            continue
    return frozenset(urls)


def app_key_vaults(sandbox: Sandbox, settings: Mapping[str, str]) -> list[str]:
    """The names of the Key Vaults (not Managed HSMs) on the app's allow-list."""
    allowed = _allowed(settings)
    with sandbox.world.lock:
        vaults = sandbox.world.vaults.values()
        return sorted(
            v.name
            for v in vaults
            if v.kind is VaultKind.VAULT and parse_vault_url(v.url) in allowed
        )
