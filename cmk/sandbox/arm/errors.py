"""How a sandbox resource provider says no: ARM's error answer.

Every ARM front end of the sandbox (Cognitive Services accounts, Key Vault management,
authorization) raises :class:`ArmError`; :mod:`cmk.sandbox.arm.service` turns it into the HTTP
answer ``{"error": {"code", "message"}}`` with its status and headers.
"""

from __future__ import annotations

from typing import Any


class ArmError(Exception):
    """An ARM error answer: ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def bad_request(code: str, message: str) -> ArmError:
    """A ``400`` answer: the request alone shows the problem."""
    return ArmError(400, code, message)


def authorization_failed(client_id: str, object_id: str, action: str, scope: str) -> ArmError:
    """ARM's 403 ``AuthorizationFailed``: the caller's role assignments at ``scope`` and above
    do not grant ``action``."""
    return ArmError(
        403,
        "AuthorizationFailed",
        f"The client '{client_id}' with object id '{object_id}' does not have authorization to "
        f"perform action '{action}' over scope '{scope}' or the scope is invalid. If access was "
        "recently granted, please refresh your credentials.",
    )


def not_implemented(what: str) -> ArmError:
    """A 501 ``NotImplemented``: Azure serves this, the sandbox does not emulate it (never a
    404 that a client would take for Azure's answer)."""
    return ArmError(501, "NotImplemented", f"The sandbox does not emulate {what}.")
