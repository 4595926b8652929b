"""The Sandbox Python API: lifecycle, environment, reset, clock, real SDK clients through it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from azure.identity import DefaultAzureCredential
from azure.identity.aio import DefaultAzureCredential as AsyncDefaultAzureCredential
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.aio import KeyClient as AsyncKeyClient

from cmk.sandbox.core import OWNER_FILE, Sandbox, StateDirInUse
from cmk.sandbox.world import VaultKind, VaultState


def _vault(sandbox: Sandbox, name: str = "kv-smoke") -> VaultState:
    world = sandbox.world
    vault = VaultState(
        name=name,
        kind=VaultKind.VAULT,
        subscription_id="11111111-1111-1111-1111-111111111111",
        resource_group="rg",
        location="westeurope",
        tenant_id=world.tenant_id,
    )
    with world.lock:
        world.vaults[vault.host] = vault
        world.grant(sandbox.app_principal.object_id, vault.resource_id, "Key Vault Crypto Officer")
    return vault


#: A process that claims a state dir as a starting sandbox does, says so, and waits to be
#: killed (the test ends it; the ceiling of 600 s only bounds a leak).
CLAIMANT = (
    "import sys, time; from pathlib import Path; from cmk.sandbox.core import claim_state_dir;"
    " claim_state_dir(Path(sys.argv[1])); print('claimed', flush=True); time.sleep(600)"
)


class TestStateDirOwner:
    def test_a_second_sandbox_on_a_running_ones_state_dir_is_refused(self, tmp_path):
        """Starting on the state dir of a running sandbox raises StateDirInUse naming its pid
        and proxy, and leaves its CA bundle as it was; once it stops, the dir is free."""
        state = tmp_path / "state"
        second = Sandbox(state)
        with Sandbox(state) as first:
            with pytest.raises(StateDirInUse) as refused:
                second.start()
            assert refused.value.pid == os.getpid()
            assert refused.value.proxy == first.proxy_url.removeprefix("http://")
            assert (state / "ca.pem").read_bytes() == first.ca.pem
            assert not second.running
        with second:
            assert (state / "ca.pem").read_bytes() == second.ca.pem
            assert (state / OWNER_FILE).read_text().startswith(f"pid={os.getpid()}\n")

    def test_the_owner_file_of_a_killed_sandbox_is_taken_over(self, tmp_path):
        """While another process holds the state dir, start is refused naming that pid; once
        it is killed (SIGKILL: no clean-up ran), its owner file is taken over."""
        state = tmp_path / "state"
        state.mkdir()
        claimant = subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, str(state)],
            cwd=Path(__file__).resolve().parents[2],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert claimant.stdout is not None and claimant.stdout.readline() == "claimed\n"
            with pytest.raises(StateDirInUse, match=f"pid {claimant.pid}"):
                Sandbox(state).start()
        finally:
            claimant.kill()
            claimant.communicate(timeout=30)
        assert (state / OWNER_FILE).read_text() == f"pid={claimant.pid}\n"
        with Sandbox(state) as sandbox:
            proxy = sandbox.proxy_url.removeprefix("http://")
            assert (state / OWNER_FILE).read_text() == f"pid={os.getpid()}\nproxy={proxy}\n"

    def test_a_start_that_fails_gives_the_state_dir_back(self, tmp_path):
        """start fails after its loop thread and Event Grid started (a file where the TLS
        directory goes: the server's TLS context cannot be made): the error is raised, the
        loop thread ends, and the state dir is free — a sandbox on it then starts."""
        state = tmp_path / "state"
        state.mkdir()
        (state / "tls").write_text("in the way")
        before = _sandbox_threads()
        failed = Sandbox(state)

        with pytest.raises(FileExistsError):
            failed.start()

        assert not failed.running
        assert _sandbox_threads() == before
        (state / "tls").unlink()
        with Sandbox(state) as sandbox:
            assert sandbox.running
            assert (state / OWNER_FILE).read_text().startswith(f"pid={os.getpid()}\n")


def _sandbox_threads() -> int:
    """The sandboxes' loop threads running in this process."""
    return sum(thread.name == "cmk-sandbox" for thread in threading.enumerate())


class TestSandboxLifecycle:
    def test_start_stop_and_context_manager(self, tmp_path):
        """A sandbox starts, serves an env, and stops cleanly; stop is idempotent."""
        with Sandbox(tmp_path / "state") as sandbox:
            env = sandbox.env()
            assert env["HTTPS_PROXY"].startswith("http://127.0.0.1:")
            assert (tmp_path / "state" / "ca.pem").read_bytes() == sandbox.ca.pem
            assert sandbox.running
        assert not sandbox.running
        sandbox.stop()

    def test_temporary_state_dir_is_removed(self):
        """Without a state dir the sandbox uses a temporary one and removes it on stop."""
        sandbox = Sandbox().start()
        state = sandbox.state_dir
        assert state.exists()
        sandbox.stop()
        assert not state.exists()

    def test_env_names_everything_a_client_needs(self, sandbox: Sandbox):
        """env() has the proxy, no-proxy for loopback, CA bundle and identity endpoint."""
        env = sandbox.env()
        for name in ("HTTPS_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            assert env[name]
        assert "127.0.0.1" in env["NO_PROXY"] and "localhost" in env["NO_PROXY"]
        assert env["IDENTITY_ENDPOINT"].startswith("http://127.0.0.1:")
        assert os.environ["IDENTITY_HEADER"] == env["IDENTITY_HEADER"]

    def test_env_for_unknown_host_identity_fails(self, sandbox: Sandbox):
        """Asking the env of an unregistered host identity is a KeyError naming the known."""
        with pytest.raises(KeyError, match="app"):
            sandbox.env("nobody")

    def test_reset_gives_a_fresh_world_and_clears_state(self, sandbox: Sandbox):
        """reset() replaces the world and clears faults, counters, subscriptions, topics."""
        old = sandbox.world
        _vault(sandbox)
        sandbox.faults.add(status=500)
        sandbox.eventgrid.subscribe(lambda e: None)
        sandbox.eventgrid.create_topic("alerts")
        sandbox.counters.reset()
        sandbox.reset()
        assert sandbox.world is not old and not sandbox.world.vaults
        assert sandbox.faults.rules == [] and sandbox.counters.total == 0
        assert sandbox.eventgrid.subscriptions == [] and sandbox.eventgrid.topics == {}

    def test_advance_clock_moves_world_time(self, sandbox: Sandbox):
        """advance_clock moves the world's clock by the delta."""
        before = sandbox.world.clock.now()
        sandbox.advance_clock(timedelta(days=400))
        assert sandbox.world.clock.now() - before >= timedelta(days=400)


class TestRealClientsThroughSandbox:
    def test_key_client_creates_and_reads_a_key(self, sandbox: Sandbox):
        """The unmodified sync KeyClient passes challenge auth and creates/reads a key."""
        vault = _vault(sandbox)
        client = KeyClient(vault.url, DefaultAzureCredential())
        created = client.create_rsa_key("k1", size=2048)
        fetched = client.get_key("k1")
        assert fetched.id == created.id
        assert fetched.key_type == "RSA"
        assert sandbox.counters.count(host=vault.host, method="POST") >= 1

    async def test_async_key_client_creates_a_key(self, sandbox: Sandbox):
        """The unmodified async KeyClient (aiohttp) works through the proxy."""
        vault = _vault(sandbox, "kv-async")
        async with (
            AsyncDefaultAzureCredential() as credential,
            AsyncKeyClient(vault.url, credential) as client,
        ):
            created = await client.create_rsa_key("k2", size=2048)
            versions = [v async for v in client.list_properties_of_key_versions("k2")]
        assert [v.version for v in versions] == [created.properties.version]
