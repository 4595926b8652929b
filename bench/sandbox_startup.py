"""How fast the local Azure is ready: ``cmk sandbox up`` until its env file exists, and
seeding a world of 10,000 accounts.

    python -m bench.sandbox_startup [--runs 3] [--accounts 10000] [--json]

Targets (issue 3): ready in under 3 s after the first install; seeding 10,000 accounts
in under 5 s. The baseline, measured in the same run, is a bare interpreter importing
the sandbox package: the part of start-up no sandbox design can avoid.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cmk.sandbox.core import Sandbox

READY_TARGET_S = 3.0
SEED_TARGET_S = 5.0


def _import_baseline() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cmk.sandbox.core"], check=True)
    return time.perf_counter() - started


def _ready_once(workdir: Path) -> tuple[float, float]:
    """Seconds until ``cmk sandbox up`` wrote its env file, and until it exited on SIGTERM."""
    env_file = workdir / "sandbox.env"
    env_file.unlink(missing_ok=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "cmk.cli", "sandbox", "up", "--env-file", str(env_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    try:
        while not env_file.exists():
            if process.poll() is not None:
                raise RuntimeError(f"cmk sandbox up exited with {process.returncode}")
            if time.perf_counter() - started > 60:
                raise RuntimeError("cmk sandbox up not ready within 60 s")
            time.sleep(0.01)
        ready = time.perf_counter() - started
        stopping = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        return ready, time.perf_counter() - stopping
    finally:
        if process.poll() is None:
            process.kill()


def _world(accounts: int) -> dict[str, Any]:
    return {
        "subscriptions": [{"name": f"sub-{n}"} for n in range(4)],
        "vaults": [
            {
                "name": "kv-bench",
                "subscription": "sub-0",
                "resourceGroup": "rg-keys",
                "location": "westeurope",
                "keys": [{"name": "cmk", "kty": "RSA", "size": 2048, "versions": [{}, {}]}],
            }
        ],
        "accounts": [
            {
                "name": f"acct-{n}-{{i:05d}}",
                "count": accounts // 4,
                "subscription": f"sub-{n}",
                "resourceGroup": "rg-ai",
                "location": "westeurope",
                "identity": {"system": True},
                "encryption": {"vault": "kv-bench", "key": "cmk", "version": 0},
            }
            for n in range(4)
        ],
    }


def _seed_seconds(accounts: int) -> float:
    with Sandbox() as sandbox:
        world = _world(accounts)
        started = time.perf_counter()
        sandbox.seed(world)
        seconds = time.perf_counter() - started
        seeded = len(sandbox.world.accounts)
    if seeded != accounts // 4 * 4:
        raise RuntimeError(f"seeded {seeded} accounts, expected {accounts}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_startup")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    baseline = statistics.median(_import_baseline() for _ in range(args.runs))
    with tempfile.TemporaryDirectory() as tmp:
        runs = [_ready_once(Path(tmp)) for _ in range(args.runs)]
    ready = statistics.median(r for r, _ in runs)
    stop = statistics.median(s for _, s in runs)
    seed = _seed_seconds(args.accounts)
    result = {
        "benchmark": "sandbox_startup",
        "cpu_count": os.cpu_count(),
        "runs": args.runs,
        "ready_seconds_median": round(ready, 3),
        "ready_seconds_all": [round(r, 3) for r, _ in runs],
        "stop_seconds_median": round(stop, 3),
        "baseline_import_seconds_median": round(baseline, 3),
        "ready_over_baseline": round(ready / baseline, 2),
        "ready_target_seconds": READY_TARGET_S,
        "ready_target_met": ready < READY_TARGET_S,
        "seed_accounts": args.accounts,
        "seed_seconds": round(seed, 3),
        "seed_target_seconds": SEED_TARGET_S,
        "seed_target_met": seed < SEED_TARGET_S,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"cmk sandbox up ready in {ready:.2f} s (median of {args.runs}; "
            f"{ready / baseline:.1f}x a bare import of {baseline:.2f} s; "
            f"target < {READY_TARGET_S} s)"
        )
        print(f"seeded {args.accounts} accounts in {seed:.2f} s (target < {SEED_TARGET_S} s)")
    return 0 if result["ready_target_met"] and result["seed_target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
