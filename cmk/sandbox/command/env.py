"""The env file of ``cmk sandbox up``: the lines a shell sources to point its clients at the
sandbox, headed by a comment that records who wrote it. First one ``unset`` line drops what
would steer a client away from the sandbox (:data:`UNSET`: azure-identity's credential
variables, other proxies and identity endpoints), then ``export NAME=value`` lines set the
sandbox's variables, ``AZURE_CONFIG_DIR`` among them (``az`` keeps its login in the
sandbox's state directory, not in the user's ``~/.azure``).

The header (``# cmk sandbox up: pid=<pid> proxy=<host:port>``) lets a second ``up`` tell
a file whose sandbox still runs (refused: overwriting it would strand the shells that
sourced it) from one left behind by a sandbox that is gone (overwritten).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cmk.sandbox.core import CREDENTIAL_ENV, INTERFERING_ENV

__all__ = [
    "UNSET",
    "EnvFileOwner",
    "export_lines",
    "live_owner",
    "proxy_answers",
    "write_env_file",
]

HEADER = "# cmk sandbox up: pid={pid} proxy={proxy}"
_HEADER = re.compile(r"^# cmk sandbox up: pid=(\d+) proxy=(\S+)$")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CONNECT_SECONDS = 0.5
#: What the env file unsets before it exports: a user's service-principal or workload
#: identity variables (``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``, ...) make
#: ``DefaultAzureCredential`` try them before the sandbox's managed identity and fail.
UNSET = tuple(dict.fromkeys((*CREDENTIAL_ENV, *INTERFERING_ENV)))


@dataclass(frozen=True)
class EnvFileOwner:
    """The sandbox that wrote an env file: its process and its proxy's address."""

    pid: int | None
    proxy: str  # host:port

    def describe(self) -> str:
        pid = f"pid {self.pid}, " if self.pid is not None else ""
        return f"{pid}proxy {self.proxy}"


def export_lines(env: dict[str, str]) -> list[str]:
    """One ``unset`` line for the :data:`UNSET` names ``env`` does not set, then ``export
    NAME=value`` lines, values quoted for a POSIX shell."""
    unset = [name for name in UNSET if name not in env]
    exports = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    return [f"unset {' '.join(unset)}", *exports] if unset else exports


def _address(proxy_url: str) -> str:
    parts = urlsplit(proxy_url)
    return f"{parts.hostname}:{parts.port}"


def write_env_file(path: Path, env: dict[str, str], *, pid: int, proxy_url: str) -> None:
    """Write the header and the export lines atomically, readable by the owner only."""
    header = HEADER.format(pid=pid, proxy=_address(proxy_url))
    text = "\n".join([header, *export_lines(env)]) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(0o600)
    os.replace(temporary, path)


def proxy_answers(address: str) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_SECONDS):
            return True
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _owner(text: str) -> EnvFileOwner | None:
    """Who wrote an env file: the header, or (a file without one) its loopback proxy."""
    proxy: str | None = None
    for line in text.splitlines():
        if match := _HEADER.match(line.strip()):
            return EnvFileOwner(int(match.group(1)), match.group(2))
        name, _, value = line.removeprefix("export ").partition("=")
        if name.strip() == "HTTPS_PROXY" and value:
            try:
                words = shlex.split(value)
            except ValueError:  # not a line we wrote
                continue
            proxy = words[0] if words else None
    if proxy is None or urlsplit(proxy).hostname not in LOOPBACK:
        return None
    return EnvFileOwner(None, _address(proxy))


def live_owner(path: Path) -> EnvFileOwner | None:
    """The sandbox that wrote ``path`` if it still runs (its process is alive and its proxy
    answers); None when there is no such file or its sandbox is gone."""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return None
    owner = _owner(text)
    if owner is None or owner.pid == os.getpid():
        return None
    if owner.pid is not None and not _pid_alive(owner.pid):
        return None
    return owner if proxy_answers(owner.proxy) else None
