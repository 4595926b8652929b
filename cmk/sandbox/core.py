"""The sandbox as one Python object: start it, point clients at it with :meth:`Sandbox.env`,
seed and inspect :attr:`Sandbox.world`, move the clock, inject faults, read counters and
Event Grid deliveries. Tests, ``cmk sandbox up`` and ``cmk demo`` all use this.

Everything network-facing runs on the sandbox's own event loop in a background thread,
so synchronous SDK clients in the calling thread (and async clients on another loop)
talk to it like to Azure.
"""

from __future__ import annotations

import asyncio
import fcntl
import importlib
import logging
import os
import secrets
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from cmk.sandbox.eventgrid.service import EVENTGRID_HOSTS, EventGrid
from cmk.sandbox.identity.graph import GRAPH_HOSTS
from cmk.sandbox.identity.service import (
    HostIdentity,
    IdentityHosts,
    TokenService,
    build_identity_app,
    build_login_app,
)
from cmk.sandbox.platform.azurite import Azurite
from cmk.sandbox.platform.ca import SandboxCA
from cmk.sandbox.platform.context import ServiceContext
from cmk.sandbox.platform.faults import Counters, Faults
from cmk.sandbox.platform.server import Mount, SandboxServer
from cmk.sandbox.scenario.loader import SeededWorld, build_world, load
from cmk.sandbox.world import Principal, UserAssignedIdentity, World

logger = logging.getLogger(__name__)

T = TypeVar("T")
ServiceFactory = Callable[[ServiceContext], web.Application]

KEYVAULT_HOSTS = (
    "*.vault.azure.net",
    "*.vault.azure.cn",
    "*.vault.usgovcloudapi.net",
    "*.managedhsm.azure.net",
    "*.managedhsm.azure.cn",
    "*.managedhsm.usgovcloudapi.net",
)
ARM_HOSTS = ("management.azure.com", "management.chinacloudapi.cn", "management.usgovcloudapi.net")
LOGIN_HOSTS = ("login.microsoftonline.com", "login.chinacloudapi.cn", "login.microsoftonline.us")
# (service name, module, host patterns): services other engineers build, mounted if present
SERVICE_MODULES = (
    ("keyvault", "cmk.sandbox.keyvault.service", KEYVAULT_HOSTS),
    ("arm", "cmk.sandbox.arm.service", ARM_HOSTS),
    ("graph", "cmk.sandbox.identity.graph", GRAPH_HOSTS),
)
DEFAULT_HOST = "app"
START_TIMEOUT_SECONDS = 30.0
# Environment a client must not carry into the sandbox: credentials and identity endpoints
# that would make azure-identity pick something other than the sandbox's managed identity.
INTERFERING_ENV = (
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "IDENTITY_SERVER_THUMBPRINT",
    "IDENTITY_API_VERSION",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_DIR",
)
#: azure-identity's credential variables (``azure.identity._constants.EnvironmentVariables``,
#: 1.27) besides the identity endpoint the sandbox sets: a shell that carries any of them
#: into a sandboxed process makes ``DefaultAzureCredential`` pick (or fail with) another
#: credential — ``EnvironmentCredential`` and ``WorkloadIdentityCredential`` come before
#: managed identity, ``AZURE_CLIENT_ID`` selects a user-assigned identity the sandbox does
#: not know, ``AZURE_TOKEN_CREDENTIALS`` may leave managed identity out of the chain.
CREDENTIAL_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_REGIONAL_AUTHORITY_NAME",
    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
    "AZURE_IDENTITY_DISABLE_MULTITENANTAUTH",
    "AZURE_TOKEN_CREDENTIALS",
    "AZURE_KUBERNETES_SNI_NAME",
    "AZURE_KUBERNETES_TOKEN_PROXY",
    "AZURE_KUBERNETES_CA_FILE",
    "AZURE_KUBERNETES_CA_DATA",
)


def write_node_bundle(ca_pem: bytes, path: Path, inherited: str | None) -> Path:
    """The file for ``NODE_EXTRA_CA_CERTS``: the sandbox CA, then the certificates of the
    file ``inherited`` names (Node reads one file only, and machines often point it at the
    system or a corporate bundle, which must keep working)."""
    extra = b""
    if inherited and Path(inherited).is_file() and Path(inherited).resolve() != path.resolve():
        extra = b"\n" + Path(inherited).read_bytes()
    path.write_bytes(ca_pem + extra)
    return path


#: The file in the state directory that names the sandbox using it (``pid=`` and, once its
#: proxy listens, ``proxy=`` lines); the sandbox holds an exclusive ``flock`` on it while it
#: runs, which the kernel releases when the process ends however it ends.
OWNER_FILE = "owner"


class StateDirInUse(RuntimeError):
    """Another running sandbox owns the state directory (its CA bundle, TLS files, az
    profile and Azurite data): starting here would replace the CA its clients trust."""

    def __init__(self, state_dir: Path, pid: int | None, proxy: str | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        self.proxy = proxy
        super().__init__(
            f"{state_dir} is the state directory of a sandbox that is still running"
            f" ({', '.join(self.owner)})"
        )

    @property
    def owner(self) -> list[str]:
        """What the owner file names: ``pid N``, ``proxy host:port`` (``starting`` when it
        names nothing yet)."""
        named = [f"pid {self.pid}"] if self.pid else []
        named += [f"proxy {self.proxy}"] if self.proxy else []
        return named or ["starting"]


def _read_owner(fd: int) -> tuple[int | None, str | None]:
    """The ``pid`` and ``proxy`` an owner file names (None for what it does not name)."""
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    fields = dict(line.partition("=")[::2] for line in text.splitlines())
    pid = fields.get("pid", "")
    return (int(pid) if pid.isdigit() else None), (fields.get("proxy") or None)


def claim_state_dir(state_dir: Path) -> int:
    """Make this process the owner of ``state_dir``: lock its :data:`OWNER_FILE` and write our
    pid there; return the file descriptor, which holds the claim until it is closed. An
    owner file left by a sandbox that has ended is taken over; StateDirInUse while its
    owner runs (in this process or another)."""
    fd = os.open(state_dir / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, proxy = _read_owner(fd)
        os.close(fd)
        raise StateDirInUse(state_dir, pid, proxy) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid={os.getpid()}\n".encode(), 0)
    return fd


def _service_module(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        logger.warning("sandbox service %s is not available; not mounted", module_name)
        return None


class Sandbox:
    """A local Azure: proxy + CA, managed identity, Key Vault, ARM, Resource Graph, Event
    Grid, faults and counters (and Azurite with ``azurite=True``)."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        azurite: bool = False,
        tenant_id: str | None = None,
        random_seed: int | None = None,
    ) -> None:
        self._own_state_dir = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="cmk-sandbox-"))
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.ca = SandboxCA()
        self.ca_bundle = self.state_dir / "ca.pem"
        self.node_ca_bundle = self.state_dir / "node-ca.pem"
        self.tokens = TokenService()
        self.hosts = IdentityHosts()
        # Every random choice the sandbox makes (fault probabilities, Event Grid duplicates,
        # delays and reordering) comes from this seed; reset() rewinds to it, so a test's
        # draws do not depend on the tests before it. Report it; pass it back to replay.
        self.random_seed = secrets.randbelow(2**32) if random_seed is None else random_seed
        self.faults = Faults(seed=self.random_seed)
        self.counters = Counters()
        self.eventgrid = EventGrid(seed=self.random_seed)
        # The app's system-assigned identity is stable across resets, so tokens cached by
        # long-lived credentials stay meaningful.
        self.app_principal = Principal.new("cmk-rotator-app", self.tenant_id)
        self.hosts.add(DEFAULT_HOST, self.app_principal)
        self.world = self._new_world()
        self._with_azurite = azurite
        self.azurite: Azurite | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: SandboxServer | None = None
        self.seeded: SeededWorld | None = None
        self._extra_services: dict[str, tuple[tuple[str, ...], ServiceFactory]] = {}
        self._owner_fd: int | None = None

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Sandbox:
        """Start the loop thread, the proxy, the services (and Azurite); return self.
        StateDirInUse, before anything is written, when another running sandbox owns the
        state directory."""
        if self._server is not None:
            return self
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._owner_fd = claim_state_dir(self.state_dir)
        try:  # whatever fails from here gives the state dir back, and stops what started
            self._start_claimed()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_claimed(self) -> None:
        """:meth:`start`, once the state dir is ours: files, loop thread, server, services
        and Azurite. Each part is recorded as it starts, so that :meth:`stop` can undo a
        start that failed half-way."""
        self.ca.write_bundle(self.ca_bundle)
        write_node_bundle(self.ca.pem, self.node_ca_bundle, os.environ.get("NODE_EXTRA_CA_CERTS"))
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run, name="cmk-sandbox", daemon=True)
        try:
            thread.start()
        except BaseException:
            loop.close()  # no thread to run it: nothing to stop on it
            raise
        self._loop, self._thread = loop, thread
        ready.wait()
        self.eventgrid.bind(loop)
        server = SandboxServer(
            self.ca.server_context(self.state_dir),
            self.faults,
            self.counters,
            build_identity_app(self.tokens, self.hosts),
        )
        self._server = server  # stop() stops a server that started half-way, too
        self._call(server.start())
        proxy = urlsplit(server.proxy_url)
        owner = f"proxy={proxy.hostname}:{proxy.port}\n".encode()
        assert self._owner_fd is not None
        os.pwrite(self._owner_fd, owner, os.fstat(self._owner_fd).st_size)
        self._call(self._mount_services())
        if self._with_azurite:
            self.azurite = Azurite(self.state_dir / "azurite").start()

    def stop(self) -> None:
        """Stop everything started (idempotent); gives up the state dir (removes a
        temporary one)."""
        if self.azurite is not None:
            self.azurite.stop()
            self.azurite = None
        loop, server = self._loop, self._server
        self._server = None
        if loop is not None and not loop.is_closed():
            if server is not None:
                self._call(server.stop())
            self._call(self.eventgrid.close())
            self._call(_cancel_the_rest())
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            loop.close()
        self._loop = None
        self._thread = None
        if self._owner_fd is not None:  # the state dir is free for the next sandbox
            os.close(self._owner_fd)
            self._owner_fd = None
        if self._own_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self, world: World | None = None) -> World:
        """A fresh world (or ``world``), with counters, faults, Event Grid subscriptions and
        topics, and host identities other than the app's cleared; the server keeps running
        and the services are rebuilt around the new world. Returns the world."""
        self.faults.clear()
        self.faults.seed(self.random_seed)
        self.counters.reset()
        self.eventgrid.reset()
        self.seeded = None
        self.hosts.retain([DEFAULT_HOST])
        self.hosts.add(DEFAULT_HOST, self.app_principal)
        if world is None:
            world = self._new_world()
        else:
            world.add_principal(self.app_principal)
            self.eventgrid.attach(world)
        self.world = world
        if self._server is not None:
            self._call(self._mount_services())
        return world

    def seed(self, scenario: Path | str | Mapping[str, Any]) -> SeededWorld:
        """Reset to the world a scenario file (or parsed document) declares, with its topics,
        faults and throttling switch. Raises ScenarioError naming each problem's JSON path."""
        document = load(scenario)
        source = "<dict>" if isinstance(scenario, Mapping) else str(scenario)
        seeded = build_world(
            document, tenant_id=self.tenant_id, app=self.app_principal, source=source
        )
        self.reset(seeded.world)
        for topic in seeded.topics:
            self.eventgrid.create_topic(
                topic.name,
                region=topic.region,
                subscription_id=topic.subscription_id,
                resource_group=topic.resource_group,
                key=topic.key,
                input_schema=topic.input_schema,
            )
        for fault in seeded.faults:
            self.faults.add(
                host=fault.host,
                path=fault.path,
                method=fault.method,
                status=fault.status,
                retry_after=fault.retry_after,
                latency=fault.latency,
                drop=fault.drop,
                probability=fault.probability,
                count=fault.count,
            )
        self.set_throttling(seeded.throttling)
        self.seeded = seeded
        return seeded

    def reseed(self, random_seed: int) -> None:
        """Draw every later random choice (faults, Event Grid) from ``random_seed``; it is
        also where :meth:`reset` rewinds to from now on."""
        self.random_seed = random_seed
        self.faults.seed(random_seed)
        self.eventgrid.seed(random_seed)

    def set_throttling(self, enabled: bool) -> None:
        """Switch ARM / Resource Graph throttling of the current world on or off."""
        module = _service_module("cmk.sandbox.platform.throttling")
        throttle_for = getattr(module, "throttle_for", None) if module else None
        if throttle_for is not None:
            throttle_for(self.world).enabled = enabled

    def settings_env(self) -> dict[str, str]:
        """The CMK_* settings that fit the seeded world: vault allow-list, subscriptions,
        alert topic endpoint (empty when nothing was seeded)."""
        if self.seeded is None:
            return {}
        env = self.seeded.settings_env()
        if self.seeded.topics:
            env["CMK_ALERT_TOPIC_ENDPOINT"] = self.eventgrid.topic(
                self.seeded.topics[0].name
            ).endpoint
        return env

    def _new_world(self) -> World:
        world = World(tenant_id=self.tenant_id)
        world.add_principal(self.app_principal)
        self.eventgrid.attach(world)
        return world

    async def _mount_services(self) -> None:
        assert self._server is not None
        ctx = ServiceContext(self.world, self.tokens)
        mounts = [
            Mount(name, hosts, factory(ctx))
            for name, (hosts, factory) in self._extra_services.items()
        ]
        for name, module_name, hosts in SERVICE_MODULES:
            module = _service_module(module_name)
            if module is not None:
                app: web.Application = module.build_app(ctx)
                mounts.append(Mount(name, hosts, app))
        mounts.append(Mount("eventgrid", EVENTGRID_HOSTS, self.eventgrid.build_app(ctx)))
        mounts.append(Mount("login", LOGIN_HOSTS, build_login_app(self.tenant_id, self.tokens)))
        await self._server.mount(mounts)

    def add_service(self, name: str, hosts: Sequence[str], factory: ServiceFactory) -> None:
        """Serve ``factory(ctx)``'s application for ``hosts`` (patterns as in
        :class:`~cmk.sandbox.platform.server.Mount`; they must be emulated host names), ahead of the
        built-in services, until :meth:`remove_service`; rebuilt on every reset."""
        self._extra_services[name] = (tuple(h.lower() for h in hosts), factory)
        if self._server is not None:
            self._call(self._mount_services())

    def remove_service(self, name: str) -> None:
        """Stop serving an added service."""
        if self._extra_services.pop(name, None) is not None and self._server is not None:
            self._call(self._mount_services())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT_SECONDS) -> T:
        """Run ``coro`` on the sandbox loop and wait for its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the sandbox is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # --- what clients need -----------------------------------------------------------------

    @property
    def server(self) -> SandboxServer:
        if self._server is None:
            raise RuntimeError("the sandbox is not running; call start() first")
        return self._server

    @property
    def proxy_url(self) -> str:
        return self.server.proxy_url

    @property
    def identity_endpoint(self) -> str:
        return self.server.identity_endpoint

    @property
    def storage_connection_string(self) -> str | None:
        return self.azurite.connection_string if self.azurite is not None else None

    def env(self, identity: str = DEFAULT_HOST) -> dict[str, str]:
        """The environment that points Azure SDK clients at the sandbox, with the managed
        identity of host ``identity``."""
        host = self.hosts.get(identity)
        no_proxy = "127.0.0.1,localhost,::1"
        env = {
            "HTTPS_PROXY": self.proxy_url,
            "https_proxy": self.proxy_url,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "SSL_CERT_FILE": str(self.ca_bundle),
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "NODE_EXTRA_CA_CERTS": str(self.node_ca_bundle),
            "NODE_USE_ENV_PROXY": "1",
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": host.header,
        }
        if self.azurite is not None:
            env["AzureWebJobsStorage"] = self.azurite.connection_string
        return env

    @staticmethod
    def interfering_env(environ: dict[str, str] | None = None) -> list[str]:
        """Names in ``environ`` (default: none given -> the static list) that would steer
        azure-identity or TLS away from the sandbox: ``AZURE_*`` and :data:`INTERFERING_ENV`."""
        if environ is None:
            return list(INTERFERING_ENV)
        return [n for n in environ if n.startswith("AZURE_") or n in INTERFERING_ENV]

    def trust_ca_in_process(self) -> None:
        """Make this process's aiohttp trust the sandbox CA.

        aiohttp builds its default verified SSL context once, at import, so setting
        ``SSL_CERT_FILE`` later does not reach it; subprocesses do not need this."""
        try:
            from aiohttp import connector  # noqa: PLC0415 (private detail, looked up late)
        except ImportError:  # pragma: no cover
            return
        context = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)
        if context is not None:
            context.load_verify_locations(cafile=str(self.ca_bundle))

    # --- identities ----------------------------------------------------------------------

    def add_host_identity(
        self,
        name: str,
        principal: Principal | None = None,
        user_assigned: Sequence[UserAssignedIdentity | Principal] = (),
    ) -> HostIdentity:
        """Register a host that asks the identity endpoint for tokens (``env(identity=name)``),
        with a system-assigned principal and user-assigned identities (selected by
        ``client_id``). Principals are added to the world."""
        identities: list[UserAssignedIdentity] = []
        for given in user_assigned:
            if isinstance(given, Principal):
                given = UserAssignedIdentity(  # noqa: PLW2901 (normalized in place)
                    resource_id=(
                        f"/subscriptions/{uuid.UUID(int=0)}/resourceGroups/rg-identities/providers"
                        f"/Microsoft.ManagedIdentity/userAssignedIdentities/{given.display_name}"
                    ),
                    principal=given,
                )
            identities.append(given)
        with self.world.lock:
            if principal is not None:
                self.world.add_principal(principal)
            for uai in identities:
                self.world.add_principal(uai.principal)
        return self.hosts.add(name, principal, identities)

    def token(self, principal: Principal, audience: str) -> str:
        """A bearer token for ``principal`` and ``audience`` (for raw HTTP tests)."""
        return self.tokens.issue(principal, audience)[0]

    # --- clock -----------------------------------------------------------------------------

    def advance_clock(self, delta: timedelta) -> int:
        """Move the world's clock ahead and emit the KeyNearExpiry / KeyExpired events that
        came due. Returns how many events were emitted."""
        with self.world.lock:
            self.world.clock.advance(delta)
        return self.emit_due_expiry_events()

    def emit_due_expiry_events(self) -> int:
        """Emit expiry events due on the sandbox clock (Key Vault's helper, if present)."""
        module = _service_module("cmk.sandbox.keyvault.service")
        emit = getattr(module, "emit_due_expiry_events", None) if module else None
        if emit is None:
            return 0
        with self.world.lock:
            return int(emit(self.world))

    def drain_events(self, timeout: float = 10.0) -> None:
        """Wait until every pending Event Grid delivery finished (delivered or dead)."""
        self._call(self.eventgrid.drain(), timeout)


async def _cancel_the_rest() -> None:
    """Cancel and await whatever still runs on the sandbox's loop (a request held by a
    latency fault whose connection aiohttp has let go), so closing the loop destroys no
    pending task and prints nothing."""
    current = asyncio.current_task()
    rest = [task for task in asyncio.all_tasks() if task is not current]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)
