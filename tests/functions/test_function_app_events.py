"""function_app._event: what the Functions library hands a trigger, back into the event
Event Grid sent — in both schemas — so cmk.events parses exactly what was delivered."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func

from cmk.events import KeyVaultEvent, KeyVaultEventType, parse_event
from function_app import _event

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"


def _payload(name: str) -> dict[str, Any]:
    [event] = json.loads((DATA / name).read_text())["payload"]
    return dict(event)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


class TestEventShapes:
    def test_event_grid_schema_round_trips(self) -> None:
        """An Event Grid-schema delivery parses to the same key event as the raw payload."""
        raw = _payload("eventgrid_key_new_version.json")
        delivered = func.EventGridEvent(
            id=raw["id"],
            data=raw["data"],
            topic=raw["topic"],
            subject=raw["subject"],
            event_type=raw["eventType"],
            event_time=_time(raw.get("eventTime")),
            data_version=raw["dataVersion"],
        )
        parsed = parse_event(_event(delivered))
        assert isinstance(parsed, KeyVaultEvent)
        assert parsed == parse_event(raw)

    def test_cloudevents_schema_is_handled(self) -> None:
        """A CloudEvents delivery (a user-made subscription) parses instead of failing."""
        raw = _payload("cloudevents_key_new_version.json")
        delivered = func.CloudEvent(
            id=raw["id"],
            source=raw["source"],
            type=raw["type"],
            specversion=raw["specversion"],
            data=raw["data"],
            time=_time(raw.get("time")),
            subject=raw.get("subject"),
        )
        parsed = parse_event(_event(delivered))
        assert isinstance(parsed, KeyVaultEvent)
        assert parsed.event_type is KeyVaultEventType.NEW_VERSION
        assert parsed.key_id == parse_event(raw).key_id  # type: ignore[union-attr]
