"""The post-deploy smoke test's judgments (``cmk smoke``): who the caller is, from its token;
which of the rights the app needs a set of role grants (the caller's, or the deployed app's
identity's) leaves out; each check's result and
its fix; the exit code. Pure: :mod:`cmk.commands.smoke` reads Azure and calls these.

A check is ``ok``, ``failed``, ``unverified`` (it could not be decided from what the caller
may read: shown, never a failure) or ``not_run`` (an earlier check it needs failed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cmk.lifecycle.access import role_allows
from cmk.lifecycle.model import RoleGrant

__all__ = [
    "ACCOUNT_ACTIONS",
    "CHECKS",
    "KEY_ACTIONS",
    "KEY_POLICY_PERMISSIONS",
    "Caller",
    "Check",
    "Result",
    "combined",
    "decode_claims",
    "exit_code",
    "missing",
    "not_run",
]


class Result(StrEnum):
    OK = "ok"
    FAILED = "failed"
    UNVERIFIED = "unverified"
    NOT_RUN = "not_run"


#: The checks, in the order they run and are shown.
CHECKS = (
    "settings",
    "identity",
    "subscriptions",
    "account rights",
    "key rights",
    "app account rights",
    "app key rights",
    "storage",
    "alert topic",
)

#: What the app does on accounts, at each subscription (infra/app/rbac-subscription.bicep).
ACCOUNT_ACTIONS = (
    "Microsoft.CognitiveServices/accounts/read",
    "Microsoft.CognitiveServices/accounts/write",
    "Microsoft.CognitiveServices/locations/operationResults/read",
)

#: The key data actions the app uses, on each vault (infra/app/rbac-vault.bicep).
KEY_ACTIONS = (
    "Microsoft.KeyVault/vaults/keys/read",
    "Microsoft.KeyVault/vaults/keys/create/action",
    "Microsoft.KeyVault/vaults/keys/rotate/action",
    "Microsoft.KeyVault/vaults/keyrotationpolicies/read",
)

#: The same rights as access-policy key permissions (docs/deployment.md).
KEY_POLICY_PERMISSIONS = ("get", "list", "create", "rotate", "getrotationpolicy")


@dataclass(frozen=True)
class Check:
    """One row: the check, its result, what it found, and the fix of a failure."""

    check: str
    result: Result
    found: str
    fix: str = ""


def missing(required: Iterable[str], grants: Sequence[RoleGrant], *, data: bool) -> tuple[str, ...]:
    """The actions of ``required`` (data actions, or control-plane ones) that none of
    ``grants`` allows."""
    return tuple(a for a in required if not any(role_allows(g, a, data=data) for g in grants))


@dataclass(frozen=True)
class Caller:
    """Who the credential signs in as, from the claims of its ARM token."""

    object_id: str
    app_id: str
    tenant_id: str
    name: str
    delegated: bool  # a user's token (``scp``): its groups' role assignments are not listed

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Caller:
        def text(*names: str) -> str:
            return next((str(claims[n]) for n in names if claims.get(n)), "")

        return cls(
            object_id=text("oid").lower(),
            app_id=text("appid", "azp").lower(),
            tenant_id=text("tid").lower(),
            name=text("upn", "unique_name", "preferred_username", "name"),
            delegated="scp" in claims or claims.get("idtyp") == "user",
        )

    @classmethod
    def app(cls, principal_id: str) -> Caller:
        """The deployed app's identity (CMK_APP_PRINCIPAL_ID): a service principal whose
        grants are checked, never signed in as."""
        return cls(principal_id.strip().lower(), "", "", "the app", delegated=False)

    def describe(self) -> str:
        kind = "user" if self.delegated else "application"
        who = f"{self.name}, " if self.name else ""
        return (
            f"{kind} {who}object id {self.object_id or '(none)'}, app id"
            f" {self.app_id or '(none)'}, tenant {self.tenant_id or '(none)'}"
        )


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, decoded without verifying it (it only says who we are); a
    ValueError when it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("the access token is not a JWT")
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    claims = json.loads(base64.urlsafe_b64decode(payload))
    if not isinstance(claims, dict):
        raise ValueError("the access token's claims are not a JSON object")
    return claims


def combined(results: Iterable[Result]) -> Result:
    """One result for parts of a check: failed if any failed, else unverified if any was."""
    seen = set(results)
    for result in (Result.FAILED, Result.UNVERIFIED, Result.NOT_RUN):
        if result in seen:
            return result
    return Result.OK


def not_run(names: Iterable[str], why: str) -> list[Check]:
    """Rows for checks that were not run because of an earlier one."""
    return [Check(name, Result.NOT_RUN, f"not run: {why}") for name in names]


def exit_code(checks: Sequence[Check]) -> int:
    """2 when the settings could not be read (configuration error), 1 when a check failed,
    else 0 (unverified is shown but is not a failure)."""
    settings = next((c for c in checks if c.check == "settings"), None)
    if (
        settings is not None
        and settings.result is Result.FAILED
        and any(c.result is Result.NOT_RUN for c in checks)
    ):
        return 2
    return 1 if any(c.result is Result.FAILED for c in checks) else 0
