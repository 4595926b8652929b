"""The versions a rotation job carries (``"seen"``): the target and bound versions as
the job's producer read them from Key Vault, and when — so the worker, in another
process, takes them for what is left of its cache's time instead of reading again (see
:mod:`cmk.adapters.version_cache`).

Strict like the rest of the job: a malformed entry, or one about another key than the
job's target, raises :class:`~cmk.errors.InvalidInput`. The worker still judges every
version against the policy itself; only the properties travel, never a verdict.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cmk.errors import InvalidInput
from cmk.keyid import KeyId
from cmk.policy import KeyVersion
from cmk.ports import SeenVersion

__all__ = ["MAX_SEEN", "decode_seen", "encode_seen"]

#: A job carries its target and the version the account is on: no more.
MAX_SEEN = 2
_MAX_OPS = 16
_MAX_TEXT = 64


def encode_seen(seen: tuple[SeenVersion, ...]) -> list[dict[str, Any]]:
    """The JSON of a job's ``seen`` versions."""
    return [
        {
            "id": str(entry.version.key_id),
            "kty": entry.version.kty,
            "size": entry.version.size,
            "ops": sorted(entry.version.key_ops),
            "enabled": entry.version.enabled,
            "nbf": _time(entry.version.not_before),
            "exp": _time(entry.version.expires),
            "created": _time(entry.version.created),
            "recovery": entry.version.recovery_level,
            "read_at": _time(entry.read_at),
        }
        for entry in seen
    ]


def decode_seen(value: object, target: KeyId) -> tuple[SeenVersion, ...]:
    """A job's ``seen`` versions from its JSON; each must be a version of ``target``'s key."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_SEEN:
        raise InvalidInput(f"rotation job: 'seen' must be a list of at most {MAX_SEEN} versions")
    return tuple(_entry(item, target) for item in value)


def _entry(item: object, target: KeyId) -> SeenVersion:
    if not isinstance(item, dict):
        raise InvalidInput("rotation job: each 'seen' entry must be a JSON object")
    key = KeyId.parse(_get(item, "id", str))
    if key.version is None or not key.same_key(target):
        raise InvalidInput(f"rotation job: 'seen' names {key}, not a version of {target}")
    size = _get(item, "size", int, optional=True)
    if size is not None and not 0 < size <= 16384:
        raise InvalidInput(f"rotation job: 'seen' size {size} is out of range")
    ops = _get(item, "ops", list)
    if len(ops) > _MAX_OPS or not all(_short(op) for op in ops):
        raise InvalidInput("rotation job: 'seen' ops must be a short list of short strings")
    kty = _get(item, "kty", str)
    recovery = _get(item, "recovery", str, optional=True)
    if not _short(kty) or (recovery is not None and not _short(recovery)):
        raise InvalidInput("rotation job: 'seen' kty and recovery must be short strings")
    created = _moment(item, "created")
    assert created is not None
    read_at = _moment(item, "read_at")
    assert read_at is not None
    version = KeyVersion(
        key_id=key,
        kty=kty,
        size=size,
        key_ops=frozenset(ops),
        enabled=_get(item, "enabled", bool),
        not_before=_moment(item, "nbf", optional=True),
        expires=_moment(item, "exp", optional=True),
        created=created,
        recovery_level=recovery,
    )
    return SeenVersion(version, read_at)


def _short(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TEXT and value.isprintable()


def _get(item: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    value = item.get(name)
    if value is None:
        if optional:
            return None
        raise InvalidInput(f"rotation job: 'seen' entry lacks {name!r}")
    if type(value) is not kind:  # bool is an int: compare exact types
        raise InvalidInput(f"rotation job: 'seen' {name!r} must be {kind.__name__}")
    return value


def _moment(item: dict[str, Any], name: str, *, optional: bool = False) -> datetime | None:
    text = _get(item, name, str, optional=optional)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text) if len(text) <= _MAX_TEXT else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidInput(f"rotation job: 'seen' {name!r} must be an ISO 8601 time with offset")
    return moment


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
