"""Times in scenario files: relative to the sandbox clock (``+400d``, ``-2h``, ``+30m``,
``-10s``) or ISO 8601 with a UTC offset (``2030-01-01T00:00:00Z``)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_RELATIVE = re.compile(r"^([+-])(\d+)([dhms])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


class InvalidTime(ValueError):
    """A scenario time that is neither relative nor ISO 8601 with an offset."""


def scenario_time(value: str, now: datetime) -> datetime:
    """The moment ``value`` names, relative ones counted from ``now``; raises
    :class:`InvalidTime` saying what is wrong."""
    match = _RELATIVE.match(value)
    if match:
        sign, amount, unit = match.groups()
        delta = timedelta(**{_UNITS[unit]: int(amount)})
        return now + delta if sign == "+" else now - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidTime(f"not a time: {value!r} (use '+400d' or an ISO 8601 time)") from None
    if parsed.tzinfo is None:
        raise InvalidTime(f"time {value!r} needs a UTC offset (e.g. 'Z')")
    return parsed
