"""Key Vault's per-vault transaction limits and Managed HSM's capacity: the windows on a
pinned clock, then the real azure-keyvault-keys client against the sandbox, where the
sandbox clock only moves when azure-core sleeps (so every outcome is decided, never timed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.transport import RequestsTransport
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient

from cmk.sandbox.core import Sandbox
from cmk.sandbox.keyvault.limits import (
    THROTTLED_MESSAGE,
    KeyLimit,
    KeyShape,
    KeyVaultLimits,
    Meter,
)
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import VaultKind, VaultState, World

SUB = "00000000-0000-4000-8000-0000000000ab"
RSA_2048 = KeyShape("RSA", 2048)


class PinnedClock:
    """Sandbox time that moves only when told to."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _limits(**settings: Any) -> tuple[KeyVaultLimits, PinnedClock]:
    clock = PinnedClock()
    limits = KeyVaultLimits(clock=clock)
    limits.configure(**settings)
    return limits, clock


def _creates(limits: KeyVaultLimits, host: str, n: int, shape: KeyShape = RSA_2048) -> list[bool]:
    meter = Meter.KEY_CREATE
    return [limits.meter_vault(host, SUB, "westeurope", meter, shape).allowed for _ in range(n)]


class TestVaultWindows:
    def test_software_rsa_2048_creates_twenty_per_ten_seconds(self) -> None:
        """20 creates of a software RSA-2048 key fit a vault's 10 s window; the 21st is
        refused with Retry-After until the window ends."""
        limits, clock = _limits()
        assert _creates(limits, "kv1.vault.azure.net", 20) == [True] * 20
        clock.advance(3.2)
        refused = limits.meter_vault("kv1.vault.azure.net", SUB, "westeurope", Meter.KEY_CREATE,
                                     RSA_2048)  # fmt: skip
        assert not refused.allowed
        assert refused.headers == {"Retry-After": "7"} and refused.retry_after == 7
        assert refused.limit == "vault kv1.vault.azure.net key-create"
        clock.advance(6.8)
        assert _creates(limits, "kv1.vault.azure.net", 1) == [True]

    def test_hsm_protected_keys_have_half_the_creates(self) -> None:
        """RSA-HSM keys in a vault (Premium): 10 creates per window."""
        limits, _ = _limits()
        results = _creates(limits, "kv1.vault.azure.net", 11, KeyShape("RSA-HSM", 2048))
        assert results == [True] * 10 + [False]

    def test_other_transactions_are_weighted_and_summed(self) -> None:
        """248 RSA-4096 HSM-key GETs and 16 RSA-2048 HSM-key GETs fill the window exactly
        (the documented example); one more GET of either is refused."""
        limits, _ = _limits()

        def get(shape: KeyShape) -> bool:
            host, meter = "kv1.vault.azure.net", Meter.KEY_OTHER
            return limits.meter_vault(host, SUB, "westeurope", meter, shape).allowed

        assert all(get(KeyShape("RSA-HSM", 4096)) for _ in range(248))
        assert all(get(KeyShape("RSA-HSM", 2048)) for _ in range(16))
        assert not get(KeyShape("RSA-HSM", 2048))
        assert not get(KeyShape("EC-HSM"))

    def test_creates_and_reads_are_separate_limits(self) -> None:
        """A vault that used its creates still serves 4,000 software RSA-2048 GETs."""
        limits, _ = _limits()
        _creates(limits, "kv1.vault.azure.net", 25)
        reads = [
            limits.meter_vault("kv1.vault.azure.net", SUB, "westeurope", Meter.KEY_OTHER,
                               RSA_2048).allowed
            for _ in range(4001)
        ]  # fmt: skip
        assert reads == [True] * 4000 + [False]

    def test_refused_requests_count_against_nothing(self) -> None:
        """However many 429s a client collects, the next window grants the full limit."""
        limits, clock = _limits()
        _creates(limits, "kv1.vault.azure.net", 500)
        clock.advance(10)
        assert _creates(limits, "kv1.vault.azure.net", 21) == [True] * 20 + [False]

    def test_vaults_are_metered_apart(self) -> None:
        """A full vault does not throttle another vault."""
        limits, _ = _limits()
        _creates(limits, "kv1.vault.azure.net", 20)
        assert _creates(limits, "kv2.vault.azure.net", 20) == [True] * 20

    def test_subscription_limit_is_five_vaults_worth(self) -> None:
        """Across vaults of one subscription and region, 5 x 20 creates per window; the
        same subscription in another region has its own limit."""
        limits, _ = _limits()
        for index in range(5):
            assert _creates(limits, f"kv{index}.vault.azure.net", 20) == [True] * 20
        refused = limits.meter_vault("kv9.vault.azure.net", SUB, "westeurope", Meter.KEY_CREATE,
                                     RSA_2048)  # fmt: skip
        assert not refused.allowed and refused.limit.startswith("subscription ")
        other_region = limits.meter_vault("kv9.vault.azure.net", SUB, "eastus", Meter.KEY_CREATE,
                                          RSA_2048)  # fmt: skip
        assert other_region.allowed

    def test_switched_off_allows_everything(self) -> None:
        """enabled=False lets every request through."""
        limits, _ = _limits(enabled=False)
        assert _creates(limits, "kv1.vault.azure.net", 100) == [True] * 100

    def test_retry_after_can_be_left_out(self) -> None:
        """retry_after=False answers as the real 429 quoted in the docs: no header."""
        limits, _ = _limits(retry_after=False)
        _creates(limits, "kv1.vault.azure.net", 20)
        refused = limits.meter_vault("kv1.vault.azure.net", SUB, "westeurope", Meter.KEY_CREATE,
                                     RSA_2048)  # fmt: skip
        assert not refused.allowed and refused.headers == {}

    def test_configure_rejects_unknown_settings(self) -> None:
        """configure() names only real settings."""
        with pytest.raises(ValueError, match="unknown Key Vault limit setting"):
            _limits(creates=5)


class TestManagedHsmCapacity:
    def test_creates_wait_for_the_hsm_in_order(self) -> None:
        """One create per second per HSM (one partition): later creates wait their turn."""
        limits, clock = _limits()
        delays = [limits.meter_hsm("hsm1.managedhsm.azure.net", Meter.KEY_CREATE).delay
                  for _ in range(3)]  # fmt: skip
        assert delays == [0.0, 1.0, 2.0]
        assert limits.meter_hsm("hsm2.managedhsm.azure.net", Meter.KEY_CREATE).delay == 0.0
        clock.advance(5)
        assert limits.meter_hsm("hsm1.managedhsm.azure.net", Meter.KEY_CREATE).delay == 0.0

    def test_partitions_multiply_capacity(self) -> None:
        """With all three partitions up, three creates a second."""
        limits, _ = _limits(hsm_partitions=3)
        delays = [limits.meter_hsm("hsm1.managedhsm.azure.net", Meter.KEY_CREATE).delay
                  for _ in range(3)]  # fmt: skip
        assert delays == pytest.approx([0.0, 1 / 3, 2 / 3])

    def test_throttling_mode_refuses_instead(self) -> None:
        """hsm_throttles=True: the second create in a second is a 429 with Retry-After."""
        limits, _ = _limits(hsm_throttles=True)
        assert limits.meter_hsm("hsm1.managedhsm.azure.net", Meter.KEY_CREATE).allowed
        refused = limits.meter_hsm("hsm1.managedhsm.azure.net", Meter.KEY_CREATE)
        assert not refused.allowed and refused.headers == {"Retry-After": "1"}


class TestThrottleSwitch:
    def test_arm_switch_switches_key_vault_too(self) -> None:
        """Throttle.enabled=False lets every Key Vault request through; reset() empties the
        Key Vault windows with the ARM buckets."""
        world = World()
        vault = VaultState("kv1", VaultKind.VAULT, SUB, "rg", "westeurope", world.tenant_id)
        throttle = throttle_for(world)
        decisions = [throttle.vault(vault, Meter.KEY_CREATE, RSA_2048).allowed for _ in range(21)]
        assert decisions == [True] * 20 + [False]
        throttle.reset()
        assert throttle.vault(vault, Meter.KEY_CREATE, RSA_2048).allowed
        throttle.enabled = False
        assert all(throttle.vault(vault, Meter.KEY_CREATE, RSA_2048).allowed for _ in range(50))


# --- the real SDK against the sandbox ------------------------------------------------


class SandboxTimeTransport(RequestsTransport):
    """azure-core's requests transport, except that its sleeps (Retry-After, back-off)
    move the pinned sandbox clock instead of waiting."""

    def __init__(self, clock: PinnedClock) -> None:
        super().__init__()
        self.clock = clock
        self.slept: list[float] = []

    def sleep(self, duration: float) -> None:
        self.slept.append(duration)
        self.clock.advance(duration)


def _vault(sandbox: Sandbox, kind: VaultKind = VaultKind.VAULT) -> VaultState:
    prefix, suffix = ("kv", "vault.azure.net")
    if kind is VaultKind.MANAGED_HSM:
        prefix, suffix = ("hsm", "managedhsm.azure.net")
    world = sandbox.world
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    vault = VaultState(name, kind, SUB, "rg-cmk", "westeurope", world.tenant_id, dns_suffix=suffix)
    with world.lock:
        world.vaults[vault.host] = vault
        world.grant(sandbox.app_principal.object_id, vault.resource_id, "Key Vault Crypto Officer")
    return vault


@pytest.fixture
def clock(sandbox: Sandbox) -> PinnedClock:
    """The sandbox's Key Vault limits read this clock for the test."""
    pinned = PinnedClock(sandbox.world.clock.now().timestamp())
    throttle_for(sandbox.world).keyvault.clock = pinned
    return pinned


@pytest.fixture
def credential() -> Iterator[DefaultAzureCredential]:
    with DefaultAzureCredential() as found:
        yield found


def _client(
    vault: VaultState, credential: DefaultAzureCredential, clock: PinnedClock, **options: Any
) -> tuple[KeyClient, SandboxTimeTransport]:
    transport = SandboxTimeTransport(clock)
    return KeyClient(vault.url, credential, transport=transport, **options), transport


def _statuses(sandbox: Sandbox, vault: VaultState) -> list[int]:
    return [r.status for r in sandbox.counters.matching(host=vault.host, method="POST")]


class TestKeyClientAgainstLimits:
    def test_the_21st_create_is_throttled_as_key_vault_answers(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """Without retries, the 21st create in a vault's window raises the 429: code
        Throttled, Key Vault's message, Retry-After the seconds left in the window."""
        vault = _vault(sandbox)
        client, _ = _client(vault, credential, clock, retry_total=0)
        with client:
            for index in range(20):
                client.create_rsa_key(f"k{index}", size=2048)
            clock.advance(4)
            with pytest.raises(HttpResponseError) as caught:
                client.create_rsa_key("one-too-many", size=2048)
        error = caught.value
        assert error.status_code == 429
        assert error.error is not None and error.error.code == "Throttled"
        assert error.error.message == THROTTLED_MESSAGE
        assert error.response is not None and error.response.headers["Retry-After"] == "6"
        assert "one-too-many" not in vault.keys

    def test_azure_core_waits_the_retry_after_then_succeeds(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """With azure-core's default retry, the throttled create sleeps exactly the
        Retry-After and succeeds on the next attempt."""
        vault = _vault(sandbox)
        client, transport = _client(vault, credential, clock)
        with client:
            for index in range(20):
                client.create_rsa_key(f"k{index}")
            key = client.create_rsa_key("after-the-wait")
        assert transport.slept == [10.0]
        assert key.name == "after-the-wait"
        assert _statuses(sandbox, vault)[-2:] == [429, 200]

    def test_without_retry_after_azure_core_gives_up_inside_the_window(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """With the header left out (retry_after=False, as the real 429 quoted in the
        docs), azure-core does not retry a throttled create (a POST) at all, and retries a
        read only 3 times (retry_status) with 0, 1.6 and 3.2 s of back-off: 4.8 s, inside
        Key Vault's 10 s window, so the read fails too."""
        limits = throttle_for(sandbox.world).keyvault
        small = {("RSA", 2048): (KeyLimit(20, 5), KeyLimit(10, 5))}
        limits.configure(retry_after=False, key_limits=small)
        vault = _vault(sandbox)
        client, transport = _client(vault, credential, clock)
        with client:
            for index in range(20):
                client.create_rsa_key(f"k{index}")
            with pytest.raises(HttpResponseError) as create:
                client.create_rsa_key("not-retried")
            assert transport.slept == []
            assert create.value.response is not None
            assert "Retry-After" not in create.value.response.headers
            for _ in range(5):
                client.get_key("k0")
            with pytest.raises(HttpResponseError) as read:
                client.get_key("k0")
        assert read.value.status_code == 429
        assert transport.slept == pytest.approx([1.6, 3.2])
        reads = [r.status for r in sandbox.counters.matching(host=vault.host, method="GET")]
        assert reads[-5:] == [200, 429, 429, 429, 429]

    def test_another_vault_is_unaffected(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """A vault at its limit does not slow a second vault of the same subscription."""
        full, other = _vault(sandbox), _vault(sandbox)
        first, _ = _client(full, credential, clock, retry_total=0)
        second, transport = _client(other, credential, clock, retry_total=0)
        with first, second:
            for index in range(20):
                first.create_rsa_key(f"k{index}")
            with pytest.raises(HttpResponseError):
                first.create_rsa_key("refused")
            for index in range(20):
                second.create_rsa_key(f"k{index}")
        assert transport.slept == []
        assert _statuses(sandbox, other).count(429) == 0

    def test_reads_are_a_separate_larger_limit(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """After its creates are spent, a vault still answers reads of its keys."""
        vault = _vault(sandbox)
        client, _ = _client(vault, credential, clock, retry_total=0)
        with client:
            for index in range(20):
                client.create_rsa_key(f"k{index}")
            assert [client.get_key(f"k{index}").name for index in range(20)] == [
                f"k{index}" for index in range(20)
            ]

    def test_switched_off_with_arm_throttling(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """Sandbox.set_throttling(False) turns Key Vault's limits off with ARM's."""
        sandbox.set_throttling(False)
        vault = _vault(sandbox)
        client, _ = _client(vault, credential, clock, retry_total=0)
        with client:
            for index in range(25):
                client.create_rsa_key(f"k{index}")
        assert 429 not in _statuses(sandbox, vault)

    def test_managed_hsm_has_its_own_capacity(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """A Managed HSM serves one create a second (three with all partitions): creates
        beyond that wait for it rather than fail, and a full vault beside it changes nothing."""
        limits = throttle_for(sandbox.world).keyvault
        limits.hsm_partitions = 3  # keep the test's real waits short: 1/3 s and 2/3 s
        vault, hsm = _vault(sandbox), _vault(sandbox, VaultKind.MANAGED_HSM)
        to_vault, _ = _client(vault, credential, clock, retry_total=0)
        to_hsm, transport = _client(hsm, credential, clock, retry_total=0)
        with to_vault, to_hsm:
            for index in range(20):
                to_vault.create_rsa_key(f"k{index}")
            made = [
                to_hsm.create_rsa_key(f"h{index}", hardware_protected=True) for index in range(3)
            ]
        assert [key.name for key in made] == ["h0", "h1", "h2"]
        assert limits.delayed == 2 and transport.slept == []
        assert 429 not in _statuses(sandbox, hsm)

    def test_managed_hsm_throttling_mode(
        self, sandbox: Sandbox, clock: PinnedClock, credential: DefaultAzureCredential
    ) -> None:
        """With hsm_throttles, the HSM's second create in a second is a 429 that azure-core
        waits out (Retry-After 1)."""
        throttle_for(sandbox.world).keyvault.hsm_throttles = True
        hsm = _vault(sandbox, VaultKind.MANAGED_HSM)
        client, transport = _client(hsm, credential, clock)
        with client:
            client.create_rsa_key("h0", hardware_protected=True)
            client.create_rsa_key("h1", hardware_protected=True)
        assert transport.slept == [1.0]
        assert _statuses(sandbox, hsm)[-2:] == [429, 200]
