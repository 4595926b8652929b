"""The emulated Key Vault / Managed HSM keys data plane, as ``azure-keyvault-keys`` sees it.

One app serves every vault: the ``Host`` header names it. Each request goes through, in
order: vault lookup (404 for hosts the world does not know; in Azure the name would not
resolve), authentication with Key Vault's challenge (401 + ``WWW-Authenticate: Bearer
authorization=..., resource=...`` for a missing, invalid, wrong-audience or
other-tenant token), the ``api-version`` check (400), then per-operation authorization
through :meth:`World.key_access` (403 ``Forbidden`` with inner ``ForbiddenByRbac``, or
``AccessDenied`` on access-policy vaults).

Then the request is metered against the vault's documented transaction limits
(:mod:`cmk.sandbox.keyvault.limits`, switched with ARM's throttling): over a vault's, 429
``Throttled`` with ``Retry-After``; over a Managed HSM's capacity, a later answer.

Operations: create, get (latest or a version), update, list versions, list keys (paged
with ``maxresults`` <= 25 and ``$skiptoken`` in ``nextLink``), rotate, rotation policy
get/put. Anything else answers 501 ``NotImplemented`` so a gap is never mistaken for
Azure's behaviour. Versions list in version-id order, as Key Vault does (not by age).

The world helpers :func:`add_key_version`, :func:`rotate_key` and
:func:`emit_due_expiry_events` live in :mod:`cmk.sandbox.keyvault.model` and are
re-exported here.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cmk.sandbox.keyvault.bodies import (
    JsonObject,
    key_bundle,
    key_item,
    parse_key_changes,
    parse_rotation_policy,
    policy_action_types,
    read_skiptoken,
    rotation_policy_body,
    skiptoken,
)
from cmk.sandbox.keyvault.errors import (
    KeyVaultError,
    bad_parameter,
    forbidden,
    key_not_found,
    unauthorized,
)
from cmk.sandbox.keyvault.limits import THROTTLED_CODE, THROTTLED_MESSAGE, KeyShape, Meter
from cmk.sandbox.keyvault.model import (
    KeyNotFoundError,
    KeyParameterError,
    add_key_version,
    check_key_ops,
    emit_due_expiry_events,
    find_key,
    rotate_key,
    valid_key_name,
    whole_seconds,
)
from cmk.sandbox.keyvault.versions import api_level, unrecognized_message
from cmk.sandbox.platform.context import ServiceContext, normalize_audience
from cmk.sandbox.platform.throttling import throttle_for
from cmk.sandbox.world import KeyState, KeyVersionState, Principal, VaultKind, VaultState

# The world helpers other parts of the sandbox call through this module.
__all__ = ["add_key_version", "build_app", "emit_due_expiry_events", "rotate_key"]

MAX_PAGE_SIZE = 25
SERVICE_VERSION = "1.9.2655.1"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: Handlers of one key's transactions (the rest are vault-level: list keys, unknown paths).
_KEY_HANDLERS = frozenset(
    {"get_key", "update_key", "list_versions", "rotate", "get_rotation_policy",
     "put_rotation_policy"}
)  # fmt: skip


@dataclass(frozen=True)
class _Caller:
    vault: VaultState
    principal: Principal
    api_version: str


_CALLER = web.RequestKey("cmk.sandbox.keyvault.service.caller", _Caller)


def _respond(vault: VaultState | None, status: int, body: object, **headers: str) -> web.Response:
    response = web.Response(
        status=status,
        text=json.dumps(body, separators=(",", ":")),
        content_type="application/json",
        charset="utf-8",
    )
    response.headers["Cache-Control"] = "no-cache"
    response.headers["x-ms-request-id"] = str(uuid.uuid4())
    response.headers["x-ms-keyvault-service-version"] = SERVICE_VERSION
    if vault is not None:
        response.headers["x-ms-keyvault-region"] = vault.location
    response.headers.update(headers)
    return response


class _KeyVaultService:
    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self._world = ctx.world

    # --- the pipeline every request passes ------------------------------------------

    @web.middleware
    async def pipeline(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        vault = self._world.vault_by_host(request.host)
        try:
            if vault is None:
                raise KeyVaultError(
                    404,
                    "VaultNotFound",
                    f"No Key Vault or Managed HSM is named by host '{request.host}' in the "
                    "sandbox (in Azure this host name would not resolve).",
                )
            principal = self._authenticate(request, vault)
            request[_CALLER] = _Caller(vault, principal, self._api_version(request))
            await self._meter(request, vault)
            try:
                return await handler(request)
            except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
                raise KeyVaultError(
                    501,
                    "NotImplemented",
                    f"The sandbox does not emulate {request.method} {request.path} "
                    "(only keys: create, get, update, list, rotate, rotation policy).",
                ) from exc
        except KeyVaultError as err:
            return _respond(vault, err.status, err.body(), **err.headers)

    def _authenticate(self, request: web.Request, vault: VaultState) -> Principal:
        claims = self._ctx.bearer_claims(request)
        if claims is None:
            if "Authorization" in request.headers:
                raise unauthorized(vault, "AKV10032: Invalid, expired or unverifiable token.")
            raise unauthorized(vault, "AKV10000: Request is missing a Bearer or PoP token.")
        expected = f"https://{vault.dns_suffix}"
        if normalize_audience(claims.audience) != expected:
            raise unauthorized(
                vault, f"AKV10022: Invalid audience. Expected {expected}, found: {claims.audience}."
            )
        tenant = claims.principal.tenant_id
        if tenant.lower() != vault.tenant_id.lower():
            raise unauthorized(
                vault,
                "AKV10032: Invalid issuer. Expected one of "
                f"https://sts.windows.net/{vault.tenant_id}/, found: https://sts.windows.net/{tenant}/.",
            )
        return claims.principal

    async def _meter(self, request: web.Request, vault: VaultState) -> None:
        """Count the request against the vault's transaction limits; 429 when over them."""
        meter, shape = await self._transaction(request, vault)
        decision = throttle_for(self._world).vault(vault, meter, shape)
        if decision.delay > 0:  # a Managed HSM at capacity: the answer waits its turn
            await asyncio.sleep(decision.delay)
        if not decision.allowed:
            raise KeyVaultError(429, THROTTLED_CODE, THROTTLED_MESSAGE, headers=decision.headers)

    async def _transaction(
        self, request: web.Request, vault: VaultState
    ) -> tuple[Meter, KeyShape | None]:
        """Which limit a request counts against, and the key type and size that weigh it."""
        handler = getattr(request.match_info.handler, "__name__", "")
        if handler == "create_key":
            try:
                body = json.loads(await request.text() or "null")
            except json.JSONDecodeError:
                body = None
            body = body if isinstance(body, dict) else {}
            kty, size = body.get("kty"), body.get("key_size")
            return Meter.KEY_CREATE, KeyShape(
                kty if isinstance(kty, str) else "RSA", size if isinstance(size, int) else None
            )
        name = request.match_info.get("name")
        if handler not in _KEY_HANDLERS or name is None:
            return Meter.VAULT, None
        with self._world.lock:
            key = vault.keys.get(name.lower())
            latest = key.latest() if key is not None else None
            if latest is None:
                return Meter.VAULT, None
            shape = KeyShape(latest.kty, latest.size)
        return (Meter.KEY_CREATE if handler == "rotate" else Meter.KEY_OTHER), shape

    @staticmethod
    def _api_version(request: web.Request) -> str:
        api_version = request.query.get("api-version", "").strip()
        if not api_version:
            raise bad_parameter("The 'api-version' query parameter is missing.")
        if api_level(api_version) is None:
            raise bad_parameter(unrecognized_message(api_version))
        return api_version

    def _authorize(self, request: web.Request, perm: str, key_name: str) -> _Caller:
        caller = request[_CALLER]
        principal_id = caller.principal.object_id
        if not self._world.key_access(principal_id, caller.vault, key_name, perm):
            raise forbidden(caller.vault, caller.principal, perm, key_name)
        return caller

    @staticmethod
    async def _body(request: web.Request) -> JsonObject:
        try:
            body = json.loads(await request.text() or "null")
        except json.JSONDecodeError as exc:
            raise bad_parameter("The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise bad_parameter("The request body must be a JSON object.")
        return body

    def _bundle(self, caller: _Caller, key: KeyState, version: KeyVersionState) -> web.Response:
        return _respond(
            caller.vault, 200, key_bundle(caller.vault, key, version, caller.api_version)
        )

    # --- operations ---------------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if not valid_key_name(name):
            raise bad_parameter(f"The request URI contains an invalid name: {name}")
        caller = self._authorize(request, "create", name)
        body = await self._body(request)
        kty, size, curve = body.get("kty"), body.get("key_size"), body.get("crv")
        if not isinstance(kty, str):
            raise bad_parameter("The 'kty' parameter is required.")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
            raise bad_parameter("'key_size' must be an integer.")
        if curve is not None and not isinstance(curve, str):
            raise bad_parameter("'crv' must be a string.")
        if body.get("public_exponent") not in (None, 65537):
            raise bad_parameter("Only the public exponent 65537 is supported.")
        if body.get("release_policy") is not None:
            raise bad_parameter("Key release policies are not emulated by the sandbox.")
        try:
            changes = parse_key_changes(body)
            version = add_key_version(
                self._world,
                caller.vault,
                name,
                kty=kty,
                size=size,
                curve=curve,
                key_ops=changes.key_ops,
                enabled=True if changes.enabled is None else changes.enabled,
                not_before=changes.not_before,
                expires=changes.expires,
                tags=changes.tags,
            )
        except KeyParameterError as exc:
            raise bad_parameter(str(exc)) from exc
        with self._world.lock:
            return self._bundle(caller, self._key(caller, name), version)

    async def get_key(self, request: web.Request) -> web.StreamResponse:
        name, version_id = request.match_info["name"], request.match_info.get("version", "")
        caller = self._authorize(request, "get", name)
        with self._world.lock:
            key = self._key(caller, name)
            return self._bundle(caller, key, self._version(caller, key, version_id))

    async def update_key(self, request: web.Request) -> web.StreamResponse:
        name, version_id = request.match_info["name"], request.match_info.get("version", "")
        caller = self._authorize(request, "update", name)
        body = await self._body(request)
        try:
            changes = parse_key_changes(body)
            key_ops = check_key_ops(changes.key_ops) if changes.key_ops is not None else None
        except KeyParameterError as exc:
            raise bad_parameter(str(exc)) from exc
        with self._world.lock:
            key = self._key(caller, name)
            version = self._version(caller, key, version_id)
            nbf = None if changes.clear_not_before else changes.not_before or version.not_before
            exp = None if changes.clear_expires else changes.expires or version.expires
            if nbf and exp and exp <= nbf:
                raise bad_parameter("Attribute 'exp' must be later than 'nbf'.")
            if exp != version.expires:
                version.near_expiry_emitted = version.expired_emitted = False
            version.not_before, version.expires = nbf, exp
            if key_ops is not None:
                version.key_ops = key_ops
            if changes.enabled is not None:
                version.enabled = changes.enabled
            if changes.tags is not None:
                version.tags = changes.tags
            version.updated = whole_seconds(self._world.clock.now()) or version.updated
            return self._bundle(caller, key, version)

    async def list_versions(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        caller = self._authorize(request, "list", name)
        with self._world.lock:
            key = self._key(caller, name)
            versions = sorted(key.versions, key=lambda v: v.version)
            items = [
                key_item(caller.vault, key, v, caller.api_version, versioned=True) for v in versions
            ]
        return self._page(request, caller, f"/keys/{key.name}/versions", items)

    async def list_keys(self, request: web.Request) -> web.StreamResponse:
        caller = self._authorize(request, "list", "")
        with self._world.lock:
            keys = sorted(
                (k for k in caller.vault.keys.values() if k.versions), key=lambda k: k.name.lower()
            )
            items = []
            for key in keys:
                latest = key.latest()
                assert latest is not None
                items.append(
                    key_item(caller.vault, key, latest, caller.api_version, versioned=False)
                )
        return self._page(request, caller, "/keys", items)

    async def rotate(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        caller = self._authorize(request, "rotate", name)
        try:
            version = rotate_key(self._world, caller.vault, name)
        except KeyNotFoundError as exc:
            raise key_not_found(name) from exc
        with self._world.lock:
            return self._bundle(caller, self._key(caller, name), version)

    async def get_rotation_policy(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        caller = self._authorize(request, "getrotationpolicy", name)
        with self._world.lock:
            body = rotation_policy_body(caller.vault, self._key(caller, name))
        return _respond(caller.vault, 200, body)

    async def put_rotation_policy(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        caller = self._authorize(request, "setrotationpolicy", name)
        try:
            policy = parse_rotation_policy(await self._body(request))
        except KeyParameterError as exc:
            raise bad_parameter(str(exc)) from exc
        is_hsm = caller.vault.kind is VaultKind.MANAGED_HSM
        if is_hsm and "Notify" in policy_action_types(policy):
            raise bad_parameter("The Notify lifetime action is not supported by Managed HSM.")
        with self._world.lock:
            key = self._key(caller, name)
            now = whole_seconds(self._world.clock.now())
            previous = key.rotation_policy
            policy.id = f"{caller.vault.url}/keys/{key.name}/rotationpolicy"
            policy.created = previous.created if previous and previous.created else now
            policy.updated = now
            key.rotation_policy = policy
            body = rotation_policy_body(caller.vault, key)
        return _respond(caller.vault, 200, body)

    # --- lookups and paging ---------------------------------------------------------

    @staticmethod
    def _key(caller: _Caller, name: str) -> KeyState:
        try:
            return find_key(caller.vault, name)
        except KeyNotFoundError as exc:
            raise key_not_found(name) from exc

    @staticmethod
    def _version(caller: _Caller, key: KeyState, version_id: str) -> KeyVersionState:
        version = key.version(version_id) if version_id else key.latest()
        if version is None:
            raise key_not_found(f"{key.name}/{version_id}")
        return version

    @staticmethod
    def _page(
        request: web.Request, caller: _Caller, path: str, items: list[JsonObject]
    ) -> web.Response:
        raw_max = request.query.get("maxresults")
        try:
            page_size = MAX_PAGE_SIZE if raw_max is None else int(raw_max)
        except ValueError:
            page_size = 0
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise bad_parameter(f"Invalid maxresults '{raw_max}': use 1 to {MAX_PAGE_SIZE}.")
        try:
            start = read_skiptoken(request.query.get("$skiptoken"))
        except KeyParameterError as exc:
            raise bad_parameter(str(exc)) from exc
        end = start + page_size
        next_link = None
        if end < len(items):
            next_link = (
                f"{caller.vault.url}:443{path}?api-version={caller.api_version}"
                f"&$skiptoken={skiptoken(end)}"
            )
            if raw_max is not None:
                next_link += f"&maxresults={page_size}"
        return _respond(caller.vault, 200, {"value": items[start:end], "nextLink": next_link})


def build_app(ctx: ServiceContext) -> web.Application:
    """The keys data plane of every vault and Managed HSM in ``ctx.world``."""
    service = _KeyVaultService(ctx)
    app = web.Application(middlewares=[service.pipeline])
    app.router.add_post("/keys/{name}/create", service.create_key)
    app.router.add_post("/keys/{name}/rotate", service.rotate)
    app.router.add_get("/keys/{name}/rotationpolicy", service.get_rotation_policy)
    app.router.add_put("/keys/{name}/rotationpolicy", service.put_rotation_policy)
    app.router.add_get("/keys/{name}/versions", service.list_versions)
    app.router.add_get("/keys", service.list_keys)
    app.router.add_get("/keys/", service.list_keys)
    app.router.add_get("/keys/{name}", service.get_key)
    app.router.add_get("/keys/{name}/", service.get_key)
    app.router.add_get("/keys/{name}/{version}", service.get_key)
    app.router.add_patch("/keys/{name}/", service.update_key)
    app.router.add_patch("/keys/{name}/{version}", service.update_key)
    return app
