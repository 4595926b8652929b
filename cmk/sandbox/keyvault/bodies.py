"""Key Vault's JSON for keys: bundles, list items, rotation policies, and parsing requests.

Shapes follow ``specification/keyvault/data-plane/Microsoft.KeyVault/stable/2025-07-01/
keys.json`` in Azure/azure-rest-api-specs (``KeyBundle``, ``KeyItem``, ``KeyAttributes``,
``KeyRotationPolicy``): base64url without padding for key material, unix seconds for
times, optional members left out rather than sent as null.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cmk.durations import parse_iso_duration
from cmk.sandbox.keyvault.model import CURVE_BYTES, KEY_FAMILIES, KeyParameterError
from cmk.sandbox.keyvault.versions import api_level
from cmk.sandbox.world import KeyState, KeyVersionState, RotationPolicy, VaultKind, VaultState

JsonObject = dict[str, Any]
MIN_POLICY_EXPIRY = timedelta(days=28)
MIN_TRIGGER = timedelta(days=7)
_ACTION_TYPES = {"rotate": "Rotate", "notify": "Notify"}
_TRIGGERS = ("timeAfterCreate", "timeBeforeExpiry")


def b64url(data: bytes) -> str:
    """base64url without padding (JSON Web Key encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unix(when: datetime) -> int:
    return int(when.timestamp())


def from_unix(value: object, name: str) -> datetime:
    """A unix-seconds attribute from a request body; bools and non-numbers are rejected."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KeyParameterError(f"Attribute '{name}' must be a unix time in seconds.")
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise KeyParameterError(f"Attribute '{name}' is out of range.") from exc


def kid(vault: VaultState, key: KeyState, version: KeyVersionState | None = None) -> str:
    """The key identifier: ``https://{host}/keys/{name}[/{version}]``."""
    base = f"{vault.url}/keys/{key.name}"
    return f"{base}/{version.version}" if version else base


def key_attributes(vault: VaultState, version: KeyVersionState, api_version: str) -> JsonObject:
    level = api_level(api_version) or (8, 0)
    attributes: JsonObject = {"enabled": version.enabled}
    if version.not_before is not None:
        attributes["nbf"] = unix(version.not_before)
    if version.expires is not None:
        attributes["exp"] = unix(version.expires)
    attributes["created"] = unix(version.created)
    attributes["updated"] = unix(version.updated)
    if vault.soft_delete and level >= (7, 1):
        attributes["recoverableDays"] = vault.retention_days
    attributes["recoveryLevel"] = vault.recovery_level
    if level >= (7, 3):
        attributes["exportable"] = False
    return attributes


def _curve_point(version: KeyVersionState, curve: str) -> tuple[bytes, bytes]:
    """Stable stand-in EC coordinates derived from the version id."""
    length = CURVE_BYTES[curve]
    seed = version.version.encode()
    return (
        hashlib.shake_256(seed + b"x").digest(length),
        hashlib.shake_256(seed + b"y").digest(length),
    )


def json_web_key(vault: VaultState, key: KeyState, version: KeyVersionState) -> JsonObject:
    web_key: JsonObject = {
        "kid": kid(vault, key, version),
        "kty": version.kty,
        "key_ops": list(version.key_ops),
    }
    family = KEY_FAMILIES.get(version.kty)
    if family == "RSA":
        web_key["n"] = b64url(version.modulus)
        web_key["e"] = b64url(version.exponent)
    elif family == "EC" and version.curve:
        x, y = _curve_point(version, version.curve)
        web_key.update(crv=version.curve, x=b64url(x), y=b64url(y))
    return web_key


def key_bundle(
    vault: VaultState, key: KeyState, version: KeyVersionState, api_version: str
) -> JsonObject:
    """``KeyBundle``: the public key, its attributes and tags."""
    bundle: JsonObject = {
        "key": json_web_key(vault, key, version),
        "attributes": key_attributes(vault, version, api_version),
    }
    if version.tags:
        bundle["tags"] = dict(version.tags)
    return bundle


def key_item(
    vault: VaultState,
    key: KeyState,
    version: KeyVersionState,
    api_version: str,
    *,
    versioned: bool,
) -> JsonObject:
    """``KeyItem``: kid (with the version in version lists, without in key lists),
    attributes and tags."""
    item: JsonObject = {
        "kid": kid(vault, key, version if versioned else None),
        "attributes": key_attributes(vault, version, api_version),
    }
    if version.tags:
        item["tags"] = dict(version.tags)
    return item


def rotation_policy_body(vault: VaultState, key: KeyState) -> JsonObject:
    """``KeyRotationPolicy``; a key without one shows Key Vault's default (Notify 30 days
    before expiry; nothing on Managed HSM, where Notify does not exist)."""
    policy_id = f"{kid(vault, key)}/rotationpolicy"
    policy = key.rotation_policy
    if policy is None:
        actions: list[JsonObject] = []
        if vault.kind is VaultKind.VAULT:
            actions = [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}]
        return {"id": policy_id, "lifetimeActions": actions, "attributes": {}}
    attributes: JsonObject = {}
    if policy.expiry_time:
        attributes["expiryTime"] = policy.expiry_time
    if policy.created:
        attributes["created"] = unix(policy.created)
    if policy.updated:
        attributes["updated"] = unix(policy.updated)
    return {
        "id": policy.id or policy_id,
        "lifetimeActions": [dict(action) for action in policy.lifetime_actions],
        "attributes": attributes,
    }


def _duration(text: object, where: str) -> timedelta:
    if not isinstance(text, str):
        raise KeyParameterError(f"'{where}' must be an ISO 8601 duration such as P90D.")
    try:
        return parse_iso_duration(text)
    except ValueError as exc:
        raise KeyParameterError(f"'{where}' is not a valid ISO 8601 duration: {text!r}.") from exc


def _lifetime_action(raw: object, expiry: timedelta | None) -> JsonObject:
    if not isinstance(raw, dict):
        raise KeyParameterError("Each lifetime action must be an object.")
    action, trigger = raw.get("action"), raw.get("trigger")
    kind = action.get("type") if isinstance(action, dict) else None
    if not isinstance(kind, str) or kind.lower() not in _ACTION_TYPES:
        raise KeyParameterError("Lifetime action type must be 'Rotate' or 'Notify'.")
    if not isinstance(trigger, dict):
        raise KeyParameterError("Each lifetime action needs a trigger.")
    given = [name for name in _TRIGGERS if trigger.get(name) is not None]
    if len(given) != 1:
        raise KeyParameterError(
            "A trigger needs exactly one of 'timeAfterCreate' and 'timeBeforeExpiry'."
        )
    name = given[0]
    span = _duration(trigger[name], name)
    if kind.lower() == "notify" and name != "timeBeforeExpiry":
        raise KeyParameterError("A Notify action only supports 'timeBeforeExpiry'.")
    if span < MIN_TRIGGER:
        raise KeyParameterError(f"'{name}' must be at least 7 days (P7D).")
    if expiry is not None and span > expiry - MIN_TRIGGER:
        raise KeyParameterError(f"'{name}' must be at least 7 days shorter than 'expiryTime'.")
    return {
        "trigger": {name: trigger[name].strip()},
        "action": {"type": _ACTION_TYPES[kind.lower()]},
    }


def parse_rotation_policy(body: object) -> RotationPolicy:
    """A ``KeyRotationPolicy`` request body as a policy (id and times left for the caller),
    with Key Vault's rules: expiryTime at least 28 days, triggers at least 7 days and
    7 days short of expiry, at most one action of each type, Notify before expiry only."""
    if not isinstance(body, dict):
        raise KeyParameterError("The rotation policy must be a JSON object.")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise KeyParameterError("'attributes' must be an object.")
    expiry_time = attributes.get("expiryTime")
    expiry = None
    if expiry_time is not None:
        expiry = _duration(expiry_time, "expiryTime")
        if expiry < MIN_POLICY_EXPIRY:
            raise KeyParameterError("'expiryTime' must be at least 28 days (P28D).")
    raw_actions = body.get("lifetimeActions") or []
    if not isinstance(raw_actions, list):
        raise KeyParameterError("'lifetimeActions' must be an array.")
    actions = [_lifetime_action(raw, expiry) for raw in raw_actions]
    kinds = [action["action"]["type"] for action in actions]
    if len(set(kinds)) != len(kinds):
        raise KeyParameterError("A policy holds at most one Rotate and one Notify action.")
    return RotationPolicy(
        expiry_time=expiry_time.strip() if isinstance(expiry_time, str) else None,
        lifetime_actions=actions,
    )


@dataclass(frozen=True)
class KeyChanges:
    """What a create or update request body asks for; None means 'not given'."""

    key_ops: list[str] | None = None
    enabled: bool | None = None
    not_before: datetime | None = None
    expires: datetime | None = None
    clear_not_before: bool = False
    clear_expires: bool = False
    tags: dict[str, str] | None = None


def parse_key_changes(body: JsonObject) -> KeyChanges:
    """``key_ops``, ``attributes`` (enabled, nbf, exp; null clears nbf/exp) and ``tags``."""
    key_ops = body.get("key_ops")
    if key_ops is not None and (
        not isinstance(key_ops, list) or not all(isinstance(op, str) for op in key_ops)
    ):
        raise KeyParameterError("'key_ops' must be an array of strings.")
    attributes = body.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise KeyParameterError("'attributes' must be an object.")
    enabled = attributes.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise KeyParameterError("Attribute 'enabled' must be true or false.")
    if attributes.get("exportable") is True:
        raise KeyParameterError("Exportable keys need a release policy (not emulated).")
    nbf, exp = attributes.get("nbf"), attributes.get("exp")
    not_before = from_unix(nbf, "nbf") if nbf is not None else None
    expires = from_unix(exp, "exp") if exp is not None else None
    if not_before and expires and expires <= not_before:
        raise KeyParameterError("Attribute 'exp' must be later than 'nbf'.")
    return KeyChanges(
        key_ops=key_ops,
        enabled=enabled,
        not_before=not_before,
        expires=expires,
        clear_not_before="nbf" in attributes and nbf is None,
        clear_expires="exp" in attributes and exp is None,
        tags=_tags(body.get("tags")),
    )


def _tags(raw: object) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise KeyParameterError("'tags' must be an object of string values.")
    if len(raw) > 15:
        raise KeyParameterError("A key can have at most 15 tags.")
    return dict(raw)


def policy_action_types(policy: RotationPolicy) -> list[str]:
    """The action types ('Rotate', 'Notify') of a parsed policy."""
    types = []
    for action in policy.lifetime_actions:
        kind = action.get("action")
        if isinstance(kind, dict):
            types.append(str(kind.get("type")))
    return types


def skiptoken(offset: int) -> str:
    """A ``$skiptoken`` for a list page starting at ``offset`` (shaped like Key Vault's:
    base64url of ``{"NextMarker": ..., "TargetLocation": 0}``)."""
    marker = json.dumps({"NextMarker": f"2!{offset}", "TargetLocation": 0}, separators=(",", ":"))
    return base64.urlsafe_b64encode(marker.encode()).rstrip(b"=").decode("ascii")


def read_skiptoken(token: str | None) -> int:
    """The offset a ``$skiptoken`` stands for (0 without one); 400 when it is not ours."""
    if not token:
        return 0
    try:
        marker: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset = int(str(marker["NextMarker"]).removeprefix("2!"))
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise KeyParameterError("The $skiptoken is not valid.") from exc
    if offset < 0:
        raise KeyParameterError("The $skiptoken is not valid.")
    return offset
