"""The ``cmk`` subcommands, one module per command group.

Each module has ``add_parser(subparsers)``, which registers its subcommands on the
parser of `cmk.cli` and sets ``func`` to a callable ``(args) -> exit code``. Shared
parts: ``output`` (``-o table|json|tsv``, progress, exit codes), ``cells`` (tables and
text from outside made safe), ``errors`` (exceptions to exit codes with a how-to-fix
message), ``session`` (settings and the engine for one command), ``interrupt`` (what
Ctrl-C reports) and ``scope`` (warnings when nothing is in scope).
"""
