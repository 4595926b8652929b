"""The ``cmk`` command line. Each subcommand lives in its own module that registers itself
with ``add_parser(subparsers)``; modules whose optional dependencies are missing are
skipped, so the core command works in a production install."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# Modules that add subcommands (``add_parser(subparsers)``), in help order.
COMMAND_MODULES: tuple[str, ...] = ("cmk.sandbox.command",)


def _demo(args: argparse.Namespace) -> int:
    print("the demo is not built yet (see issue 6)", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    """The ``cmk`` parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="cmk", description="Customer-managed key rotation for Azure AI services accounts."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            logger.debug("subcommands of %s unavailable: %s", name, exc)
            continue
        module.add_parser(subparsers)
    demo = subparsers.add_parser("demo", help="run the end-to-end demo")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cmk`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
