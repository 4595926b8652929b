"""Azure Resource Manager on ``management.azure.com``: the Microsoft.CognitiveServices/accounts
resource provider (:mod:`cmk.sandbox.arm.cognitive.accounts`), ARM throttling
(:mod:`cmk.sandbox.platform.throttling`) and Azure Resource Graph
(:mod:`cmk.sandbox.resourcegraph.service`).

Routes (paths are case-insensitive, as in ARM):

* ``GET|PUT|PATCH /subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.CognitiveServices/
  accounts/{name}`` — get, create/replace, update (long-running, see ``arm.cognitive``);
* ``GET /subscriptions/{s}[/resourceGroups/{rg}]/providers/Microsoft.CognitiveServices/
  accounts`` — list, ``page_size`` (100) per page, ``nextLink`` with ``$skipToken``;
* ``GET /subscriptions/{s}/providers/Microsoft.CognitiveServices/locations/{l}/
  operationStatuses/{id}`` (``Azure-AsyncOperation``) and ``.../operationResults/{id}``
  (``Location``: 202 while running, then the account or the error);
* ``POST /providers/Microsoft.ResourceGraph/resources``;
* ``Microsoft.KeyVault/vaults`` and ``managedHSMs`` GET and list
  (:mod:`cmk.sandbox.arm.keyvault`);
* ``Microsoft.ManagedIdentity/userAssignedIdentities`` and ``Microsoft.EventGrid/topics``
  GET (:mod:`cmk.sandbox.arm.others`);
* ``Microsoft.Authorization`` role assignments at a scope and role definitions
  (:mod:`cmk.sandbox.arm.authorization`); one role assignment's PUT, GET and DELETE at any
  scope the world holds (:mod:`cmk.sandbox.arm.role_assignments`);
* ``Microsoft.Resources``: ``/subscriptions``, ``/subscriptions/{s}``, ``/tenants``, resource
  groups, the generic resource list, resource providers and locations, filtered by the
  caller's role assignments (:mod:`cmk.sandbox.arm.resources`, :mod:`cmk.sandbox.arm.providers`).

A path no route serves answers 501 ``NotImplemented`` ("The sandbox does not emulate …") when
it names a real resource type (after the subscription check), else ARM's 404
``InvalidResourceType`` (:mod:`cmk.sandbox.arm.unserved`).

A request under a resource group that does not exist (an account's or a vault's GET, a list
of one group) answers 404 ``ResourceGroupNotFound`` after the RBAC check, as ARM does;
creating an account (PUT) still makes its group, as the sandbox has no ``az group create``.

Every request goes through, in ARM's order: ``api-version`` present (400
``MissingApiVersionParameter``), bearer token (401 ``AuthenticationFailed`` when missing,
``InvalidAuthenticationToken`` when invalid, ``InvalidAuthenticationTokenAudience`` unless
issued for ``https://management.azure.com`` or ``https://management.core.windows.net``,
``InvalidAuthenticationTokenTenant`` for another tenant's subscription), ``api-version``
known (400 ``InvalidApiVersionParameter``: the Microsoft.Resources routes check their own
list, :data:`cmk.sandbox.arm.resources.API_VERSIONS`; the others only its form), subscription
exists (404 ``SubscriptionNotFound``), throttling (429 with ``Retry-After``), RBAC (403
``AuthorizationFailed`` with ARM's message), then the resource provider. Responses carry
``x-ms-request-id``, ``x-ms-correlation-request-id``, ``x-ms-routing-request-id`` and the
``x-ms-ratelimit-remaining-subscription-reads|writes`` header.

Operation status and result polling is allowed to anyone who may read the account being
updated (or holds the operation-status read action on the subscription).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

from aiohttp import web

from cmk.sandbox.arm.authorization import AuthorizationArm
from cmk.sandbox.arm.cognitive.accounts import (
    ArmError,
    CognitiveRP,
    Operation,
    account_json,
    rp_for,
)
from cmk.sandbox.arm.errors import authorization_failed
from cmk.sandbox.arm.keyvault import KeyVaultArm
from cmk.sandbox.arm.others import OtherResourcesArm
from cmk.sandbox.arm.resources import ResourcesArm, require_api_version, require_group
from cmk.sandbox.arm.role_assignments import RoleAssignmentArm
from cmk.sandbox.arm.unserved import unserved
from cmk.sandbox.platform.context import (
    AUDIENCE_ARM,
    ServiceContext,
    TokenClaims,
    normalize_audience,
)
from cmk.sandbox.platform.throttling import Decision, Throttle, throttle_for
from cmk.sandbox.resourcegraph.service import API_VERSIONS as GRAPH_API_VERSIONS
from cmk.sandbox.resourcegraph.service import GraphError, ResourceGraph, graph_for
from cmk.sandbox.resourcegraph.service import support_message as graph_support_message
from cmk.sandbox.world import World

ARM_AUDIENCES = frozenset({AUDIENCE_ARM, "https://management.core.windows.net"})
READ = "Microsoft.CognitiveServices/accounts/read"
WRITE = "Microsoft.CognitiveServices/accounts/write"
#: What both status URLs of an update (``Azure-AsyncOperation``: ``.../operationStatuses/
#: {id}``, ``Location``: ``.../operationResults/{id}``) require, at the subscription. It is
#: the only asynchronous-operation action Microsoft.CognitiveServices registers in
#: Microsoft's resource provider operations list ("Read the status of an asynchronous
#: operation"); which action ARM checks for ``operationStatuses`` has not been observed on
#: a real subscription, so this is an assumption, enforced so that a role without it fails.
OPERATION_READ = "Microsoft.CognitiveServices/locations/operationresults/read"

_NAME = r"[^/]+"
_PROVIDER = r"/providers/Microsoft\.CognitiveServices"
_ACCOUNT = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})/resourceGroups/(?P<rg>{_NAME}){_PROVIDER}"
    rf"/accounts/(?P<name>{_NAME})/?$",
    re.IGNORECASE,
)
_LIST = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME})(?:/resourceGroups/(?P<rg>{_NAME}))?{_PROVIDER}"
    r"/accounts/?$",
    re.IGNORECASE,
)
_OPERATION = re.compile(
    rf"^/subscriptions/(?P<sub>{_NAME}){_PROVIDER}/locations/(?P<loc>{_NAME})"
    rf"/(?P<kind>operationStatuses|operationResults)/(?P<op>{_NAME})/?$",
    re.IGNORECASE,
)
_GRAPH = re.compile(r"^/providers/Microsoft\.ResourceGraph/resources/?$", re.IGNORECASE)
_SLASHES = re.compile(r"/{2,}")
_SUBSCRIPTION_PREFIX = re.compile(rf"^/subscriptions/(?P<sub>{_NAME})(?:/|$)", re.IGNORECASE)
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")

# Where the app keeps its per-world parts, for the platform and tests.
THROTTLE = web.AppKey("throttle", Throttle)
COGNITIVE = web.AppKey("cognitive", CognitiveRP)
RESOURCE_GRAPH = web.AppKey("resourcegraph", ResourceGraph)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ArmError:
    return ArmError(status, code, message, headers)


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


class _Arm:
    """Request handling for one world."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.world: World = ctx.world
        self.rp: CognitiveRP = rp_for(ctx.world)
        self.keyvault = KeyVaultArm(ctx.world, self._authorize, _json, self._require_group)
        self.authorization = AuthorizationArm(ctx.world, self._authorize, _json)
        self.role_assignment = RoleAssignmentArm(ctx.world, _json)
        self.resources = ResourcesArm(ctx.world, self._authorize, _json)
        self.others = OtherResourcesArm(ctx.world, self._authorize, _json)

    # --- pipeline ----------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        extra: dict[str, str] = {}
        try:
            response = await self._route(request, extra)
        except ArmError as error:
            response = _json(error.status, error.body(), error.headers)
        except GraphError as error:
            response = _json(error.status, error.body)
        for name, value in extra.items():
            response.headers.setdefault(name, value)
        request_id = str(uuid.uuid4())
        response.headers.setdefault("x-ms-request-id", request_id)
        response.headers.setdefault(
            "x-ms-correlation-request-id",
            request.headers.get("x-ms-correlation-request-id", request_id),
        )
        response.headers.setdefault(
            "x-ms-routing-request-id",
            f"{throttle_for(self.world).region.upper()}:{request_id}",
        )
        response.headers.setdefault("Cache-Control", "no-cache")
        return response

    async def _route(self, request: web.Request, extra: dict[str, str]) -> web.StreamResponse:
        path = normalize_path(request.path)
        api_version = request.query.get("api-version")
        if not api_version:
            raise _error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        body = await request.read()
        claims = self._authenticate(request)
        if _GRAPH.match(path):
            return self._graph(request, claims, api_version, body, extra)
        if self.resources.serves(path):
            require_api_version(api_version)
        elif not _API_VERSION.match(api_version):
            raise _error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{api_version}' is invalid. The supported versions are "
                "'2025-09-01,2025-06-01,2024-10-01,2023-05-01,2022-12-01,2021-10-01,2017-04-18'.",
            )
        for pattern, handler in self.resources.tenant_routes():
            if pattern.match(path):
                return handler(request, claims, {}, body)
        for pattern, handler in (
            (_ACCOUNT, self._account),
            (_LIST, self._list),
            (_OPERATION, self._operation),
            *self.keyvault.routes(),
            *self.authorization.routes(),
            *self.role_assignment.routes(),
            *self.resources.routes(),
            *self.others.routes(),
        ):
            match = pattern.match(path)
            if match is None:
                continue
            groups = match.groupdict()
            with self.world.lock:
                self._check_subscription(claims, groups["sub"])
                self._meter(groups["sub"], request.method, extra)
                return handler(request, claims, groups, body)
        error = unserved(request.method, path, api_version)
        subscription = _SUBSCRIPTION_PREFIX.match(path)
        if error.status == 501 and subscription is not None:
            with self.world.lock:
                self._check_subscription(claims, subscription["sub"])
        raise error

    def _authenticate(self, request: web.Request) -> TokenClaims:
        header = request.headers.get("Authorization", "")
        if not header.strip():
            raise _error(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", '
                    'error="invalid_token", error_description="The authentication failed '
                    "because of missing 'Authorization' header.\""
                },
            )
        claims = self.ctx.bearer_claims(request)
        if claims is None:
            raise _error(
                401,
                "InvalidAuthenticationToken",
                "The access token is invalid.",
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.windows.net/", '
                    'error="invalid_token", error_description="The access token is invalid."'
                },
            )
        if normalize_audience(claims.audience) not in ARM_AUDIENCES:
            raise _error(
                401,
                "InvalidAuthenticationTokenAudience",
                f"The access token has been obtained for wrong audience or resource "
                f"'{claims.audience}'. It should exactly match with one of the allowed "
                "audiences 'https://management.core.windows.net/',"
                "'https://management.core.windows.net','https://management.azure.com/',"
                "'https://management.azure.com'.",
            )
        return claims

    def _check_subscription(self, claims: TokenClaims, subscription_id: str) -> None:
        self.rp.require_subscription(subscription_id)
        subscription = self.world.subscriptions[subscription_id.lower()]
        tenant = claims.principal.tenant_id
        if tenant.lower() != subscription.tenant_id.lower():
            raise _error(
                401,
                "InvalidAuthenticationTokenTenant",
                f"The access token is from the wrong issuer 'https://sts.windows.net/{tenant}/'."
                " It must match the tenant "
                f"'https://sts.windows.net/{subscription.tenant_id}/' associated with this "
                "subscription. Please use the authority (URL) "
                f"'https://login.windows.net/{subscription.tenant_id}' to get the token.",
            )

    def _require_group(self, subscription_id: str, group: str) -> None:
        require_group(self.world, subscription_id, group)

    def _meter(self, subscription_id: str, method: str, extra: dict[str, str]) -> None:
        decision: Decision = throttle_for(self.world).arm(
            subscription_id, write=method.upper() not in ("GET", "HEAD")
        )
        extra.update(decision.headers)
        if not decision.allowed:
            kind = "write" if method.upper() not in ("GET", "HEAD") else "read"
            raise _error(
                429,
                "SubscriptionRequestsThrottled",
                f"Number of '{kind}' requests for subscription '{subscription_id}' exceeded. "
                f"Please try again after '{decision.retry_after}' seconds after additional "
                "tokens are available. Refer to https://aka.ms/arm-throttling",
                decision.headers,
            )

    def _authorize(self, claims: TokenClaims, action: str, scope: str) -> None:
        principal = claims.principal
        if not self.world.rbac_allows(principal.object_id, action, scope):
            raise authorization_failed(principal.client_id, principal.object_id, action, scope)

    # --- accounts ----------------------------------------------------------------------
    def _account(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], body: bytes
    ) -> web.Response:
        sub, rg, name = groups["sub"], groups["rg"], groups["name"]
        scope = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/"
            f"Microsoft.CognitiveServices/accounts/{name}"
        )
        method = request.method.upper()
        if method == "GET":
            self._authorize(claims, READ, scope)
            require_group(self.world, sub, rg)
            return _json(200, account_json(self.rp.account(sub, rg, name)))
        if method not in ("PUT", "PATCH"):
            raise _error(
                405,
                "MethodNotAllowed",
                f"The requested resource does not support http method '{method}'.",
            )
        self._authorize(claims, WRITE, scope)
        payload = _parse_body(body)
        if method == "PATCH":
            require_group(self.world, sub, rg)
            account = self.rp.account(sub, rg, name)
            operation = self.rp.update(account, payload)
            status = 200
        else:
            account, operation, created = self.rp.create(sub, rg, name, payload)
            status = 201 if created else 200
        if operation is None:
            return _json(status, account_json(account))
        return _json(
            201 if method == "PUT" and status == 201 else 202,
            account_json(account),
            self._lro_headers(request, operation),
        )

    def _lro_headers(self, request: web.Request, operation: Operation) -> dict[str, str]:
        base = (
            f"https://{request.host}/subscriptions/{operation.subscription_id}/providers/"
            f"Microsoft.CognitiveServices/locations/{operation.location}"
        )
        version = request.query["api-version"]
        return {
            "Azure-AsyncOperation": (
                f"{base}/operationStatuses/{operation.id}?api-version={version}"
            ),
            "Location": f"{base}/operationResults/{operation.id}?api-version={version}",
            "Retry-After": self.rp.retry_after(operation),
        }

    def _list(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        if request.method.upper() != "GET":
            raise _error(
                405, "MethodNotAllowed", "The requested resource does not support this method."
            )
        sub, rg = groups["sub"], groups["rg"]
        scope = f"/subscriptions/{sub}" + (f"/resourceGroups/{rg}" if rg else "")
        self._authorize(claims, READ, scope)
        if rg:
            require_group(self.world, sub, rg)
        token = request.query.get("$skipToken")
        after = _unwrap_token(token) if token else None
        accounts, last = self.rp.page(sub, rg, after)
        result: dict[str, Any] = {"value": [account_json(a) for a in accounts]}
        if last is not None:
            result["nextLink"] = (
                f"https://{request.host}{request.path}?api-version="
                f"{request.query['api-version']}&$skipToken={_wrap_token(last)}"
            )
        return _json(200, result)

    def _operation(
        self, request: web.Request, claims: TokenClaims, groups: dict[str, Any], _body: bytes
    ) -> web.Response:
        operation = self.rp.operation(groups["op"])
        if operation is None or operation.subscription_id.lower() != groups["sub"].lower():
            raise _error(
                404,
                "OperationNotFound",
                f"The operation '{groups['op']}' could not be found.",
            )
        # Both status URLs need the one asynchronous-operation action the provider
        # registers (an assumption: see OPERATION_READ), at the subscription or above.
        self._authorize(claims, OPERATION_READ, f"/subscriptions/{groups['sub']}")
        if groups["kind"].lower() == "operationstatuses":
            headers = (
                {"Retry-After": self.rp.retry_after(operation)}
                if operation.status == "InProgress"
                else None
            )
            return _json(200, operation.status_json(), headers)
        if operation.status == "InProgress":
            return web.Response(status=202, headers={"Retry-After": self.rp.retry_after(operation)})
        if operation.error is not None:
            return _json(operation.error.status, operation.error.body())
        account = self.world.accounts.get(operation.account_key)
        return _json(200, account_json(account)) if account else web.Response(status=204)

    # --- resource graph ----------------------------------------------------------------
    def _graph(
        self,
        request: web.Request,
        claims: TokenClaims,
        api_version: str,
        body: bytes,
        extra: dict[str, str],
    ) -> web.Response:
        if request.method.upper() != "POST":
            raise _error(
                405, "MethodNotAllowed", "The requested resource does not support this method."
            )
        if api_version not in GRAPH_API_VERSIONS:
            raise _error(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{api_version}' is invalid. The supported versions are "
                f"'{','.join(sorted(GRAPH_API_VERSIONS, reverse=True))}'.",
            )
        decision = throttle_for(self.world).graph(claims.principal.object_id)
        extra.update(decision.headers)
        if not decision.allowed:
            return _json(
                429,
                {
                    "error": {
                        "code": "RateLimiting",
                        "message": graph_support_message(),
                        "details": [
                            {
                                "code": "RateLimiting",
                                "message": "Client application has been throttled and should "
                                "not attempt to repeat the request until an amount of time "
                                "has elapsed. Please see https://aka.ms/resourcegraph-throttling"
                                " for help.",
                            }
                        ],
                    }
                },
                decision.headers,
            )
        payload = _parse_body(body)
        with self.world.lock:
            result = graph_for(self.world).query(claims.principal.object_id, payload)
        return _json(200, result)


def normalize_path(path: str) -> str:
    """``path`` with each run of slashes made one, as ARM routes it: ``az resource show``
    with an empty parent path asks for ``.../providers/Microsoft.CognitiveServices//accounts/
    {name}`` (the spec's ``{parentResourcePath}`` is not URL-encoded) and the JavaScript SDK's
    ``getById`` for ``//subscriptions/...``; real ARM answers both as the single-slash path."""
    return _SLASHES.sub("/", path)


def _parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise _error(
            400,
            "InvalidRequestContent",
            "The request content was invalid and could not be deserialized.",
        ) from None
    if not isinstance(payload, dict):
        raise _error(400, "InvalidRequestContent", "The request content must be a JSON object.")
    return payload


def _wrap_token(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def _unwrap_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError:
        raise _error(400, "InvalidSkipToken", "The $skipToken is invalid.") from None


def build_app(ctx: ServiceContext) -> web.Application:
    """The ARM application for ``management.azure.com`` (accounts RP + Resource Graph)."""
    arm = _Arm(ctx)
    app = web.Application()
    app[THROTTLE] = throttle_for(ctx.world)
    app[COGNITIVE] = arm.rp
    app[RESOURCE_GRAPH] = graph_for(ctx.world)
    app.router.add_route("*", "/{tail:.*}", arm.handle)
    return app
