"""Azurite, the real Azure Storage emulator (npm package ``azurite``), started on free
loopback ports for the sandbox's queues and tables (and blobs).

``make test`` installs it with ``npm ci`` into ``node_modules``; it is never fetched here.
The connection string names the actual ports explicitly (``UseDevelopmentStorage=true``
would assume 10000-10002).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development account key (documented, not a secret).
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT_SECONDS = 20.0


class AzuriteNotInstalled(RuntimeError):
    """node_modules/.bin/azurite is missing: run ``make setup`` (npm ci)."""


def find_azurite(start: Path | None = None) -> Path:
    """The azurite launcher in ``node_modules/.bin`` of ``start`` or a parent, or of this repo."""
    candidates = [start or Path.cwd(), Path(__file__).resolve().parents[3]]
    for base in candidates:
        for directory in (base, *base.parents):
            launcher = directory / "node_modules" / ".bin" / "azurite"
            if launcher.exists():
                return launcher
    on_path = shutil.which("azurite")
    if on_path:
        return Path(on_path)
    raise AzuriteNotInstalled(
        "node_modules/.bin/azurite not found: run `make setup` (npm ci) in the repository"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Azurite:
    """One Azurite process (in-memory persistence) on free loopback ports."""

    def __init__(self, workspace: Path, launcher: Path | None = None) -> None:
        self.workspace = workspace
        self.launcher = launcher
        self.blob_port = 0
        self.queue_port = 0
        self.table_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Azurite:
        """Start Azurite and wait until all three services accept connections."""
        launcher = self.launcher or find_azurite()
        self.workspace.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):
            self.blob_port, self.queue_port, self.table_port = (
                _free_port(),
                _free_port(),
                _free_port(),
            )
            command = [
                str(launcher),
                "--silent",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--blobHost", "127.0.0.1", "--blobPort", str(self.blob_port),
                "--queueHost", "127.0.0.1", "--queuePort", str(self.queue_port),
                "--tableHost", "127.0.0.1", "--tablePort", str(self.table_port),
            ]  # fmt: skip
            log_path = self.workspace / "azurite.log"
            log = log_path.open("ab")
            start = log.tell()
            self._process = subprocess.Popen(  # noqa: S603 (fixed argv, our own launcher)
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workspace,
                start_new_session=True,
            )
            log.close()
            try:
                if self._wait_ready(log_path, start):
                    return self
            except BaseException:  # interrupted (Ctrl-C) while waiting: leave no orphan
                self.stop()  # (its own session: the terminal's SIGINT never reaches it)
                raise
            self.stop()  # a port was taken meanwhile, or it did not come up: try again
        tail = (self.workspace / "azurite.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"Azurite did not start; its output:\n{tail}")

    def _wait_ready(self, log_path: Path, start: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline and self.running:
            if self._ready(log_path, start):
                logger.info("azurite ready", extra={"queue_port": self.queue_port})
                return True
            time.sleep(0.05)
        return False

    def _ready(self, log_path: Path, start: int) -> bool:
        """Ours is listening on all three ports: it says so in its own output (a port taken
        by another process between choosing it and this launch answers connections too,
        while this Azurite fails to bind it and exits), and the ports accept connections."""
        with log_path.open("rb") as log:
            log.seek(start)
            said = log.read().decode(errors="replace")
        ports = (self.blob_port, self.queue_port, self.table_port)
        announced = all(
            f"successfully listening at http://127.0.0.1:{port}" in said for port in ports
        )
        return announced and all(_listening(port) for port in ports)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    @property
    def connection_string(self) -> str:
        """An explicit connection string with the actual ports."""
        base = "http://127.0.0.1"
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={base}:{self.blob_port}/{ACCOUNT_NAME};"
            f"QueueEndpoint={base}:{self.queue_port}/{ACCOUNT_NAME};"
            f"TableEndpoint={base}:{self.table_port}/{ACCOUNT_NAME};"
        )
