"""The ``cmk`` command line. Each subcommand lives in its own module that registers itself
with ``add_parser(subparsers)``; modules whose optional dependencies are missing (the
sandbox and demo need the ``dev`` extras) are skipped, so the core commands work in a
production install. Exit codes: 0 all good, 1 failures or findings, 2 usage or
configuration error, 130 interrupted (see docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import NoReturn

logger = logging.getLogger(__name__)

# Modules that add subcommands (``add_parser(subparsers)``), in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "cmk.commands.status",
    "cmk.commands.plan",
    "cmk.commands.sweep",
    "cmk.commands.rotate",
    "cmk.commands.versions",
    "cmk.commands.replay",
    "cmk.commands.history",
    "cmk.commands.lifecycle",
    "cmk.commands.smoke",
    "cmk.commands.demo",
    "cmk.sandbox.command.up",
)

EXIT_CODES = (
    "exit codes: 0 all good, 1 failures or findings, 2 usage or configuration error,"
    " 130 interrupted (Ctrl-C), 141 output closed by its reader, 143 stopped by SIGTERM"
)

#: What an interrupted command that keeps no journal of its own says.
INTERRUPTED = {
    "demo": "the demo's local Azure ran in this process and stops with it; run `cmk demo` again",
}

#: How argparse words a --query refused by cmk.commands.query.
_QUERY_REFUSED = "argument --query: Invalid jmespath query supplied for `--query`"

# reST roles (:mod:`x`, :func:`~a.b`), literals (``x``) and Markdown code (`x`) in
# docstrings used as help.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_CODE = re.compile(r"`([^`\n]+)`")


def package_version() -> str:
    """The installed version of cmk-rotator."""
    try:
        return version("cmk-rotator")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def plain_help(text: str | None) -> str | None:
    """Help text without markup: ``x`` and `x` become x, :mod:`a.b` becomes a.b (names
    read as names, as in az's help)."""
    if not text:
        return text
    return _CODE.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text)))


def _plain_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = plain_help(parser.description)
    parser.epilog = plain_help(parser.epilog)
    for action in parser._actions:
        action.help = plain_help(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_help(choice.help)
                chosen = action.choices.get(choice.dest)
                if chosen is not None and not chosen.description and choice.help:
                    # `cmk sandbox up --help` says what it does, as its line in the list
                    chosen.description = choice.help[0].upper() + choice.help[1:] + "."
            for subparser in {id(p): p for p in action.choices.values()}.values():
                if subparser.epilog is None:
                    subparser.epilog = EXIT_CODES
                _plain_parser(subparser)


class ParseError(Exception):
    """A command line ``parser`` cannot parse: ``message`` says why."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser, self.message = parser, message


class _Parser(argparse.ArgumentParser):
    """A parser whose errors are raised (with the parser of the subcommand that failed),
    so that :func:`main` can print that subcommand's usage and, with ``--json``, the
    error document."""

    def error(self, message: str) -> NoReturn:
        raise ParseError(self, message)


def build_parser() -> argparse.ArgumentParser:
    """The ``cmk`` parser with every available subcommand."""
    parser = _Parser(
        prog="cmk",
        description="Customer-managed key rotation for Azure AI services accounts.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"cmk {package_version()}")
    _global_options(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            logger.debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.add_parser(subparsers)
    _plain_parser(parser)
    return parser


#: The options every command takes that may also come before it (``cmk -o json status``,
#: as ``az -o json group list``): dest on the ``cmk`` parser -> dest on the command's.
GLOBAL_OPTIONS = {
    "global_output": "output",
    "global_json": "json",
    "global_query": "query",
    "global_verbose": "verbose",
}


def _global_options(parser: argparse.ArgumentParser) -> None:
    """``-o/--output``, ``--json``, ``--query``, ``-v`` before the command: they apply to
    it (an option given after the command wins). Kept apart (``global_*``) so that the
    command's own defaults do not overwrite them."""
    # imported here, not at the top: Ctrl-C while cmk imports must stay a quiet exit 130
    from cmk.commands.output import OUTPUT_FORMATS, query_type  # noqa: PLC0415

    parser.add_argument(
        "-o",
        "--output",
        dest="global_output",
        choices=OUTPUT_FORMATS,
        default=None,
        help="table, json or tsv: as the command's --output",
    )
    parser.add_argument(
        "--json", dest="global_json", action="store_true", help="the same as --output json"
    )
    parser.add_argument(
        "--query",
        dest="global_query",
        metavar="JMESPATH",
        type=query_type,
        default=None,
        help="a JMESPath expression applied to the command's JSON document",
    )
    parser.add_argument(
        "-v", "--verbose", dest="global_verbose", action="store_true", help="INFO logs on stderr"
    )


def _apply_global_options(
    parser: argparse.ArgumentParser, command: argparse.ArgumentParser, args: argparse.Namespace
) -> None:
    """Give the command the options that came before it (unless it was given its own:
    ``--json`` and ``--output`` count as one)."""
    own_format = getattr(args, "output", None) is not None or getattr(args, "json", False)
    for outer, inner in GLOBAL_OPTIONS.items():
        value = getattr(args, outer, None)
        delattr(args, outer)
        if value in (None, False) or (inner in ("output", "json") and own_format):
            continue
        if not hasattr(args, inner):
            option = {"output": "--output", "json": "--json", "query": "--query"}.get(
                inner, "--verbose"
            )
            command.error(f"{option} is not an option of {command.prog}")
        if getattr(args, inner) in (None, False):
            setattr(args, inner, value)


def _subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the (innermost) subcommand ``args`` chose; ``parser`` for none."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _subparser(chosen, args)
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    command = _subparser(parser, args)
    _apply_global_options(parser, command, args)
    if extras:  # the subcommand's usage, not cmk's
        command.error(f"unrecognized arguments: {' '.join(extras)}")
    chosen = getattr(args, "output", None)
    if getattr(args, "json", False) and chosen not in (None, "json"):
        command.error(f"--json is --output json: give one of --json and --output {chosen}")
    if hasattr(args, "output"):
        default = "json" if getattr(args, "query", None) is not None else "table"
        args.output = "json" if getattr(args, "json", False) else chosen or default
        args.json = args.output == "json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmk`` console script; returns the exit code. Ctrl-C at any
    point, also while the commands' modules are imported, ends quietly with 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while starting (importing, parsing): nothing was done
        message = "interrupted while starting; nothing was done"
        sys.stderr.write(f"cmk: {message}\n")
        _interrupted_document(argv, message, "run the command again")
        return 130


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = _parse(argv)
    except SystemExit as exit_:  # --help or --version (0)
        return exit_.code if isinstance(exit_.code, int) else 2
    except ParseError as error:
        return _usage_error(error, sys.argv[1:] if argv is None else list(argv))
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:  # commands with a journal report it themselves
        # A command without one (demo, sandbox up) says only what it knows: that it
        # stopped, and what its hint says — never that nothing was left half-done.
        hint = INTERRUPTED.get(str(args.command), "")
        told = f"cmk {args.command}: interrupted" + (f"; {hint}" if hint else "")
        sys.stderr.write(told + "\n")
        _interrupted_document(argv, told, hint or f"run `cmk {args.command}` again")
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except Exception as error:
        from cmk.commands.output import OutputFailed  # noqa: PLC0415 (each command has it)

        if isinstance(error, OutputFailed):
            return _cannot_write(error.reason)
        raise
    return result


def _interrupted_document(argv: Sequence[str] | None, message: str, fix: str) -> None:
    """With ``--json`` (or ``-o json``), the error document of kind ``interrupted`` on
    stdout: a script reading stdout gets a document, not nothing."""
    words = sys.argv[1:] if argv is None else list(argv)
    if not _wants_json(words):
        return
    document = {"error": {"kind": "interrupted", "message": message, "fix": fix, "exit_code": 130}}
    try:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    except OSError:
        pass  # nobody reads it: the exit code still tells


def _wants_json(argv: list[str]) -> bool:
    """Whether the command line asks for JSON output (``--json``, ``-o json``,
    ``--output json``) without ``--query``: as parsing failed, read from the words."""
    if any(word == "--query" or word.startswith("--query=") for word in argv):
        return False
    for index, word in enumerate(argv):
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if word == "--json" or word in ("-ojson", "--output=json"):
            return True
        if word in ("-o", "--output") and following == "json":
            return True
    return False


def _usage_error(error: ParseError, argv: list[str]) -> int:
    """A command line that cannot be parsed: the usage of the (sub)command and the reason
    on stderr, as argparse prints them, and with ``--json`` the error document (kind
    ``usage``) on stdout; exit 2."""
    parser = error.parser
    parser.print_usage(sys.stderr)
    message = error.message
    if message.startswith(_QUERY_REFUSED):  # it names --query itself (az's words)
        message = message.removeprefix("argument --query: ")
    sys.stderr.write(f"{parser.prog}: error: {message}\n")
    if _wants_json(argv):
        fix = f"see `{parser.prog} --help`"
        document = {"error": {"kind": "usage", "message": message, "fix": fix, "exit_code": 2}}
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        sys.stdout.flush()
    return 2


def _cannot_write(reason: str) -> int:
    """stdout cannot be written (a full disk, a quota, an I/O error): one line on stderr,
    exit 1, no traceback; stdout is pointed at /dev/null so that Python's last flush of
    what is still buffered does not fail again."""
    try:
        sys.stderr.write(f"cmk: cannot write the output: {reason}\n")
        sys.stderr.flush()
    except OSError:
        pass  # stderr is gone too: the exit code still tells
    _quiet_stdout()
    return 1


def _quiet_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _reader_gone() -> int:
    """The reader of stdout went away (`cmk status | head -1`): stop quietly with the exit
    code of a process ended by SIGPIPE, and point stdout at /dev/null so that Python's
    last flush does not fail again."""
    _quiet_stdout()
    return 141


if __name__ == "__main__":
    sys.exit(main())
