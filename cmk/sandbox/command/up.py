"""``cmk sandbox up``: run the local Azure in the foreground until SIGINT/SIGTERM.

It starts the proxy, the services and Azurite, seeds the world (``--scenario`` or the
built-in example), checks that every service answers, then writes ``export NAME=value``
lines to ``--env-file`` (``source`` it in another shell; without it they are printed) and
prints a short summary. The env file first unsets the credential variables that would make
``DefaultAzureCredential`` pick something other than the sandbox's managed identity, and
points ``AZURE_CONFIG_DIR`` into the state directory (cleared of a former sandbox's ``az``
login). A state directory serves one running sandbox at a time
(:func:`~cmk.sandbox.core.claim_state_dir`): a second ``up`` with it is refused, as one with
its env file is. With ``--app`` it also runs ``function_app.py`` on the local Functions host
against it (:mod:`cmk.sandbox.command.app`).

An env file whose sandbox still runs is never overwritten (:mod:`cmk.sandbox.command.env`);
the file is removed when the sandbox that wrote it stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import requests

from cmk.commands.demo_stage import APP_FILE, find_app_dir
from cmk.commands.errors import UsageError
from cmk.commands.output import EXIT_USAGE
from cmk.sandbox.command.app import app_settings, describe_app, run_app
from cmk.sandbox.command.env import export_lines, live_owner, write_env_file
from cmk.sandbox.core import Sandbox, StateDirInUse
from cmk.sandbox.scenario.loader import ScenarioError, example_path

READY_TIMEOUT_SECONDS = 10.0
PROG = "cmk sandbox up"


#: Functions host instances `up --app` runs at most (each polls the queues with host.json's
#: batch of workers; the template's platform floor is 40).
MAX_INSTANCES = 64


def add_parser(subparsers: Any) -> None:
    """Register ``sandbox up`` on the ``cmk`` argument parser."""
    sandbox = subparsers.add_parser("sandbox", help="the local Azure sandbox (development)")
    commands = sandbox.add_subparsers(dest="sandbox_command", required=True)
    up = commands.add_parser("up", help="run the sandbox in the foreground")
    up.add_argument("--scenario", type=Path, help="scenario JSON (default: built-in example)")
    up.add_argument(
        "--env-file",
        type=Path,
        help="write `export NAME=value` lines here (default: print them)",
    )
    up.add_argument("--state-dir", type=Path, help="CA bundle and logs (default: temporary)")
    up.add_argument("--no-azurite", action="store_true", help="do not start Azurite")
    up.add_argument(
        "--app",
        action="store_true",
        help="also run function_app.py on the local Functions host against the sandbox",
    )
    up.add_argument(
        "--instances",
        type=int,
        default=None,
        metavar="N",
        help=f"Functions host instances polling the queues, 1 to {MAX_INSTANCES} (with --app;"
        " default 1)",
    )
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


#: What ``az`` keeps of a login in its config directory (the files azure-cli's own test
#: harness, ``azure.cli.core.mock``, copies as "login credentials", and MSAL's HTTP cache):
#: the profile (subscriptions, tenant), the current subscription per cloud, tokens, secrets.
AZ_LOGIN_FILES = (
    "azureProfile.json",
    "clouds.config",
    "msal_token_cache.bin",
    "msal_token_cache.json",
    "msal_http_cache.bin",
    "service_principal_entries.bin",
    "service_principal_entries.json",
)


def _az_extension_dir(environ: Mapping[str, str]) -> str:
    """Where the user's ``az`` finds its extensions (``AZURE_EXTENSION_DIR``, else
    ``cliextensions`` in its config directory): ``az extension add`` needs the extension
    index, which a shell that sourced the env file cannot reach."""
    if given := environ.get("AZURE_EXTENSION_DIR"):
        return given
    config = environ.get("AZURE_CONFIG_DIR") or str(Path("~/.azure").expanduser())
    return str(Path(config) / "cliextensions")


def _shell_env(sandbox: Sandbox, environ: Mapping[str, str]) -> dict[str, str]:
    """What only a user's shell needs: ``AZURE_CONFIG_DIR`` in the state directory, so that
    ``az login --identity`` there leaves the user's own ``~/.azure`` (and its login) alone,
    emptied of the login a former sandbox with this state directory left (another tenant,
    other subscriptions); and ``AZURE_EXTENSION_DIR`` on the user's extensions."""
    config = sandbox.state_dir / "azure"
    config.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in AZ_LOGIN_FILES:
        (config / name).unlink(missing_ok=True)
    return {"AZURE_CONFIG_DIR": str(config), "AZURE_EXTENSION_DIR": _az_extension_dir(environ)}


def _wait_ready(sandbox: Sandbox) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while silent := _probe(sandbox):
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox services did not answer: {', '.join(silent)}")
        time.sleep(0.05)


def _check_arguments(args: argparse.Namespace) -> None:
    """UsageError for options that do not go together or an env file still in use."""
    if args.instances is not None and not args.app:
        raise UsageError("--instances needs --app")
    if args.instances is not None and not 1 <= args.instances <= MAX_INSTANCES:
        raise UsageError(
            f"--instances must be from 1 to {MAX_INSTANCES} (each runs the app's workers in"
            f" this process), not {args.instances}"
        )
    if args.app and args.no_azurite:
        raise UsageError("--app needs Azurite (its queue triggers and ledger): drop --no-azurite")
    if args.env_file and (owner := live_owner(args.env_file)):
        raise UsageError(
            f"{args.env_file} belongs to a sandbox that is still running ({owner.describe()}):"
            " stop that `cmk sandbox up` (Ctrl-C in its shell) or pass another --env-file"
        )


def _state_dir_refusal(exc: StateDirInUse) -> str:
    """Why ``--state-dir`` is refused and how to free it."""
    stop = "Ctrl-C in its shell" + (f", or `kill {exc.pid}`" if exc.pid else "")
    return (
        f"--state-dir {exc.state_dir} belongs to a sandbox that is still running"
        f" ({', '.join(exc.owner)}), whose clients trust the CA there: stop that"
        f" `cmk sandbox up` ({stop}) or pass another --state-dir"
    )


def _summary(args: argparse.Namespace, sandbox: Sandbox, seconds: float) -> str:
    world = sandbox.world
    return (
        f"{PROG}: ready in {seconds:.1f}s"
        f" | proxy {sandbox.proxy_url} | identity {sandbox.identity_endpoint}\n"
        f"  world: {len(world.subscriptions)} subscriptions, {len(world.vaults)} vaults,"
        f" {sum(len(v.keys) for v in world.vaults.values())} keys,"
        f" {len(world.accounts)} accounts, {len(sandbox.eventgrid.topics)} topics"
        f" (scenario: {args.scenario or 'built-in example'})\n"
        f"  storage: {'Azurite' if sandbox.azurite else 'none'}"
    )


def _publish_env(args: argparse.Namespace, env: dict[str, str], sandbox: Sandbox) -> str:
    """Write the env file (refusing one a live sandbox owns) or return the export lines."""
    if not args.env_file:
        lines = "\n".join(export_lines(env))
        return (
            f"  env: run these in another shell (or pass --env-file FILE and source it):\n{lines}"
        )
    if owner := live_owner(args.env_file):  # another `up` got there while this one started
        raise UsageError(
            f"{args.env_file} now belongs to a sandbox that is still running"
            f" ({owner.describe()}): pass another --env-file"
        )
    write_env_file(args.env_file, env, pid=os.getpid(), proxy_url=sandbox.proxy_url)
    return f"  env: source {args.env_file}"


def _remove_env_file(path: Path | None) -> None:
    """Remove the env file if this process wrote it (it names our pid)."""
    if path is None:
        return
    try:
        header = path.read_text().partition("\n")[0]
    except OSError:
        return
    if f"pid={os.getpid()} " in header:
        path.unlink(missing_ok=True)


def _app_dir(cwd: Path) -> Path:
    """Where ``function_app.py`` is: the current directory first (as ``func start`` reads
    it), else the clone the ``cmk`` package runs from; UsageError when neither has it."""
    if (cwd / APP_FILE).is_file():
        return cwd
    try:
        return find_app_dir(cwd)
    except UsageError:
        raise UsageError(
            f"--app: {APP_FILE} is neither in {cwd} nor next to the cmk package: run it from"
            " the directory of your Functions app (a clone of cmk-rotator)"
        ) from None


def up_command(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; 0 on a clean stop, 1 if the sandbox cannot start, 2 for a
    usage error (conflicting options, an env file or a state dir of a running sandbox)."""
    started = time.monotonic()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    try:
        _check_arguments(args)
        app_dir = _app_dir(Path.cwd()) if args.app else None
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    sandbox = Sandbox(args.state_dir, azurite=not args.no_azurite)
    with ExitStack() as running:
        running.callback(sandbox.stop)
        try:
            sandbox.start()
            sandbox.seed(args.scenario or example_path())
            _wait_ready(sandbox)
            env = {**sandbox.env(), **sandbox.settings_env(), **_shell_env(sandbox, os.environ)}
            lines = [_summary(args, sandbox, 0.0)]
            if app_dir is not None:
                settings = app_settings(sandbox, os.environ)
                host = running.enter_context(
                    run_app(sandbox, app_dir, settings, instances=args.instances or 1)
                )
                env |= {
                    name: settings[name]
                    for name in ("CMK_JOB_QUEUE", "CMK_LEDGER_TABLE", "CMK_SWEEP_SCHEDULE")
                }
                env["CMK_SANDBOX_APP_URL"] = host.url("").rstrip("/")
                env["CMK_SANDBOX_APP_KEY"] = host.function_key
                lines.append(describe_app(host, sandbox))
            lines[0] = _summary(args, sandbox, time.monotonic() - started)
            lines.append(_publish_env(args, env, sandbox))
        except UsageError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except StateDirInUse as exc:
            print(f"{PROG}: {_state_dir_refusal(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except ScenarioError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:
            print(f"{PROG}: the sandbox did not start: {exc}", file=sys.stderr)
            return 1
        running.callback(_remove_env_file, args.env_file)
        print("\n".join([*lines, "  stop with Ctrl-C"]), flush=True)
        while not stop.wait(0.5):
            pass
        print(f"{PROG}: stopping", flush=True)
    print(f"{PROG}: stopped", flush=True)
    return 0
