"""The use cases of cmk-rotator: what function_app.py, the CLI and the HTTP endpoints call.

Each takes an :class:`~cmk.usecases.context.Engine` (the ports, the settings and a clock)
and returns a report from :mod:`cmk.usecases.report`:

- :func:`on_new_version`, :func:`on_near_expiry`, :func:`on_expired`: Key Vault events.
- :func:`rotate_account`, :func:`on_poison`: the queue worker's per-account step machine.
- :func:`sweep`, :func:`status`, :func:`plan`: the whole scope, on a timer or on demand.
"""

from cmk.usecases.context import Engine
from cmk.usecases.events import on_expired, on_near_expiry, on_new_version
from cmk.usecases.report import (
    AccountStatus,
    BindingState,
    EventOutcome,
    EventReport,
    FindingReport,
    JobReport,
    JobResult,
    PlannedMove,
    SweepReport,
)
from cmk.usecases.sweep import plan, status, sweep
from cmk.usecases.worker import on_poison, rotate_account

__all__ = [
    "AccountStatus",
    "BindingState",
    "Engine",
    "EventOutcome",
    "EventReport",
    "FindingReport",
    "JobReport",
    "JobResult",
    "PlannedMove",
    "SweepReport",
    "on_expired",
    "on_near_expiry",
    "on_new_version",
    "on_poison",
    "plan",
    "rotate_account",
    "status",
    "sweep",
]
