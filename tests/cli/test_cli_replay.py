"""``cmk replay``: dead-lettered events from a file through the app's handlers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from azure.storage.queue import QueueClient
from cli_rig import World

from cmk.commands.errors import UsageError
from cmk.commands.replay import load_items
from cmk.sandbox.eventgrid.service import shape_event
from cmk.sandbox.keyvault.model import key_event
from cmk.sandbox.world import KeyEventType


def _dead_letter(world: World, vault: str, key: str, schema: str) -> dict[str, object]:
    """The event of the key's latest version as Event Grid dead-letters it."""
    state = world.vault(vault).keys[key]
    latest = state.versions[-1]
    event = key_event(
        world.sandbox.world, KeyEventType.NEW_VERSION, world.vault(vault), state, latest
    )
    shaped = shape_event(event, schema)
    shaped.update(deadLetterReason="MaxDeliveryAttemptsExceeded", deliveryAttempts=30)
    return shaped


class TestReplay:
    def test_array_of_both_schemas_enqueues_jobs(
        self, world: World, cmk, tmp_path: Path, azurite: str
    ):
        """A JSON array with an Event Grid and a CloudEvents event fans both out to the queue."""
        world.new_version("kv-demo-neu", "ai-cmk")
        world.new_version("kv-demo-weu", "ai-cmk-exp")
        events = [
            _dead_letter(world, "kv-demo-neu", "ai-cmk", "EventGridSchema"),
            _dead_letter(world, "kv-demo-weu", "ai-cmk-exp", "CloudEventSchemaV1_0"),
        ]
        path = tmp_path / "deadletter.json"
        path.write_text(json.dumps(events))
        run = cmk("replay", str(path), "--json")
        document = run.valid("replay")
        assert run.code == 0, run.err
        assert [e["outcome"] for e in document["events"]] == ["fanned_out", "fanned_out"]
        assert [e["report"]["enqueued"] for e in document["events"]] == [10, 8]
        with QueueClient.from_connection_string(azurite, os.environ["CMK_JOB_QUEUE"]) as queue:
            assert queue.get_queue_properties().approximate_message_count == 18

    @pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
    def test_an_event_out_of_scope_is_its_row_not_a_log_line(
        self, world: World, cmk, tmp_path: Path, verbose: bool
    ):
        """An event of a vault outside the allow-list: its `out_of_scope` row says so; the
        app's `WARNING … ignoring …` line shows only with -v."""
        world.new_version("kv-demo-neu", "ai-cmk")
        event = _dead_letter(world, "kv-demo-neu", "ai-cmk", "EventGridSchema")
        text = json.dumps([event]).replace("kv-demo-neu", "kv-elsewhere")  # topic and data
        path = tmp_path / "elsewhere.json"
        path.write_text(text)
        run = cmk("replay", "--dry-run", "--json", str(path), *(["-v"] if verbose else []))
        [outcome] = [e["outcome"] for e in run.valid("replay")["events"]]
        assert outcome == "out_of_scope", run.out
        assert ("ignoring" in run.err) is verbose, run.err

    def test_json_lines_inline_with_a_bad_line(self, world: World, cmk, tmp_path: Path):
        """JSON lines: good events move accounts here (--inline); a bad line is rejected, exit 1."""
        version = world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        good = _dead_letter(world, "hsm-demo-weu", "ai-cmk-hsm", "EventGridSchema")
        path = tmp_path / "events.jsonl"
        path.write_text(json.dumps(good) + "\nnot json\n" + json.dumps(good) + "\n")
        run = cmk("replay", str(path), "--inline")
        assert run.code == 1
        assert "rejected" in run.out and run.out.count("fanned_out") == 2
        accounts = world.accounts_on("hsm-demo-weu", "ai-cmk-hsm")
        assert {a.encryption.key_version for a in accounts} == {version}

    def test_dry_run_moves_nothing(self, world: World, cmk, tmp_path: Path):
        """--dry-run plans the moves and changes nothing."""
        version = world.new_version("kv-demo-neu", "ai-cmk")
        path = tmp_path / "one.json"
        path.write_text(json.dumps(_dead_letter(world, "kv-demo-neu", "ai-cmk", "EventGridSchema")))
        run = cmk("replay", str(path), "--dry-run", "--inline", "--json")
        document = run.valid("replay")
        assert run.code == 0 and document["summary"]["would_update"] == 10
        assert all(
            a.encryption.key_version != version for a in world.accounts_on("kv-demo-neu", "ai-cmk")
        )

    @pytest.mark.parametrize(
        ("data", "said"),
        [
            (None, "data is missing"),
            ([], "data must be a JSON object, not array"),
            ("{}", "data must be a JSON object, not string"),
        ],
        ids=["absent", "array", "string"],
    )
    def test_bad_data_is_named_in_json_words(
        self, world: World, cmk, tmp_path: Path, data: object, said: str
    ):
        """An event whose data is absent or not an object is rejected in JSON's words,
        never Python's (NoneType, list, str)."""
        event = _dead_letter(world, "kv-demo-neu", "ai-cmk", "EventGridSchema")
        if data is None:
            del event["data"]
        else:
            event["data"] = data
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(event))
        run = cmk("replay", str(path), "--json")
        [item] = run.valid("replay")["events"]
        assert run.code == 1 and item["outcome"] == "rejected"
        assert said in item["detail"]
        assert not {"NoneType", "list", "str"} & set(item["detail"].replace(",", " ").split())

    def test_missing_file_is_a_usage_error(self, world: World, cmk, tmp_path: Path):
        """A file that cannot be read: exit 2 naming it."""
        run = cmk("replay", str(tmp_path / "nope.json"))
        assert run.code == 2 and "nope.json" in run.err


class TestEventFile:
    """What ``load_items`` reads from an event file: one bad line never costs the others."""

    GOOD = {"id": "e-1", "eventType": "Microsoft.KeyVault.KeyNewVersionCreated"}

    @pytest.mark.parametrize(
        ("bad", "reason"),
        [
            ('{"id": "cut', "line 1 column"),  # a truncated first line
            ("[" * 100_000, "line 1: JSON nested too deeply"),
            ('{"id": "a\tb"}', "line 1 column"),  # a raw tab: "Invalid control character at"
        ],
    )
    def test_a_bad_line_is_rejected_in_place(self, tmp_path: Path, bad: str, reason: str):
        """A JSON-lines file whose first line is broken or hostile still yields the
        other lines' events; the bad one is its reason, rejected in place."""
        path = tmp_path / "events.jsonl"
        path.write_text(bad + "\n" + json.dumps(self.GOOD) + "\n" + json.dumps(self.GOOD) + "\n")
        first, *rest = load_items(path)
        assert isinstance(first, str) and first.startswith(reason)
        assert " at at " not in first and not first.endswith(" at")
        assert rest == [self.GOOD, self.GOOD]

    def test_one_document_nested_too_deeply_is_a_usage_error(self, tmp_path: Path):
        """A single document nested past the parser's depth is refused with a reason."""
        path = tmp_path / "events.json"
        path.write_text("[" * 100_000)
        with pytest.raises(UsageError, match="nested too deeply"):
            load_items(path)
