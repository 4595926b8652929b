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
for the fewest reads an update needs (one LRO status poll and one verifying GET).

    python -m bench.fanout [--accounts 1000] [--subscriptions 4] [--lro-seconds 2]
                           [--instances 4] [--concurrency 256] [--json]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
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
from cmk.sandbox.funchost import FunctionsHost
from cmk.sandbox.keyvault_model import add_key_version
from cmk.sandbox.world import AccountState, KeyEventType, KeyVersionState, VaultState

MIN_READS_PER_UPDATE = 2  # one LRO status poll, one verifying GET


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
        before = stage.counts()
        version = _new_version(stage, emit=True)
        watch = Stopwatch()
        arm_seconds = 0.0

        async def on_arm() -> bool:
            return _converged(accounts, version.version)

        await _wait(on_arm, within)
        arm_seconds = watch.seconds()
        query = "ToVersion eq @v and State eq 'succeeded'"

        async def verified() -> bool:
            rows = table.query_entities(query, parameters={"v": version.version}, select=["RowKey"])
            return len([row async for row in rows]) >= len(accounts)

        await _wait(verified, within, interval=0.25)
        seconds = watch.seconds()
        counts = delta(stage.counts(), before)
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
        "requests": counts,
    }


def _inline(stage: Stage, concurrency: int, within: float) -> dict[str, Any]:
    accounts = _accounts(stage)
    stage.reset_throttle()
    before = stage.counts()
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
        "requests": delta(stage.counts(), before),
        "arm_reads_by_route": _read_routes(stage, before_routes),
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


def _read_routes(stage: Stage, before: dict[str, int]) -> dict[str, int]:
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
    with staged(document, queue_prefix="fanout") as stage:
        per_subscription = Counter(a.subscription_id for a in _accounts(stage))
        bound = physical_bound(per_subscription, args.lro_seconds)
        functions = asyncio.run(_functions(stage, args.instances, args.timeout))
        inline = _inline(stage, args.concurrency, args.timeout)
        baseline = _baseline(stage, args.baseline_sample)
    for phase in (functions, inline):
        phase["ratio_to_bound"] = round(phase["seconds"] / bound["bound_seconds"], 2)
        phase["ratio_to_read_bound"] = round(phase["seconds"] / bound["read_bound_seconds"], 2)
        phase["speedup_vs_baseline"] = round(baseline["seconds"] / phase["seconds"], 1)
        requests = phase["requests"]
        phase["arm_reads_per_account"] = round(requests["arm_reads"] / args.accounts, 2)
        phase["arm_writes"] = requests["arm_writes"]
        phase["retries"] = requests["arm_429"] + requests["arm_other_errors"]
    return {
        "benchmark": "fanout",
        "accounts": args.accounts,
        "subscriptions": args.subscriptions,
        "lro_seconds": args.lro_seconds,
        "throttling": True,
        **{k: round(v, 2) for k, v in bound.items()},
        "functions": functions,
        "inline": inline,
        "baseline": baseline,
        "targets": {
            "within_1_25x_bound": {
                "functions": functions["ratio_to_bound"] <= 1.25,
                "inline": inline["ratio_to_bound"] <= 1.25,
            },
            "50x_faster_than_baseline": {
                "functions": functions["speedup_vs_baseline"] >= 50,
                "inline": inline["speedup_vs_baseline"] >= 50,
            },
        },
        "machine": machine(),
    }


def main() -> None:
    cli = parser(__doc__.split("\n\n")[0])
    cli.add_argument("--accounts", type=int, default=1000)
    cli.add_argument("--subscriptions", type=int, default=4)
    cli.add_argument("--lro-seconds", type=float, default=2.0)
    cli.add_argument("--instances", type=int, default=4, help="Functions worker instances")
    cli.add_argument("--concurrency", type=int, default=256, help="CMK_MAX_CONCURRENCY inline")
    cli.add_argument("--baseline-sample", type=int, default=20)
    cli.add_argument("--timeout", type=float, default=600.0)
    args = cli.parse_args()
    result = run(args)
    f, i, b = result["functions"], result["inline"], result["baseline"]
    emit(
        result,
        args.json,
        [
            f"fanout: {args.accounts} accounts over {args.subscriptions} subscriptions,"
            f" {args.lro_seconds} s updates, ARM throttling on",
            f"  physical bound {result['bound_seconds']} s (write budget"
            f" {result['write_budget_seconds']} s; with the read budget"
            f" {result['read_bound_seconds']} s)",
            f"  Functions app, {f['instances']} instances: {f['seconds']} s"
            f" ({f['ratio_to_bound']}x bound, {f['speedup_vs_baseline']}x baseline),"
            f" {f['arm_writes']} ARM writes, {f['retries']} retried answers,"
            f" {f['arm_reads_per_account']} ARM reads/account",
            f"  cmk sweep inline: {i['seconds']} s ({i['ratio_to_bound']}x bound,"
            f" {i['speedup_vs_baseline']}x baseline), {i['arm_writes']} ARM writes,"
            f" {i['retries']} retried answers, {i['arm_reads_per_account']} ARM reads/account",
            f"  sequential baseline: {b['seconds_per_account']} s/account ->"
            f" {b['seconds']} s for {args.accounts} (extrapolated from {b['measured_accounts']})",
        ],
    )


if __name__ == "__main__":
    main()
