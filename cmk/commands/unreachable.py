"""A shell that sourced the env file of a ``cmk sandbox up`` that has since stopped: every
request fails (the proxy refuses, the identity endpoint refuses) and the SDK's error says
nothing of why. When the environment points at a loopback proxy *and* a loopback
identity endpoint (the sandbox's signature: on Azure the identity endpoint answers) and
neither accepts a connection, the failure is reported as the sandbox being gone."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from cmk.commands.errors import Failure, UsageError
from cmk.commands.output import EXIT_USAGE
from cmk.errors import ConfigurationError

__all__ = ["sandbox_gone", "sandbox_unreachable"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
CONNECT_SECONDS = 0.5


def _loopback_address(url: str | None) -> tuple[str, int] | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.hostname not in LOOPBACK or port is None:
        return None
    return parts.hostname, port


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, CONNECT_SECONDS):
            return True
    except OSError:
        return False


def sandbox_gone(error: BaseException, environ: Mapping[str, str]) -> Failure | None:
    """The failure to report instead of ``error`` when the sandbox ``environ`` points at no
    longer answers; None otherwise (and for usage and configuration errors, which say
    what to fix themselves)."""
    if isinstance(error, UsageError | ConfigurationError):
        return None
    return sandbox_unreachable(environ)


def sandbox_unreachable(environ: Mapping[str, str]) -> Failure | None:
    """The failure to report when ``environ`` is a sandbox's (a loopback proxy and a
    loopback identity endpoint) and neither answers; None otherwise. Two local connection
    attempts, refused at once when the sandbox is gone: a command checks this before it
    starts, rather than after the SDK retried every refused request."""
    proxy = _loopback_address(environ.get("HTTPS_PROXY") or environ.get("https_proxy"))
    identity = _loopback_address(environ.get("IDENTITY_ENDPOINT"))
    if proxy is None or identity is None or _answers(proxy) or _answers(identity):
        return None
    host, port = proxy
    return Failure(
        EXIT_USAGE,
        "configuration",
        f"no sandbox answers at {host}:{port} — is `cmk sandbox up` still running?",
        "start `cmk sandbox up --env-file FILE` again and `source FILE` in this shell"
        " (the old env file's ports, CA and identity header are gone with it)",
    )
