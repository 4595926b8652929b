"""Key Vault events from Event Grid: decode, check, and turn into pointers.

Accepts the Event Grid schema and CloudEvents 1.0, one event or a JSON array, as text,
bytes, or already-decoded JSON. An event is only ever a pointer ("look at this key");
the handler re-reads the key before acting. So the checks here are about identity:

- The key comes from ``data.Id`` (a versioned key id, parsed by :mod:`cmk.keyid`).
- It must agree with ``data.VaultName``, ``data.ObjectName``, ``data.Version``,
  ``data.ObjectType`` (``Key``), ``subject`` (the key name, when present) and the vault
  resource id in ``topic`` / ``source`` (same vault name, same kind: vault or Managed
  HSM). Any disagreement raises ``InvalidEvent("inconsistent: ...")``.
- Where real payloads are sloppy we are tolerant: letter case and stray whitespace in
  field names (Microsoft's documented example has ``"ObjectName "``), whitespace around
  values (``" ee05..."``), ``NBF``/``EXP`` as numbers, numeric strings or null.
- Tolerant too on what decides nothing: an ``NBF``/``eventTime`` we cannot read is
  dropped (the handler re-reads the key's own dates anyway), so is the ``EXP`` of a
  ``KeyNewVersionCreated``, and an over-long or unprintable ``id`` is shortened and
  escaped; each such repair is a line of :attr:`KeyVaultEvent.notes` for the handler to
  log. Losing the event over a hint would leave its accounts to the next sweep. The
  ``EXP`` of a ``KeyNearExpiry`` decides something — a notice sent earlier than the
  default 30 days is confirmed by Key Vault's expiry matching it — so there it is as
  strict as the key id (and so is a ``KeyExpired``'s, for symmetry).
- Malformed input of any kind raises :class:`~cmk.errors.InvalidEvent` and nothing else:
  non-JSON, wrong types where it matters, duplicate fields, NaN/Infinity, huge numbers,
  deep nesting, oversized payloads.

Batches: :func:`parse_events` returns one result per array item, in order. A bad item
becomes a :class:`RejectedEvent` so it cannot cost us the good ones; only a payload that
cannot be decoded at all raises. :func:`parse_event` raises for a bad event.

Secret, certificate, access-policy and foreign events become :class:`IgnoredEvent`;
Event Grid's handshake becomes :class:`SubscriptionValidation` (an IgnoredEvent that
carries the ``validation_code`` to echo back).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from cmk.errors import InvalidEvent, InvalidKeyId, InvalidResourceId
from cmk.keyid import KeyId
from cmk.resource_id import VaultId

EventSchema = Literal["eventgrid", "cloudevents"]

#: Largest payload we decode (Event Grid delivers at most ~1 MB per request).
MAX_PAYLOAD_BYTES = 2 * 1024 * 1024
#: Most events we accept in one batch (Event Grid's own limit is 5,000).
MAX_BATCH_EVENTS = 5000
SUBSCRIPTION_VALIDATION_TYPE = "Microsoft.EventGrid.SubscriptionValidationEvent"

_MAX_EVENT_ID = 512
_MAX_INT_DIGITS = 20
_UNIX_SECONDS = re.compile(r"\d{1,12}(\.\d{1,9})?")


class KeyVaultEventType(StrEnum):
    """The Key Vault key events cmk-rotator acts on."""

    NEW_VERSION = "Microsoft.KeyVault.KeyNewVersionCreated"
    NEAR_EXPIRY = "Microsoft.KeyVault.KeyNearExpiry"
    EXPIRED = "Microsoft.KeyVault.KeyExpired"


_KEY_EVENT_TYPES = {member.value.lower(): member for member in KeyVaultEventType}


@dataclass(frozen=True)
class KeyVaultEvent:
    """A consistent Key Vault key event: a pointer to one key version."""

    event_id: str
    event_type: KeyVaultEventType
    key_id: KeyId
    vault_id: VaultId | None
    not_before: datetime | None
    expires: datetime | None
    event_time: datetime | None
    schema: EventSchema
    #: Fields that were unreadable and dropped or repaired, one line each (for the log).
    notes: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class IgnoredEvent:
    """A well-formed event we do not act on, and why."""

    event_id: str
    event_type: str
    reason: str


@dataclass(frozen=True)
class SubscriptionValidation(IgnoredEvent):
    """Event Grid's subscription handshake: answer ``{"validationResponse": code}``."""

    validation_code: str
    validation_url: str | None


@dataclass(frozen=True)
class RejectedEvent:
    """An item of a batch that is malformed or inconsistent; ``reason`` says how."""

    index: int
    event_id: str | None
    reason: str


ParsedEvent = KeyVaultEvent | IgnoredEvent
BatchItem = KeyVaultEvent | IgnoredEvent | RejectedEvent


# -- decoding -------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise InvalidEvent(f"malformed JSON: {name} is not allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise InvalidEvent(f"malformed JSON: number with {len(text)} digits is too large")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEvent(f"malformed JSON: number {text[:40]!r} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidEvent(f"malformed JSON: field {key!r} appears more than once")
        result[key] = value
    return result


def _decode(payload: object) -> object:
    """Decode text or bytes into JSON; pass decoded JSON through."""
    if isinstance(payload, bytes | bytearray | memoryview):
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidEvent(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        try:
            payload = bytes(payload).decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise InvalidEvent(f"payload is not UTF-8: {error.reason}") from None
    if not isinstance(payload, str):
        return payload
    size = len(payload.encode("utf-8", "surrogatepass"))
    if size > MAX_PAYLOAD_BYTES:
        # The limit is on what was received, in bytes, not on characters or on a
        # re-serialised object. (Decoded objects from the Functions binding were already
        # bounded by Event Grid's own 1 MB per event.)
        raise InvalidEvent(f"payload of {size} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        return json.loads(
            payload,
            parse_constant=_reject_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
            object_pairs_hook=_no_duplicates,
        )
    except InvalidEvent:
        raise
    except RecursionError:
        raise InvalidEvent("malformed JSON: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise InvalidEvent(f"malformed JSON: {error}") from None


def json_type(value: object) -> str:
    """The JSON name of ``value``'s type (``null``, ``boolean``, ``number``, ``string``,
    ``array``, ``object``), for messages about what a field holds; Python's otherwise."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def _fields(obj: object, where: str) -> dict[str, object]:
    """Index an object's fields by lowercase, whitespace-stripped name.

    Two fields that normalize to the same name must carry the same scalar value.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEvent(f"{where} must be a JSON object, not {json_type(obj)}")
    fields: dict[str, object] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise InvalidEvent(f"{where} has a field name that is not a string: {key!r}")
        name = key.strip().lower()
        if name in fields and not (_is_scalar(value) and fields[name] == value):
            raise InvalidEvent(f"{where} has more than one field named {key.strip()!r}")
        fields[name] = value
    return fields


def _data(fields: Mapping[str, object]) -> dict[str, object]:
    """The event's ``data``: an object (absent is said so, not called null)."""
    if "data" not in fields:
        raise InvalidEvent("data is missing: a Key Vault event's data is a JSON object")
    return _fields(fields["data"], "data")


def _text(fields: Mapping[str, object], name: str, where: str) -> str | None:
    """A string field, stripped; None when absent or null."""
    value = fields.get(name.lower())
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{where}.{name} must be a string, not {json_type(value)}")
    return value.strip()


def _required(fields: Mapping[str, object], name: str, where: str) -> str:
    value = _text(fields, name, where)
    if not value:
        raise InvalidEvent(f"{where}.{name} is missing or empty")
    return value


def _event_id(fields: Mapping[str, object], notes: list[str] | None = None) -> str:
    """``id``, required; unprintable characters escaped and cut to 512 characters (the
    id only names the event in logs and ledger rows, it decides nothing)."""
    value = _required(fields, "id", "event")
    if len(value) <= _MAX_EVENT_ID and value.isprintable():
        return value
    readable = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in value)
    shortened = readable[: _MAX_EVENT_ID - 1] + "…" if len(readable) > _MAX_EVENT_ID else readable
    if notes is not None:
        notes.append(
            f"event.id of {len(value)} characters shortened or escaped to {shortened[:80]!r}"
        )
    return shortened


# -- times ----------------------------------------------------------------------------


def _unix_time(fields: Mapping[str, object], name: str, notes: list[str]) -> datetime | None:
    """``data.NBF`` / ``data.EXP``: unix seconds as a number or numeric string, or null;
    anything else is dropped with a note (a hint only: the key's own dates decide)."""
    value = fields.get(name.lower())
    try:
        return _unix_seconds(value)
    except ValueError as error:
        notes.append(f"data.{name} ignored: {error}")
        return None


def _unix_seconds(value: object) -> datetime | None:
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
        if not _UNIX_SECONDS.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not unix seconds")
        value = float(value)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"unix seconds expected, not {json_type(value)}")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{value!r} is out of range") from None


def _iso_time(fields: Mapping[str, object], name: str, notes: list[str]) -> datetime | None:
    """``eventTime`` / ``time``: ISO 8601; a time without offset is taken as UTC; anything
    else is dropped with a note (nothing is decided by when Event Grid says it happened)."""
    value = fields.get(name.lower())
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        moment = datetime.fromisoformat(value.strip()) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None:
        notes.append(f"event.{name} ignored: {str(value)[:40]!r} is not an ISO 8601 time")
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- events ---------------------------------------------------------------------------


def _schema(fields: Mapping[str, object]) -> EventSchema:
    if "specversion" in fields:
        if "eventtype" in fields:
            raise InvalidEvent("event has both specversion and eventType: schema is ambiguous")
        version = _text(fields, "specversion", "event")
        if version != "1.0":
            raise InvalidEvent(f"event.specversion {version!r} is not supported (only 1.0)")
        return "cloudevents"
    if "eventtype" in fields:
        return "eventgrid"
    raise InvalidEvent("not an event: no eventType (Event Grid) or specversion (CloudEvents)")


def _ignore_reason(event_type: str) -> str:
    lowered = event_type.lower()
    if lowered.startswith(("microsoft.keyvault.secret", "microsoft.keyvault.certificate")):
        return "secret and certificate events do not concern customer-managed keys"
    if lowered.startswith("microsoft.keyvault."):
        return f"{event_type} is not a key version event"
    return f"{event_type} is not a Key Vault event"


def _validation(event_id: str, event_type: str, fields: Mapping[str, object]) -> IgnoredEvent:
    data = _data(fields)
    return SubscriptionValidation(
        event_id,
        event_type,
        "Event Grid subscription validation handshake",
        validation_code=_required(data, "validationCode", "data"),
        validation_url=_text(data, "validationUrl", "data"),
    )


def _inconsistent(what: str, found: str, key_id: KeyId, expected: str) -> InvalidEvent:
    return InvalidEvent(
        f"inconsistent: {what} is {found!r} but data.Id {str(key_id)!r} says {expected!r}"
    )


def _key_id(data: Mapping[str, object]) -> KeyId:
    try:
        key_id = KeyId.parse(_required(data, "Id", "data"))
    except InvalidKeyId as error:
        raise InvalidEvent(f"data.Id: {error}") from None
    if key_id.version is None:
        raise InvalidEvent(f"data.Id {str(key_id)!r} has no key version")
    return key_id


def _check_data(data: Mapping[str, object], key_id: KeyId) -> None:
    """data.ObjectType, VaultName, ObjectName and Version must agree with data.Id."""
    object_type = _required(data, "ObjectType", "data")
    if object_type.lower() != "key":
        raise InvalidEvent(f"inconsistent: data.ObjectType is {object_type!r}, not 'Key'")
    checks = (
        ("data.VaultName", _required(data, "VaultName", "data"), key_id.vault_name),
        ("data.ObjectName", _required(data, "ObjectName", "data"), key_id.name),
        ("data.Version", _required(data, "Version", "data"), key_id.version or ""),
    )
    for what, found, expected in checks:
        if found.lower() != expected:
            raise _inconsistent(what, found, key_id, expected)


def _vault(fields: Mapping[str, object], schema: EventSchema, key_id: KeyId) -> VaultId | None:
    """The vault resource id in topic/source; it must be the vault of data.Id."""
    name = "source" if schema == "cloudevents" else "topic"
    text = _text(fields, name, "event")
    if not text:
        # Event Grid always sets the source vault; an event without it cannot be tied
        # to a vault, so it is refused in both schemas.
        raise InvalidEvent(f"event.{name} is missing or empty")
    try:
        vault_id = VaultId.parse(text)
    except InvalidResourceId as error:
        raise InvalidEvent(f"inconsistent: event.{name} is not a Key Vault: {error}") from None
    if vault_id.name != key_id.vault_name:
        raise _inconsistent(f"the vault in event.{name}", vault_id.name, key_id, key_id.vault_name)
    if vault_id.is_managed_hsm != key_id.is_managed_hsm:
        raise InvalidEvent(
            f"inconsistent: event.{name} is a {vault_id.resource_type} but data.Id "
            f"{str(key_id)!r} is on host {key_id.vault_host!r}"
        )
    return vault_id


def _key_event(
    event_id: str,
    kind: KeyVaultEventType,
    fields: Mapping[str, object],
    schema: EventSchema,
    notes: list[str],
) -> KeyVaultEvent:
    data = _data(fields)
    key_id = _key_id(data)
    _check_data(data, key_id)
    subject = _text(fields, "subject", "event")
    if subject and subject.lower() != key_id.name:
        raise _inconsistent("event.subject", subject, key_id, key_id.name)
    expires = _unix_time(data, "EXP", notes)
    unread = [note for note in notes if note.startswith("data.EXP")]
    if unread and kind is not KeyVaultEventType.NEW_VERSION:
        raise InvalidEvent(f"{unread[0]} — a {kind.value} is confirmed by its EXP")
    return KeyVaultEvent(
        event_id=event_id,
        event_type=kind,
        key_id=key_id,
        vault_id=_vault(fields, schema, key_id),
        not_before=_unix_time(data, "NBF", notes),
        expires=expires,
        event_time=_iso_time(fields, "time" if schema == "cloudevents" else "eventTime", notes),
        schema=schema,
        notes=tuple(notes),
    )


def parse_event(event: object) -> ParsedEvent:
    """Parse one event (decoded JSON object, or its text/bytes); raise InvalidEvent if bad."""
    fields = _fields(_decode(event), "event")
    schema = _schema(fields)
    notes: list[str] = []
    event_id = _event_id(fields, notes)
    event_type = _required(fields, "type" if schema == "cloudevents" else "eventType", "event")
    if event_type.lower() == SUBSCRIPTION_VALIDATION_TYPE.lower():
        return _validation(event_id, event_type, fields)
    kind = _KEY_EVENT_TYPES.get(event_type.lower())
    if kind is None:
        return IgnoredEvent(event_id, event_type, _ignore_reason(event_type))
    try:
        return _key_event(event_id, kind, fields, schema, notes)
    except InvalidEvent as error:
        raise InvalidEvent(f"event {event_id!r}: {error}") from None


def _safe_id(item: object) -> str | None:
    """The id of a rejected item, if it has a usable one (for the log line)."""
    try:
        return _event_id(_fields(item, "event"))
    except InvalidEvent:
        return None


def parse_events(payload: object) -> list[BatchItem]:
    """Parse one event or a batch; a bad item becomes a RejectedEvent, in place."""
    decoded = _decode(payload)
    items = decoded if isinstance(decoded, list) else [decoded]
    if len(items) > MAX_BATCH_EVENTS:
        raise InvalidEvent(f"batch of {len(items)} events exceeds {MAX_BATCH_EVENTS}")
    results: list[BatchItem] = []
    for index, item in enumerate(items):
        if isinstance(item, str | bytes | bytearray | memoryview):
            results.append(RejectedEvent(index, None, "event must be a JSON object"))
            continue
        try:
            results.append(parse_event(item))
        except InvalidEvent as error:
            results.append(RejectedEvent(index, _safe_id(item), str(error)))
    return results
