"""What an interrupted command tells the operator.

A command keeps a :class:`Journal` of what it has done and what it is doing; when Ctrl-C
stops it, :func:`cmk.commands.session.run_command` prints the journal instead of a
traceback — what was done, what was not, and the command that finishes the work — and
exits 130 (128 + SIGINT, as shells do).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cmk.commands.console_log import LeasesKept
from cmk.usecases import JobReport

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

    def did(self, what: str) -> None:
        """Something finished (shown under ``done``)."""
        self.done.append(what)

    def now(self, doing: str, *, not_done: str, finish: str) -> None:
        """What the command starts doing, what stays undone if it stops during it, and
        the command that finishes the work."""
        self.doing, self.not_done, self.finish = doing, not_done, finish

    def moving(self, total: int, *, finish: str) -> None:
        """The command starts moving ``total`` accounts."""
        self.jobs_total = total
        self.now(f"moving {total} account(s)", not_done="", finish=finish)

    def job_done(self, report: JobReport) -> None:
        """One account's job ended (any result but ``submitted``, which is followed up)."""
        self.results[report.result.value] += 1

    def _moves(self) -> tuple[str, str]:
        ended = sum(self.results.values())
        counts = ", ".join(f"{n} {result}" for result, n in sorted(self.results.items()) if n)
        done = f"{ended} of {self.jobs_total} account(s) finished" + (
            f" ({counts})" if counts else ""
        )
        left = self.jobs_total - ended
        not_done = (
            f"{left} account(s) not verified on the new version: an update already sent"
            " finishes in Azure; the others keep their current version (still valid, only"
            " stale)"
            if left
            else ""
        )
        return done, not_done

    def _sent(self) -> str:
        """The updates sent whose answer never came: they may still land, and their
        accounts' write leases are kept until they run out ("" when there are none)."""
        last = self.leases.last
        if last is None:
            return ""
        return (
            f"{len(self.leases)} update(s) were sent and may still land; their accounts'"
            f" write leases run out at {last:%H:%M:%S} UTC; run `{self.finish or 'cmk sweep'}`"
            " after that (before, it only waits for them)"
        )

    def lines(self) -> list[str]:
        """The report of an interruption, one line each."""
        done, not_done = list(self.done), [self.not_done] if self.not_done else []
        if self.jobs_total:
            moved, left = self._moves()
            done.append(moved)
            not_done = [left] if left else not_done
        sent = self._sent()
        if sent:
            not_done.append(sent)
        where = f" while {self.doing}" if self.doing else ""
        lines = [f"cmk {self.command}: interrupted{where}."]
        lines.append("  done: " + ("; ".join(done) if done else "nothing"))
        if not_done:
            lines.append("  not done: " + "; ".join(not_done))
        if self.finish:
            lines.append(f"  to finish: {self.finish}{self._after()}")
        return lines

    def _after(self) -> str:
        last = self.leases.last
        return f" (after {last:%H:%M:%S} UTC)" if last is not None else ""

    def fix(self) -> str:
        """The fix of the JSON error document: the command that finishes the work, and
        after when if write leases are kept ("" when there is none)."""
        return f"run `{self.finish}`{self._after()}" if self.finish else ""

    def message(self) -> str:
        """The report as one text (for stderr and the JSON error document)."""
        return "\n".join(self.lines())
