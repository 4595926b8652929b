"""The sandbox's network front: an HTTPS CONNECT proxy on loopback that terminates TLS for
Azure's host names with certificates of the sandbox CA, and dispatches each request by its
``Host`` header to the emulated service (an aiohttp sub-application); plus the plain-HTTP
managed identity endpoint.

How a request flows: the client (``HTTPS_PROXY=http://127.0.0.1:P``) sends
``CONNECT myvault.vault.azure.net:443``; the proxy checks the host is emulated and the port
is 443, answers ``200 Connection established`` and hands the very socket to the aiohttp
HTTPS server (TLS handshake with SNI picks the certificate). The top-level application's
middleware applies faults and counts; its one route finds the service by host pattern
and lets the service's application handle the request. Nothing is ever forwarded to the
real network: other hosts and ports are refused at CONNECT.

A client that goes away mid-request (a CLI stopped with Ctrl-C) is logged as one line,
not as a traceback per request: nothing is wrong with the sandbox when that happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

from cmk.sandbox.platform.ca import host_is_emulated
from cmk.sandbox.platform.faults import Counters, Faults, middleware

logger = logging.getLogger(__name__)

MAX_CONNECT_HEADER = 16 * 1024
CONNECT_TIMEOUT_SECONDS = 10.0
STOP_GRACE_SECONDS = 1.0
SERVICE_KEY = web.RequestKey("cmk.sandbox.service", str)
INNER_KEY = web.RequestKey("cmk.sandbox.inner", web.Request)

AppFactory = Callable[[], web.Application]


@dataclass(frozen=True)
class Mount:
    """A service application and the host patterns it answers ("*.x" matches any depth)."""

    name: str
    hosts: tuple[str, ...]
    app: web.Application

    def pattern_for(self, host: str) -> str | None:
        for pattern in self.hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                    return pattern
            elif host == pattern:
                return pattern
        return None


def bind_loopback() -> socket.socket:
    """A listening TCP socket on 127.0.0.1 at a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _endpoint_of(request: web.Request) -> str:
    service = request.get(SERVICE_KEY) or request.host.split(":")[0].lower()
    route = request.path
    inner = request.get(INNER_KEY)
    if isinstance(inner, web.Request):
        with contextlib.suppress(Exception):
            match_info = inner.match_info
            resource = match_info.route.resource
            if resource is not None and match_info.http_exception is None:
                route = resource.canonical
    return f"{request.method} {service} {route}"


class SandboxServer:
    """The proxy, the TLS server behind it, and the identity endpoint; runs on one loop."""

    def __init__(
        self,
        server_ssl: ssl.SSLContext,
        faults: Faults,
        counters: Counters,
        identity_app: web.Application,
    ) -> None:
        self._ssl = server_ssl
        self.faults = faults
        self.counters = counters
        self._identity_app = identity_app
        self._mounts: list[Mount] = []
        self._runner: web.AppRunner | None = None
        self._identity_runner: web.AppRunner | None = None
        self._proxy_sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.proxy_port = 0
        self.identity_port = 0

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.identity_port}/msi/token"

    @property
    def mounts(self) -> list[Mount]:
        return list(self._mounts)

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(
            middlewares=[middleware(self.faults, self.counters, _endpoint_of)],
            client_max_size=64 * 1024 * 1024,
        )
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Stopping cuts requests still in flight (a test's held reads, a client gone)
        # rather than waiting aiohttp's default minute for them.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE_SECONDS
        )
        await self._runner.setup()

        self._identity_runner = web.AppRunner(
            self._identity_app, access_log=None, handle_signals=False
        )
        await self._identity_runner.setup()
        identity_sock = bind_loopback()
        self.identity_port = identity_sock.getsockname()[1]
        await web.SockSite(self._identity_runner, identity_sock).start()

        self._proxy_sock = bind_loopback()
        self.proxy_port = self._proxy_sock.getsockname()[1]
        self._accept_task = asyncio.create_task(self._accept_loop(self._proxy_sock))
        logger.info(
            "sandbox proxy listening",
            extra={"proxy_port": self.proxy_port, "identity_port": self.identity_port},
        )

    async def stop(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._proxy_sock is not None:
            self._proxy_sock.close()
            self._proxy_sock = None
        tunnels = list(self._conn_tasks)
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._identity_runner is not None:
            await self._identity_runner.cleanup()
            self._identity_runner = None
        await self._cleanup_mounts(self._mounts)
        self._mounts = []

    async def mount(self, mounts: Sequence[Mount]) -> None:
        """Serve ``mounts`` from now on (replacing the previous ones, which are cleaned up)."""
        for m in mounts:
            m.app.freeze()
            await m.app.startup()
        old, self._mounts = self._mounts, list(mounts)
        await self._cleanup_mounts(old)

    @staticmethod
    async def _cleanup_mounts(mounts: Sequence[Mount]) -> None:
        for m in mounts:
            try:
                await m.app.shutdown()
                await m.app.cleanup()
            except Exception:
                logger.exception("cleanup of sandbox service failed", extra={"service": m.name})

    # --- dispatch --------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        host = request.host.split(":")[0].lower()
        for m in self._mounts:
            pattern = m.pattern_for(host)
            if pattern is not None:
                request[SERVICE_KEY] = pattern
                # The service's own application routes a fresh copy of the request (aiohttp
                # caches match_info per request object), with its own middlewares.
                inner = request.clone()
                request[INNER_KEY] = inner
                try:
                    return await m.app._handle(inner)
                except ConnectionError as exc:
                    if request.transport is not None and not request.transport.is_closing():
                        raise  # the client is still there: a fault of the service
                    logger.info(
                        "client disconnected mid-request: %s https://%s%s (%s)",
                        request.method,
                        host,
                        request.path,
                        type(exc).__name__,
                        extra={"method": request.method, "host": host, "path": request.path},
                    )
                    raise asyncio.CancelledError from None  # nobody to answer
        return web.json_response(
            {
                "error": {
                    "code": "HostNotEmulated",
                    "message": f"The local Azure sandbox serves no service at {host}.",
                }
            },
            status=404,
        )

    # --- the CONNECT proxy -----------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError:
                logger.exception("proxy accept failed")
                await asyncio.sleep(0.01)
                continue
            task = asyncio.create_task(self._tunnel(sock))
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    async def _tunnel(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                head = await self._read_head(loop, sock)
            verdict = self._connect_verdict(head)
            if verdict is not None:
                await loop.sock_sendall(sock, verdict)
                sock.close()
                return
            await loop.sock_sendall(sock, b"HTTP/1.1 200 Connection established\r\n\r\n")
            assert self._runner is not None and self._runner.server is not None
            await loop.connect_accepted_socket(
                self._runner.server, sock, ssl=self._ssl, ssl_handshake_timeout=10.0
            )
        except (TimeoutError, OSError, ssl.SSLError, ValueError) as exc:
            logger.debug("proxy connection ended early: %s", exc)
            sock.close()

    @staticmethod
    async def _read_head(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                raise ValueError("client closed before the end of the CONNECT request")
            data += chunk
            if len(data) > MAX_CONNECT_HEADER:
                raise ValueError("CONNECT request head too large")
        return data

    @staticmethod
    def _connect_verdict(head: bytes) -> bytes | None:
        """None to accept the tunnel; else the HTTP response refusing it."""
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) != 3 or parts[0].upper() != "CONNECT":
            return _refusal(405, "Method Not Allowed", "the sandbox proxy only tunnels CONNECT")
        host, _, port = parts[1].rpartition(":")
        host = host.strip("[]").lower()
        if port != "443":
            return _refusal(403, "Forbidden", f"the sandbox proxy only tunnels port 443: {line}")
        if not host_is_emulated(host):
            return _refusal(
                502, "Bad Gateway", f"{host} is not emulated by the local Azure sandbox"
            )
        return None


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body
