"""Exceptions a command may end with, mapped to an exit code and a message that says how
to fix it. Configuration, usage and sign-in problems exit 2; everything else that stops a
command (a service that keeps failing) exits 1."""

from __future__ import annotations

from dataclasses import dataclass

from azure.core.exceptions import ClientAuthenticationError

from cmk.commands.output import EXIT_FINDINGS, EXIT_USAGE
from cmk.errors import (
    AccessDenied,
    CmkError,
    ConfigurationError,
    InvalidInput,
    InvalidKeyId,
    InvalidResourceId,
    NotFound,
    OutOfScope,
    TransientError,
)

__all__ = ["Failure", "ScopeRefused", "UsageError", "explain"]

SANDBOX_HINT = "against the sandbox: source the env file written by `cmk sandbox up --env-file`"
LOGIN_HINT = (
    "sign in with `az login` (DefaultAzureCredential uses the Azure CLI's login), or set"
    f" AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET for a service principal; {SANDBOX_HINT}"
)


class UsageError(Exception):
    """A command was given something it cannot use (a bad file, conflicting options);
    ``fix`` says what to give instead."""

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


class ScopeRefused(Exception):
    """A command that writes refuses to start on a scope with a mistake (a subscription of
    CMK_SUBSCRIPTIONS the identity cannot see): its accounts would be left out unnoticed.
    Exit 1, as the commands that read report the same mistake; ``fix`` says what to do."""

    def __init__(self, message: str, *, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


@dataclass(frozen=True)
class Failure:
    """How a command ended when it raised: exit code, kind and what to tell the operator."""

    code: int
    kind: str
    message: str
    fix: str

    def text(self) -> str:
        """The message for stderr."""
        return f"cmk: {self.message}\n  fix: {self.fix}" if self.fix else f"cmk: {self.message}"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _authentication(error: BaseException) -> bool:
    """True when the credential could not get a token (not signed in, no identity)."""
    for item in _chain(error):
        if isinstance(item, ClientAuthenticationError) and item.status_code is None:
            return True
        text = str(item)
        if "DefaultAzureCredential failed" in text or "CredentialUnavailable" in text:
            return True
    return False


def explain(error: BaseException) -> Failure:
    """The exit code and how-to-fix message for ``error``."""
    message = str(error).strip() or type(error).__name__
    if isinstance(error, UsageError):
        return Failure(EXIT_USAGE, "usage", message, error.fix)
    if isinstance(error, ScopeRefused):
        return Failure(EXIT_FINDINGS, "configuration", message, error.fix)
    if isinstance(error, ConfigurationError):
        fix = "set the variables named above (docs/configuration.md); " + SANDBOX_HINT
        return Failure(EXIT_USAGE, "configuration", message, fix)
    if _authentication(error):
        return Failure(EXIT_USAGE, "authentication", message.splitlines()[0], LOGIN_HINT)
    if isinstance(error, InvalidKeyId):
        fix = "give a key id such as https://myvault.vault.azure.net/keys/mykey"
        return Failure(EXIT_USAGE, "usage", message, fix)
    if isinstance(error, InvalidResourceId):
        fix = (
            "give an account as RESOURCE_GROUP/NAME, as the tables show it (e.g."
            " rg-ai/ai-prod-01), or as its ARM resource id, such as /subscriptions/<id>"
            "/resourceGroups/<group>/providers/Microsoft.CognitiveServices/accounts/<name>"
        )
        return Failure(EXIT_USAGE, "usage", message, fix)
    if isinstance(error, OutOfScope):
        return Failure(EXIT_USAGE, "configuration", message, "add the vault to CMK_VAULT_ALLOWLIST")
    if isinstance(error, NotFound):
        fix = "check the id (`cmk status` lists the keys and accounts in scope)"
        return Failure(EXIT_USAGE, "not_found", message, fix)
    if isinstance(error, AccessDenied):
        fix = (
            "grant the signed-in principal the roles of docs/deployment.md (Least privilege)"
            " on the vault or subscription named above"
        )
        return Failure(EXIT_USAGE, "access_denied", message, fix)
    if isinstance(error, InvalidInput):
        return Failure(EXIT_USAGE, "usage", message, "")
    if isinstance(error, TransientError):
        fix = "a service did not answer or throttled us; try again in a minute"
        return Failure(EXIT_FINDINGS, "transient", message, fix)
    if isinstance(error, CmkError):
        return Failure(EXIT_FINDINGS, "failed", message, "")
    return Failure(EXIT_FINDINGS, "internal", f"{type(error).__name__}: {message}", "")
