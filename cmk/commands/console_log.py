"""What the CLI's console makes of the log records meant for Azure Monitor.

The app logs one line per account when its rotation fails, when a job takes over an
expired write lease and when a job keeps its lease because its PATCH may still land, and
one per event it ignores (``cmk replay`` reports each event's outcome itself).
On a console, during ``cmk rotate`` or ``cmk sweep``, that is one line per account
interleaved with the progress bar. Without ``-v`` such records are counted here instead
and told once at the end (failures are already in the command's own table and summary);
with ``-v`` each is printed. The records themselves are unchanged: this only decides what
the console handler shows.

The write leases kept are remembered either way, with when they run out (the worker's
``cmk_lease_expires``; for a record without it, the record's time plus
CMK_WRITE_LEASE_SECONDS, the lease having been renewed right before the PATCH),
so an interrupted command can say when ``cmk sweep`` can move those accounts.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["ConsoleLog", "LeasesKept"]

#: The record kinds counted (not printed) without ``-v``.
FAILED = "failed"
TAKEN_OVER = "taken_over"
KEPT = "kept"
EVENT = "event"
OTHER = "other"


@dataclass
class LeasesKept:
    """Accounts whose write lease a job kept (its PATCH may still land), and until when."""

    until: dict[str, datetime] = field(default_factory=dict)

    def add(self, account: str, expires: datetime) -> None:
        self.until[account] = max(expires, self.until.get(account, expires))

    def __len__(self) -> int:
        return len(self.until)

    @property
    def last(self) -> datetime | None:
        """When the last of them runs out (None when there are none)."""
        return max(self.until.values(), default=None)


def _kind(record: logging.LogRecord) -> str | None:
    """Which per-account record ``record`` is, or None for any other record."""
    message = str(record.msg)
    if record.name == "cmk.adapters.leases" and message.startswith("took over write lease"):
        return TAKEN_OVER
    if message.startswith("write lease kept until it expires"):
        return KEPT
    if record.name == "cmk.usecases.worker" and message.startswith("rotation failed"):
        return FAILED
    if record.name == "cmk.usecases.events" and hasattr(record, "cmk_event_id"):
        # An event ignored (out of scope, not confirmed by Key Vault): the command's own
        # answer reports each event's outcome and why.
        return EVENT if record.levelno < logging.ERROR else None
    if hasattr(record, "cmk_account_id") and record.levelno >= logging.WARNING:
        return OTHER
    return None


class ConsoleLog(logging.Filter):
    """The console handler's filter: per-account records counted (``-v``: printed)."""

    def __init__(self) -> None:
        super().__init__()
        self.verbose = False
        self.lease_ttl = timedelta(0)
        self.counts: Counter[str] = Counter()
        self.leases = LeasesKept()

    def start(self, *, verbose: bool, lease_ttl: timedelta = timedelta(0)) -> None:
        """A new command run: forget the last one's records."""
        self.verbose, self.lease_ttl = verbose, lease_ttl
        self.counts, self.leases = Counter(), LeasesKept()

    def filter(self, record: logging.LogRecord) -> bool:
        kind = _kind(record)
        if kind is None:
            return True
        self.counts[kind] += 1
        account = getattr(record, "cmk_account_id", None)
        if kind == KEPT and account:
            self.leases.add(str(account), self._expiry(record))
        return self.verbose

    def _expiry(self, record: logging.LogRecord) -> datetime:
        """When the kept lease runs out: the worker says (``cmk_lease_expires``); else the
        record's time plus the lease's length, an upper bound."""
        stated = getattr(record, "cmk_lease_expires", None)
        if isinstance(stated, str):
            try:
                expires = datetime.fromisoformat(stated)
            except ValueError:
                pass
            else:
                return expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        return datetime.fromtimestamp(record.created, UTC) + self.lease_ttl

    def summary(self) -> list[str]:
        """What was not printed, one line each (nothing with ``-v``: it was printed)."""
        if self.verbose:
            return []
        lines = []
        if self.counts[TAKEN_OVER]:
            lines.append(
                f"took over {self.counts[TAKEN_OVER]} expired write lease(s) of jobs that"
                " stopped (-v logs each)"
            )
        if self.leases:
            lines.append(
                f"the update of {len(self.leases)} account(s) got no answer and may still"
                f" land: their write leases are kept until {self.leases.last:%H:%M:%S} UTC;"
                " a `cmk sweep` before then waits for them (-v logs each)"
            )
        if self.counts[OTHER]:
            lines.append(f"{self.counts[OTHER]} more per-account warning(s): -v shows them")
        return lines
