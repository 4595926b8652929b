"""What every benchmark shares: a sandbox (with Azurite) seeded with a generated estate,
this process's environment pointed at it, the app settings, request counting, the
command line and the output (one JSON object with ``--json``, a summary otherwise)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cmk.sandbox.core import Sandbox

APP_DIR = Path(__file__).resolve().parent.parent
REGION = "westeurope"
WRITE_BURST, WRITE_REFILL = 200.0, 10.0  # ARM writes per subscription (sandbox = Azure)
READ_BURST, READ_REFILL = 250.0, 25.0


def estate(
    accounts: int,
    *,
    subscriptions: int,
    keys: int = 1,
    vaults: int = 1,
    lro_seconds: float = 0.0,
    stale_every: int = 0,
) -> dict[str, Any]:
    """A scenario: ``accounts`` spread evenly over ``subscriptions`` and ``keys`` (in
    ``vaults`` Key Vaults); one user-assigned identity per subscription (granted on each
    key once, so the world stays small); each key has two versions and accounts are on the
    latest, except every ``stale_every``-th account group, which is on the older one."""
    subs = [f"bench-{i}" for i in range(subscriptions)]
    key_names = [(f"kvbench{k % vaults}", f"key{k:03d}") for k in range(keys)]
    vault_docs = [
        {
            "name": f"kvbench{v}",
            "subscription": subs[0],
            "location": REGION,
            "keys": [
                {"name": key, "versions": [{"created": "-60d"}, {"created": "-2h"}]}
                for vault, key in key_names
                if vault == f"kvbench{v}"
            ],
        }
        for v in range(vaults)
    ]
    groups = [(s, k) for s in range(subscriptions) for k in range(keys)]
    base, extra = divmod(accounts, len(groups))
    account_docs = []
    for index, (s, k) in enumerate(groups):
        count = base + (1 if index < extra else 0)
        if count == 0:
            continue
        vault, key = key_names[k]
        stale = stale_every > 0 and index % stale_every == 0
        account_docs.append(
            {
                "name": f"ai-{s}-{k:03d}-{{i:05d}}",
                "count": count,
                "subscription": subs[s],
                "resourceGroup": f"rg-ai-{k:03d}",
                "location": REGION,
                "lroSeconds": lro_seconds,
                "identity": {"userAssigned": [f"uai-{s}"]},
                "encryption": {
                    "vault": vault,
                    "key": key,
                    "version": 0 if stale else "latest",
                    "identity": f"uai-{s}",
                },
            }
        )
    roles = [
        {"principal": "app", "role": "Key Vault Crypto Officer", "scope": f"vault:kvbench{v}"}
        for v in range(vaults)
    ]
    for sub in subs:
        roles.append({"principal": "app", "role": "Reader", "scope": f"subscription:{sub}"})
        roles.append(
            {"principal": "app", "role": "Cognitive Services Contributor",
             "scope": f"subscription:{sub}"}
        )  # fmt: skip
    return {
        "subscriptions": [{"name": sub} for sub in subs],
        "identities": [{"name": f"uai-{s}", "subscription": subs[s]} for s in range(subscriptions)],
        "vaults": vault_docs,
        "accounts": account_docs,
        "topics": [{"name": "bench-alerts", "subscription": subs[0], "location": REGION}],
        "roleAssignments": [
            *roles,
            {"principal": "app", "role": "EventGrid Data Sender", "scope": "topic:bench-alerts"},
        ],
        "throttling": True,
    }


@dataclass
class Stage:
    """A started sandbox with Azurite, seeded, and the app settings for it."""

    sandbox: Sandbox
    settings: dict[str, str]

    def reset_throttle(self) -> None:
        """Refill every ARM bucket (between phases that must not share a budget)."""
        from cmk.sandbox.platform.throttling import throttle_for  # noqa: PLC0415 (sandbox code on demand)

        throttle_for(self.sandbox.world).reset()

    def counts(self) -> dict[str, int]:
        """Requests the sandbox served so far, by kind and status class."""
        return request_counts(self.sandbox)


def request_counts(sandbox: Sandbox) -> dict[str, int]:
    """Sandbox requests by kind: ARM writes/reads/429s, Resource Graph, Key Vault, all."""
    found: dict[str, int] = {
        "arm_writes": 0,
        "arm_reads": 0,
        "arm_429": 0,
        "arm_other_errors": 0,
        "resource_graph": 0,
        "keyvault": 0,
        "total": 0,
    }
    for (endpoint, status), n in sandbox.counters.by_status().items():
        method, service = [*endpoint.split(" ", 2), ""][:2]
        found["total"] += n
        if ".vault." in service or ".managedhsm." in service:
            found["keyvault"] += n
        elif service.startswith("management.") and method == "POST":
            found["resource_graph"] += n  # ARM counts by route "/{tail}"; only Graph POSTs
        elif service.startswith("management."):
            found["arm_reads" if method in ("GET", "HEAD") else "arm_writes"] += n
            if status == 429:
                found["arm_429"] += n
            elif status >= 400 or status == 0:
                found["arm_other_errors"] += n
    return found


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {name: after[name] - before.get(name, 0) for name in after}


@contextmanager
def staged(document: dict[str, Any], *, queue_prefix: str) -> Iterator[Stage]:
    """Start a sandbox with Azurite, seed ``document``, point this process at it (the
    sandbox serves from this process; :func:`bench._remote.remote_staged` runs it apart)."""
    from cmk.sandbox.core import Sandbox  # noqa: PLC0415 (sandbox code only when staged here)

    sandbox = Sandbox(azurite=True)
    saved = dict(os.environ)
    try:
        sandbox.start()
        sandbox.trust_ca_in_process()
        sandbox.seed(document)
        suffix = uuid.uuid4().hex[:8]
        settings = {
            **sandbox.env(),
            **sandbox.settings_env(),
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "CMK_JOB_QUEUE": f"{queue_prefix}-{suffix}",
            "CMK_LEDGER_TABLE": f"bench{suffix}",
            "CMK_SWEEP_SCHEDULE": "0 0 3 * * *",
        }
        for name in Sandbox.interfering_env(saved):
            os.environ.pop(name, None)
        os.environ.update(settings)
        yield Stage(sandbox, settings)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        sandbox.stop()


def machine() -> dict[str, object]:
    """Where the figures come from."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
    }


def parser(description: str) -> argparse.ArgumentParser:
    """The command line every benchmark shares (``--json``)."""
    result = argparse.ArgumentParser(description=description)
    result.add_argument("--json", action="store_true", help="print one JSON object only")
    return result


def emit(result: dict[str, Any], as_json: bool, summary: list[str]) -> None:
    """Print the result: the JSON object, or the human summary."""
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        return
    for line in summary:
        sys.stdout.write(line + "\n")


class Stopwatch:
    """Seconds since creation (monotonic)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.started
