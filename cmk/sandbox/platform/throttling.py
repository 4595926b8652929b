"""ARM request throttling: token buckets per subscription and region, and Resource Graph's
per-user quota.

Azure Resource Manager meters each subscription with token buckets per ARM region —
reads 250 tokens refilling 25/s, writes 200 refilling 10/s (learn.microsoft.com, "Understand
how Azure Resource Manager throttles requests"). An empty bucket answers 429 with
``Retry-After`` (seconds), and every answer carries ``x-ms-ratelimit-remaining-subscription-
reads`` or ``-writes``. The region is the ARM instance that serves the request, not the
resource's location; a sandbox client always reaches the same instance, so the region is a
setting (:attr:`Throttle.region`), and buckets are kept per (subscription, region).

Resource Graph meters per user: 15 queries per 5-second window, reported in
``x-ms-user-quota-remaining`` and ``x-ms-user-quota-resets-after`` (``hh:mm:ss``).

Key Vault's and Managed HSM's per-vault transaction limits (:mod:`cmk.sandbox.keyvault.limits`)
hang off the same throttle as :attr:`Throttle.keyvault`: ``enabled`` switches ARM, Resource
Graph and Key Vault together, ``reset()`` refills all of them, and
``throttle.keyvault.enabled`` switches Key Vault's alone.

Throttling is on by default and can be switched off or resized per world::

    throttle = throttle_for(world)
    throttle.enabled = False
    throttle.configure(read_capacity=5, read_refill_per_second=1)
    throttle.keyvault.configure(vault_window_seconds=2, retry_after=False)

ARM's buckets use a monotonic clock, never the world's settable clock; Key Vault's windows
read the world's clock (``world.clock``), so tests pin or move it.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from cmk.sandbox.keyvault.limits import KeyShape, KeyVaultLimits, LimitDecision, Meter
from cmk.sandbox.world import VaultKind, VaultState, World


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled continuously at ``refill_per_second``."""

    capacity: float
    refill_per_second: float
    tokens: float = -1.0
    stamp: float = 0.0
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.capacity
        self.stamp = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.refill_per_second)
        self.stamp = now

    def take(self) -> bool:
        """Spend one token; False (and nothing spent) when the bucket is empty."""
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    @property
    def remaining(self) -> int:
        self._refill()
        return int(self.tokens)

    def retry_after(self) -> int:
        """Whole seconds until one token is available again (at least 1)."""
        self._refill()
        if self.refill_per_second <= 0:
            return 60
        return max(1, math.ceil((1 - self.tokens) / self.refill_per_second))


@dataclass(frozen=True)
class Decision:
    """The outcome of metering one request."""

    allowed: bool
    headers: dict[str, str]
    retry_after: int = 0


@dataclass
class _QuotaWindow:
    start: float
    used: int = 0


@dataclass
class Throttle:
    """ARM and Resource Graph throttling for one world."""

    enabled: bool = True
    region: str = "eastus"
    read_capacity: float = 250
    read_refill_per_second: float = 25
    write_capacity: float = 200
    write_refill_per_second: float = 10
    graph_quota: int = 15
    graph_window_seconds: float = 5.0
    clock: Callable[[], float] = time.monotonic
    keyvault: KeyVaultLimits = field(default_factory=lambda: KeyVaultLimits(clock=time.time))
    _buckets: dict[tuple[str, str, str], TokenBucket] = field(default_factory=dict)
    _graph: dict[str, _QuotaWindow] = field(default_factory=dict)

    def configure(self, **settings: float | int | bool | str) -> None:
        """Change capacities/refill rates/quota (names as the attributes); resets buckets."""
        for name, value in settings.items():
            if name.startswith("_") or name == "keyvault" or not hasattr(self, name):
                raise ValueError(f"unknown throttle setting {name!r}")
            setattr(self, name, value)
        self.reset()

    def reset(self) -> None:
        """Refill every bucket and quota window (Key Vault's too)."""
        self._buckets.clear()
        self._graph.clear()
        self.keyvault.reset()

    def arm(self, subscription_id: str, *, write: bool) -> Decision:
        """Meter one ARM request on a subscription (``write``: PUT/PATCH/DELETE/POST)."""
        kind = "writes" if write else "reads"
        header = f"x-ms-ratelimit-remaining-subscription-{kind}"
        key = (subscription_id.lower(), self.region.lower(), kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            capacity = self.write_capacity if write else self.read_capacity
            refill = self.write_refill_per_second if write else self.read_refill_per_second
            bucket = self._buckets[key] = TokenBucket(capacity, refill, clock=self.clock)
        if not self.enabled:
            return Decision(True, {header: str(int(bucket.capacity) - 1)})
        if bucket.take():
            return Decision(True, {header: str(bucket.remaining)})
        retry = bucket.retry_after()
        return Decision(False, {header: "0", "Retry-After": str(retry)}, retry)

    def vault(self, vault: VaultState, meter: Meter, shape: KeyShape | None) -> LimitDecision:
        """Meter one Key Vault or Managed HSM transaction (allowed while switched off)."""
        if not self.enabled:
            return LimitDecision(True)
        if vault.kind is VaultKind.MANAGED_HSM:
            return self.keyvault.meter_hsm(vault.host, meter)
        return self.keyvault.meter_vault(
            vault.host, vault.subscription_id, vault.location, meter, shape
        )

    def graph(self, principal_id: str) -> Decision:
        """Meter one Resource Graph query for a caller."""
        now = self.clock()
        window = self._graph.get(principal_id)
        if window is None or now - window.start >= self.graph_window_seconds:
            window = self._graph[principal_id] = _QuotaWindow(now)
        resets = max(0.0, self.graph_window_seconds - (now - window.start))
        if self.enabled and window.used >= self.graph_quota:
            retry = max(1, math.ceil(resets))
            return Decision(False, _quota_headers(0, resets) | {"Retry-After": str(retry)}, retry)
        window.used += 1
        remaining = max(0, self.graph_quota - window.used) if self.enabled else self.graph_quota
        return Decision(True, _quota_headers(remaining, resets))


def _quota_headers(remaining: int, resets_after: float) -> dict[str, str]:
    whole = math.ceil(resets_after)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    return {"x-ms-user-quota-remaining": str(remaining), "x-ms-user-quota-resets-after": text}


_THROTTLES: weakref.WeakKeyDictionary[World, Throttle] = weakref.WeakKeyDictionary()


def throttle_for(world: World) -> Throttle:
    """The throttle of a world (created on first use, enabled)."""
    throttle = _THROTTLES.get(world)
    if throttle is None:
        clock = world.clock  # not the world: the throttle must not keep its world alive
        limits = KeyVaultLimits(clock=lambda: clock.now().timestamp())
        throttle = _THROTTLES[world] = Throttle(keyvault=limits)
    return throttle
