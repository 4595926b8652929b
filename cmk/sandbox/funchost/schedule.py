"""A minimal NCRONTAB evaluator for timer triggers: six fields
``{second} {minute} {hour} {day} {month} {day-of-week}``, evaluated in UTC.

Each field accepts ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, and
comma lists of those. Day of week runs 0-6 with 0 = Sunday. As in NCrontab (the library
the Functions host uses), a time matches only when **every** field matches: a restricted
day-of-month and day-of-week are combined with AND, not cron's OR. Not supported: month
and day names (``JAN``, ``MON``), ``L``/``W``/``#``, five-field expressions and TimeSpan
schedules (``hh:mm:ss``, App Service plans only) — they are refused with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 6),
)
_SEARCH_DAYS = 366 * 5  # enough for any schedule that ever fires (e.g. 29 February)


class ScheduleError(ValueError):
    """The expression is not a six-field NCRONTAB expression this evaluator supports."""


def _number(text: str, name: str, low: int, high: int, expression: str) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ScheduleError(
            f"NCRONTAB {expression!r}: {name} {text!r} is not a number {low}-{high}"
        )
    return int(text)


def _field(text: str, name: str, low: int, high: int, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = _number(step_text, f"{name} step", 1, high - low + 1, expression) if _ else 1
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first = _number(start, name, low, high, expression)
            last = _number(end, name, low, high, expression)
            if first > last:
                raise ScheduleError(f"NCRONTAB {expression!r}: {name} range {base!r} is reversed")
        else:
            first = _number(base, name, low, high, expression)
            last = high if _ else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    """A parsed NCRONTAB expression; :meth:`next_after` gives its next occurrence."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    days_of_week: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> Schedule:
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ScheduleError(
                f"NCRONTAB {expression!r}: expected six fields "
                "'{second} {minute} {hour} {day} {month} {day-of-week}'"
            )
        sets = [
            _field(part, name, low, high, expression)
            for part, (name, low, high) in zip(parts, _FIELDS, strict=True)
        ]
        return cls(expression, *sets)

    def matches(self, when: datetime) -> bool:
        """Whether ``when`` (UTC) is an occurrence."""
        when = when.astimezone(UTC)
        return (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and self._day_matches(when)
        )

    def _day_matches(self, when: datetime) -> bool:
        return (
            when.day in self.days
            and when.month in self.months
            and (when.weekday() + 1) % 7 in self.days_of_week
        )

    def next_after(self, after: datetime) -> datetime:
        """The first occurrence strictly after ``after`` (aware; returned in UTC)."""
        start = after.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        day = start.replace(hour=0, minute=0, second=0)
        for _ in range(_SEARCH_DAYS):
            if self._day_matches(day):
                found = self._first_in_day(day, start)
                if found is not None:
                    return found
            day += timedelta(days=1)
        raise ScheduleError(f"NCRONTAB {self.expression!r} never fires")

    def _first_in_day(self, day: datetime, start: datetime) -> datetime | None:
        today = day.date() == start.date()
        for hour in sorted(h for h in self.hours if not today or h >= start.hour):
            this_hour = today and hour == start.hour
            for minute in sorted(m for m in self.minutes if not this_hour or m >= start.minute):
                for second in sorted(self.seconds):
                    candidate = day.replace(hour=hour, minute=minute, second=second)
                    if candidate >= start:
                        return candidate
        return None
