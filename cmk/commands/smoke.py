"""``cmk smoke``: the post-deploy smoke test. With the deployed app's settings in the shell
and the caller's credential, it checks, in order, the settings, who the credential is, the
subscriptions in scope, the rights on accounts and on keys, the storage the app uses and
the alert topic, and prints one row per check with what it found and the fix. It writes
nothing and never publishes an event. The judgments are :mod:`cmk.smoke`'s; this module
reads Azure and prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from rich.text import Text

from cmk.commands.errors import LOGIN_HINT
from cmk.commands.interrupt import Journal
from cmk.commands.output import (
    Output,
    OutputFailed,
    common_options,
    output_format,
    styled,
    table,
)
from cmk.commands.session import configure_logging, fail, interrupted, report
from cmk.commands.smoke_rights import (
    account_rights,
    app_account_rights,
    app_key_rights,
    key_rights,
    operator_role_fix,
)
from cmk.commands.smoke_storage import alert_topic, storage_check
from cmk.commands.unreachable import sandbox_unreachable
from cmk.errors import CmkError, ConfigurationError
from cmk.lifecycle.services import LifecycleClients
from cmk.runtime import Runtime
from cmk.settings import Settings
from cmk.smoke import (
    CHECKS,
    Caller,
    Check,
    Result,
    decode_claims,
    exit_code,
    not_run,
)
from cmk.wiring import Services

__all__ = ["add_parser"]

DOC = """`cmk smoke`: the post-deploy smoke test (docs/deployment.md). Run it with the deployed
app's settings loaded in the shell; it checks, with your credential: the settings; who you
are (the ARM token's oid, appid, tid); that each subscription in scope is visible; that your
role assignments on each grant accounts/read, accounts/write and
locations/operationResults/read, and that Resource Graph answers; that the keys of each vault
of CMK_VAULT_ALLOWLIST can be listed and your grants include keys/create and keys/rotate; that
the deployed app's identity (--app-principal-id, default $CMK_APP_PRINCIPAL_ID) holds the
same account and key rights, read from its role assignments; that the job queue, its poison
queue, the operations queue and the ledger table answer; and that an Event Grid token can be
had for the alert topic. One row per check: ok, failed,
unverified (not decidable from what you may read; not a failure) or not_run. Writes nothing
and publishes no event. Exit 0 every check ok or unverified, 1 one failed, 2 usage or
invalid settings."""

_UNUSABLE_STATES = frozenset({"disabled", "deleted"})
_SETTINGS_FIX = (
    "set the variables named (docs/configuration.md); load the deployed app's own with"
    " docs/deployment.md, Operating from your shell"
)


def add_parser(subparsers: Any) -> None:
    """Register ``cmk smoke``."""
    parser = subparsers.add_parser(
        "smoke",
        parents=[common_options()],
        help="post-deploy smoke test: settings, identity, rights, storage, alert topic",
        description=DOC,
    )
    parser.add_argument(
        "--app-principal-id",
        default=os.environ.get("CMK_APP_PRINCIPAL_ID", ""),
        metavar="OBJECT_ID",
        help="object id of the deployed app's identity, whose grants are checked too"
        " (default: $CMK_APP_PRINCIPAL_ID, a main.bicep output in `azd env get-values`)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    output = Output(bool(args.json), output_format(args), args.query)
    configure_logging(bool(args.verbose))
    journal = Journal("smoke")
    gone = sandbox_unreachable(os.environ)
    if gone is not None:  # as every command: not a row "no token", the sandbox has stopped
        return report(args, output, gone)
    try:
        try:
            settings = Settings.from_environ(os.environ, require_storage=True)
        except ConfigurationError as error:
            row = Check("settings", Result.FAILED, _one_line(str(error)), _SETTINGS_FIX)
            checks = [row, *not_run(CHECKS[1:], "the settings are invalid")]
            return _print(output, checks, None)
        with output.working("cmk smoke: checking the deployment"):
            app = Caller.app(args.app_principal_id) if args.app_principal_id.strip() else None
            checks, caller = asyncio.run(_smoke(settings, app))
        return _print(output, checks, caller)
    except KeyboardInterrupt:
        return interrupted(args, output, journal)
    except (BrokenPipeError, OutputFailed):
        raise
    except Exception as error:
        return fail(args, output, error)


def _one_line(text: str) -> str:
    lines = [line.strip().removeprefix("- ") for line in text.splitlines() if line.strip()]
    return lines[0] + (" " + "; ".join(lines[1:]) if lines[1:] else "") if lines else text


async def _smoke(settings: Settings, app: Caller | None) -> tuple[list[Check], Caller | None]:
    checks = [_settings(settings)]
    async with Runtime(settings) as runtime, LifecycleClients(runtime.services) as clients:
        services = runtime.services
        identity, caller = await _identity(services)
        checks.append(identity)
        if identity.result is Result.FAILED:
            checks += not_run(CHECKS[2:], "no token for the caller")
            return checks, caller
        subscriptions, in_scope, readable = await _subscriptions(settings, services, caller)
        checks.append(subscriptions)
        checks.append(await account_rights(services, clients, caller, in_scope))
        vault_search = (*in_scope, *readable)
        checks.append(await key_rights(settings, services, clients, caller, vault_search))
        checks.append(await app_account_rights(clients, app, in_scope))
        checks.append(await app_key_rights(settings, clients, app, vault_search))
        checks.append(await storage_check(settings, services, caller))
        checks.append(await alert_topic(settings, services))
    return checks, caller


def _settings(settings: Settings) -> Check:
    storage = settings.require_storage()
    how = "a connection string" if not storage.uses_identity else "the identity (service URIs)"
    found = (
        f"read; {len(settings.subscriptions) or 'no'} subscription(s) in CMK_SUBSCRIPTIONS"
        f"{'' if settings.subscriptions else ' (every readable one)'},"
        f" {len(settings.vault_allowlist)} vault(s) in CMK_VAULT_ALLOWLIST, storage through"
        f" {how}, queue {settings.job_queue}, table {settings.ledger_table},"
        f" dry run {'on' if settings.dry_run else 'off'}"
    )
    if not settings.vault_allowlist:
        fix = "set CMK_VAULT_ALLOWLIST to the vault URLs, e.g. https://kv-cmk-prod.vault.azure.net"
        return Check("settings", Result.FAILED, f"{found}: no vault is rotated", fix)
    return Check("settings", Result.OK, found)


async def _identity(services: Services) -> tuple[Check, Caller | None]:
    scope = services.settings.cloud.endpoints.arm_scope
    try:
        token = await services.credential.get_token(scope)
    except Exception as error:  # any credential failure: not signed in, no identity
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        return Check("identity", Result.FAILED, f"no token for {scope}: {first}", LOGIN_HINT), None
    try:
        caller = Caller.from_claims(decode_claims(token.token))
    except ValueError as error:
        found = f"a token for {scope}, but who it names is unknown: {error}"
        return Check("identity", Result.UNVERIFIED, found), None
    return Check("identity", Result.OK, f"token for {scope}: {caller.describe()}"), caller


async def _subscriptions(
    settings: Settings, services: Services, caller: Caller | None
) -> tuple[Check, tuple[str, ...], tuple[str, ...]]:
    """The row, the subscriptions in scope that are visible, and every readable one."""
    configured = settings.subscriptions
    try:
        listed = await services.subscriptions.readable()
    except CmkError as error:
        found = f"cannot list the subscriptions the identity can read: {error}"
        return Check("subscriptions", Result.FAILED, found, LOGIN_HINT), configured, ()
    usable = {s.subscription_id: s for s in listed if s.state.lower() not in _UNUSABLE_STATES}
    if not configured:
        if not usable:
            found = "CMK_SUBSCRIPTIONS is unset and the identity can read no subscription"
            fix = "set CMK_SUBSCRIPTIONS, or " + operator_role_fix(caller, "<subscription-id>")
            return Check("subscriptions", Result.FAILED, found, fix), (), ()
        names = ", ".join(f"{s.display_name} ({s.subscription_id})" for s in usable.values())
        found = f"CMK_SUBSCRIPTIONS unset: {len(usable)} readable subscription(s): {names}"
        return Check("subscriptions", Result.OK, found), tuple(usable), tuple(usable)
    visible = tuple(s for s in configured if s in usable)
    hidden = [s for s in configured if s not in usable]
    names = ", ".join(f"{usable[s].display_name} ({s})" for s in visible) or "none"
    found = f"{len(visible)} of {len(configured)} in CMK_SUBSCRIPTIONS visible: {names}"
    if not hidden:
        return Check("subscriptions", Result.OK, found), visible, tuple(usable)
    found += f"; not visible: {', '.join(hidden)}"
    fixes = [
        f"fix the id in CMK_SUBSCRIPTIONS, or {operator_role_fix(caller, sub)}" for sub in hidden
    ]
    return Check("subscriptions", Result.FAILED, found, "; ".join(fixes)), visible, tuple(usable)


def _result_cell(result: Result) -> Text:
    if result is Result.UNVERIFIED:
        return Text(result.value, style="yellow")
    if result is Result.NOT_RUN:
        return Text(result.value, style="dim")
    return styled(result.value)


def _print(output: Output, checks: list[Check], caller: Caller | None) -> int:
    code = exit_code(checks)
    if output.json_mode:
        output.emit_json(
            {
                "checks": checks,
                "caller": caller,
                "ok": code == 0,
                "exit_code": code,
            }
        )
        return code
    rows = [(c.check, _result_cell(c.result), c.found, c.fix) for c in checks]
    output.print(table("cmk smoke", ("check", "result", "found", "fix"), rows))
    # each failed check's fix in full (a cell is cut to fit the terminal), as `cmk check`
    for check in checks:
        if check.result is Result.FAILED and check.fix:
            output.print(f"  {check.check} — fix: {check.fix}")
    counts = {r: sum(1 for c in checks if c.result is r) for r in Result}
    summary = ", ".join(f"{n} {r.value}" for r, n in counts.items() if n)
    output.print(f"smoke: {len(checks)} check(s): {summary}; nothing written, no event published")
    return code
