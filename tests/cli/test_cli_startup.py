"""Before a command runs: Ctrl-C while `cmk` imports its commands, command lines that do
not parse (the subcommand's usage; with --json the error document), and help that tells
the exit codes the command has."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import jsonschema
import pytest
from cli_rig import SCHEMAS, Run

from cmk import cli
from cmk.cli import build_parser

#: Only bounds a hang.
CEILING_SECONDS = 60

#: `cmk ARGV` that gets a real SIGINT while Python imports cmk.commands.inline, i.e. while
#: `cmk` is still starting (an audit hook sends it; SIGINT at its default handler even
#: when the suite runs in the background).
INTERRUPTED_WHILE_IMPORTING = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
sent = []
def hook(event, args):
    if event == "import" and args[0] == "cmk.commands.inline" and not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)
sys.addaudithook(hook)
from cmk.cli import main
sys.exit(main(sys.argv[1:]))
"""


class TestCtrlCWhileStarting:
    @pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
    def test_quiet_exit_130(self, as_json: bool):
        """Ctrl-C during the imports: one line on stderr, no traceback, exit 130; with
        --json also the error document (kind interrupted) on stdout, as any command's."""
        argv = ["rotate", "https://kv.vault.azure.net/keys/k", *(["--json"] if as_json else [])]
        ended = subprocess.run(
            [sys.executable, "-c", INTERRUPTED_WHILE_IMPORTING, *argv],
            capture_output=True,
            text=True,
            timeout=CEILING_SECONDS,
            check=False,
        )
        assert ended.returncode == 130, ended.stderr
        assert "Traceback" not in ended.stderr and "KeyboardInterrupt" not in ended.stderr
        assert ended.stderr == "cmk: interrupted while starting; nothing was done\n"
        if not as_json:
            assert ended.stdout == ""
            return
        document = json.loads(ended.stdout)
        jsonschema.validate(document, SCHEMAS["error"])
        assert document["error"]["kind"] == "interrupted"
        assert document["error"]["exit_code"] == 130

    def test_a_command_without_a_journal_gives_its_document_too(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`cmk status --json` interrupted while it runs (status keeps no journal): the
        interrupted line on stderr and the error document on stdout, exit 130."""
        real = cli._parse

        def parse(argv: Any) -> Any:
            args = real(argv)

            def interrupted(_: object) -> int:
                raise KeyboardInterrupt

            args.func = interrupted
            return args

        monkeypatch.setattr(cli, "_parse", parse)

        code = cli.main(["status", "--json"])

        out, err = capsys.readouterr()
        assert code == 130 and err.startswith("cmk status: interrupted")
        document = json.loads(out)
        jsonschema.validate(document, SCHEMAS["error"])
        assert document["error"]["kind"] == "interrupted"
        assert document["error"]["fix"] == "run `cmk status` again"


class TestCommandLinesThatDoNotParse:
    def test_unknown_option_shows_the_subcommands_usage(self, cmk):
        """`cmk status --bogus`: the usage of `cmk status`, not of `cmk`; exit 2."""
        run: Run = cmk("status", "--bogus")
        assert run.code == 2 and run.out == ""
        assert run.err.startswith("usage: cmk status ")
        assert "cmk status: error: unrecognized arguments: --bogus" in run.err

    @pytest.mark.parametrize(
        "output", [["--json"], ["-o", "json"], ["--output", "json"], ["--output=json"]], ids=str
    )
    def test_json_gets_the_error_document(self, cmk, output: list[str]):
        """`cmk history --limit 0 --json`: the usage and reason on stderr, the error
        document (kind usage, a fix) on stdout, exit 2, as docs/cli.md promises."""
        run: Run = cmk("history", "--limit", "0", *output)
        assert run.code == 2
        error = run.valid("error")["error"]
        assert error["kind"] == "usage" and error["exit_code"] == 2
        assert "--limit" in error["message"] and error["fix"] == "see `cmk history --help`"
        assert run.err.startswith("usage: cmk history ")

    def test_without_json_or_with_a_query_stdout_stays_empty(self, cmk):
        """Without --json, or with --query (as az), an error prints nothing on stdout."""
        assert cmk("history", "--limit", "0").out == ""
        assert cmk("history", "--limit", "0", "--query", "entries").out == ""
        assert "error" in SCHEMAS


class TestHelp:
    def test_demo_says_ctrl_c_exits_130(self):
        """`cmk demo --help` tells Ctrl-C's exit code as it is (130; SIGTERM's is 143)."""
        parser = build_parser()
        [sub] = [a for a in parser._actions if a.dest == "command"]
        text = " ".join(sub.choices["demo"].format_help().split())  # type: ignore[attr-defined]
        assert "exits 130 after Ctrl-C (SIGINT), 143 after SIGTERM" in text
        assert "(or Ctrl-C)" not in text
