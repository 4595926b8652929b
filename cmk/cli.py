"""The ``cmk`` command line. Each subcommand lives in its own module that registers itself
with ``add_parser(subparsers)``; modules whose optional dependencies are missing (the
sandbox and demo need the ``dev`` extras) are skipped, so the core commands work in a
production install. Exit codes: 0 all good, 1 failures or findings, 2 usage or
configuration error (see docs/cli.md)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

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
    "cmk.commands.demo",
    "cmk.sandbox.command",
)


def build_parser() -> argparse.ArgumentParser:
    """The ``cmk`` parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cmk",
        description="Customer-managed key rotation for Azure AI services accounts.",
        epilog="exit codes: 0 all good, 1 failures or findings, 2 usage or configuration error",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            logger.debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmk`` console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, message already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
