"""ARM pacing across instances: how many requests meet a 429 when ``--processes``
instances of the app, which do not know of each other, spend one subscription's write
budget (ARM's 200 writes, refilled 10 per second) for ``--seconds``.

Each process is one :class:`~cmk.adapters.arm_budget.ArmBudget` (the app's real one);
ARM is the sandbox's model of its bucket (:class:`~cmk.sandbox.platform.throttling.
Throttle`, the same the sandbox answers with), on a simulated clock stepped every 10 ms:
in each step every process, in turn, sends whatever its bucket lets it, and learns from
each answer as the pacing policy does. No network, no sleeps: the figures are the same
on every machine. Every process always has work (the worst case: a large fan-out in one
subscription). The baseline, in the same run, is the same processes with the share of
the refill fixed at the whole of it (``MIN_SHARE = 1``) — each counting on ARM's budget
as if alone, as before the share existed.

    python -m bench.pacing [--processes 1,2,4,8,16,40] [--seconds 120] [--json]
"""

from __future__ import annotations

from dataclasses import dataclass
from unittest import mock

from bench._stage import emit, machine, parser
from cmk.adapters.arm_budget import ARM_WRITES, ArmBudget
from cmk.sandbox.platform.throttling import Throttle

SUBSCRIPTION = "00000000-0000-4000-8000-000000000001"
STEP_SECONDS = 0.01


@dataclass(frozen=True)
class Sharing:
    """What the processes sent, and what ARM answered."""

    processes: int
    seconds: float
    accepted: int
    refused: int

    @property
    def sent(self) -> int:
        return self.accepted + self.refused

    @property
    def refused_share(self) -> float:
        return self.refused / self.sent if self.sent else 0.0

    @property
    def budget(self) -> float:
        """What ARM's bucket allows in the time: its capacity and its refill."""
        return ARM_WRITES.capacity + ARM_WRITES.refill_per_second * self.seconds


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate_sharing(processes: int, *, seconds: float) -> Sharing:
    """``processes`` budgets, always with work, against one ARM write bucket."""
    clock = _Clock()
    arm = Throttle(
        write_capacity=ARM_WRITES.capacity,
        write_refill_per_second=ARM_WRITES.refill_per_second,
        clock=clock,
    )
    budgets = [ArmBudget(writes=ARM_WRITES, clock=clock) for _ in range(processes)]
    accepted = refused = 0
    step = 0
    while clock.now < seconds:
        for turn in range(processes):  # who goes first rotates: no process is favoured
            budget = budgets[(step + turn) % processes]
            while budget.bucket(SUBSCRIPTION, "writes").wait_needed() == 0:
                decision = arm.arm(SUBSCRIPTION, write=True)
                status = 200 if decision.allowed else 429
                accepted, refused = accepted + decision.allowed, refused + (not decision.allowed)
                budget.learn(SUBSCRIPTION, "writes", status, decision.headers)
        step += 1
        clock.now = step * STEP_SECONDS
    return Sharing(processes, seconds, accepted, refused)


def main() -> None:
    arguments = parser(__doc__.splitlines()[0])
    arguments.add_argument("--processes", default="1,2,4,8,16,40")
    arguments.add_argument("--seconds", type=float, default=120.0)
    options = arguments.parse_args()
    rows = []
    for count in (int(part) for part in options.processes.split(",")):
        shared = simulate_sharing(count, seconds=options.seconds)
        with mock.patch("cmk.adapters.arm_budget.MIN_SHARE", 1.0):
            alone = simulate_sharing(count, seconds=options.seconds)
        rows.append((count, shared, alone))
    summary = [
        f"ARM write budget of one subscription over {options.seconds:g} s (simulated):"
        f" {rows[0][1].budget:.0f} requests",
        f"{'processes':>9}  {'sent':>6}  {'accepted':>8}  {'429':>6}  {'429 share':>9}"
        f"  {'baseline 429 share':>18}  {'ratio':>6}",
    ]
    for count, shared, alone in rows:
        ratio = shared.refused_share / alone.refused_share if alone.refused else 0.0
        summary.append(
            f"{count:>9}  {shared.sent:>6}  {shared.accepted:>8}  {shared.refused:>6}"
            f"  {shared.refused_share:>9.1%}  {alone.refused_share:>18.1%}  {ratio:>6.2f}"
        )
    result = {
        "machine": machine(),
        "seconds": options.seconds,
        "budget": rows[0][1].budget,
        "runs": [
            {
                "processes": count,
                "sent": shared.sent,
                "accepted": shared.accepted,
                "refused": shared.refused,
                "refused_share": shared.refused_share,
                "baseline_sent": alone.sent,
                "baseline_refused_share": alone.refused_share,
            }
            for count, shared, alone in rows
        ],
    }
    emit(result, options.json, summary)


if __name__ == "__main__":
    main()
