"""From a new key version to every bound account verified, three ways, on one sandbox:

(a) the Functions app on the local Functions host (``--instances`` workers): the Key
    Vault event reaches ``on_key_new_version``, jobs go through the Azurite queue, each
    ``rotate_account`` PATCHes, waits and verifies; done when the ledger holds SUCCEEDED
    for every account (ARM-side convergence is reported too);
(b) ``cmk sweep`` inline (the CLI in a subprocess, CMK_MAX_CONCURRENCY=``--concurrency``);
(c) the operator's baseline: a sequential script with the sync SDK,
    ``begin_update(...).result()`` per account, timed on ``--baseline-sample`` accounts and
    extrapolated to all of them.

Each phase creates a new version and starts with full ARM buckets. The physical bound per
subscription is max(one update, (PATCHes - 200 write burst) / 10 per second); the bound of
the run is the largest over subscriptions. ``read_bound_seconds`` adds ARM's read budget
for the fewest reads an update needs (the deciding GET and one LRO status poll, which
verifies: docs/performance.md).

Key Vault's per-vault limits and Managed HSM's capacity are on with ARM's throttling
(cmk.sandbox.keyvault.limits); each phase reports its Key Vault requests and their 429s, and
the Functions phase the jobs that reached the poison queue.

``--accounts 10000 --subscriptions 1`` is the write budget's run: (10,000 - 200) / 10 s =
980 s per phase at ARM's real sizes. ``--phases`` picks what runs (e.g. ``functions``).

    python -m bench.fanout [--accounts 1000] [--subscriptions 4] [--lro-seconds 2]
                           [--instances 40] [--concurrency 256] [--phases ...] [--json]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from azure.data.tables.aio import TableClient
from azure.identity import DefaultAzureCredential
from azure.mgmt.cognitiveservices import CognitiveServicesManagementClient
from azure.mgmt.cognitiveservices.models import (
    Account,
    AccountProperties,
    Encryption,
    KeyVaultProperties,
)

from bench._stage import (
    APP_DIR,
    READ_BURST,
    READ_REFILL,
    WRITE_BURST,
    WRITE_REFILL,
    Stage,
    Stopwatch,
    delta,
    emit,
    estate,
    machine,
    parser,
    staged,
)
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.keyvault.model import add_key_version
from cmk.sandbox.world import AccountState, KeyEventType, KeyVersionState, VaultState

MIN_READS_PER_UPDATE = 2  # the deciding GET, one LRO status poll (it verifies)


def physical_bound(per_subscription: Counter[str], lro: float) -> dict[str, float]:
    """The fastest any tool could be: the update's own duration, or ARM's write budget
    (and, separately, the read budget at the fewest reads an update needs)."""
    busiest = max(per_subscription.values())
    writes = max(0.0, busiest - WRITE_BURST) / WRITE_REFILL
    reads = max(0.0, busiest * MIN_READS_PER_UPDATE - READ_BURST) / READ_REFILL
    return {
        "bound_seconds": max(lro, writes),
        "write_budget_seconds": writes,
        "read_bound_seconds": max(lro, writes, reads),
        "busiest_subscription_accounts": float(busiest),
    }


def keyvault_counts(stage: Stage) -> dict[str, int]:
    """Key Vault and Managed HSM requests served so far, and how many were answered 429."""
    found = {"keyvault_requests": 0, "keyvault_429": 0}
    for (endpoint, status), n in stage.sandbox.counters.by_status().items():
        service = [*endpoint.split(" ", 2), ""][1]
        if ".vault." in service or ".managedhsm." in service:
            found["keyvault_requests"] += n
            found["keyvault_429"] += n if status == 429 else 0
    return found


def _counts(stage: Stage) -> dict[str, int]:
    return {**stage.counts(), **keyvault_counts(stage)}


def _interval(accounts: int) -> float:
    """How often convergence is checked: scanning 10,000 accounts every 50 ms would be a
    load of its own on the machine the run measures."""
    return min(1.0, max(0.05, accounts / 10_000))


def _key(stage: Stage) -> tuple[VaultState, str]:
    vault = next(iter(stage.sandbox.world.vaults.values()))
    return vault, next(iter(vault.keys.values())).name


def _new_version(stage: Stage, *, emit: bool) -> KeyVersionState:
    world = stage.sandbox.world
    vault, key = _key(stage)
    time.sleep(1.05)  # Key Vault's created times have whole seconds: keep versions ordered
    with world.lock:
        return add_key_version(world, vault, key, emit=emit)


def _accounts(stage: Stage) -> list[AccountState]:
    return list(stage.sandbox.world.accounts.values())


def _converged(accounts: list[AccountState], version: str) -> bool:
    return all(
        a.encryption.key_version == version and a.provisioning_state == "Succeeded"
        for a in accounts
    )


async def _wait(condition: Any, within: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not converged within {within} s")
        await asyncio.sleep(interval)


async def _functions(stage: Stage, instances: int, within: float) -> dict[str, Any]:
    accounts = _accounts(stage)
    settings = stage.settings
    table = TableClient.from_connection_string(
        settings["AzureWebJobsStorage"], table_name=settings["CMK_LEDGER_TABLE"]
    )
    host = FunctionsHost(APP_DIR, settings=settings, instances=instances, serve_http=False)
    await host.start()
    subscription = stage.sandbox.eventgrid.subscribe(
        host.event_grid_target("on_key_new_version"),
        included_event_types=[KeyEventType.NEW_VERSION],
    )
    try:
        stage.reset_throttle()
        before = _counts(stage)
        version = _new_version(stage, emit=True)
        watch = Stopwatch()
        arm_seconds = 0.0

        async def on_arm() -> bool:
            return _converged(accounts, version.version)

        await _wait(on_arm, within, _interval(len(accounts)))
        arm_seconds = watch.seconds()
        query = "ToVersion eq @v and State eq 'succeeded'"

        async def verified() -> bool:
            rows = table.query_entities(query, parameters={"v": version.version}, select=["RowKey"])
            return len([row async for row in rows]) >= len(accounts)

        await _wait(verified, within, interval=max(0.25, _interval(len(accounts))))
        seconds = watch.seconds()
        counts = delta(_counts(stage), before)
    finally:
        stage.sandbox.eventgrid.unsubscribe(subscription)
        await host.stop()
        await table.close()
    return {
        "seconds": round(seconds, 2),
        "arm_converged_seconds": round(arm_seconds, 2),
        "instances": instances,
        "invocations": dict(host.invocations),
        "function_failures_retried": dict(host.failures),
        "poisoned_jobs": sum(host.poisoned.values()),
        "requests": counts,
    }


def _inline(stage: Stage, concurrency: int, within: float) -> dict[str, Any]:
    accounts = _accounts(stage)
    stage.reset_throttle()
    before = _counts(stage)
    before_routes = _routes(stage)
    version = _new_version(stage, emit=False)
    env = {**os.environ, "CMK_MAX_CONCURRENCY": str(concurrency)}
    watch = Stopwatch()
    done = subprocess.run(
        [sys.executable, "-c", "from cmk.cli import main; raise SystemExit(main())", "sweep",
         "--json"],
        env=env, capture_output=True, text=True, timeout=within, check=False,
    )  # fmt: skip
    seconds = watch.seconds()
    if not _converged(accounts, version.version):
        raise RuntimeError(f"cmk sweep did not converge: {done.stderr[-2000:]}")
    return {
        "seconds": round(seconds, 2),
        "command": "cmk sweep --json",
        "exit_code": done.returncode,
        "concurrency": concurrency,
        "requests": (requests := delta(_counts(stage), before)),
        "arm_reads_by_route": _read_routes(stage, before_routes, requests["total"]),
    }


def _routes(stage: Stage) -> dict[str, int]:
    """ARM GETs served so far, by kind of path (from the sandbox's request log)."""
    found: dict[str, int] = {}
    for record in stage.sandbox.counters.matching(host="management.azure.com", method="GET"):
        path = record.path.lower()
        kind = (
            "operation status" if "/operationstatuses/" in path
            else "operation result" if "/operationresults/" in path
            else "account" if "/accounts/" in path
            else "other"
        )  # fmt: skip
        found[kind] = found.get(kind, 0) + 1
    return found


def _read_routes(stage: Stage, before: dict[str, int], served: int) -> dict[str, int] | str:
    kept = stage.sandbox.counters.log.maxlen
    if kept is not None and served >= kept:
        return f"not counted: the sandbox's request log keeps the last {kept} requests"
    after = _routes(stage)
    return {kind: n - before.get(kind, 0) for kind, n in after.items() if n > before.get(kind, 0)}


def _baseline(stage: Stage, sample: int) -> dict[str, Any]:
    """An operator's script: one account after another, sync SDK, wait for each."""
    accounts = _accounts(stage)
    stage.reset_throttle()
    version = _new_version(stage, emit=False)
    credential = DefaultAzureCredential()
    clients: dict[str, CognitiveServicesManagementClient] = {}
    chosen = accounts[:sample]
    watch = Stopwatch()
    for account in chosen:
        client = clients.get(account.subscription_id)
        if client is None:
            client = clients[account.subscription_id] = CognitiveServicesManagementClient(
                credential, account.subscription_id
            )
        current = client.accounts.get(account.resource_group, account.name)
        assert current.properties is not None and current.properties.encryption is not None
        vault_properties = current.properties.encryption.key_vault_properties
        assert vault_properties is not None
        body = Account(
            properties=AccountProperties(
                encryption=Encryption(
                    key_source="Microsoft.KeyVault",
                    key_vault_properties=KeyVaultProperties(
                        key_vault_uri=vault_properties.key_vault_uri,
                        key_name=vault_properties.key_name,
                        key_version=version.version,
                        identity_client_id=vault_properties.identity_client_id,
                    ),
                )
            )
        )
        client.accounts.begin_update(account.resource_group, account.name, body).result()
    seconds = watch.seconds()
    for client in clients.values():
        client.close()
    credential.close()
    per_account = seconds / len(chosen)
    return {
        "measured_accounts": len(chosen),
        "measured_seconds": round(seconds, 2),
        "seconds_per_account": round(per_account, 3),
        "seconds": round(per_account * len(accounts), 1),
        "extrapolated": True,
        "method": "sync SDK: accounts.get, then begin_update(...).result(), one by one",
    }


def run(args: Any) -> dict[str, Any]:
    document = estate(args.accounts, subscriptions=args.subscriptions, lro_seconds=args.lro_seconds)
    phases = set(args.phases)
    with staged(document, queue_prefix="fanout") as stage:
        per_subscription = Counter(a.subscription_id for a in _accounts(stage))
        bound = physical_bound(per_subscription, args.lro_seconds)
        within = args.timeout or 3 * bound["read_bound_seconds"] + 300
        ran: dict[str, dict[str, Any]] = {}
        if "functions" in phases:
            ran["functions"] = asyncio.run(_functions(stage, args.instances, within))
        if "inline" in phases:
            ran["inline"] = _inline(stage, args.concurrency, within)
        baseline = _baseline(stage, args.baseline_sample) if "baseline" in phases else None
    for phase in ran.values():
        phase["ratio_to_bound"] = round(phase["seconds"] / bound["bound_seconds"], 2)
        phase["ratio_to_read_bound"] = round(phase["seconds"] / bound["read_bound_seconds"], 2)
        if baseline is not None:
            phase["speedup_vs_baseline"] = round(baseline["seconds"] / phase["seconds"], 1)
        requests = phase["requests"]
        phase["arm_reads_per_account"] = round(requests["arm_reads"] / args.accounts, 2)
        phase["arm_writes_per_account"] = round(requests["arm_writes"] / args.accounts, 2)
        phase["arm_writes"] = requests["arm_writes"]
        phase["arm_429"] = requests["arm_429"]
        phase["keyvault_requests"] = requests["keyvault_requests"]
        phase["keyvault_429"] = requests["keyvault_429"]
        phase["retries"] = requests["arm_429"] + requests["arm_other_errors"]
    targets: dict[str, dict[str, bool]] = {
        "within_1_25x_bound": {name: p["ratio_to_bound"] <= 1.25 for name, p in ran.items()},
        # the targets: Functions <= 1.5x, inline <= 2x the read-aware bound
        "within_read_aware_target": {
            name: p["ratio_to_read_bound"] <= (1.5 if name == "functions" else 2.0)
            for name, p in ran.items()
        },
    }
    if baseline is not None:
        targets["50x_faster_than_baseline"] = {
            name: p["speedup_vs_baseline"] >= 50 for name, p in ran.items()
        }
    return {
        "benchmark": "fanout",
        "accounts": args.accounts,
        "subscriptions": args.subscriptions,
        "lro_seconds": args.lro_seconds,
        "throttling": True,
        "keyvault_limits": True,
        **{k: round(v, 2) for k, v in bound.items()},
        **ran,
        "baseline": baseline,
        "targets": targets,
        "machine": machine(),
    }


def _phase_line(name: str, phase: dict[str, Any]) -> str:
    speedup = phase.get("speedup_vs_baseline")
    versus = f", {speedup}x baseline" if speedup is not None else ""
    line = (
        f"  {name}: {phase['seconds']} s ({phase['ratio_to_read_bound']}x the read-aware bound,"
        f" {phase['ratio_to_bound']}x the write-budget bound{versus}); ARM per account:"
        f" {phase['arm_writes_per_account']} writes,"
        f" {phase['arm_reads_per_account']} reads; ARM 429s {phase['arm_429']}, other ARM"
        f" errors {phase['retries'] - phase['arm_429']}; Key Vault {phase['keyvault_requests']}"
        f" requests, {phase['keyvault_429']} answered 429"
    )
    if "poisoned_jobs" in phase:
        line += f"; poisoned jobs {phase['poisoned_jobs']}"
        line += f"; ARM converged at {phase['arm_converged_seconds']} s"
    return line


def deployed_instances() -> int:
    """infra/main.bicep's default maximumInstanceCount: the instances Azure would run."""
    bicep = Path(__file__).resolve().parents[1] / "infra" / "main.bicep"
    found = re.search(r"param maximumInstanceCount int = (\d+)", bicep.read_text("utf-8"))
    if found is None:
        raise SystemExit(f"no maximumInstanceCount default in {bicep}")
    return int(found.group(1))


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.add_argument("--accounts", type=int, default=1000)
    cli.add_argument("--subscriptions", type=int, default=4)
    cli.add_argument("--lro-seconds", type=float, default=2.0)
    cli.add_argument(
        "--instances",
        type=int,
        default=deployed_instances(),
        help="Functions worker instances (default: infra/main.bicep's maximumInstanceCount,"
        " to which Flex Consumption scales a queue backlog out)",
    )
    cli.add_argument("--concurrency", type=int, default=256, help="CMK_MAX_CONCURRENCY inline")
    cli.add_argument("--baseline-sample", type=int, default=20)
    cli.add_argument(
        "--phases",
        nargs="+",
        choices=["functions", "inline", "baseline"],
        default=["functions", "inline", "baseline"],
    )
    cli.add_argument(
        "--timeout", type=float, default=0.0, help="per phase; 0: 3 x the bound + 300 s"
    )
    cli.add_argument("--json-out", default="", help="also write the JSON object to this file")
    args = cli.parse_args()
    result = run(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, default=str, indent=1) + "\n")
    lines = [
        f"fanout: {args.accounts} accounts over {args.subscriptions} subscriptions,"
        f" {args.lro_seconds} s updates, ARM throttling and Key Vault limits on",
        f"  write-budget bound {result['bound_seconds']} s (write budget"
        f" {result['write_budget_seconds']} s; with the read budget"
        f" {result['read_bound_seconds']} s)",
    ]
    if "functions" in result:
        label = f"Functions app, {result['functions']['instances']} instances"
        lines.append(_phase_line(label, result["functions"]))
    if "inline" in result:
        lines.append(_phase_line("cmk sweep inline", result["inline"]))
    baseline = result["baseline"]
    if baseline is not None:
        lines.append(
            f"  sequential baseline: {baseline['seconds_per_account']} s/account ->"
            f" {baseline['seconds']} s for {args.accounts}"
            f" (extrapolated from {baseline['measured_accounts']})"
        )
    emit(result, args.json, lines)


if __name__ == "__main__":
    main()
