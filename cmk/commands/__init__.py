"""The ``cmk`` subcommands, one module per command group.

Each module has ``add_parser(subparsers)``, which registers its subcommands on the
parser of :mod:`cmk.cli` and sets ``func`` to a callable ``(args) -> exit code``. Shared
parts: :mod:`cmk.commands.output` (tables, ``--json``, progress, exit codes),
:mod:`cmk.commands.errors` (exceptions to exit code 2 with a how-to-fix message) and
:mod:`cmk.commands.session` (settings and the engine for one command).
"""
