"""The operator documentation covers what the code has: every alert type, every command."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli_rig import SCHEMAS

from cmk.cli import build_parser
from cmk.ports import AlertType, Severity

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _commands() -> list[str]:
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(subparsers.choices)


class TestRunbook:
    def test_every_alert_type_has_an_entry(self):
        """docs/operations.md has a section per AlertType with check, fix and verify steps."""
        text = (DOCS / "operations.md").read_text()
        for alert in AlertType:
            heading = f"### `{alert.value}`"
            assert heading in text, alert
            section = text.split(heading, 1)[1].split("\n### ", 1)[0]
            for part in ("**Means.**", "**Check.**", "**Fix.**", "**Verify.**", "cmk "):
                assert part in section, (alert, part)


class TestCliReference:
    def test_every_operator_command_is_documented(self):
        """docs/cli.md names every registered subcommand."""
        text = (DOCS / "cli.md").read_text()
        for command in _commands():
            assert f"`cmk {command}" in text, command

    def test_every_json_command_has_a_schema(self):
        """Each operator command's --json output has a documented schema."""
        for command in ("status", "plan", "sweep", "rotate", "versions", "replay", "history"):
            assert command in SCHEMAS
        assert {"demo", "error"} <= set(SCHEMAS)

    def test_alert_schema_names_every_alert_type(self):
        """A script validating alerts against the documented schema accepts every type the
        code raises, and the schema names no type the code lacks."""
        alert = SCHEMAS["plan"]["$defs"]["alert"]["properties"]
        assert set(alert["type"]["enum"]) == {a.value for a in AlertType}
        assert set(alert["severity"]["enum"]) == {s.value for s in Severity}

    def test_conventions_are_documented(self):
        """docs/cli.md documents --output, --version, every exit code, Ctrl-C and the
        interrupted error document."""
        text = (DOCS / "cli.md").read_text()
        for part in ("`-o json`", "`-o tsv`", "`--json`", "`cmk --version`", "`--query`"):
            assert part in text, part
        for code in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
            assert code in text, code
        assert (
            "interrupted" in SCHEMAS["error"]["properties"]["error"]["properties"]["kind"]["enum"]
        )
