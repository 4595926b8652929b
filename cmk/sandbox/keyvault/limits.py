"""Key Vault's and Managed HSM's documented transaction limits, metered per vault.

Source: learn.microsoft.com, "Azure Key Vault service limits" (the ``key-vault-limits``
include of MicrosoftDocs/azure-docs; ``key-vault/general/service-limits``), read 2026-12:

- **Key Vault** (resource type ``vaults``), maximum transactions in **10 seconds, per vault
  per region**, by key type and protection:

  ============== ============ ================ ============= ================
  key            HSM CREATE   HSM all other    software      software all
                                               CREATE        other
  ============== ============ ================ ============= ================
  RSA 2,048-bit  10           2,000            20            4,000
  RSA 3,072-bit  10           500              20            1,000
  RSA 4,096-bit  10           250              20            500
  ECC (any)      10           2,000            20            4,000
  ============== ============ ================ ============= ================

  Secrets, managed storage account keys and vault transactions: 4,000. "The throttling
  thresholds are weighted, and enforcement is on their sum": a transaction costs
  ``1 / limit`` of the window, so 248 RSA-4096 HSM GETs and 16 RSA-2048 HSM GETs fill it.
  A subscription-wide limit for all transaction types is five times the per-vault limit.
- **Managed HSM**, operations **per second per HSM instance** with one of its three
  partitions available ("up to 3x higher if all three partitions are available"): Create
  Key 1, Get Key Information 1,100 (RSA, EC and AES alike). Operations the table does not
  list (update, list, rotation policy) are metered as Get Key Information; a rotation
  creates a version and is metered as Create Key. These are hardware capacity, not a
  throttle: "Managed HSM does not throttle on cryptographic operation transactions, and
  uses the HSM hardware and CPUs to their fullest" ("Azure Managed HSM Scaling Guidance").
  So by default a request beyond the capacity *waits* for it (the answer is delayed, in
  order); ``hsm_throttles=True`` answers 429 instead, with Key Vault's fixed windows.

A throttled request is answered as Key Vault does ("Azure Key Vault throttling guidance":
429, and "failed requests that return a 429 do not count towards the throttle limits"):
``{"error": {"code": "Throttled", "message": "Request was not processed because too many
requests were received. Reason: VaultRequestTypeLimitReached"}}`` (the body of a real
answer quoted in vcsjones/AzureSignTool#219). The sandbox adds ``Retry-After`` (whole
seconds until the window resets) unless :attr:`KeyVaultLimits.retry_after` is False: Key
Vault's documentation promises no ``Retry-After`` and recommends exponential back-off, and
the real answer quoted above carries none.

Windows are fixed (they start with the first transaction metered and last the window) and
read the sandbox clock (``world.clock``) unless another clock is given, so a test that
moves or pins the clock decides every outcome.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction

THROTTLED_CODE = "Throttled"
THROTTLED_MESSAGE = (
    "Request was not processed because too many requests were received. "
    "Reason: VaultRequestTypeLimitReached"
)


class Meter(StrEnum):
    """What a transaction is counted against."""

    KEY_CREATE = "key-create"  # create, import, rotate: the CREATE columns
    KEY_OTHER = "key-other"  # every other key transaction
    VAULT = "vault"  # secrets, managed storage account keys, vault-level transactions


@dataclass(frozen=True)
class KeyLimit:
    """Transactions per window for one kind of key: CREATE, and all others."""

    create: int
    other: int


#: Key Vault, per vault per region per 10 s: (key family, RSA bits or 0) -> (software, HSM).
VAULT_KEY_LIMITS: dict[tuple[str, int], tuple[KeyLimit, KeyLimit]] = {
    ("RSA", 2048): (KeyLimit(20, 4000), KeyLimit(10, 2000)),
    ("RSA", 3072): (KeyLimit(20, 1000), KeyLimit(10, 500)),
    ("RSA", 4096): (KeyLimit(20, 500), KeyLimit(10, 250)),
    ("EC", 0): (KeyLimit(20, 4000), KeyLimit(10, 2000)),
}
VAULT_TRANSACTIONS = 4000
VAULT_WINDOW_SECONDS = 10.0
SUBSCRIPTION_FACTOR = 5
#: Managed HSM, per HSM instance per second, one partition available.
HSM_LIMITS = KeyLimit(create=1, other=1100)
HSM_WINDOW_SECONDS = 1.0


@dataclass(frozen=True)
class KeyShape:
    """What decides a key transaction's weight: its type and RSA size (None if unknown)."""

    kty: str
    size: int | None = None


@dataclass(frozen=True)
class LimitDecision:
    """The outcome of metering one Key Vault request."""

    allowed: bool
    retry_after: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    limit: str = ""  # which limit refused or delayed it, e.g. "vault kv1 key-create"
    delay: float = 0.0  # seconds the answer waits for capacity (Managed HSM)


@dataclass
class _Window:
    start: float
    used: Fraction = Fraction(0)


@dataclass
class _Queue:
    """When an HSM's capacity for a kind of operation is next free (sandbox clock)."""

    free: float
    stamp: float


def vault_key_limit(
    shape: KeyShape, limits: dict[tuple[str, int], tuple[KeyLimit, KeyLimit]]
) -> KeyLimit:
    """The row of the service-limits table a key falls in (unknown sizes: the next larger
    documented size; anything but RSA: the ECC row)."""
    family = "RSA" if shape.kty.upper().startswith("RSA") else "EC"
    software, hsm = limits.get((family, 0), VAULT_KEY_LIMITS[("EC", 0)])
    if family == "RSA":
        size = shape.size or 2048
        bits = next((b for b in (2048, 3072, 4096) if size <= b), 4096)
        software, hsm = limits.get(("RSA", bits), VAULT_KEY_LIMITS[("RSA", bits)])
    return hsm if shape.kty.upper().endswith("-HSM") else software


@dataclass
class KeyVaultLimits:
    """The per-vault (and per-subscription) windows of one world. ``enabled`` switches Key
    Vault's limits alone; :class:`cmk.sandbox.platform.throttling.Throttle` switches them
    with ARM's."""

    clock: Callable[[], float]
    enabled: bool = True
    retry_after: bool = True
    vault_window_seconds: float = VAULT_WINDOW_SECONDS
    vault_transactions: int = VAULT_TRANSACTIONS
    subscription_factor: int = SUBSCRIPTION_FACTOR
    hsm_window_seconds: float = HSM_WINDOW_SECONDS
    hsm_create: int = HSM_LIMITS.create
    hsm_other: int = HSM_LIMITS.other
    hsm_partitions: int = 1
    hsm_throttles: bool = False
    key_limits: dict[tuple[str, int], tuple[KeyLimit, KeyLimit]] = field(
        default_factory=lambda: dict(VAULT_KEY_LIMITS)
    )
    _windows: dict[str, _Window] = field(default_factory=dict)
    _queues: dict[str, _Queue] = field(default_factory=dict)
    throttled: int = 0
    delayed: int = 0

    def configure(self, **settings: object) -> None:
        """Change limits or windows (names as the attributes); empties every window."""
        for name, value in settings.items():
            if name.startswith("_") or name == "clock" or not hasattr(self, name):
                raise ValueError(f"unknown Key Vault limit setting {name!r}")
            setattr(self, name, value)
        self.reset()

    def reset(self) -> None:
        """Start every window afresh."""
        self._windows.clear()
        self._queues.clear()

    def meter_vault(
        self,
        host: str,
        subscription_id: str,
        region: str,
        meter: Meter,
        shape: KeyShape | None,
    ) -> LimitDecision:
        """Meter one transaction on a Key Vault: its vault's window, then its subscription's
        (five times the vault's) in the vault's region."""
        limit = self._vault_limit(meter, shape)
        window = self.vault_window_seconds
        scopes = [
            (f"vault {host.lower()} {meter}", Fraction(1)),
            (
                f"subscription {subscription_id.lower()} {region.lower()} {meter}",
                Fraction(self.subscription_factor),
            ),
        ]
        return self._meter(scopes, Fraction(1, limit), window)

    def meter_hsm(self, host: str, meter: Meter) -> LimitDecision:
        """Meter one transaction on a Managed HSM (per instance, per second): how long it
        waits for the HSM's capacity, or (``hsm_throttles``) whether it is refused."""
        create = meter is Meter.KEY_CREATE
        rate = (self.hsm_create if create else self.hsm_other) * max(1, self.hsm_partitions)
        scope = f"managedhsm {host.lower()} {'create' if create else 'other'}"
        if self.hsm_throttles or not self.enabled:
            return self._meter([(scope, Fraction(1))], Fraction(1, rate), self.hsm_window_seconds)
        now = self.clock()
        queue = self._queues.get(scope)
        if queue is None or now < queue.stamp:  # new, or the clock was set back
            queue = self._queues[scope] = _Queue(now, now)
        start = max(now, queue.free)
        queue.free, queue.stamp = start + self.hsm_window_seconds / rate, now
        if start > now:
            self.delayed += 1
        return LimitDecision(True, delay=start - now, limit=scope)

    def _vault_limit(self, meter: Meter, shape: KeyShape | None) -> int:
        if meter is Meter.VAULT or shape is None:
            return self.vault_transactions
        row = vault_key_limit(shape, self.key_limits)
        return row.create if meter is Meter.KEY_CREATE else row.other

    def _meter(
        self, scopes: list[tuple[str, Fraction]], cost: Fraction, window_seconds: float
    ) -> LimitDecision:
        if not self.enabled:
            return LimitDecision(True)
        now = self.clock()
        windows = []
        for scope, capacity in scopes:
            found = self._windows.get(scope)
            if found is None or not 0 <= now - found.start < window_seconds:
                found = self._windows[scope] = _Window(now)
            if found.used + cost > capacity:
                self.throttled += 1
                retry = max(1, math.ceil(found.start + window_seconds - now))
                headers = {"Retry-After": str(retry)} if self.retry_after else {}
                return LimitDecision(False, retry, headers, scope)
            windows.append(found)
        for found in windows:  # a refused request counts against no limit
            found.used += cost
        return LimitDecision(True)
