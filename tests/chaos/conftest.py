"""The chaos suite's figures in the terminal summary.

``make test`` runs the suite at ``chaos_options.DEFAULT_SIZE`` accounts;
``pytest --chaos-size=1000`` (declared in tests/conftest.py) or ``CMK_CHAOS_SIZE=1000``
runs it larger.
"""

from __future__ import annotations

import json

import pytest
from chaos_options import FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    figures = terminalreporter.config.stash.get(FIGURES, None)
    if figures:
        terminalreporter.section("chaos figures")
        terminalreporter.write_line(json.dumps(figures, indent=2, default=str))
