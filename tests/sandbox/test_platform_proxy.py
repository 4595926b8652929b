"""The sandbox's network front: CA, CONNECT proxy, TLS for Azure host names, host dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
import requests
from aiohttp import web

from cmk.sandbox.core import Sandbox
from cmk.sandbox.platform.ca import SandboxCA, host_is_emulated
from cmk.sandbox.platform.context import ServiceContext

PROBE_HOST = "probe.vault.azure.net"


def _probe_app(ctx: ServiceContext) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "host": request.host,
                "path": request.path,
                "name": request.match_info["name"],
                "secure": request.secure,
                "tenant": ctx.world.tenant_id,
            }
        )

    app = web.Application()
    app.router.add_get("/echo/{name}", echo)
    return app


@pytest.fixture
def probe(sandbox: Sandbox) -> Sandbox:
    sandbox.add_service("probe", [PROBE_HOST, "probe.westeurope-1.eventgrid.azure.net"], _probe_app)
    yield sandbox
    sandbox.remove_service("probe")


def _connect(sandbox: Sandbox, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", sandbox.server.proxy_port), timeout=5) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return s.recv(4096)


class TestCertificateAuthority:
    def test_leaf_verifies_for_every_emulated_host(self, tmp_path):
        """A TLS client trusting only the CA bundle accepts the leaf for each Azure host."""
        ca = SandboxCA()
        bundle = ca.write_bundle(tmp_path / "ca.pem")
        server_ctx = ca.server_context(tmp_path)
        client_ctx = ssl.create_default_context(cafile=str(bundle))
        for host in (
            "myvault.vault.azure.net",
            "hsm1.managedhsm.azure.net",
            "management.azure.com",
            "kv.vault.usgovcloudapi.net",
            "login.microsoftonline.com",
            "alerts.westeurope-1.eventgrid.azure.net",
            "alerts.qatarcentral-1.eventgrid.azure.net",  # issued on demand by SNI
        ):
            server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            server = server_ctx.wrap_bio(server_in, server_out, server_side=True)
            client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = client_ctx.wrap_bio(client_in, client_out, server_hostname=host)
            for _ in range(10):
                for side in (client, server):
                    with contextlib.suppress(ssl.SSLWantReadError):
                        side.do_handshake()
                server_in.write(client_out.read())
                client_in.write(server_out.read())
            client.do_handshake()
            assert client.getpeercert() is not None, host

    def test_emulated_hosts(self):
        """Only Azure host names of the emulated services count as emulated."""
        assert host_is_emulated("x.vault.azure.net")
        assert host_is_emulated("t.westus2-1.eventgrid.azure.net")
        assert host_is_emulated("management.usgovcloudapi.net")
        assert not host_is_emulated("vault.azure.net")
        assert not host_is_emulated("www.google.com")
        assert not host_is_emulated("evilvault.azure.net")


class TestProxy:
    def test_requests_reaches_the_service_for_the_host(self, probe):
        """A plain requests call to an Azure URL reaches the service mounted for that host."""
        response = requests.get(f"https://{PROBE_HOST}/echo/k1", timeout=10)
        assert response.status_code == 200
        body = response.json()
        assert body == {
            "host": PROBE_HOST,
            "path": "/echo/k1",
            "name": "k1",
            "secure": True,
            "tenant": probe.world.tenant_id,
        }

    def test_deep_eventgrid_host_gets_a_certificate(self, probe):
        """A two-label Event Grid topic host verifies and dispatches."""
        response = requests.get("https://probe.westeurope-1.eventgrid.azure.net/echo/x", timeout=10)
        assert response.json()["name"] == "x"

    def test_unknown_host_is_refused_at_connect(self, sandbox):
        """CONNECT to a host the sandbox does not emulate gets 502, nothing leaves the box."""
        assert _connect(sandbox, "www.google.com:443").startswith(b"HTTP/1.1 502")
        with pytest.raises(requests.exceptions.ProxyError):
            requests.get("https://example.com/", timeout=10)

    def test_non_https_port_is_refused(self, sandbox):
        """CONNECT to another port than 443 gets 403."""
        assert _connect(sandbox, "management.azure.com:80").startswith(b"HTTP/1.1 403")

    def test_plain_proxy_request_is_refused(self, sandbox):
        """A non-CONNECT request to the proxy gets 405."""
        with socket.create_connection(("127.0.0.1", sandbox.server.proxy_port), timeout=5) as s:
            s.sendall(b"GET http://management.azure.com/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 405")

    def test_host_without_a_service_answers_404(self, sandbox):
        """A request whose Host no service serves answers 404 with an Azure error body."""
        with socket.create_connection(("127.0.0.1", sandbox.server.proxy_port), timeout=5) as s:
            s.sendall(b"CONNECT management.azure.com:443 HTTP/1.1\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            context = ssl.create_default_context(cafile=str(sandbox.ca_bundle))
            with context.wrap_socket(s, server_hostname="management.azure.com") as tls:
                tls.sendall(
                    b"GET /x HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n"
                )
                answer = b""
                while chunk := tls.recv(4096):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 404")
        assert b"HostNotEmulated" in answer

    def test_keep_alive_reuses_one_tunnel(self, probe):
        """A session sends many requests over one tunnel (one CONNECT)."""
        with requests.Session() as session:
            for i in range(20):
                assert session.get(f"https://{PROBE_HOST}/echo/{i}", timeout=10).ok
        assert probe.counters["GET probe.vault.azure.net /echo/{name}"] == 20

    def test_hundreds_of_concurrent_connections(self, probe):
        """300 concurrent connections through the proxy all get answers."""

        def fetch(i: int) -> int:
            return requests.get(f"https://{PROBE_HOST}/echo/{i}", timeout=30).status_code

        with ThreadPoolExecutor(max_workers=64) as pool:
            statuses = list(pool.map(fetch, range(300)))
        assert statuses == [200] * 300

    async def test_aiohttp_client_through_the_proxy(self, probe):
        """An aiohttp session with trust_env reaches the service concurrently."""
        async with aiohttp.ClientSession(trust_env=True) as session:

            async def fetch(i: int) -> str:
                async with session.get(f"https://{PROBE_HOST}/echo/a{i}") as response:
                    return str((await response.json())["name"])

            names = await asyncio.gather(*(fetch(i) for i in range(200)))
        assert names == [f"a{i}" for i in range(200)]


class TestClientDisconnect:
    @pytest.mark.parametrize("abort", [True, False], ids=["reset", "close"])
    def test_a_client_gone_mid_request_is_one_line(self, sandbox: Sandbox, caplog, abort):
        """A client that disconnects while its upload is read makes the sandbox log one
        INFO line naming the request, and no traceback."""
        reading = threading.Event()  # the handler runs: a disconnect now is mid-request

        def upload_app(ctx: ServiceContext) -> web.Application:
            async def upload(request: web.Request) -> web.Response:
                reading.set()
                await request.read()
                return web.Response(text="ok")

            app = web.Application()
            app.router.add_post("/upload", upload)
            return app

        sandbox.add_service("upload", [PROBE_HOST], upload_app)
        caplog.set_level("INFO")
        try:
            raw = socket.create_connection(("127.0.0.1", sandbox.server.proxy_port), timeout=5)
            raw.sendall(f"CONNECT {PROBE_HOST}:443 HTTP/1.1\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            context = ssl.create_default_context(cafile=str(sandbox.ca_bundle))
            client = context.wrap_socket(raw, server_hostname=PROBE_HOST)
            client.sendall(
                f"POST /upload HTTP/1.1\r\nHost: {PROBE_HOST}\r\n"
                "Content-Length: 1000000\r\n\r\n".encode()
                + b"x" * 1000
            )
            assert reading.wait(60), "the request never reached the service"
            if abort:  # RST instead of FIN
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            client.close()
            _wait(lambda: sandbox.counters.count(path="/upload") == 1)
        finally:
            sandbox.remove_service("upload")
        lines = [r for r in caplog.records if "disconnected mid-request" in r.getMessage()]
        assert len(lines) == 1
        assert "POST https://probe.vault.azure.net/upload" in lines[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def _wait(condition: Callable[[], bool], ceiling: float = 60.0) -> None:
    """Wait for ``condition`` (the ceiling only bounds a hang)."""
    deadline = time.monotonic() + ceiling
    while not condition():
        assert time.monotonic() < deadline, "condition not met: the sandbox hangs"
        time.sleep(0.01)
