"""What an interrupted command tells the operator.

A command keeps a :class:`Journal` of what it has done and what it is doing; when Ctrl-C
stops it, :func:`cmk.commands.session.run_command` prints the journal instead of a
traceback — what was done, what was not, and the command that finishes the work — and
exits 130 (128 + SIGINT, as shells do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cmk.commands.console_log import LeasesKept
from cmk.ports import RotationJob
from cmk.resource_id import AccountId
from cmk.usecases import JobReport

#: How many distinct reasons an interruption names for the unsafe accounts it leaves.
MAX_REASONS = 2

__all__ = ["EXIT_INTERRUPTED", "Journal"]

#: Exit code of a command stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


@dataclass
class Journal:
    """What one command run has done, is doing, and what finishes it if stopped now."""

    command: str
    done: list[str] = field(default_factory=list)
    doing: str = ""
    not_done: str = ""
    finish: str = ""
    jobs_total: int = 0
    results: Counter[str] = field(default_factory=Counter)
    #: Write leases kept by jobs whose PATCH may still land (see cmk.commands.console_log).
    leases: LeasesKept = field(default_factory=LeasesKept)
    #: Accounts moved urgently (their bound version is unsafe), with why: lowercase id.
    urgent: dict[str, str] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    #: When the write leases run out that this run's jobs were waiting for (held by
    #: another job: an earlier, interrupted run's, or the app's), the latest known.
    waited_until: datetime | None = None
    #: Updates still running when their job stopped waiting: the write lease went on to
    #: the VERIFY job, which an interruption drops (see cmk.commands.inline.run_jobs).
    verifying: LeasesKept = field(default_factory=LeasesKept)
    #: What the finishing command does before the kept write leases run out.
    early: str = "before, it only waits for them"

    def did(self, what: str) -> None:
        """Something finished (shown under ``done``)."""
        self.done.append(what)

    def now(self, doing: str, *, not_done: str, finish: str) -> None:
        """What the command starts doing, what stays undone if it stops during it, and
        the command that finishes the work."""
        self.doing, self.not_done, self.finish = doing, not_done, finish

    def moving(
        self, jobs: Sequence[RotationJob], *, finish: str, reasons: Mapping[str, str] = {}
    ) -> None:
        """The command starts moving the accounts of ``jobs``; ``reasons`` are the moves'
        reasons by lowercase account id (an urgent job's says why its version is unsafe)."""
        self.jobs_total = len(jobs)
        self.urgent = {
            _key(job.account_id): _unsafe(reasons.get(_key(job.account_id), ""))
            for job in jobs
            if job.urgent
        }
        self.now(f"moving {len(jobs)} account(s)", not_done="", finish=finish)

    def job_done(self, report: JobReport) -> None:
        """One account's job ended (any result but ``submitted``, which is followed up)."""
        self.results[report.result.value] += 1
        self.finished.add(_key(report.account_id))

    def lease_wait(self, account: AccountId, expires: datetime | None) -> None:
        """A job waits for ``account``'s write lease, held by another job until ``expires``
        (None when not known)."""
        if expires is not None and (self.waited_until is None or expires > self.waited_until):
            self.waited_until = expires

    def submitted(self, account: AccountId, expires: datetime | None) -> None:
        """``account``'s update was still running when its job stopped waiting; its lease
        (handed on to the verify) is held until ``expires``."""
        if expires is not None:
            self.verifying.add(_key(account), expires)

    def _unverified(self) -> LeasesKept:
        """The handed-on leases of accounts whose verify did not finish."""
        left = {a: t for a, t in self.verifying.until.items() if a not in self.finished}
        return LeasesKept(left)

    def _moves(self) -> tuple[str, str]:
        ended = sum(self.results.values())
        counts = ", ".join(f"{n} {result}" for result, n in sorted(self.results.items()) if n)
        done = f"{ended} of {self.jobs_total} account(s) finished" + (
            f" ({counts})" if counts else ""
        )
        left = self.jobs_total - ended
        if not left:
            return done, ""
        unsafe = [why for account, why in self.urgent.items() if account not in self.finished]
        head = (
            f"{left} account(s) not verified on the new version: an update already sent"
            " finishes in Azure; the others keep their current version"
        )
        if not unsafe:
            return done, f"{head} (still valid, only stale)"
        named = sorted({why for why in unsafe if why})
        why = f": {'; '.join(named[:MAX_REASONS])}" + ("; ..." if len(named) > MAX_REASONS else "")
        which = "all of them" if len(unsafe) >= left else f"{len(unsafe)} of them"
        rest = "" if len(unsafe) >= left else "; the rest are still valid, only stale"
        return done, (
            f"{head}, and for {which} it is NOT safe (bound version disabled, expired or"
            f" expiring{why}): finish this soon, before it becomes unusable{rest}"
        )

    def _sent(self) -> str:
        """The updates sent whose answer never came: they may still land, and their
        accounts' write leases are kept until they run out ("" when there are none)."""
        last = self.leases.last
        if last is None:
            return ""
        return (
            f"{len(self.leases)} update(s) were sent and may still land; their accounts'"
            f" write leases run out at {last:%H:%M:%S} UTC; run `{self.finish or 'cmk sweep'}`"
            f" after that ({self.early})"
        )

    def _verifies(self) -> str:
        """The updates still running whose verify this run did not get to ("" for none)."""
        unverified = self._unverified()
        if unverified.last is None:
            return ""
        return (
            f"{len(unverified)} update(s) were still running in Azure and not verified;"
            f" their accounts' write leases run out at {unverified.last:%H:%M:%S} UTC"
        )

    def _waits(self) -> str:
        """The jobs that were waiting for write leases held by another job ("" for none)."""
        until = self._waited()
        if until is None:
            return ""
        return (
            "jobs were waiting for write leases held by another job (an earlier interrupted"
            f" run, or the app) until {until:%H:%M:%S} UTC; a `{self.finish or 'cmk sweep'}`"
            " before then waits for them too"
        )

    def lines(self) -> list[str]:
        """The report of an interruption, one line each."""
        done, not_done = list(self.done), [self.not_done] if self.not_done else []
        if self.jobs_total:
            moved, left = self._moves()
            done.append(moved)
            not_done = [left] if left else not_done
        not_done.extend(line for line in (self._sent(), self._verifies(), self._waits()) if line)
        where = f" while {self.doing}" if self.doing else ""
        lines = [f"cmk {self.command}: interrupted{where}."]
        lines.append("  done: " + ("; ".join(done) if done else "nothing"))
        if not_done:
            lines.append("  not done: " + "; ".join(not_done))
        if self.finish:
            lines.append(f"  to finish: {self.finish}{self._after()}")
        return lines

    def _after(self) -> str:
        """When the finishing command can do its work: after the last write lease that
        this run kept or waited for runs out ("" when none is known)."""
        times = (self.leases.last, self._unverified().last, self._waited())
        known = [t for t in times if t is not None]
        return f" (after {max(known):%H:%M:%S} UTC)" if known else ""

    def _waited(self) -> datetime | None:
        """The latest lease expiry waited for, while accounts are still left to move."""
        if self.jobs_total and sum(self.results.values()) < self.jobs_total:
            return self.waited_until
        return None

    def fix(self) -> str:
        """The fix of the JSON error document: the command that finishes the work, and
        after when if write leases are kept ("" when there is none)."""
        return f"run `{self.finish}`{self._after()}" if self.finish else ""

    def message(self) -> str:
        """The report as one text (for stderr and the JSON error document)."""
        return "\n".join(self.lines())


def _key(account: AccountId) -> str:
    return str(account).lower()


def _unsafe(reason: str) -> str:
    """Why an urgent move's bound version is unsafe, from the move's reason (the planner
    words it ``newer version … replaces …; bound version … is unsafe: WHY``)."""
    return reason.partition(" is unsafe: ")[2] or reason
