"""The ``cmk`` command line. Each subcommand lives in its own module that registers itself
with ``add_parser(subparsers)``; modules whose optional dependencies are missing (the
sandbox and demo need the ``dev`` extras) are skipped, so the core commands work in a
production install. Exit codes: 0 all good, 1 failures or findings, 2 usage or
configuration error, 130 interrupted (see docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

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
    " 130 interrupted (Ctrl-C), 141 output closed by its reader"
)

#: What an interrupted command that keeps no journal of its own says.
INTERRUPTED = {
    "demo": "the demo's local Azure ran in this process and stops with it; run `cmk demo` again",
}

# reST roles (:mod:`x`, :func:`~a.b`) and literals (``x``) in docstrings used as help.
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def package_version() -> str:
    """The installed version of cmk-rotator."""
    try:
        return version("cmk-rotator")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def plain_help(text: str | None) -> str | None:
    """Help text without reST markup: ``x`` becomes `x`, :mod:`a.b` becomes a.b."""
    if not text:
        return text
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"\1", text))


def _plain_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = plain_help(parser.description)
    parser.epilog = plain_help(parser.epilog)
    for action in parser._actions:
        action.help = plain_help(action.help)
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = plain_help(choice.help)
            for subparser in {id(p): p for p in action.choices.values()}.values():
                if subparser.epilog is None:
                    subparser.epilog = EXIT_CODES
                _plain_parser(subparser)


def build_parser() -> argparse.ArgumentParser:
    """The ``cmk`` parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cmk",
        description="Customer-managed key rotation for Azure AI services accounts.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"cmk {package_version()}")
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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    chosen = getattr(args, "output", None)
    if getattr(args, "json", False) and chosen not in (None, "json"):
        parser.error(f"--json is --output json: give one of --json and --output {chosen}")
    if hasattr(args, "output"):
        default = "json" if getattr(args, "query", None) is not None else "table"
        args.output = "json" if getattr(args, "json", False) else chosen or default
        args.json = args.output == "json"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmk`` console script; returns the exit code."""
    try:
        args = _parse(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:  # commands with a journal report it themselves
        hint = INTERRUPTED.get(str(args.command), "")
        sys.stderr.write(f"cmk {args.command}: interrupted" + (f"; {hint}" if hint else "") + "\n")
        return 130
    except BrokenPipeError:
        return _reader_gone()
    return result


def _reader_gone() -> int:
    """The reader of stdout went away (`cmk status | head -1`): stop quietly with the exit
    code of a process ended by SIGPIPE, and point stdout at /dev/null so that Python's
    last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
