"""Scenario files on disk: the JSON Schema they follow, the built-in example, and
reading and validating one. Every problem names its JSON path (``$.accounts[3].name``).
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema

#: The package that holds the schema and the built-in worlds.
HERE = importlib.resources.files(__package__)


class ScenarioError(ValueError):
    """A scenario that does not validate; ``problems`` are ``"$.path: problem"`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"invalid scenario {source}:\n  " + "\n  ".join(problems))


def schema() -> dict[str, Any]:
    """The JSON Schema of scenario files."""
    text = HERE.joinpath("scenario.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def example_path() -> Path:
    """The built-in example world (used by ``cmk sandbox up`` without ``--scenario``)."""
    return Path(str(HERE.joinpath("example_world.json")))


def load(source: Path | str | Mapping[str, Any]) -> dict[str, Any]:
    """Read (a path or a parsed document) and validate a scenario; raise ScenarioError."""
    if isinstance(source, Mapping):
        name, document = "<dict>", dict(source)
    else:
        name = str(source)
        try:
            document = json.loads(Path(source).read_text())
        except OSError as exc:
            raise ScenarioError(name, [f"$: cannot read the file: {exc.strerror}"]) from exc
        except json.JSONDecodeError as exc:
            raise ScenarioError(
                name, [f"$: not JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"]
            ) from exc
    validator = jsonschema.Draft202012Validator(schema())
    problems = [
        f"{json_path(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]
    if problems:
        raise ScenarioError(name, problems)
    return document


def json_path(parts: Iterable[str | int]) -> str:
    """``$.accounts[3].name`` from the parts ``accounts``, ``3``, ``name``."""
    text = "$"
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text
