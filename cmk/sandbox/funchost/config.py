"""host.json as the local Functions host reads it: queue extension options, HTTP route
prefix and the function timeout, with the real host's defaults and value ranges.

App settings named ``AzureFunctionsJobHost__<path>`` override host.json values (e.g.
``AzureFunctionsJobHost__extensions__queues__visibilityTimeout=00:00:00``), as on the real
host; tests use that to run the repository's app with short intervals.

Durations are .NET ``TimeSpan`` strings (``hh:mm:ss``, ``d.hh:mm:ss``, fractional
seconds allowed), as host.json writes them. A bare number is refused rather than guessed
(the v1 host read milliseconds; .NET would read days).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

_TIMESPAN = re.compile(
    r"^(?P<neg>-)?(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2})(?::(?P<s>\d{1,2}(?:\.\d+)?))?$"
)
MAX_BATCH_SIZE = 32  # the Storage "Get Messages" limit
MIN_POLLING_INTERVAL = timedelta(milliseconds=100)
OVERRIDE_PREFIX = "AzureFunctionsJobHost"


class HostConfigError(ValueError):
    """host.json is missing, not JSON, or has a value the Functions host would reject."""


def parse_timespan(value: object, setting: str) -> timedelta:
    """A .NET TimeSpan string (``00:00:30``, ``1.00:00:00``, ``00:00:00.250``)."""
    if not isinstance(value, str):
        raise HostConfigError(
            f"host.json {setting}={value!r}: expected a TimeSpan string such as '00:00:30'"
        )
    match = _TIMESPAN.match(value.strip())
    if not match or match["neg"]:
        raise HostConfigError(f"host.json {setting}={value!r}: not a TimeSpan such as '00:00:30'")
    hours, minutes = int(match["h"]), int(match["m"])
    if hours > 23 or minutes > 59:
        raise HostConfigError(f"host.json {setting}={value!r}: hours 0-23 and minutes 0-59")
    return timedelta(
        days=int(match["days"] or 0),
        hours=hours,
        minutes=minutes,
        seconds=float(match["s"] or 0),
    )


@dataclass(frozen=True)
class QueueOptions:
    """``extensions.queues`` (Storage queues extension 5.x) with the host's defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8  # the host's default is batchSize/2 x vCPUs; one vCPU here
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(minutes=1)
    message_encoding: str = "base64"

    @property
    def max_concurrency(self) -> int:
        """Most messages one function processes at once on one instance."""
        return self.batch_size + self.new_batch_threshold

    @classmethod
    def from_json(cls, section: Mapping[str, Any]) -> QueueOptions:
        defaults = cls()
        batch_size = _int(section, "batchSize", defaults.batch_size, 1, MAX_BATCH_SIZE)
        threshold = _int(section, "newBatchThreshold", batch_size // 2, 0, 10_000)
        encoding = str(section.get("messageEncoding", defaults.message_encoding)).lower()
        if encoding not in ("base64", "none"):
            raise HostConfigError(
                f"host.json extensions.queues.messageEncoding={encoding!r}: base64 or none"
            )
        polling = defaults.max_polling_interval
        if "maxPollingInterval" in section:
            polling = parse_timespan(
                section["maxPollingInterval"], "extensions.queues.maxPollingInterval"
            )
            if polling < MIN_POLLING_INTERVAL:
                raise HostConfigError(
                    "host.json extensions.queues.maxPollingInterval: at least 00:00:00.1"
                )
        visibility = defaults.visibility_timeout
        if "visibilityTimeout" in section:
            visibility = parse_timespan(
                section["visibilityTimeout"], "extensions.queues.visibilityTimeout"
            )
        return cls(
            batch_size=batch_size,
            new_batch_threshold=threshold,
            max_dequeue_count=_int(
                section, "maxDequeueCount", defaults.max_dequeue_count, 1, 1_000
            ),
            visibility_timeout=visibility,
            max_polling_interval=polling,
            message_encoding=encoding,
        )


@dataclass(frozen=True)
class HostConfig:
    """The parts of host.json the local host honours (see docs/functions.md)."""

    queues: QueueOptions = field(default_factory=QueueOptions)
    function_timeout: timedelta | None = timedelta(minutes=30)  # None: no limit
    route_prefix: str = "api"
    raw: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, app_dir: Path, settings: Mapping[str, str] | None = None) -> HostConfig:
        """Read ``app_dir/host.json`` (strict JSON, ``version`` 2.0), with the app settings'
        ``AzureFunctionsJobHost__<path>`` overrides applied as the host applies them."""
        path = app_dir / "host.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HostConfigError(f"{path} not found: a function app needs host.json") from None
        except ValueError as exc:
            raise HostConfigError(f"{path} is not strict JSON: {exc}") from None
        if isinstance(raw, dict):
            apply_overrides(raw, settings or {})
        return cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: object) -> HostConfig:
        if not isinstance(raw, dict):
            raise HostConfigError("host.json must be a JSON object")
        if raw.get("version") != "2.0":
            raise HostConfigError(f"host.json version={raw.get('version')!r}: must be '2.0'")
        extensions = _section(raw, "extensions")
        timeout: timedelta | None = timedelta(minutes=30)
        if "functionTimeout" in raw:
            value = raw["functionTimeout"]
            timeout = None if value in (None, "-1") else parse_timespan(value, "functionTimeout")
        http = _section(extensions, "http")
        prefix = str(http.get("routePrefix", "api")).strip("/")
        return cls(
            queues=QueueOptions.from_json(_section(extensions, "queues")),
            function_timeout=timeout,
            route_prefix=prefix,
            raw=raw,
        )


def _setting_value(text: str) -> object:
    if text.isdigit():
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def apply_overrides(raw: dict[str, Any], settings: Mapping[str, str]) -> None:
    """Apply ``AzureFunctionsJobHost__a__b=value`` app settings to ``raw["a"]["b"]``
    (keys matched case-insensitively; digits become numbers, true/false booleans)."""
    for name, value in settings.items():
        parts = name.split("__")
        if parts[0].lower() != OVERRIDE_PREFIX.lower() or len(parts) < 2:
            continue
        node = raw
        for part in parts[1:-1]:
            key = next((k for k in node if k.lower() == part.lower()), part)
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        leaf = next((k for k in node if k.lower() == parts[-1].lower()), parts[-1])
        node[leaf] = _setting_value(value)


def _section(parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = parent.get(name, {})
    if not isinstance(value, dict):
        raise HostConfigError(f"host.json {name} must be an object")
    return value


def _int(section: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = section.get(name, default)
    if type(value) is not int or not low <= value <= high:
        raise HostConfigError(
            f"host.json extensions.queues.{name}={value!r}: a whole number {low}-{high}"
        )
    return value
