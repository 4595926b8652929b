"""The chaos estate: a scenario document for the sandbox, sized by ``--chaos-size``.

Three subscriptions, two Key Vaults (one RBAC, one access-policy) and a Managed HSM, all
in westeurope. Accounts are spread over the subscriptions in groups, each with a role in
the run (see :data:`GROUPS`). Every account starts on its key's only version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REGION = "westeurope"
SUBSCRIPTIONS = ("chaos-a", "chaos-b", "chaos-c")
TOPIC = "cmk-chaos-alerts"
KEY_PERMISSIONS = ["get", "list", "create", "update", "rotate", "getrotationpolicy"]


@dataclass(frozen=True)
class Group:
    """Accounts that share a key, a subscription, an update time and a fate."""

    name: str
    share: float  # of the total size
    subscription: str
    vault: str
    key: str
    lro_seconds: float
    grant: bool = True  # False: the identity cannot use the key, the update fails


#: k1: new version by event; k1-slow: same key, slow updates; k2: a second key in the
#: same vault; k3: new version disabled mid-run, then a third version; k4: the new
#: version is rejected by the policy (RSA 4096); h1: Managed HSM (no events: the sweep
#: moves them); denied: the identity lacks key access (the update's LRO fails).
GROUPS = (
    Group("k1", 0.25, "chaos-a", "kvchaos1", "k1", 1.0),
    Group("k1slow", 0.10, "chaos-b", "kvchaos1", "k1", 4.0),
    Group("k2", 0.15, "chaos-b", "kvchaos1", "k2", 1.0),
    Group("k3", 0.20, "chaos-c", "kvchaos2", "k3", 2.0),
    Group("h1", 0.20, "chaos-a", "hsmchaos1", "h1", 1.0),
    Group("k4", 0.05, "chaos-c", "kvchaos2", "k4", 1.0),
    Group("denied", 0.05, "chaos-a", "kvchaos1", "k1", 1.0, grant=False),
)


def group_sizes(size: int) -> dict[str, int]:
    """How many accounts each group gets for ``size`` accounts (at least 2 each)."""
    sizes = {g.name: max(2, round(size * g.share)) for g in GROUPS}
    sizes["k1"] += max(0, size - sum(sizes.values()))
    return sizes


def scenario(size: int) -> dict[str, Any]:
    """The scenario document of a chaos estate of about ``size`` accounts."""
    sizes = group_sizes(size)
    vault_keys: dict[str, list[dict[str, Any]]] = {"kvchaos1": [], "kvchaos2": [], "hsmchaos1": []}
    for vault, key, kty in (
        ("kvchaos1", "k1", "RSA"),
        ("kvchaos1", "k2", "RSA"),
        ("kvchaos2", "k3", "RSA"),
        ("kvchaos2", "k4", "RSA"),
        ("hsmchaos1", "h1", "RSA-HSM"),
    ):
        vault_keys[vault].append(
            {"name": key, "kty": kty, "size": 2048, "versions": [{"created": "-30d"}]}
        )
    accounts = [
        {
            "name": f"ai-{group.name}-{{i:04d}}",
            "count": sizes[group.name],
            "subscription": group.subscription,
            "resourceGroup": f"rg-{group.name}",
            "location": REGION,
            "lroSeconds": group.lro_seconds,
            "identity": {"system": True},
            "encryption": {
                "vault": group.vault,
                "key": group.key,
                "version": "latest",
                "identity": "system",
                "grantKeyAccess": group.grant,
            },
        }
        for group in GROUPS
    ]
    roles: list[dict[str, str]] = [
        {"principal": "app", "role": "EventGrid Data Sender", "scope": f"topic:{TOPIC}"},
        {"principal": "app", "role": "Key Vault Crypto Officer", "scope": "vault:kvchaos1"},
        {"principal": "app", "role": "Key Vault Crypto Officer", "scope": "vault:hsmchaos1"},
    ]
    for sub in SUBSCRIPTIONS:
        roles.append({"principal": "app", "role": "Reader", "scope": f"subscription:{sub}"})
        roles.append(
            {
                "principal": "app",
                "role": "Cognitive Services Contributor",
                "scope": f"subscription:{sub}",
            }
        )
    return {
        "subscriptions": [{"name": name} for name in SUBSCRIPTIONS],
        "vaults": [
            {
                "name": "kvchaos1",
                "subscription": "chaos-a",
                "location": REGION,
                "keys": vault_keys["kvchaos1"],
            },
            {
                "name": "kvchaos2",
                "subscription": "chaos-b",
                "location": REGION,
                "rbac": False,
                "accessPolicies": [{"principal": "app", "keys": KEY_PERMISSIONS}],
                "keys": vault_keys["kvchaos2"],
            },
            {
                "name": "hsmchaos1",
                "kind": "managedhsm",
                "subscription": "chaos-c",
                "location": REGION,
                "keys": vault_keys["hsmchaos1"],
            },
        ],
        "accounts": accounts,
        "topics": [
            {
                "name": TOPIC,
                "subscription": "chaos-a",
                "location": REGION,
                "inputSchema": "CloudEventSchemaV1_0",
            }
        ],
        "roleAssignments": roles,
        "throttling": True,
    }
