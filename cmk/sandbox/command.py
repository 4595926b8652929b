"""``cmk sandbox up``: run the local Azure in the foreground until SIGINT/SIGTERM.

It starts the proxy, the services and Azurite, seeds the world (``--scenario`` or the
built-in example), checks that every service answers, then writes ``export NAME=value``
lines to ``--env-file`` (``source`` it in another shell) and prints a short summary.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from cmk.sandbox.core import Sandbox
from cmk.sandbox.scenario import ScenarioError, example_path

READY_TIMEOUT_SECONDS = 10.0


def add_parser(subparsers: Any) -> None:
    """Register ``sandbox up`` on the ``cmk`` argument parser."""
    sandbox = subparsers.add_parser("sandbox", help="the local Azure sandbox (development)")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    up = commands.add_parser("up", help="run the sandbox in the foreground")
    up.add_argument("--scenario", type=Path, help="scenario JSON (default: built-in example)")
    up.add_argument("--env-file", type=Path, help="write `export NAME=value` lines here")
    up.add_argument("--state-dir", type=Path, help="CA bundle and logs (default: temporary)")
    up.add_argument("--no-azurite", action="store_true", help="do not start Azurite")
    up.set_defaults(func=up_command)


def _probe(sandbox: Sandbox) -> list[str]:
    """Services that do not answer yet (any HTTP answer counts as answering)."""
    proxies = {"https": sandbox.proxy_url}
    verify = str(sandbox.ca_bundle)
    urls = [
        "https://management.azure.com/subscriptions?api-version=2022-12-01",
        "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
        *(f"{v.url}/keys?api-version=7.5" for v in list(sandbox.world.vaults.values())[:1]),
        *(t.endpoint for t in list(sandbox.eventgrid.topics.values())[:1]),
    ]
    silent: list[str] = []
    with requests.Session() as session:
        session.trust_env = False
        for url in urls:
            try:
                session.get(url, proxies=proxies, verify=verify, timeout=2)
            except requests.RequestException:
                silent.append(url)
        try:
            session.get(sandbox.identity_endpoint, timeout=2)
        except requests.RequestException:
            silent.append(sandbox.identity_endpoint)
    return silent


def _wait_ready(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while silent := _probe(sandbox):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox services did not answer: {', '.join(silent)}")
        time.sleep(0.05)


def _write_env(path: Path, env: dict[str, str]) -> None:
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.chmod(0o600)
    os.replace(temporary, path)


def up_command(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 1 if the sandbox cannot start."""
    started = time.monotonic()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sandbox = Sandbox(args.state_dir, azurite=not args.no_azurite)
    try:
        sandbox.start()
        seeded = sandbox.seed(args.scenario or example_path())
        _wait_ready(sandbox)
    except ScenarioError as exc:
        sandbox.stop()
        print(f"cmk sandbox up: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        sandbox.stop()
        print(f"cmk sandbox up: the sandbox did not start: {exc}", file=sys.stderr)
        return 1
    env = {**sandbox.env(), **sandbox.settings_env()}
    if args.env_file:
        _write_env(args.env_file, env)
    world = seeded.world
    print(
        f"cmk sandbox up: ready in {time.monotonic() - started:.1f}s"
        f" | proxy {sandbox.proxy_url} | identity {sandbox.identity_endpoint}\n"
        f"  world: {len(world.subscriptions)} subscriptions, {len(world.vaults)} vaults,"
        f" {sum(len(v.keys) for v in world.vaults.values())} keys,"
        f" {len(world.accounts)} accounts, {len(sandbox.eventgrid.topics)} topics"
        f" (scenario: {args.scenario or 'built-in example'})\n"
        f"  storage: {'Azurite' if sandbox.azurite else 'none'}"
        + (f"\n  env: source {args.env_file}" if args.env_file else "")
        + "\n  stop with Ctrl-C",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        if args.env_file:
            args.env_file.unlink(missing_ok=True)
        print("cmk sandbox up: stopped", flush=True)
    return 0
