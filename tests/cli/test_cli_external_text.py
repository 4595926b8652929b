"""External text (our errors, Azure's messages, resource names) reaches the terminal as
plain text: never parsed as markup, control characters shown escaped, never a crash."""

from __future__ import annotations

import argparse
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout

import pytest
from cli_rig import SCHEMAS
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import validate
from rich.rule import Rule

from cmk.cli import main
from cmk.commands.errors import UsageError
from cmk.commands.interrupt import Journal
from cmk.commands.output import Output, clean, styled, table, tsv_cell
from cmk.commands.session import fail
from cmk.commands.tables import print_sweep
from cmk.errors import InvalidKeyId, TransientError
from cmk.usecases import SweepReport

#: Text as hostile as it gets: rich markup, emoji codes, escape sequences, bidi overrides.
NASTY = [
    "[/{version}]",
    "[bold red]x[/]",
    "[link=https://evil]x[/link]",
    "[/]",
    ":smile: :warning:",
    "\x1b[31mred\x1b[0m\x1b]0;title\x07",
    "carriage\rreturn\x08\x7f",
    "\u202eevil\u200b",
    "tab\there\nnew line",
]
EXTERNAL = st.one_of(st.sampled_from(NASTY), st.text(max_size=60))

# What rich itself writes for styles (SGR) on a terminal; anything else is from the input.
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def _no_raw_controls(text: str) -> bool:
    """No control character but line breaks and tabs (tsv's separator) outside rich's SGR."""
    allowed = {"\n", "\t"}
    return not any(
        (ord(c) < 32 and c not in allowed) or 0x7F <= ord(c) < 0xA0 for c in _SGR.sub("", text)
    )


def _print_everywhere(text: str, output_format: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        output = Output(output_format == "json", output_format)
        output.note(text)
        output.print(text)
        output.print(table(text, (text, "state"), [(text, styled(text)), (None, text)]))
        report = SweepReport(run_id=text, dry_run=False, accounts=0, keys_read=0, errors=(text,))
        print_sweep(output, report)
        journal = Journal(text)
        journal.did(text)
        journal.now(text, not_done=text, finish=text)
        output.note(journal.message())
        for error in (InvalidKeyId(text), UsageError(text), TransientError(text), KeyError(text)):
            args = argparse.Namespace(json=output_format == "json", output=output_format)
            fail(args, output, error)
    return out.getvalue(), err.getvalue()


def _documents(text: str) -> list[object]:
    decoder, documents, position = json.JSONDecoder(), [], 0
    while position < len(text.rstrip()):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


class TestOutputOfExternalText:
    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(text=EXTERNAL, output_format=st.sampled_from(["table", "tsv", "json"]))
    @example(text="[/{version}]", output_format="table")
    def test_every_printer_takes_any_text(self, text: str, output_format: str):
        """Notes, lines, tables, states, errors and interruption reports print any text
        without raising, and no control character of it reaches the output raw."""
        out, err = _print_everywhere(text, output_format)
        assert _no_raw_controls(out) and _no_raw_controls(err)
        if output_format == "json":
            for document in _documents(out):
                validate(document, SCHEMAS["error"])
        elif output_format == "tsv":
            assert len(out.splitlines()) == 2  # the table's two rows, nothing else

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(text=EXTERNAL)
    def test_on_a_terminal_markup_stays_text(self, text: str, monkeypatch: pytest.MonkeyPatch):
        """With colours on (a terminal), the text is printed as it is, not interpreted."""
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.delenv("NO_COLOR", raising=False)
        out, err = _print_everywhere(text, "table")
        assert _no_raw_controls(out) and _no_raw_controls(err)
        visible = _SGR.sub("", err)
        assert clean(text).split("\n")[0] in visible

    @pytest.mark.parametrize("text", NASTY)
    def test_markup_is_printed_literally(self, text: str):
        """Markup-looking text comes out character for character."""
        out, _ = _print_everywhere(text, "table")
        assert clean(text).split("\n")[0] in out

    @pytest.mark.parametrize("text", NASTY)
    def test_tsv_fields_are_one_line(self, text: str):
        """A tsv field never contains a tab or a line break."""
        field = tsv_cell(text)
        assert "\t" not in field and "\n" not in field and _no_raw_controls(field)


class TestCommandsGivenAnyText:
    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(text=EXTERNAL, as_json=st.booleans())
    def test_versions_with_any_key_id(self, text: str, as_json: bool, monkeypatch):
        """`cmk versions TEXT` exits 2 with one error (a JSON one with --json), whatever
        TEXT is; nothing is raised and no traceback is printed."""
        for name in ("CMK_VAULT_ALLOWLIST", "CMK_SUBSCRIPTIONS", "AzureWebJobsStorage"):
            monkeypatch.delenv(name, raising=False)
        out, err = io.StringIO(), io.StringIO()
        argv = ["versions", *(["--json"] if as_json else []), "--", text]
        with redirect_stdout(out), redirect_stderr(err):
            code = main(argv)
        assert code == 2, err.getvalue()
        assert "Traceback" not in err.getvalue() and _no_raw_controls(err.getvalue())
        if as_json and out.getvalue():
            validate(json.loads(out.getvalue()), SCHEMAS["error"])


def test_piped_tables_keep_each_row_on_one_line() -> None:
    """Off a terminal a table row is one line, however long its cells: a long cell ends
    with an ellipsis (``-o json`` has it whole), and the table is not padded to the width."""
    out = io.StringIO()
    long_detail = "replaces " + "/".join(f"segment{i}" for i in range(60))
    with redirect_stdout(out):
        Output(False, "table").print(
            table("accounts", ("account", "detail"), [("rg/a", long_detail), ("rg/b", "short")])
        )
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    rows = [line for line in lines if "rg/" in line]
    assert len(rows) == 2, out.getvalue()
    assert "…" in rows[0] and "│ short " in rows[1]
    assert all("segment59" not in line for line in lines)
    assert max(len(line) for line in lines) <= 200


def test_piped_rules_are_headings_not_lines_across_the_width() -> None:
    """Off a terminal a rule prints as a short heading (its title), not a line padded to
    the pipe's width."""
    out = io.StringIO()
    with redirect_stdout(out):
        output = Output(False, "table")
        output.print(Rule("Results"))
        output.print(Rule("Act 1: a new key version arrives", align="left"))
    assert out.getvalue().splitlines() == ["── Results ──", "Act 1: a new key version arrives ──"]
