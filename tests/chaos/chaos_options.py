"""The chaos suite's size and the stash key its figures travel in (imported by the tests
and by tests/chaos/conftest.py; never import a conftest)."""

from __future__ import annotations

import os

import pytest

DEFAULT_SIZE = 240
FIGURES = pytest.StashKey[dict[str, object]]()


def chaos_size(config: pytest.Config) -> int:
    """The size asked for with ``--chaos-size``, else CMK_CHAOS_SIZE, else the default."""
    given = config.getoption("--chaos-size", default=None)
    return int(given or os.environ.get("CMK_CHAOS_SIZE") or DEFAULT_SIZE)
