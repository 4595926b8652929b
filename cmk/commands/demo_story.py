"""The four acts of ``cmk demo``. Each changes the world the way Azure would, watches the
Functions app react, and returns an :class:`Act` with what was expected and observed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cmk.commands.demo_stage import Stage
from cmk.sandbox.keyvault.model import add_key_version, rotate_key

__all__ = ["ACTS", "Act", "Narrator"]

#: How long any act may wait for the app before it counts as failed.
WITHIN = 40.0
#: How long "nothing happens" is watched.
QUIET = 2.5

Narrator = Callable[[str], None]


@dataclass
class Act:
    """One act's outcome."""

    number: int
    title: str
    expected: str
    observed: str = ""
    ok: bool = False
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def _timings(reached: dict[str, float]) -> dict[str, float]:
    values = sorted(reached.values()) or [0.0]
    return {
        "first": round(values[0], 2),
        "median": round(statistics.median(values), 2),
        "last": round(values[-1], 2),
    }


def new_version(stage: Stage, say: Narrator) -> Act:
    """A new key version arrives: every bound account converges."""
    act = Act(1, "a new key version arrives", "every account on kv-demo-weu/ai-cmk moves to it")
    vault = stage.vault("kv-demo-weu")
    accounts = stage.accounts_on(vault, "ai-cmk")
    say(f"Key Vault creates a new version of kv-demo-weu/ai-cmk; {len(accounts)} accounts use it.")
    version = rotate_key(stage.world, vault, "ai-cmk")
    say(f"  KeyNewVersionCreated {version.version[:8]} -> Event Grid -> on_key_new_version")
    reached = stage.converge(accounts, version.version, WITHIN)
    stage.settle()
    timing = _timings(reached)
    alerts = len(stage.alerts())
    act.details = {
        "accounts": len(accounts),
        "moved": len(reached),
        "seconds_to_converge": timing,
        "workers": stage.instances_used("rotate_account"),
        "alerts": alerts,
    }
    act.ok = len(reached) == len(accounts) and alerts == 0
    act.observed = (
        f"{len(reached)}/{len(accounts)} moved; first {timing['first']}s, median"
        f" {timing['median']}s, last {timing['last']}s; {alerts} alerts"
    )
    say(f"  {act.observed}; jobs per Functions instance: {act.details['workers']}")
    return act


def lost_access(stage: Stage, say: Narrator) -> Act:
    """An account whose identity lost access fails, and raises exactly one alert."""
    act = Act(2, "an identity lost access", "the others move; one account fails; one alert")
    vault = stage.vault("kv-demo-neu")
    accounts = stage.accounts_on(vault, "ai-cmk")
    victim = accounts[3]
    principal = victim.identity.system
    assert principal is not None
    with stage.world.lock:
        stage.world.revoke(principal.object_id)
        before = victim.encryption.key_version
    say(f"The system identity of {victim.name} loses its role on kv-demo-neu/ai-cmk.")
    version = rotate_key(stage.world, vault, "ai-cmk")
    say(f"  New version {version.version[:8]}; {len(accounts)} accounts to move.")
    others = [a for a in accounts if a is not victim]
    reached = stage.converge(others, version.version, WITHIN)
    stage.wait(lambda: bool(stage.alerts(victim.resource_id)), WITHIN)
    stage.settle()
    time.sleep(1.0)  # an alert storm would show up now
    alerts = stage.alerts(victim.resource_id)
    kept = victim.encryption.key_version == before
    act.details = {
        "account": victim.name,
        "moved": len(reached),
        "others": len(others),
        "kept_version": kept,
        "alerts": [a.get("type") for a in alerts],
    }
    act.ok = len(reached) == len(others) and kept and len(alerts) == 1
    kind = str(alerts[0].get("type", "")).rsplit(".", 1)[-1] if alerts else "none"
    act.observed = (
        f"{len(reached)}/{len(others)} others moved; {victim.name} kept its version;"
        f" {len(alerts)} alert ({kind})"
    )
    say(f"  {act.observed}")
    return act


def near_expiry(stage: Stage, say: Narrator) -> Act:
    """KeyNearExpiry, delivered twice at once, rotates the key exactly once."""
    act = Act(3, "a key nears expiry", "exactly one new version; every account moves to it")
    vault = stage.vault("kv-demo-weu")
    accounts = stage.accounts_on(vault, "ai-cmk-exp")
    versions = stage.version_count(vault, "ai-cmk-exp")
    say("Six days pass: kv-demo-weu/ai-cmk-exp enters its 30-day notice window.")
    say("  Event Grid delivers every event twice (at-least-once), to two instances at once.")
    stage.sandbox.eventgrid.duplicate_probability = 1.0
    try:
        emitted = stage.sandbox.advance_clock(timedelta(days=6))
        grew = stage.wait(lambda: stage.version_count(vault, "ai-cmk-exp") > versions, WITHIN)
        latest = vault.keys["ai-cmk-exp"].latest()
        assert latest is not None
        reached = stage.converge(accounts, latest.version, WITHIN) if grew else {}
        time.sleep(QUIET)  # a second rotation would show up now
    finally:
        stage.sandbox.eventgrid.duplicate_probability = 0.0
    created = stage.version_count(vault, "ai-cmk-exp") - versions
    deliveries = len(stage.host.invocations_of("on_key_near_expiry"))
    act.details = {
        "events": emitted,
        "deliveries": deliveries,
        "versions_created": created,
        "accounts": len(accounts),
        "moved": len(reached),
        "seconds_to_converge": _timings(reached),
    }
    act.ok = created == 1 and len(reached) == len(accounts)
    act.observed = (
        f"{deliveries} deliveries -> {created} new version; {len(reached)}/{len(accounts)} moved"
        f" in {act.details['seconds_to_converge']['last']}s"
    )
    say(f"  {act.observed}")
    return act


def lost_event(stage: Stage, say: Narrator) -> Act:
    """A version whose event never arrives is found and rolled out by the sweep."""
    act = Act(
        4,
        "the sweep repairs a lost event",
        "the sweep moves every account the event missed; no alert repeats",
    )
    hsm = stage.vault("hsm-demo-weu")
    accounts = stage.accounts_on(hsm, "ai-cmk-hsm")
    with stage.world.lock:
        expires = stage.world.clock.now() + timedelta(days=365)
        version = add_key_version(
            stage.world, hsm, "ai-cmk-hsm", kty="RSA-HSM", size=2048, expires=expires
        )
    say(f"A new version {version.version[:8]} of hsm-demo-weu/ai-cmk-hsm: Managed HSM publishes")
    say(f"  no Event Grid events, so nothing tells the app. {len(accounts)} accounts stay behind.")
    idle = stage.converge(accounts, version.version, QUIET)
    say("  The timer fires the sweep.")
    stage.host.run(stage.host.fire_timer("sweep"), timeout=WITHIN)
    reached = stage.converge(accounts, version.version, WITHIN)
    time.sleep(QUIET)  # the sweep also re-ran the failing account's job: no second alert
    keys = [
        (a.get("subject"), a.get("data", {}).get("toVersion"), a.get("type"))
        for a in stage.alerts()
    ]
    repeated = len(keys) - len(set(keys))
    act.details = {
        "accounts": len(accounts),
        "moved_before_sweep": len(idle),
        "moved_by_sweep": len(reached),
        "seconds_to_converge": _timings(reached),
        "alerts_repeated": repeated,
    }
    act.ok = not idle and len(reached) == len(accounts) and repeated == 0
    act.observed = (
        f"{len(idle)} moved without the sweep; {len(reached)}/{len(accounts)} moved by it"
        f" in {act.details['seconds_to_converge']['last']}s; {repeated} alerts repeated"
    )
    say(f"  {act.observed}")
    return act


ACTS: tuple[Callable[[Stage, Narrator], Act], ...] = (
    new_version,
    lost_access,
    near_expiry,
    lost_event,
)
