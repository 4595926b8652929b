"""What a terminal shows: colours only on a terminal and never with NO_COLOR, no escape
codes when piped. `cmk` runs as a process on a real pseudo-terminal, or on pipes."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path

import pytest
from cli_rig import World

from cmk.cli import main
from cmk.commands import output as output_module
from cmk.commands.output import Output

CMK = Path(sys.executable).parent / "cmk"
CEILING_SECONDS = 60
_SGR = re.compile(r"\x1b\[([0-9;]*)m")
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: The last character of each line of a table: its right border.
RIGHT_BORDERS = frozenset("┓┃┩│┘")


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `cmk ARGV` with stdout and stderr on one pseudo-terminal; its code and output."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [str(CMK), *argv], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(controller)
        code = process.wait(timeout=CEILING_SECONDS)
    return code, b"".join(chunks).decode("utf-8", "replace")


def _colours(text: str) -> list[str]:
    """The SGR parameter lists that set a foreground colour."""
    found = []
    for params in _SGR.findall(text):
        parts = params.split(";")
        if any(
            p in {"38"} or (p.isdigit() and (30 <= int(p) <= 37 or 90 <= int(p) <= 97))
            for p in parts
        ):
            found.append(params)
    return found


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "FORCE_COLOR"}}
    env.update({"TERM": "xterm-256color", "COLUMNS": "80", **extra})
    return env


class TestColours:
    def test_terminal_shows_states_in_colour(self, world: World):
        """On a terminal the states are coloured (what NO_COLOR must turn off)."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        code, text = _on_a_terminal(["status"], _env())
        assert code == 1, text
        assert _colours(text) and "stale" in text

    def test_no_color_turns_colours_off(self, world: World):
        """With NO_COLOR set, a terminal gets no colour codes."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        code, text = _on_a_terminal(["status"], _env(NO_COLOR="1"))
        assert code == 1, text
        assert "stale" in text and _colours(text) == []

    def test_pipes_get_plain_text(self, world: World):
        """Piped, stdout and stderr hold no escape code, and no line is padded."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        result = subprocess.run(
            [str(CMK), "sweep"],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
        assert not [line for line in result.stdout.splitlines() if line.endswith(" ")]
        assert "moving accounts: 6/6" in result.stderr  # progress as lines, not a bar

    def test_names_stay_whole_on_80_columns(self, world: World):
        """On an 80-column terminal the table fits, and each account's `rg/name` is shown
        whole on one line (less important columns are left out instead)."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        code, text = _on_a_terminal(["status"], _env(NO_COLOR="1"))
        assert code == 1, text
        plain = _CSI.sub("", text).replace("\r", "")
        rows = [line for line in plain.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(len(line) <= 80 for line in rows), plain
        cmk_accounts = [
            a
            for a in world.sandbox.world.accounts.values()
            if a.encryption.key_source == "Microsoft.KeyVault"
        ]
        assert len(cmk_accounts) == 48
        for account in cmk_accounts:
            group = account.resource_id.split("/")[4]
            assert f"{group}/{account.name}" in plain, account.name

    def test_findings_keep_their_names_and_leave_the_detail_out(self, world: World):
        """`cmk plan` on 80 columns: each finding's subject and key are whole (the rows
        stay told apart); the detail column, which would wrap into fragments, is left out,
        and a caption under the table says so and where to find it."""
        now = world.sandbox.world.clock.now()
        for vault, key in (("kv-demo-neu", "ai-cmk"), ("kv-demo-weu", "ai-cmk")):
            version = world.vault(vault).keys[key].versions[-1]
            version.expires = now + timedelta(days=3)  # each bound account: a finding
        code, text = _on_a_terminal(["plan"], _env(NO_COLOR="1"))
        plain = _CSI.sub("", text).replace("\r", "")
        assert code == 1, plain
        findings = plain[plain.index("Findings") :]
        rows = [line for line in findings.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(len(line) <= 80 and line[-1] in RIGHT_BORDERS for line in rows), plain
        caption = "detail left out to fit 80 columns: a wider terminal, -o json or -o tsv shows it"
        assert caption in " ".join(findings.split()), plain
        for vault in ("kv-demo-neu", "kv-demo-weu"):
            for account in world.accounts_on(vault, "ai-cmk"):
                group = account.resource_id.split("/")[4]
                assert f"{group}/{account.name}" in findings, (account.name, plain)

    @pytest.mark.parametrize("columns", [80, 60])
    def test_versions_never_cut_a_date(self, world: World, columns: int):
        """`cmk versions` on a narrow terminal shows each expiry whole on one line: the
        full time at 80 columns (the tags column is left out first, its words go to the
        "why" lines), the date alone when narrower; never `2027-12…`."""
        world.new_version("kv-demo-weu", "ai-cmk")
        key = world.vault("kv-demo-weu").keys["ai-cmk"]
        env = _env(NO_COLOR="1", COLUMNS=str(columns))
        code, text = _on_a_terminal(["versions", world.key_id("kv-demo-weu", "ai-cmk")], env)
        assert code == 0, text
        plain = _CSI.sub("", text).replace("\r", "")
        rows = [line for line in plain.splitlines() if line[:1] in "┏┃┡│└"]
        assert rows and all(len(line) <= columns for line in rows), plain
        assert not re.search(r"\d{4}-\d\d…", plain), plain
        shown = "%Y-%m-%d %H:%M:%S" if columns == 80 else "%Y-%m-%d"
        for version in key.versions:
            assert version.expires is not None
            assert version.expires.strftime(shown) in plain, plain
        assert "(latest, newest valid)" in plain


def _tables(plain: str) -> list[list[str]]:
    """The tables of a terminal's text, each as its lines and the lines under it up to a
    blank line or a line that is not the table's (its caption)."""
    found: list[list[str]] = []
    lines = plain.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("┏"):
            end = next(i for i in range(index, len(lines)) if lines[i].startswith("└"))
            found.append(lines[index : end + 1])
    return found


def _header(lines: list[str]) -> list[str]:
    """The column names of a table (a header may wrap over several lines)."""
    parts: list[list[str]] = []
    for line in lines:
        if line.startswith("┃"):
            for index, text in enumerate(line.strip("┃").split("┃")):
                parts.extend([] for _ in range(index + 1 - len(parts)))
                parts[index].extend(text.split())
    return [" ".join(words) for words in parts]


class TestTablesFitTheTerminal:
    @pytest.mark.parametrize("columns", [80, 120])
    @pytest.mark.parametrize("command", ["status", "versions", "history", "plan"])
    def test_every_table_line_ends_with_its_border(self, world: World, command: str, columns):
        """`cmk status`, `versions`, `history` and `plan` on a terminal 80 or 120 columns
        wide: each table line ends with its right border, no wider than the terminal (the
        audit's `versions` had `safe to dis` and no border, its rows cut at the edge)."""
        world.new_version("kv-demo-weu", "ai-cmk")
        assert _piped(["rotate", world.key_id("kv-demo-weu", "ai-cmk-exp")])[0] == 0
        argv = {
            "status": ["status"],
            "versions": ["versions", world.key_id("kv-demo-weu", "ai-cmk")],
            "history": ["history"],
            "plan": ["plan"],
        }[command]
        _, text = _on_a_terminal(argv, _env(NO_COLOR="1", COLUMNS=str(columns)))
        plain = _CSI.sub("", text).replace("\r", "")
        tables = _tables(plain)
        assert tables, plain
        for lines in tables:
            assert all(len(line) <= columns and line[-1] in RIGHT_BORDERS for line in lines), plain

    @pytest.mark.parametrize(
        ("argv", "columns", "kept"),
        [
            (["status"], 80, ["account", "key", "bound", "state"]),
            (["versions"], 80, ["version", "expires", "bindable", "safe to disable"]),
            (["history"], 80, ["updated", "account", "version", "state"]),
        ],
    )
    def test_caption_names_every_column_left_out(self, world: World, argv, columns, kept):
        """On 80 columns the caption under each table names every column it left out (the
        audit's `status` named only `detail`, dropping five), and says how to see them; the
        bound version is kept before the subscription, the age and the detail."""
        world.new_version("hsm-demo-weu", "ai-cmk-hsm", kty="RSA-HSM")
        assert _piped(["rotate", world.key_id("kv-demo-weu", "ai-cmk-exp")])[0] == 0
        if argv == ["versions"]:
            argv = ["versions", world.key_id("kv-demo-weu", "ai-cmk")]
        [piped] = _tables(_piped(argv)[1])
        everything = _header(piped)  # the same command, piped: every column
        _, text = _on_a_terminal(argv, _env(NO_COLOR="1", COLUMNS=str(columns)))
        plain = _CSI.sub("", text).replace("\r", "")
        [lines] = _tables(plain)
        assert _header(lines) == kept, plain
        left_out = [name for name in everything if name not in kept]
        names = ", ".join(left_out[:-1]) + f" and {left_out[-1]}"
        caption = (
            f"{names} left out to fit {columns} columns: a wider terminal, -o json or -o tsv"
            " shows them"
        )
        assert caption in " ".join(plain.split()), plain


def _piped(argv: list[str]) -> tuple[int, str]:
    """``cmk ARGV`` in this process with stdout not a terminal: its exit code and stdout."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        code = main(argv)
    return code, out.getvalue()


class TestProgressWhenPiped:
    def test_long_work_says_it_is_still_going(self, monkeypatch):
        """Not on a terminal, work of unknown length prints a line now and then on stderr,
        and stops when the work ends."""
        monkeypatch.setattr(output_module, "STILL_WORKING_SECONDS", 0.01)
        err = io.StringIO()
        with redirect_stderr(err):
            output = Output(False)
            with output.working("reading the inventory"):
                deadline = time.monotonic() + CEILING_SECONDS
                while "reading the inventory... (" not in err.getvalue():
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            after = err.getvalue()
            time.sleep(0.05)
        assert err.getvalue() == after  # nothing more once the work is over

    def test_counted_work_prints_tenths(self):
        """Not on a terminal, counted work prints a line at every tenth, retries included."""
        err = io.StringIO()
        with redirect_stderr(err), Output(False).progress("moving accounts", 20) as ticker:
            ticker.retried()
            for _ in range(20):
                ticker.advance()
        lines = err.getvalue().splitlines()
        assert len(lines) == 10 and lines[-1].startswith("moving accounts: 20/20, 1 retries (")
