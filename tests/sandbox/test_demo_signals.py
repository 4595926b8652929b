"""``cmk demo`` stopped by SIGTERM tears its stage down: no Azurite left running, no
sandbox state directory left behind."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CMK = Path(sys.executable).parent / "cmk"
#: Bounds a hang (start-up of the sandbox, Azurite and the host on a loaded machine).
HANG_SECONDS = 180


def _processes_in(directory: Path) -> list[str]:
    """Command lines of the processes whose working directory is under ``directory``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = (proc / "cwd").resolve()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.is_relative_to(directory):
            found.append(f"{proc.name}: {cmdline}")
    return found


def _read_until(process: subprocess.Popen[str], marker: str) -> str:
    """Stdout of ``process`` up to the line containing ``marker``."""
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + HANG_SECONDS
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=1.0):
                line = process.stdout.readline()
                assert line, f"the demo ended early: {''.join(seen)}"
                seen.append(line)
                if marker in line:
                    return "".join(seen)
    raise AssertionError(f"no {marker!r} within {HANG_SECONDS} s: {''.join(seen)}")


class TestDemoSigterm:
    def test_sigterm_stops_azurite_and_removes_the_state_dir(self, tmp_path: Path) -> None:
        """SIGTERM once the stage is up: exit 143, Azurite gone, no cmk-sandbox-* dir."""
        temp = tmp_path / "tmp"
        temp.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CMK_", "AZURE_"))}
        env.pop("AzureWebJobsStorage", None)
        env.update(TMPDIR=str(temp), PYTHONUNBUFFERED="1", COLUMNS="200")
        process = subprocess.Popen(
            [str(CMK), "demo"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _read_until(process, "Local Azure ready")
            assert _processes_in(temp), "Azurite should be running in the state dir"
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=HANG_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        assert process.returncode == 128 + signal.SIGTERM, err
        assert "terminated" in err
        assert _processes_in(temp) == []
        assert list(temp.glob("cmk-sandbox-*")) == []
