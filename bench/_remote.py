"""The sandbox (with Azurite) in a process of its own, so that a benchmark's process holds
only the app: its memory figures are the app's, not the emulator's.

:func:`remote_staged` starts ``python -m bench._remote SCENARIO`` and talks to it over a
pipe, one JSON line per command: the child seeds the scenario, answers with its
environment and the app settings, then serves ``counts`` (the sandbox's request counters
by kind, :func:`bench._stage.request_counts`), ``reset_throttle`` and ``quit`` until its
stdin closes. What the child logs goes to its stderr; its stdout carries only answers.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench._stage import APP_DIR, request_counts

START_TIMEOUT_SECONDS = 120.0


@dataclass
class RemoteStage:
    """A sandbox running in a child process: the app settings for it, and its counters."""

    settings: dict[str, str]
    stale: int
    process: subprocess.Popen[str]

    def _ask(self, command: str) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the sandbox process ended (exit {self.process.poll()})")
        return json.loads(line)

    def counts(self) -> dict[str, int]:
        """Requests the sandbox served so far, by kind (exact: read from the sandbox)."""
        found: dict[str, int] = self._ask("counts")
        return found

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the sandbox process and of its Azurite."""
        found: dict[str, float] = self._ask("cpu")
        return found

    def reset_throttle(self) -> None:
        """Refill every ARM bucket and Resource Graph quota window."""
        self._ask("reset_throttle")

    def pid(self) -> int:
        return self.process.pid


def trust_ca_in_process(ca_bundle: str) -> None:
    """What :meth:`cmk.sandbox.core.Sandbox.trust_ca_in_process` does, from the bundle's
    path: aiohttp builds its verified SSL context at import, before the variables are set."""
    from aiohttp import connector  # noqa: PLC0415 (private detail, looked up late)

    context = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)
    if context is not None:
        context.load_verify_locations(cafile=ca_bundle)


@contextmanager
def remote_staged(document: dict[str, Any], *, queue_prefix: str) -> Iterator[RemoteStage]:
    """Start the sandbox process seeded with ``document``; point this process at it."""
    from cmk.sandbox.core import Sandbox  # noqa: PLC0415 (the class only, no instance here)

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="cmk-bench-") as folder:
        scenario = Path(folder) / "scenario.json"
        scenario.write_text(json.dumps(document))
        process = subprocess.Popen(
            [sys.executable, "-m", "bench._remote", str(scenario)],
            cwd=APP_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"the sandbox process did not start (exit {process.wait()})")
            started = json.loads(line)
            suffix = uuid.uuid4().hex[:8]
            settings = {
                **started["env"],
                "FUNCTIONS_WORKER_RUNTIME": "python",
                "CMK_JOB_QUEUE": f"{queue_prefix}-{suffix}",
                "CMK_LEDGER_TABLE": f"bench{suffix}",
                "CMK_SWEEP_SCHEDULE": "0 0 3 * * *",
            }
            for name in Sandbox.interfering_env(saved):
                os.environ.pop(name, None)
            os.environ.update(settings)
            trust_ca_in_process(settings["SSL_CERT_FILE"])
            yield RemoteStage(settings, int(started["stale"]), process)
        finally:
            os.environ.clear()
            os.environ.update(saved)
            if process.stdin is not None:
                process.stdin.close()  # the child stops its sandbox and exits
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def _stale(sandbox: Any) -> int:
    """Accounts not on their key's latest version."""
    world = sandbox.world
    latest = {
        (vault.url, key.name.lower()): key.versions[-1].version
        for vault in world.vaults.values()
        for key in vault.keys.values()
    }
    return sum(
        1
        for a in world.accounts.values()
        if a.encryption.key_version
        != latest[
            ((a.encryption.key_vault_uri or "").rstrip("/"), (a.encryption.key_name or "").lower())
        ]
    )


def _cpu(sandbox: Any) -> dict[str, float]:
    """CPU seconds of this process (every thread) and of the Azurite process (from /proc)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    found = {"sandbox": usage.ru_utime + usage.ru_stime, "azurite": 0.0}
    process = getattr(sandbox.azurite, "_process", None)
    try:
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        found["azurite"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, IndexError, ValueError):
        pass
    return found


def _serve(scenario: Path, answers: IO[str]) -> None:
    from cmk.sandbox.core import Sandbox  # noqa: PLC0415 (only the child runs a sandbox)
    from cmk.sandbox.platform.throttling import throttle_for  # noqa: PLC0415

    def answer(value: object) -> None:
        answers.write(json.dumps(value) + "\n")
        answers.flush()

    with Sandbox(azurite=True) as sandbox:
        sandbox.seed(scenario)
        answer(
            {
                "env": {**sandbox.env(), **sandbox.settings_env()},
                "stale": _stale(sandbox),
                "pid": os.getpid(),
            }
        )
        for line in sys.stdin:
            command = line.strip()
            if command == "counts":
                answer(request_counts(sandbox))
            elif command == "cpu":
                answer(_cpu(sandbox))
            elif command == "reset_throttle":
                throttle_for(sandbox.world).reset()
                answer({"ok": True})
            elif command == "quit":
                answer({"ok": True})
                break
            else:
                answer({"error": f"unknown command {command!r}"})


def main() -> None:
    """The child: stdout is kept for answers; anything else printed goes to stderr."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(Path(sys.argv[1]), answers)


if __name__ == "__main__":
    main()
