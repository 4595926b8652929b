"""The stage of ``cmk demo``: the sandbox and Azurite with the demo world, the Functions
app on the local Functions host, and Event Grid subscriptions from the Key Vaults to the
app's Event Grid functions — plus what the story needs to watch it: bindings, key
versions, alerts and invocations."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cmk
from cmk.commands.errors import UsageError
from cmk.sandbox.command.vault_events import (
    EVENT_TTL_MINUTES,
    KEYS_ONLY,
    MAX_DELIVERY_ATTEMPTS,
    SUBSCRIPTIONS,
    app_key_vaults,
)
from cmk.sandbox.core import Sandbox
from cmk.sandbox.funchost.host import FunctionsHost
from cmk.sandbox.platform.azurite import AzuriteNotInstalled
from cmk.sandbox.world import AccountState, VaultState, World

__all__ = ["DEMO_WORLD", "Stage", "find_app_dir", "stage"]

DEMO_WORLD = Path(__file__).resolve().parent.parent / "sandbox" / "scenario" / "demo_world.json"
APP_FILE = "function_app.py"
POLL_SECONDS = 0.1


def find_app_dir(cwd: Path) -> Path:
    """The directory of ``function_app.py``: the repository root above the ``cmk``
    package, else the current directory; UsageError when neither has it."""
    for directory in (Path(cmk.__file__).resolve().parent.parent, cwd):
        if (directory / APP_FILE).is_file():
            return directory
    raise UsageError(
        f"{APP_FILE} not found next to the cmk package or in {cwd}: run `cmk demo` (or"
        " `make demo`) from a clone of cmk-rotator, whose root holds the Functions app"
    )


@dataclass
class Stage:
    """The running sandbox and Functions host, and ways to watch them."""

    sandbox: Sandbox
    host: FunctionsHost
    alert_topic: str

    @property
    def world(self) -> World:
        return self.sandbox.world

    def vault(self, name: str) -> VaultState:
        """A vault (or Managed HSM) of the demo world by name."""
        return next(v for v in self.world.vaults.values() if v.name == name)

    def accounts_on(self, vault: VaultState, key: str) -> list[AccountState]:
        """The accounts bound to ``vault``/``key``, by name."""
        with self.world.lock:
            found = [
                a
                for a in self.world.accounts.values()
                if a.encryption.key_name == key
                and (a.encryption.key_vault_uri or "").rstrip("/") == vault.url
            ]
        return sorted(found, key=lambda a: a.name)

    def version_count(self, vault: VaultState, key: str) -> int:
        with self.world.lock:
            return len(vault.keys[key.lower()].versions)

    def alerts(self, subject: str | None = None) -> list[dict[str, Any]]:
        """The alerts the app published to the alert topic (optionally about one subject)."""
        events = list(self.sandbox.eventgrid.topic(self.alert_topic).events)
        wanted = subject.lower() if subject else None
        return [e for e in events if wanted is None or str(e.get("subject")).lower() == wanted]

    def wait(self, condition: Callable[[], bool], within: float) -> bool:
        """Poll ``condition`` until it holds (True) or ``within`` seconds pass (False)."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    def converge(
        self, accounts: list[AccountState], version: str, within: float
    ) -> dict[str, float]:
        """Seconds until each account was on ``version`` (Succeeded); missing ones never got
        there within ``within`` seconds."""
        started, reached = time.monotonic(), dict[str, float]()
        deadline = started + within
        while len(reached) < len(accounts) and time.monotonic() < deadline:
            with self.world.lock:
                for account in accounts:
                    on = account.encryption.key_version == version
                    if on and account.provisioning_state == "Succeeded":
                        reached.setdefault(account.name, time.monotonic() - started)
            time.sleep(POLL_SECONDS)
        return reached

    def settle(self, within: float = 30.0) -> None:
        """Wait until the app's queues are empty and nothing runs (best effort)."""
        with suppress(TimeoutError):
            self.host.run(self.host.wait_idle(within=within), timeout=within + 5)

    def instances_used(self, function: str) -> dict[int, int]:
        """Successful invocations of ``function`` per host instance."""
        used: dict[int, int] = {}
        for invocation in self.host.invocations_of(function):
            if invocation.succeeded:
                used[invocation.instance] = used.get(invocation.instance, 0) + 1
        return dict(sorted(used.items()))


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment, where the app's SDK clients read proxy,
    CA and identity settings; credentials that would bypass the sandbox removed. The
    environment is restored afterwards."""
    saved = dict(os.environ)
    for name in Sandbox.interfering_env(saved):
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def stage(app_dir: Path, *, instances: int) -> Iterator[Stage]:
    """Start everything; stop everything (Azurite too) when the block ends."""
    sandbox = Sandbox(azurite=True)
    try:
        try:
            sandbox.start()
        except AzuriteNotInstalled as error:
            raise UsageError(f"{error} (`make demo` does it for you)") from None
        seeded = sandbox.seed(DEMO_WORLD)
        sandbox.trust_ca_in_process()
        settings = {
            **sandbox.env(),
            **sandbox.settings_env(),
            "FUNCTIONS_WORKER_RUNTIME": "python",
            "CMK_UPDATE_TIMEOUT_SECONDS": "60",
            "CMK_JOB_QUEUE": "cmk-rotation-jobs",
            "CMK_SWEEP_SCHEDULE": "0 0 * * * *",
        }
        key_vaults = app_key_vaults(sandbox, settings)
        with (
            _environment(settings),
            FunctionsHost(
                app_dir, settings=settings, instances=instances, serve_http=False
            ) as host,
        ):
            for name, (event_type, function) in SUBSCRIPTIONS.items():
                # As infra/ wires them: the allow-listed Key Vaults (Managed HSM publishes
                # no Event Grid events), key events only, infra/'s retry policy.
                sandbox.eventgrid.subscribe(
                    host.event_grid_target(function),
                    included_event_types=[event_type],
                    vaults=key_vaults,
                    name=name,
                    advanced_filters=KEYS_ONLY,
                    max_attempts=MAX_DELIVERY_ATTEMPTS,
                    event_ttl_minutes=EVENT_TTL_MINUTES,
                )
            yield Stage(sandbox, host, seeded.topics[0].name)
    finally:
        sandbox.stop()
