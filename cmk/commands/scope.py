"""Which subscriptions a run covered, and scope mistakes that look like success: an empty
CMK_VAULT_ALLOWLIST, a subscription of CMK_SUBSCRIPTIONS the identity cannot see, or no
CMK account in scope at all (Resource Graph answers nothing rather than an error for a
subscription it cannot see). A command that finds one warns on stderr and exits 1 instead
of reporting a clean, empty run (:func:`~cmk.usecases.answers.scope_warnings`, shared with
the HTTP endpoints)."""

from __future__ import annotations

from cmk.commands.errors import ScopeRefused
from cmk.commands.output import Output
from cmk.settings import Settings
from cmk.usecases.answers import scope_source, scope_warnings
from cmk.usecases.context import Engine
from cmk.usecases.subscriptions import HIDDEN_FIX, SubscriptionScope, subscription_scope

__all__ = ["refuse_hidden_subscriptions", "resolve", "scope_line", "scope_warnings", "warn"]


async def resolve(engine: Engine) -> SubscriptionScope:
    """The run's subscription scope (the adapter reuses the list the use case just read)."""
    return await subscription_scope(engine)


def scope_line(settings: Settings, scope: SubscriptionScope) -> str:
    """Which subscriptions and vaults a run covered, for the end of its output."""
    vaults = sorted(url.removeprefix("https://") for url in settings.vault_allowlist)
    names = ", ".join(scope.label(s) for s in scope.subscriptions) or "none"
    return (
        f"scope: {len(scope.subscriptions)} subscription(s) {scope_source(scope)} ({names});"
        f" {len(vaults)} vault(s) of CMK_VAULT_ALLOWLIST ({', '.join(vaults) or 'none'})"
    )


def warn(output: Output, warnings: list[str]) -> None:
    """Print each warning on stderr (the answer's exit code already counts them)."""
    for warning in warnings:
        output.note(f"cmk: warning: {warning}")


async def refuse_hidden_subscriptions(
    engine: Engine, output: Output, command: str, again: str
) -> None:
    """Before a command writes anything: warn about each subscription of CMK_SUBSCRIPTIONS
    the identity cannot see (as ``status`` does) and refuse, exit 1. Its accounts would not
    be inventoried, so a run would leave those bound to the key stale while reporting
    success. ``again`` is the command line to run once it is fixed."""
    scope = await resolve(engine)
    refusal = scope.refusal(command)
    if refusal is None:
        return
    warn(output, scope.warnings())
    raise ScopeRefused(refusal, fix=f"{HIDDEN_FIX}; then run `{again}` again")
