"""Scope mistakes that look like success: an empty CMK_VAULT_ALLOWLIST, or no CMK account
in scope at all (a CMK_SUBSCRIPTIONS typo, or subscriptions the identity cannot read:
Resource Graph answers nothing rather than an error). A command that finds one warns on
stderr and exits 1 instead of reporting a clean, empty run."""

from __future__ import annotations

from cmk.commands.output import EXIT_FINDINGS, Output
from cmk.settings import Settings

__all__ = ["scope_line", "scope_warnings", "warn"]


def scope_line(settings: Settings) -> str:
    """Which subscriptions and vaults a run covered, for the end of its output."""
    vaults = sorted(url.removeprefix("https://") for url in settings.vault_allowlist)
    return (
        f"scope: {len(settings.subscriptions)} subscription(s) of CMK_SUBSCRIPTIONS"
        f" ({', '.join(settings.subscriptions) or 'none'}); {len(vaults)} vault(s) of"
        f" CMK_VAULT_ALLOWLIST ({', '.join(vaults) or 'none'})"
    )


def scope_warnings(settings: Settings, in_scope: int) -> list[str]:
    """What is wrong with the scope of a run that found ``in_scope`` accounts in scope."""
    warnings = []
    if not settings.vault_allowlist:
        warnings.append(
            "CMK_VAULT_ALLOWLIST is empty: no vault is in scope, so nothing is ever"
            " rotated; set it to the URLs of the vaults to manage (docs/configuration.md)"
        )
    if in_scope == 0:
        subscriptions = ", ".join(settings.subscriptions) or "none"
        warnings.append(
            f"no CMK account in scope in the {len(settings.subscriptions)} subscription(s)"
            f" of CMK_SUBSCRIPTIONS ({subscriptions}): check the ids, and that the signed-in"
            " identity can read them (Resource Graph returns nothing for a subscription it"
            " cannot see, rather than an error)"
        )
    return warnings


def warn(output: Output, warnings: list[str], code: int) -> int:
    """Print each warning on stderr; the exit code, at least 1 when there is one."""
    for warning in warnings:
        output.note(f"cmk: warning: {warning}")
    return max(code, EXIT_FINDINGS) if warnings else code
