"""Tests for cmk.events: Key Vault events in both schemas, one or a batch."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmk.errors import InvalidEvent
from cmk.events import (
    MAX_PAYLOAD_BYTES,
    IgnoredEvent,
    KeyVaultEvent,
    KeyVaultEventType,
    RejectedEvent,
    SubscriptionValidation,
    parse_event,
    parse_events,
)
from cmk.keyid import KeyId

DATA = Path(__file__).parent / "data"
SUB = "00000000-0000-0000-0000-000000000000"
VERSION = "ee059b2bb5bc48398a53b168c6cdcb10"
VAULT_TOPIC = f"/subscriptions/{SUB}/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults"
KEY_ID = f"https://sample-kv.vault.azure.net/keys/newkey/{VERSION}"


def example(name: str) -> Any:
    """The payload of a stored example event."""
    return json.loads((DATA / name).read_text(encoding="utf-8"))["payload"]


def key_event(schema: str = "eventgrid", **data_changes: object) -> dict[str, Any]:
    """A valid KeyNewVersionCreated event; ``data_changes`` replace data fields."""
    data: dict[str, object] = {
        "Id": KEY_ID,
        "VaultName": "sample-kv",
        "ObjectType": "Key",
        "ObjectName": "newkey",
        "Version": VERSION,
        "NBF": 1559081980,
        "EXP": 1559082102,
    }
    data.update(data_changes)
    event: dict[str, Any] = {
        "id": "e-1",
        "subject": "newkey",
        "data": data,
    }
    if schema == "eventgrid":
        event |= {
            "topic": f"{VAULT_TOPIC}/sample-kv",
            "eventType": "Microsoft.KeyVault.KeyNewVersionCreated",
            "eventTime": "2019-07-25T01:08:33.1036736Z",
            "dataVersion": "1",
            "metadataVersion": "1",
        }
    else:
        event |= {
            "source": f"{VAULT_TOPIC}/sample-kv",
            "type": "Microsoft.KeyVault.KeyNewVersionCreated",
            "time": "2019-07-25T01:08:33.1036736Z",
            "specversion": "1.0",
        }
    return event


def parse_key_event(event: object) -> KeyVaultEvent:
    """Parse an event that must be a key event."""
    parsed = parse_event(event)
    assert isinstance(parsed, KeyVaultEvent)
    return parsed


class TestDocumentedExamples:
    """Microsoft's documented examples, and key events in their shape, parse as expected."""

    @pytest.mark.parametrize(
        ("name", "schema", "kind"),
        [
            ("eventgrid_key_new_version.json", "eventgrid", KeyVaultEventType.NEW_VERSION),
            ("cloudevents_key_new_version.json", "cloudevents", KeyVaultEventType.NEW_VERSION),
            ("eventgrid_key_near_expiry.json", "eventgrid", KeyVaultEventType.NEAR_EXPIRY),
            ("cloudevents_key_expired.json", "cloudevents", KeyVaultEventType.EXPIRED),
        ],
    )
    def test_key_events(self, name: str, schema: str, kind: KeyVaultEventType) -> None:
        """Each key example yields one KeyVaultEvent pointing at the versioned key."""
        (event,) = parse_events(example(name))
        assert isinstance(event, KeyVaultEvent)
        assert event.schema == schema
        assert event.event_type is kind
        assert event.key_id == KeyId.parse(KEY_ID)
        assert event.vault_id is not None
        assert event.vault_id.name == "sample-kv"
        assert event.not_before == datetime(2019, 5, 28, 22, 19, 40, tzinfo=UTC)
        assert event.expires == datetime(2019, 5, 28, 22, 21, 42, tzinfo=UTC)
        assert event.event_time == datetime(2019, 7, 25, 1, 8, 33, 103673, tzinfo=UTC)

    @pytest.mark.parametrize(
        "name",
        [
            "eventgrid_secret_new_version_documented.json",
            "cloudevents_secret_new_version_documented.json",
        ],
    )
    def test_documented_secret_events_are_ignored(self, name: str) -> None:
        """Microsoft's verbatim secret examples are ignored with a reason, not rejected."""
        (event,) = parse_events(example(name))
        assert isinstance(event, IgnoredEvent)
        assert event.event_type == "Microsoft.KeyVault.SecretNewVersionCreated"
        assert "secret" in event.reason

    @pytest.mark.parametrize(
        "name",
        ["eventgrid_blob_created_documented.json", "cloudevents_blob_created_documented.json"],
    )
    def test_documented_foreign_events_are_ignored(self, name: str) -> None:
        """Microsoft's verbatim Storage examples are ignored as not Key Vault events."""
        (event,) = parse_events(example(name))
        assert isinstance(event, IgnoredEvent)
        assert "not a Key Vault event" in event.reason

    def test_documented_subscription_validation(self) -> None:
        """The documented validation event yields its code and URL."""
        (event,) = parse_events(example("eventgrid_subscription_validation_documented.json"))
        assert isinstance(event, SubscriptionValidation)
        assert event.validation_code == "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
        assert event.validation_url is not None
        assert event.validation_url.startswith("https://rp-eastus2.eventgrid.azure.net:553/")

    @pytest.mark.parametrize("path", sorted(DATA.glob("*.json")), ids=lambda p: p.name)
    def test_examples_say_where_they_came_from(self, path: Path) -> None:
        """Every stored example names its source and what it should parse to."""
        stored = json.loads(path.read_text(encoding="utf-8"))
        assert "learn.microsoft.com" in stored["_source"]
        assert stored["_expect"]

    @pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.json")))
    def test_text_and_bytes_parse_alike(self, name: str) -> None:
        """Decoded JSON, text and UTF-8 bytes give the same result."""
        payload = example(name)
        text = json.dumps(payload)
        assert parse_events(payload) == parse_events(text) == parse_events(text.encode())


class TestKeyEvents:
    """Well-formed key events in either schema, and the tolerance we allow."""

    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    def test_fields(self, schema: str) -> None:
        """Every field of KeyVaultEvent is filled from the event."""
        event = parse_key_event(key_event(schema))
        assert event.event_id == "e-1"
        assert event.event_type is KeyVaultEventType.NEW_VERSION
        assert event.schema == schema
        assert str(event.key_id) == KEY_ID
        assert str(event.vault_id) == f"{VAULT_TOPIC}/sample-kv"

    @pytest.mark.parametrize(
        "kind", ["Microsoft.KeyVault.KeyNearExpiry", "microsoft.keyvault.keyexpired"]
    )
    def test_event_types(self, kind: str) -> None:
        """Near-expiry and expired events are recognised, whatever the letter case."""
        event = key_event()
        event["eventType"] = kind
        assert parse_key_event(event).event_type.value.lower() == kind.lower()

    def test_field_name_case_and_whitespace(self) -> None:
        """Field names match regardless of letter case and surrounding spaces."""
        event = key_event()
        event["data"] = {f" {k.lower()} ": v for k, v in event["data"].items()}
        event = {k.upper(): v for k, v in event.items()}
        assert str(parse_key_event(event).key_id) == KEY_ID

    def test_value_whitespace_and_case(self) -> None:
        """Values may carry stray whitespace and differ in case from data.Id."""
        event = key_event(
            Id=f"  {KEY_ID.upper().replace('HTTPS', 'https')} ",
            VaultName=" SAMPLE-KV",
            ObjectName="NewKey ",
            Version=f" {VERSION.upper()}",
            ObjectType=" key ",
        )
        event["subject"] = " NEWKEY"
        assert str(parse_key_event(event).key_id) == KEY_ID

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1559081980, datetime(2019, 5, 28, 22, 19, 40, tzinfo=UTC)),
            ("1559081980", datetime(2019, 5, 28, 22, 19, 40, tzinfo=UTC)),
            (" 1559081980 ", datetime(2019, 5, 28, 22, 19, 40, tzinfo=UTC)),
            (1559081980.5, datetime(2019, 5, 28, 22, 19, 40, 500000, tzinfo=UTC)),
            (None, None),
            ("", None),
        ],
    )
    def test_unix_times(self, value: object, expected: datetime | None) -> None:
        """NBF and EXP accept numbers, numeric strings and null."""
        event = parse_key_event(key_event(NBF=value, EXP=value))
        assert event.not_before == expected
        assert event.expires == expected

    def test_missing_times(self) -> None:
        """Absent NBF, EXP and event time are None."""
        event = key_event()
        del event["data"]["NBF"], event["data"]["EXP"], event["eventTime"]
        parsed = parse_key_event(event)
        assert (parsed.not_before, parsed.expires, parsed.event_time) == (None, None, None)

    def test_event_time_without_offset_is_utc(self) -> None:
        """An event time without offset is read as UTC."""
        event = key_event()
        event["eventTime"] = "2024-01-02T03:04:05"
        assert parse_key_event(event).event_time == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    def test_event_without_its_vault_is_rejected(self, schema: str) -> None:
        """An event without topic (Event Grid) or source (CloudEvents) is refused alike:
        Event Grid always names the vault, so its absence means the event is not genuine."""
        event = key_event(schema)  # type: ignore[arg-type]
        del event["topic" if schema == "eventgrid" else "source"]
        with pytest.raises(InvalidEvent, match="missing"):
            parse_key_event(event)

    def test_subject_may_be_absent(self) -> None:
        """A CloudEvent without subject (optional in the spec) is accepted."""
        event = key_event("cloudevents")
        del event["subject"]
        assert str(parse_key_event(event).key_id) == KEY_ID

    def test_text_single_event(self) -> None:
        """parse_event accepts the JSON text of one event."""
        assert str(parse_key_event(json.dumps(key_event())).key_id) == KEY_ID

    def test_managed_hsm_event(self) -> None:
        """A Managed HSM key with a managedHSMs topic is consistent."""
        hsm_key = f"https://my-hsm.managedhsm.azure.net/keys/newkey/{VERSION}"
        event = key_event(Id=hsm_key, VaultName="my-hsm")
        event["topic"] = event["topic"].replace("vaults/sample-kv", "managedHSMs/my-hsm")
        parsed = parse_key_event(event)
        assert parsed.key_id.is_managed_hsm
        assert parsed.vault_id is not None
        assert parsed.vault_id.is_managed_hsm


class TestIgnoredEvents:
    """Events we do not act on are returned with a reason."""

    @pytest.mark.parametrize(
        ("event_type", "reason"),
        [
            ("Microsoft.KeyVault.SecretNearExpiry", "secret and certificate"),
            ("Microsoft.KeyVault.CertificateNewVersionCreated", "secret and certificate"),
            ("Microsoft.KeyVault.VaultAccessPolicyChanged", "not a key version event"),
            ("Microsoft.Storage.BlobCreated", "not a Key Vault event"),
            ("recordInserted", "not a Key Vault event"),
        ],
    )
    def test_reasons(self, event_type: str, reason: str) -> None:
        """Secret, certificate, policy and foreign types are ignored, data unexamined."""
        event = key_event(Id="https://elsewhere.example/secrets/x")
        event["eventType"] = event_type
        parsed = parse_event(event)
        assert isinstance(parsed, IgnoredEvent)
        assert not isinstance(parsed, SubscriptionValidation)
        assert parsed.event_type == event_type
        assert reason in parsed.reason

    def test_validation_without_code_is_invalid(self) -> None:
        """A validation event without validationCode cannot be answered and is rejected."""
        event = example("eventgrid_subscription_validation_documented.json")[0]
        del event["data"]["validationCode"]
        with pytest.raises(InvalidEvent, match="validationCode"):
            parse_event(event)


INCONSISTENT = [
    ("VaultName", {"VaultName": "other-kv"}),
    ("ObjectName", {"ObjectName": "otherkey"}),
    ("Version", {"Version": "f" * 32}),
    ("ObjectType", {"ObjectType": "Secret"}),
    ("Id vault", {"Id": KEY_ID.replace("sample-kv", "other-kv")}),
    ("Id name", {"Id": KEY_ID.replace("newkey", "otherkey")}),
    ("Id version", {"Id": KEY_ID.replace(VERSION, "f" * 32)}),
    ("Id cloud", {"Id": KEY_ID.replace("vault.azure.net", "managedhsm.azure.net")}),
]


class TestInconsistentEvents:
    """A key event whose parts disagree with data.Id is rejected as inconsistent."""

    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    @pytest.mark.parametrize(("what", "change"), INCONSISTENT, ids=[c[0] for c in INCONSISTENT])
    def test_data_disagrees(self, schema: str, what: str, change: dict[str, object]) -> None:
        """Changing one data field (or data.Id) makes the event inconsistent."""
        with pytest.raises(InvalidEvent, match="inconsistent"):
            parse_event(key_event(schema, **change))

    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    def test_subject_disagrees(self, schema: str) -> None:
        """A subject naming another key is inconsistent."""
        event = key_event(schema)
        event["subject"] = "otherkey"
        with pytest.raises(InvalidEvent, match=r"inconsistent: event\.subject"):
            parse_event(event)

    @pytest.mark.parametrize(
        ("field", "schema"), [("topic", "eventgrid"), ("source", "cloudevents")]
    )
    @pytest.mark.parametrize(
        "vault_path",
        [
            "/providers/Microsoft.KeyVault/vaults/other-kv",
            "/providers/Microsoft.KeyVault/managedHSMs/sample-kv",
            "/providers/Microsoft.EventGrid/topics/sample-kv",
            "/providers/Microsoft.KeyVault/vaults/sample-kv/extra",
        ],
    )
    def test_vault_disagrees(self, field: str, schema: str, vault_path: str) -> None:
        """A topic/source that is not this key's vault is inconsistent."""
        event = key_event(schema)
        event[field] = f"/subscriptions/{SUB}/resourceGroups/sample-rg{vault_path}"
        with pytest.raises(InvalidEvent, match="inconsistent"):
            parse_event(event)

    def test_versionless_id(self) -> None:
        """data.Id without a version is rejected."""
        with pytest.raises(InvalidEvent, match="no key version"):
            parse_event(key_event(Id=KEY_ID.rsplit("/", 1)[0]))

    @pytest.mark.parametrize(
        "bad_id",
        [
            f"https://sample-kv.vault.azure.net.evil.com/keys/newkey/{VERSION}",
            f"http://sample-kv.vault.azure.net/keys/newkey/{VERSION}",
            f"https://sample-kv.vault.azure.net/secrets/newkey/{VERSION}",
            f"https://x@sample-kv.vault.azure.net/keys/newkey/{VERSION}",
        ],
    )
    def test_foreign_id(self, bad_id: str) -> None:
        """A data.Id that is not a Key Vault key id is rejected, naming data.Id."""
        with pytest.raises(InvalidEvent, match=r"data\.Id"):
            parse_event(key_event(Id=bad_id))

    @pytest.mark.parametrize("field", ["Id", "VaultName", "ObjectName", "Version", "ObjectType"])
    def test_missing_data_field(self, field: str) -> None:
        """A key event missing a field we check against data.Id is rejected."""
        event = key_event()
        del event["data"][field]
        with pytest.raises(InvalidEvent, match=f"data.{field} is missing"):
            parse_event(event)

    def test_cloudevent_needs_source(self) -> None:
        """A CloudEvent without source (required by the spec) is rejected."""
        event = key_event("cloudevents")
        del event["source"]
        with pytest.raises(InvalidEvent, match="source"):
            parse_event(event)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


class TestMalformedInput:
    """Malformed input raises InvalidEvent with a clear message, never anything else."""

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ("not json", "malformed JSON"),
            (b"\xff\xfe\x00", "not UTF-8"),
            ("", "malformed JSON"),
            ('{"id": NaN}', "NaN is not allowed"),
            ('{"id": Infinity}', "Infinity is not allowed"),
            ('{"n": 1e999}', "out of range"),
            ('{"n": ' + "9" * 5000 + "}", "too large"),
            (_deep(100_000), "nested too deeply|malformed"),
            ('{"id": "a", "id": "b"}', "appears more than once"),
            ("x" * (MAX_PAYLOAD_BYTES + 1), "exceeds"),
            ("é" * (MAX_PAYLOAD_BYTES // 2 + 1), "bytes exceeds"),  # in bytes, not characters
            (42, "must be a JSON object"),
            (None, "must be a JSON object"),
            ({1: "x"}, "not a string"),
            ({"id": "e"}, "not an event"),
            ({"id": "e", "eventType": "x", "specversion": "1.0"}, "ambiguous"),
            ({"id": "e", "type": "x", "specversion": "0.3", "source": "s"}, "specversion"),
            ({"eventType": "Microsoft.KeyVault.KeyExpired"}, "event.id is missing"),
            ({"id": 7, "eventType": "x"}, "event.id must be a string"),
            ({"id": "e", "eventType": None}, "eventType is missing"),
            ({"id": "e", "eventType": ["x"]}, "must be a string"),
            ({"id": "e", "Id": "f", "eventType": "x"}, "more than one field"),
        ],
    )
    def test_rejects(self, payload: object, message: str) -> None:
        """Each malformed payload raises InvalidEvent naming the problem."""
        with pytest.raises(InvalidEvent, match=message):
            parse_event(payload)

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"data": None}, "data must be a JSON object, not null$"),
            ({"data": "{}"}, "data must be a JSON object, not string$"),
            ({"data": []}, "data must be a JSON object, not array$"),
            ({"data": 1.5}, "data must be a JSON object, not number$"),
            ({"data": False}, "data must be a JSON object, not boolean$"),
            ({"subject": 5}, "subject must be a string, not number$"),
            ({"subject": {}}, "subject must be a string, not object$"),
            ({"topic": "/subscriptions/{subscription-id}"}, "not a Key Vault"),
        ],
    )
    def test_rejects_bad_envelope(self, change: dict[str, object], message: str) -> None:
        """Wrong types in a key event's envelope raise InvalidEvent naming the JSON type."""
        event = key_event() | change
        with pytest.raises(InvalidEvent, match=message):
            parse_event(event)

    @pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
    def test_absent_data_is_said_so(self, schema: str) -> None:
        """An event without data says data is missing (not that it is null or NoneType)."""
        event = key_event(schema=schema)
        del event["data"]
        with pytest.raises(InvalidEvent, match="data is missing: a Key Vault event"):
            parse_event(event)

    @pytest.mark.parametrize(
        ("value", "note"),
        [
            (True, "unix seconds expected, not boolean$"),
            ("soon", "not unix seconds"),
            ("-5", "not unix seconds"),
            ("1e5", "not unix seconds"),
            ([1], "unix seconds expected, not array$"),
            (10**30, "out of range"),
            (math.nan, "out of range"),
            (math.inf, "out of range"),
            (-(10**15), "out of range"),
        ],
    )
    @pytest.mark.parametrize("field", ["NBF", "EXP"])
    def test_unreadable_times_are_dropped_with_a_note(
        self, field: str, value: object, note: str
    ) -> None:
        """NBF/EXP that is not unix seconds in range decides nothing (the handler re-reads
        the key's dates): dropped, with a note saying why, and the event still parses."""
        event = parse_key_event(key_event(**{field: value}))
        assert (event.not_before if field == "NBF" else event.expires) is None
        [line] = event.notes
        assert line.startswith(f"data.{field} ignored: ")
        assert re.search(note, line)

    @pytest.mark.parametrize("value", ["yesterday", 1559081980, ["2019"]])
    def test_an_unreadable_event_time_is_dropped_with_a_note(self, value: object) -> None:
        """eventTime that is not ISO 8601 text is dropped with a note."""
        event = parse_key_event(key_event() | {"eventTime": value})
        assert event.event_time is None
        [line] = event.notes
        assert line.startswith("event.eventTime ignored: ")

    @pytest.mark.parametrize(
        ("given", "kept"),
        [("a\nb", "a\\nb"), ("e" * 600, "e" * 511 + "…")],
    )
    def test_an_unprintable_or_long_id_is_escaped_and_cut(self, given: str, kept: str) -> None:
        """The event id only names the event: control characters are escaped and it is cut
        to 512 characters, with a note; the event is not lost over it."""
        event = parse_key_event(key_event() | {"id": given})
        assert event.event_id == kept
        assert len(event.event_id) <= 512
        [line] = event.notes
        assert "event.id" in line

    @pytest.mark.parametrize("kind", ["KeyNearExpiry", "KeyExpired"])
    def test_an_unreadable_exp_decides_a_near_expiry(self, kind: str) -> None:
        """A KeyNearExpiry is confirmed by its EXP matching the key's expiry (a notice
        earlier than 30 days): an EXP that cannot be read rejects it, as the key id would;
        a KeyExpired likewise. (An NBF still only gets a note.)"""
        event = key_event(EXP="soon") | {"eventType": f"Microsoft.KeyVault.{kind}"}
        with pytest.raises(InvalidEvent, match=f"data.EXP ignored.*{kind} is confirmed by"):
            parse_event(event)
        noted = parse_key_event(key_event(NBF="soon") | {"eventType": f"Microsoft.KeyVault.{kind}"})
        assert noted.not_before is None and len(noted.notes) == 1

    def test_a_clean_event_has_no_notes(self) -> None:
        """Nothing repaired, nothing noted."""
        assert parse_key_event(key_event()).notes == ()

    def test_conflicting_data_fields(self) -> None:
        """data with both Id and id of different values is rejected, not guessed."""
        event = key_event()
        event["data"]["id"] = KEY_ID.replace("newkey", "otherkey")
        with pytest.raises(InvalidEvent, match="more than one field"):
            parse_event(event)

    def test_repeated_equal_data_fields(self) -> None:
        """data with Id and id of the same value is accepted."""
        event = key_event()
        event["data"]["id"] = KEY_ID
        assert str(parse_key_event(event).key_id) == KEY_ID


class TestBatches:
    """parse_events returns one result per item, in order."""

    def test_bad_item_does_not_lose_others(self) -> None:
        """A bad item becomes a RejectedEvent in place; the good ones still parse."""
        forged = key_event(VaultName="other-kv")
        forged["id"] = "forged"
        batch = [
            key_event(),
            forged,
            "text",
            5,
            example("eventgrid_blob_created_documented.json")[0],
        ]
        results = parse_events(batch)
        assert [type(r) for r in results] == [
            KeyVaultEvent,
            RejectedEvent,
            RejectedEvent,
            RejectedEvent,
            IgnoredEvent,
        ]
        rejected = results[1]
        assert isinstance(rejected, RejectedEvent)
        assert (rejected.index, rejected.event_id) == (1, "forged")
        assert "inconsistent" in rejected.reason
        assert [r.index for r in results if isinstance(r, RejectedEvent)] == [1, 2, 3]

    def test_single_object_is_a_batch_of_one(self) -> None:
        """A bare object parses to a list of one."""
        assert len(parse_events(json.dumps(key_event()))) == 1

    def test_empty_batch(self) -> None:
        """An empty array parses to an empty list."""
        assert parse_events("[]") == []

    def test_undecodable_payload_raises(self) -> None:
        """A payload that is not JSON at all raises rather than returning items."""
        with pytest.raises(InvalidEvent, match="malformed JSON"):
            parse_events("[{")

    def test_duplicate_delivery_parses_equal(self) -> None:
        """The same event delivered twice parses to equal values (deduplicable)."""
        first, second = parse_events([key_event(), key_event()])
        assert first == second
        assert hash(first) == hash(second)


# -- properties --------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)
_envelope_keys = st.sampled_from(
    ["id", "Id", "eventType", "type", "specversion", "topic", "source", "subject", "data"]
)
_data_keys = st.sampled_from(
    ["Id", "VaultName", "ObjectType", "ObjectName", "Version", "NBF", "EXP", "validationCode"]
)


@st.composite
def near_events(draw: st.DrawFn) -> object:
    """A valid key event with some fields replaced by arbitrary JSON."""
    event = key_event(draw(st.sampled_from(["eventgrid", "cloudevents"])))
    event = copy.deepcopy(event)
    for key in draw(st.lists(_envelope_keys, max_size=3)):
        event[key] = draw(_json)
    if isinstance(event.get("data"), dict):
        for key in draw(st.lists(_data_keys, max_size=3)):
            event["data"][key] = draw(_json)
    return event


_other_names = st.from_regex(r"[a-z][a-z0-9]{2,10}", fullmatch=True)


class TestEventProperties:
    """Properties over generated and mutated events."""

    @given(st.sampled_from(["eventgrid", "cloudevents"]), st.data())
    def test_any_disagreement_is_rejected(self, schema: str, data: st.DataObject) -> None:
        """Changing the vault, name or version in any one place rejects the event."""
        event = key_event(schema)
        other = data.draw(_other_names.filter(lambda n: n not in ("sample-kv", "newkey")))
        version = data.draw(
            st.from_regex(r"[0-9a-f]{32}", fullmatch=True).filter(lambda v: v != VERSION)
        )
        where = "topic" if schema == "eventgrid" else "source"
        mutations: list[tuple[str, str, str]] = [
            ("data", "VaultName", other),
            ("data", "ObjectName", other),
            ("data", "Version", version),
            ("data", "Id", KEY_ID.replace("sample-kv", other)),
            ("data", "Id", KEY_ID.replace("newkey", other)),
            ("data", "Id", KEY_ID.replace(VERSION, version)),
            ("event", "subject", other),
            ("event", where, f"{VAULT_TOPIC}/{other}"),
        ]
        target, field, value = data.draw(st.sampled_from(mutations))
        (event["data"] if target == "data" else event)[field] = value
        with pytest.raises(InvalidEvent, match="inconsistent"):
            parse_event(event)
        (result,) = parse_events([event])
        assert isinstance(result, RejectedEvent)

    @given(_json)
    @settings(suppress_health_check=[HealthCheck.too_slow])
    def test_arbitrary_json_only_raises_invalid_event(self, value: object) -> None:
        """Any JSON value, decoded or as text, parses or raises InvalidEvent only."""
        for payload in (value, json.dumps(value)):
            with contextlib.suppress(InvalidEvent):
                parse_event(payload)
            with contextlib.suppress(InvalidEvent):
                assert isinstance(parse_events(payload), list)

    @given(near_events())
    def test_near_valid_events_only_raise_invalid_event(self, event: object) -> None:
        """Valid events with arbitrary fields swapped in parse or raise InvalidEvent only."""
        try:
            parsed = parse_event(event)
        except InvalidEvent:
            return
        if isinstance(parsed, KeyVaultEvent):
            assert parsed.key_id.version is not None

    @given(st.binary() | st.text())
    def test_arbitrary_bytes_only_raise_invalid_event(self, payload: bytes | str) -> None:
        """Any bytes or text parse or raise InvalidEvent only."""
        with contextlib.suppress(InvalidEvent):
            parse_events(payload)
