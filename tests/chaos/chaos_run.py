"""One chaos run of the real Functions app on the local Functions host, and what it left.

:func:`run_chaos` seeds :mod:`chaos_world`, starts two hosts of ``function_app.py``
(A with two worker instances, B with one) on Azurite, subscribes them to the Key Vault
events, switches every fault on at once, then:

1. creates new versions of k1, k2, k3 (events), h1 (Managed HSM: no event) and a
   policy-rejected RSA-4096 version of k4 (event);
2. holds the first status polls (each after its PATCH) — more than host B can have in
   flight, so host A has updates in flight — and once they are all held kills host A
   (those invocations cancelled, their messages abandoned until their lease ends), starts
   host C (two instances) and lets the polls go, while a burst of dropped LRO polls makes
   some workers fail after PATCH and before recording;
3. disables k3's new version while updates to it are running, and waits until every
   delivery is done and the queues are idle;
4. creates a third version of k3 (the operator's answer), waits again, fires the timer
   sweep once, waits again, and snapshots the world, ledger, alerts and counters.

Chance decides nothing the tests claim: every random draw (fault probabilities, Event
Grid duplicates, delays and reordering, the pollers' jitter) comes from the run's seed
(``--chaos-seed``); the first event is duplicated whatever the draw, each kind of fault
has a rule that fires on its first match, the first PATCH of a Managed HSM account loses
its connection (so a ``rotate_account`` invocation fails and is retried, see
:func:`_add_faults`), and host A is killed while updates it runs are held in flight.
The waits are conditions; their ceilings only bound a hang.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient
from chaos_world import TOPIC, scenario

from cmk.adapters.ledger import TableLedger
from cmk.ports import LedgerEntry
from cmk.sandbox.core import Sandbox
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.platform.faults import FaultRule
from cmk.sandbox.world import KeyEventType, KeyVersionState, VaultState

APP_DIR = Path(__file__).resolve().parents[2]
ARM = "management.azure.com"
ACCOUNT_PATH = r"/providers/Microsoft\.CognitiveServices/accounts/[^/]+$"
#: The Managed HSM group's accounts: only the sweep moves them (no events), so their first
#: PATCH comes after host A's death, from a host that lives to see the retry.
HSM_ACCOUNT_PATH = r"/providers/Microsoft\.CognitiveServices/accounts/ai-h1-[^/]+$"
STATUS_PATH = r"/operationStatuses/"
GRAPH_PATH = r"/providers/Microsoft\.ResourceGraph/resources"
KEY_PATH = r"/keys/"
#: Lease of a message taken by the killed host: how soon the queue hands it out again
#: (the real host's lease is ~10 minutes; compressed here).
KILLED_LEASE_SECONDS = 6
#: Ceiling of each wait for the run to progress: bounds a hang, decides nothing. Generous:
#: the jobs host A held when it died wait out their write lease (APP_TIMING) before another
#: host may take them, and a loaded 2-core machine is slower still.
HANG_SECONDS = float(os.environ.get("CMK_CHAOS_HANG_SECONDS", "900"))
HOST_OVERRIDES = {
    "AzureFunctionsJobHost__extensions__queues__visibilityTimeout": "00:00:01",
    "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:00.500",
}
#: The app's own timing, compressed like the host's: an update is awaited for 10 s (the
#: slow LROs take 4 s; a longer one is verified by a later job, as in Azure), an
#: unanswered PATCH is given up after 5 s, and a write lease — left by the killed host, or
#: kept by a job whose PATCH lost its connection — ends 15 s later instead of the default
#: update timeout plus a minute (the floor is max(update + 5 s, 2 x PATCH timeout)).
APP_TIMING = {
    "CMK_UPDATE_TIMEOUT_SECONDS": "10",
    "CMK_PATCH_TIMEOUT_SECONDS": "5",
    "CMK_WRITE_LEASE_SECONDS": "15",
}


@dataclass
class Binding:
    """An account at the end of the run, as ARM has it."""

    name: str
    resource_id: str
    group: str
    key: str  # vault/key
    version: str | None
    provisioning_state: str
    history: list[tuple[datetime, str | None]]


@dataclass
class ChaosResult:
    """What the run left behind, and what happened on the way."""

    size: int
    seconds: float
    accounts: list[Binding]
    versions: dict[str, list[KeyVersionState]]  # vault/key -> versions, oldest first
    disabled: tuple[str, str, datetime]  # vault/key, version, when (sandbox clock)
    rejected: tuple[str, str]  # vault/key, version
    ledger: list[LedgerEntry]
    alerts: list[dict[str, Any]]
    faults: dict[str, int]
    statuses: Counter[int] = field(default_factory=Counter)
    function_failures: dict[str, int] = field(default_factory=dict)
    failure_causes: dict[str, int] = field(default_factory=dict)  # error type -> count
    invocations: dict[str, int] = field(default_factory=dict)
    poisoned: int = 0
    event_deliveries: int = 0
    event_duplicates: int = 0
    killed_in_flight: int = 0
    sweep_enqueued: int = 0
    seed: int = 0

    def figures(self) -> dict[str, object]:
        """The figures the run prints."""
        alert_types = Counter(str(a["type"]).removeprefix("CmkRotator.") for a in self.alerts)
        throttled = self.statuses[429] - self.faults.get("429", 0)
        return {
            "seed": self.seed,
            "accounts": self.size,
            "seconds": round(self.seconds, 1),
            "faults_injected": dict(sorted(self.faults.items())),
            "arm_throttled_429": max(0, throttled),
            "responses_by_status": dict(sorted(self.statuses.items())),
            "function_invocations": dict(sorted(self.invocations.items())),
            "function_failures_retried": dict(sorted(self.function_failures.items())),
            "failure_causes": dict(sorted(self.failure_causes.items())),
            "poisoned": self.poisoned,
            "event_deliveries": self.event_deliveries,
            "event_duplicates": self.event_duplicates,
            "killed_in_flight": self.killed_in_flight,
            "alerts": dict(sorted(alert_types.items())),
        }


def _add_faults(sandbox: Sandbox, seed: int) -> dict[str, list[FaultRule]]:
    """Every kind of fault at once, at rates the retries can absorb; the first rule of each
    kind fires on its first match, so each kind fires whatever the draws.

    One function invocation fails by construction: the connection of the first PATCH of a
    Managed HSM account (the sweep's job, on host B or C) is dropped before ARM sees it.
    The SDK never re-sends a PATCH (``retry_total=0``), so the adapter raises
    ServiceUnavailable, a TransientError that neither the worker nor
    ``entrypoints.handle_job_message`` (which defers only throttling) catches: the
    ``rotate_account`` function fails, the host counts it in ``failures`` and the queue
    delivers the message again, and the retry re-reads and PATCHes. The rule is added
    first: of the rules that fire on a request the first one answers, so no other PATCH
    rule can take its place."""
    faults = sandbox.faults
    faults.seed(seed)
    failing_patch = faults.add(host=ARM, path=HSM_ACCOUNT_PATH, method="PATCH", drop=True, count=1)
    return {
        "429": [
            faults.add(host=ARM, path=ACCOUNT_PATH, method="PATCH", status=429, retry_after=1,
                       count=1),
            faults.add(host=ARM, path=ACCOUNT_PATH, method="PATCH", status=429, retry_after=1,
                       probability=0.08),
            faults.add(host=ARM, path=ACCOUNT_PATH, method="PATCH", status=429,
                       probability=0.03),
            faults.add(host=ARM, path=ACCOUNT_PATH, method="GET", status=429,
                       probability=0.03),
            faults.add(host="*.vault.azure.net", path=KEY_PATH, method="GET", status=429,
                       retry_after=1, probability=0.03),
        ],
        "5xx": [
            faults.add(host=ARM, path=ACCOUNT_PATH, method="GET", status=503, probability=0.03),
            faults.add(host=ARM, path=STATUS_PATH, method="GET", status=500, probability=0.03),
            faults.add(host=ARM, path=GRAPH_PATH, method="POST", status=503, count=2),
            faults.add(host="*.managedhsm.azure.net", path=KEY_PATH, status=502,
                       probability=0.05),
        ],
        "drop": [
            failing_patch,
            faults.add(host="*.vault.azure.net", path=KEY_PATH, method="GET", drop=True,
                       count=1),
            faults.add(host=ARM, path=ACCOUNT_PATH, method="PATCH", drop=True, probability=0.03),
            faults.add(host="*.vault.azure.net", path=KEY_PATH, drop=True, probability=0.02),
        ],
        "latency": [
            faults.add(host=ARM, path=ACCOUNT_PATH, method="GET", latency=0.05, count=1),
            faults.add(host="*.vault.azure.net", latency=0.05, probability=0.2),
            faults.add(host=ARM, path=STATUS_PATH, latency=0.2, probability=0.1),
        ],
    }  # fmt: skip


def _capacity(host: FunctionsHost, function: str) -> int:
    """How many invocations of a queue function ``host`` can have in flight at once."""
    return sum(
        listener.options.batch_size + listener.options.new_batch_threshold
        for listener in host._listeners
        if listener.function.name == function
    )


def _task_dump() -> str:
    """Every pending task of the loop and the line it waits on: what a hang is stuck in."""
    lines = []
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=3)
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        lines.append(f"{task.get_name()}: {where}")
    return "\n".join(sorted(lines))


class _Watch:
    """What a hang report says beside the tasks: the world's progress, the hosts' recent
    invocations, Event Grid's deliveries and the queues (set once the run has them)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.hosts: list[FunctionsHost] = []
        self.subscription: Any = None
        self.queues: _Queues | None = None

    async def report(self) -> str:
        sandbox = self.sandbox
        patches = Counter(
            status
            for (endpoint, status), n in sandbox.counters.by_status().items()
            for _ in range(n)
            if endpoint.startswith("PATCH ") and "/accounts/" in endpoint
        )
        lines = [f"PATCH /accounts by status: {dict(patches)}"]
        with sandbox.world.lock:
            states = Counter(a.provisioning_state for a in sandbox.world.accounts.values())
        lines.append(f"accounts by provisioningState: {dict(states)}")
        if self.subscription is not None:
            s = self.subscription
            lines.append(
                f"event grid: {len(s.delivered)} delivered, {s.attempts} attempts,"
                f" {s.failures} failures, {len(sandbox.eventgrid.dead_letters)} dead-lettered"
            )
        if self.queues is not None:
            lines.append(
                f"queued messages (job + poison, visible or not): {await self.queues.messages()}"
            )
        for number, host in enumerate(self.hosts):
            in_flight = [listener.in_flight for listener in host._listeners]
            lines.append(
                f"host {number}: invocations {dict(host.invocations)}, failures"
                f" {dict(host.failures)}, in flight {in_flight}, polls"
                f" {[listener.polls for listener in host._listeners]}"
            )
            for invocation in host.log[-8:]:
                lines.append(
                    f"  {invocation.started:%H:%M:%S} {invocation.function}"
                    f" #{invocation.instance} {invocation.seconds:.1f}s"
                    f" {'ok' if invocation.succeeded else invocation.error}"
                )
        return "\n".join(lines)


_WATCH: _Watch | None = None


async def _hang_report() -> str:
    state = await _WATCH.report() if _WATCH is not None else ""
    return f"{state}\ntasks:\n{_task_dump()}"


async def _until(condition: Callable[[], bool], what: str, within: float = HANG_SECONDS) -> None:
    """Wait for ``condition``; ``within`` only bounds a hang (and then says what hangs)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what}\n{await _hang_report()}")
        await asyncio.sleep(0.05)


class _Queues:
    """The app's job and poison queues, to tell when everything is done."""

    def __init__(self, connection: str, name: str) -> None:
        self.clients = [
            QueueClient.from_connection_string(connection, name),
            QueueClient.from_connection_string(connection, f"{name}-poison"),
        ]

    async def messages(self) -> int:
        total = 0
        for client in self.clients:
            try:
                properties = await client.get_queue_properties()
            except Exception:  # not created yet
                continue
            total += int(properties.approximate_message_count or 0)
        return total

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


async def _idle(queues: _Queues, hosts: list[FunctionsHost], within: float = HANG_SECONDS) -> None:
    """Wait until no message is queued (visible or not) and nothing runs, twice in a row."""
    deadline, quiet = time.monotonic() + within, 0
    while quiet < 2:
        if time.monotonic() > deadline:
            counts = [dict(h.invocations) for h in hosts]
            raise TimeoutError(
                f"queues not idle within {within} s; invocations {counts}\n{await _hang_report()}"
            )
        in_flight = sum(listener.in_flight for h in hosts for listener in h._listeners)
        busy = in_flight + await queues.messages()
        quiet = quiet + 1 if busy == 0 else 0
        await asyncio.sleep(0.4)


class _Dispatch:
    """Delivers Event Grid events to the live hosts in turn (a killed host gets none)."""

    def __init__(self, function: str) -> None:
        self.function = function
        self.live: list[FunctionsHost] = []
        self._turn = 0

    async def __call__(self, event: dict[str, Any]) -> None:
        self._turn += 1
        host = self.live[self._turn % len(self.live)]
        target: Callable[[dict[str, Any]], Awaitable[None]] = host.event_grid_target(self.function)
        await target(event)


def _vault(sandbox: Sandbox, name: str) -> VaultState:
    return next(v for v in sandbox.world.vaults.values() if v.name == name)


def _new_version(sandbox: Sandbox, vault: str, key: str, **options: Any) -> KeyVersionState:
    with sandbox.world.lock:
        return add_key_version(sandbox.world, _vault(sandbox, vault), key, **options)


def _group_of(name: str) -> str:
    return name.split("-")[1]


async def run_chaos(
    sandbox: Sandbox, azurite: str, size: int, monkeypatch: pytest.MonkeyPatch, seed: int
) -> ChaosResult:
    """Run the chaos scenario (see the module docstring) with every random draw from
    ``seed``, and snapshot the result."""
    sandbox.reseed(seed)
    seeded = sandbox.seed(scenario(size))
    suffix = uuid.uuid4().hex[:8]
    queue, table = f"chaos-jobs-{suffix}", f"chaosledger{suffix}"
    settings = {
        **sandbox.env(),
        **sandbox.settings_env(),
        "AzureWebJobsStorage": azurite,
        "FUNCTIONS_WORKER_RUNTIME": "python",
        "CMK_JOB_QUEUE": queue,
        "CMK_SWEEP_SCHEDULE": "0 0 3 * * *",
        "CMK_LEDGER_TABLE": table,
        **HOST_OVERRIDES,
        **APP_TIMING,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    eventgrid = sandbox.eventgrid
    eventgrid.duplicate_probability = 0.5
    eventgrid.force_duplicates = 1
    eventgrid.max_delay = 1.5
    eventgrid.reorder = True
    dispatch = _Dispatch("on_key_new_version")
    key_vaults = [v.name for v in seeded.world.vaults.values() if ".vault." in v.host]
    subscription = eventgrid.subscribe(
        dispatch, included_event_types=[KeyEventType.NEW_VERSION], vaults=key_vaults
    )
    rules = _add_faults(sandbox, seed)
    queues = _Queues(azurite, queue)
    host_a, host_b, host_c = (
        FunctionsHost(
            APP_DIR, settings=settings, instances=n, serve_http=False, random_seed=seed + i
        )
        for i, n in enumerate((2, 1, 2), start=1)
    )
    global _WATCH  # noqa: PLW0603 (one run at a time; read by the hang report only)
    _WATCH = _Watch(sandbox)
    _WATCH.hosts = [host_a, host_b, host_c]
    _WATCH.subscription, _WATCH.queues = subscription, queues
    started = time.monotonic()
    killed = 0
    held = threading.Event()
    try:
        await host_a.start()
        await host_b.start()
        held_polls = _capacity(host_b, "rotate_account") + 8
        hold = sandbox.faults.add(
            host=ARM, path=STATUS_PATH, method="GET", hold=held, count=held_polls
        )
        for listener in host_a._listeners:  # the killed host's leases end soon
            listener._receive_visibility = KILLED_LEASE_SECONDS
        dispatch.live = [host_a, host_b]
        _new_version(sandbox, "kvchaos1", "k1")
        _new_version(sandbox, "kvchaos1", "k2")
        k3_v2 = _new_version(sandbox, "kvchaos2", "k3")
        _new_version(sandbox, "hsmchaos1", "h1", kty="RSA-HSM")
        rejected = _new_version(sandbox, "kvchaos2", "k4", size=4096)

        # 2. kill host A mid-update: the first status polls (each after its PATCH) are
        # held, more than host B can have in flight, so host A has updates in flight by
        # construction; a burst of failed LRO polls follows the kill
        await _until(lambda: hold.hits >= held_polls, f"{held_polls} updates PATCHed and held")
        killed = await host_a.kill()  # cancels at once: nothing runs between check and kill
        dispatch.live = [host_b]
        rules["drop"].append(
            sandbox.faults.add(host=ARM, path=STATUS_PATH, method="GET", drop=True, count=12)
        )
        await host_c.start()
        dispatch.live = [host_b, host_c]
        held.set()

        # 3. disable k3's new version while updates to it run
        k3 = [a for a in sandbox.world.accounts.values() if a.encryption.key_name == "k3"]
        await _until(
            lambda: any(
                a.provisioning_state == "Updating" or a.encryption.key_version == k3_v2.version
                for a in k3
            ),
            "k3 updates",
        )
        with sandbox.world.lock:
            k3_v2.enabled = False
            disabled_at = sandbox.world.clock.now()
        await asyncio.to_thread(sandbox.drain_events, HANG_SECONDS)
        await _idle(queues, [host_b, host_c])

        # 4. the operator creates a valid version; then one sweep
        _new_version(sandbox, "kvchaos2", "k3")
        await asyncio.to_thread(sandbox.drain_events, HANG_SECONDS)
        await _idle(queues, [host_b, host_c])
        before = host_c.invocations["rotate_account"] + host_b.invocations["rotate_account"]
        await host_c.fire_timer("sweep")
        await _idle(queues, [host_b, host_c])
        after = host_c.invocations["rotate_account"] + host_b.invocations["rotate_account"]
        seconds = time.monotonic() - started
        ledger = await _ledger(azurite, table)
    finally:
        held.set()
        for host in (host_a, host_b, host_c):
            await host.stop()
        await queues.close()
        eventgrid.unsubscribe(subscription)
        sandbox.faults.clear()

    hosts = (host_a, host_b, host_c)
    world = sandbox.world
    with world.lock:
        accounts = [
            Binding(
                name=a.name,
                resource_id=a.resource_id,
                group=_group_of(a.name),
                key=f"{(a.encryption.key_vault_uri or '').split('/')[2].split('.')[0]}"
                f"/{a.encryption.key_name}",
                version=a.encryption.key_version,
                provisioning_state=a.provisioning_state,
                history=list(a.binding_history),
            )
            for a in world.accounts.values()
        ]
        versions = {
            f"{vault.name}/{key.name}": list(key.versions)
            for vault in world.vaults.values()
            for key in vault.keys.values()
        }
    statuses: Counter[int] = Counter()
    for (_, status), n in sandbox.counters.by_status().items():
        statuses[status] += n
    deliveries = len(subscription.delivered)
    distinct = len({event["id"] for event in subscription.delivered})
    return ChaosResult(
        size=len(accounts),
        seconds=seconds,
        accounts=accounts,
        versions=versions,
        disabled=("kvchaos2/k3", k3_v2.version, disabled_at),
        rejected=("kvchaos2/k4", rejected.version),
        ledger=ledger,
        alerts=list(sandbox.eventgrid.topic(TOPIC).events),
        faults={kind: sum(rule.hits for rule in found) for kind, found in rules.items()},
        statuses=statuses,
        function_failures=dict(sum((h.failures for h in hosts), Counter())),
        failure_causes=dict(
            Counter(
                (i.error or "").split(":", 1)[0] for h in hosts for i in h.log if not i.succeeded
            )
        ),
        invocations=dict(sum((h.invocations for h in hosts), Counter())),
        poisoned=sum(sum(h.poisoned.values()) for h in hosts),
        event_deliveries=deliveries,
        event_duplicates=deliveries - distinct,
        killed_in_flight=killed,
        sweep_enqueued=after - before,
        seed=seed,
    )


async def _ledger(connection: str, table: str) -> list[LedgerEntry]:
    async with TableClient.from_connection_string(connection, table_name=table) as client:
        return await TableLedger(client).history()
