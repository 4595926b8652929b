"""What a scenario asks of the sandbox besides the world: Event Grid topics, faults and
the throttling switch, gathered with the world in a :class:`SeededWorld`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cmk.sandbox.scenario.context import ScenarioContext
from cmk.sandbox.world import UserAssignedIdentity, World


@dataclass(frozen=True)
class TopicSpec:
    name: str
    region: str
    subscription_id: str
    resource_group: str
    key: str | None
    input_schema: str | None


@dataclass(frozen=True)
class FaultSpec:
    host: str = "*"
    path: str | None = None
    method: str | None = None
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    drop: bool = False
    probability: float = 1.0
    count: int | None = None


@dataclass
class SeededWorld:
    """A world built from a scenario, with what the sandbox applies besides the world."""

    world: World
    topics: list[TopicSpec] = field(default_factory=list)
    faults: list[FaultSpec] = field(default_factory=list)
    throttling: bool = True
    identities: dict[str, UserAssignedIdentity] = field(default_factory=dict)

    def settings_env(self) -> dict[str, str]:
        """The CMK_* settings that fit this world (vault allow-list, subscriptions)."""
        vaults = sorted({v.url for v in self.world.vaults.values()})
        subscriptions = sorted(self.world.subscriptions)
        return {
            "CMK_VAULT_ALLOWLIST": ",".join(vaults),
            "CMK_SUBSCRIPTIONS": ",".join(subscriptions),
        }


def topic_specs(ctx: ScenarioContext) -> list[TopicSpec]:
    """``$.topics``, in their subscriptions and regions."""
    topics: list[TopicSpec] = []
    for i, item in enumerate(ctx.doc.get("topics", [])):
        s = ctx.sub(item["subscription"], f"$.topics[{i}].subscription")
        if s is not None:
            topics.append(
                TopicSpec(
                    name=item["name"],
                    region=ctx.location(item["location"], f"$.topics[{i}].location"),
                    subscription_id=s.subscription_id,
                    resource_group=item.get("resourceGroup", "rg-cmk"),
                    key=item.get("key"),
                    input_schema=item.get("inputSchema"),
                )
            )
    return topics


def fault_specs(document: dict[str, Any]) -> list[FaultSpec]:
    """``$.faults``."""
    return [
        FaultSpec(
            host=f.get("host", "*"),
            path=f.get("path"),
            method=f.get("method"),
            status=f.get("status"),
            retry_after=f.get("retryAfter"),
            latency=f.get("latency", 0.0),
            drop=f.get("drop", False),
            probability=f.get("probability", 1.0),
            count=f.get("count"),
        )
        for f in document.get("faults", [])
    ]
