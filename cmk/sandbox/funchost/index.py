"""Loading and indexing a Python v2 function app the way the Python worker does.

The worker imports ``function_app.py`` from the app directory, takes the one top-level
``FunctionRegister`` instance (``func.FunctionApp`` / ``AsgiFunctionApp`` / ...; a second
one is an error), calls ``app.get_functions()`` and sends each function's raw bindings
(JSON strings) to the host. The host then resolves ``%SETTING%`` references from the app
settings and refuses to start when one does not resolve. :func:`index_app` does the same
and returns :class:`IndexedFunction` records that tests can assert on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast

SCRIPT_FILE = "function_app.py"
_SETTING_REF = re.compile(r"%([^%]+)%")
_QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
# Binding properties that name things rather than carry values: never resolved.
_LITERAL_KEYS = frozenset({"name", "type", "direction", "connection"})


class FunctionIndexError(ValueError):
    """The app cannot be indexed: import error, no/too many apps, bad or unresolved binding."""


@dataclass(frozen=True)
class IndexedFunction:
    """One function as the host sees it after indexing.

    ``bindings`` are the dicts the worker sends (``json.loads`` of ``get_raw_bindings()``);
    ``resolved`` the same with ``%SETTING%`` references replaced; ``settings`` the app
    settings those references used.
    """

    name: str
    trigger_type: str
    bindings: tuple[dict[str, Any], ...]
    resolved: tuple[dict[str, Any], ...]
    settings: Mapping[str, str]
    retry: Mapping[str, Any] | None
    user_function: Callable[..., Any] = field(repr=False, compare=False)

    @property
    def trigger(self) -> dict[str, Any]:
        """The resolved trigger binding."""
        return next(b for b in self.resolved if b["type"] == self.trigger_type)

    @property
    def trigger_param(self) -> str:
        return str(self.trigger["name"])

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    @property
    def other_bindings(self) -> tuple[dict[str, Any], ...]:
        """Bindings other than the trigger and an HTTP ``$return``."""
        return tuple(
            b
            for b in self.resolved
            if b["type"] != self.trigger_type
            and not (b["type"] == "http" and b["name"] == "$return")
        )


class AppSettings:
    """App settings as the worker sees them: the process environment overlaid with the
    explicit ``settings`` (local.settings.json ``Values``). While the app is imported and
    while the host runs, the explicit settings are also put into ``os.environ`` (the
    worker's environment *is* the app settings) and restored afterwards."""

    def __init__(self, explicit: Mapping[str, str] | None, *, apply_to_environment: bool) -> None:
        self.explicit = dict(explicit or {})
        self._apply = apply_to_environment and explicit is not None
        self._saved: dict[str, str | None] | None = None

    def merged(self) -> dict[str, str]:
        return {**os.environ, **self.explicit}

    def apply(self) -> None:
        if not self._apply or self._saved is not None:
            return
        self._saved = {name: os.environ.get(name) for name in self.explicit}
        os.environ.update(self.explicit)

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        for name, value in (saved or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Applied for the block, unless already applied (then left as is)."""
        if self._saved is not None:
            yield
            return
        self.apply()
        try:
            yield
        finally:
            self.restore()


def load_app_module(app_dir: Path, script_file: str = SCRIPT_FILE) -> ModuleType:
    """Import ``app_dir/function_app.py`` as a fresh module (a new instance per call).

    The module gets a unique name so that two apps (or two hosts of one app) never share
    module state; ``app_dir`` is on ``sys.path`` while it is imported, as the worker has it.
    """
    path = (app_dir / script_file).resolve()
    if not path.is_file():
        raise FunctionIndexError(f"{path} not found: the v2 model needs {script_file}")
    name = f"function_app_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FunctionIndexError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    added = str(path.parent) not in sys.path
    if added:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise FunctionIndexError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            sys.path.remove(str(path.parent))
    return module


def find_function_app(module: ModuleType) -> Any:
    """The single top-level ``FunctionRegister`` instance, as the worker requires."""
    from azure.functions import FunctionRegister  # noqa: PLC0415 (dev dependency only)

    apps = [
        value
        for value in (getattr(module, attr, None) for attr in dir(module))
        if isinstance(value, FunctionRegister)
    ]
    if not apps:
        raise FunctionIndexError(
            f"no top-level FunctionApp instance in {module.__file__}: declare "
            "`app = func.FunctionApp()` at module level"
        )
    if len(apps) > 1:
        raise FunctionIndexError(
            f"more than one top-level function app instance in {module.__file__}; the Python "
            "worker accepts exactly one (register blueprints on it instead)"
        )
    return apps[0]


def resolve_value(value: str, settings: Mapping[str, str], where: str) -> tuple[str, set[str]]:
    """``value`` with every ``%NAME%`` replaced by the app setting; the names used."""
    used: set[str] = set()

    def replace(match: re.Match[str]) -> str:
        setting = match.group(1)
        resolved = settings.get(setting)
        if resolved is None or resolved == "":
            raise FunctionIndexError(
                f"{where}: '%{setting}%' does not resolve to a value (app setting "
                f"{setting!r} is not set)"
            )
        used.add(setting)
        return resolved

    return _SETTING_REF.sub(replace, value), used


def _resolve_binding(
    binding: dict[str, Any], settings: Mapping[str, str], where: str
) -> tuple[dict[str, Any], dict[str, str]]:
    resolved: dict[str, Any] = {}
    used: dict[str, str] = {}
    for key, value in binding.items():
        if isinstance(value, str) and key not in _LITERAL_KEYS:
            resolved[key], names = resolve_value(value, settings, f"{where} property {key!r}")
            used.update({n: settings[n] for n in names})
        else:
            resolved[key] = value
    return resolved, used


def _check(function: IndexedFunction) -> None:
    trigger = function.trigger
    where = f"function {function.name!r}"
    if function.trigger_type == "queueTrigger":
        queue = str(trigger.get("queueName", ""))
        if not _QUEUE_NAME.match(queue):
            raise FunctionIndexError(
                f"{where}: queueName {queue!r} is not a valid queue name (3-63 lowercase "
                "letters, digits and single dashes, starting and ending with a letter or digit)"
            )
    if function.trigger_type == "timerTrigger" and not trigger.get("schedule"):
        raise FunctionIndexError(f"{where}: a timer trigger needs a schedule")


def index_app(app: Any, settings: Mapping[str, str]) -> dict[str, IndexedFunction]:
    """Index ``app.get_functions()``; resolve ``%SETTING%`` references from ``settings``."""
    functions: dict[str, IndexedFunction] = {}
    for function in app.get_functions():
        name = str(function.get_function_name())
        if name.lower() in (n.lower() for n in functions):
            raise FunctionIndexError(f"two functions are named {name!r}")
        bindings = tuple(
            cast(dict[str, Any], json.loads(raw)) for raw in function.get_raw_bindings()
        )
        triggers = [b for b in bindings if str(b.get("type", "")).endswith("Trigger")]
        if len(triggers) != 1:
            raise FunctionIndexError(f"function {name!r} must have exactly one trigger")
        resolved: list[dict[str, Any]] = []
        used: dict[str, str] = {}
        for binding in bindings:
            where = f"function {name!r} binding {binding.get('name')!r}"
            one, names = _resolve_binding(binding, settings, where)
            resolved.append(one)
            used.update(names)
        retry = function.get_settings_dict("retry_policy")
        indexed = IndexedFunction(
            name=name,
            trigger_type=str(triggers[0]["type"]),
            bindings=bindings,
            resolved=tuple(resolved),
            settings=used,
            retry=cast(Mapping[str, Any] | None, retry),
            user_function=function.get_user_function(),
        )
        _check(indexed)
        functions[name] = indexed
    return functions


def storage_connection(binding: Mapping[str, Any], settings: Mapping[str, str]) -> str:
    """The connection string a storage binding's ``connection`` names.

    Empty ``connection`` means ``AzureWebJobsStorage``; a name ``X`` is looked up as ``X``
    then ``AzureWebJobsX``, as the host does. Identity-based (``X__queueServiceUri``)
    connections are not supported locally.
    """
    name = str(binding.get("connection") or "AzureWebJobsStorage")
    for candidate in (name, f"AzureWebJobs{name}"):
        value = settings.get(candidate)
        if value:
            return value
    raise FunctionIndexError(
        f"binding {binding.get('name')!r}: storage connection {name!r} is not configured: "
        f"set app setting {name!r} to a connection string (Azurite's, locally)"
    )
