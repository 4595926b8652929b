"""Microsoft Graph (``graph.microsoft.com``) as a managed identity without Graph permissions
meets it: every request with a valid Graph token is Graph's 403
``Authorization_RequestDenied`` ("Insufficient privileges to complete the operation.").

That is what the sandbox's identities are: it grants no Graph application permissions, so
there is nothing to look up. Clients handle this answer already — ``az role assignment list
--assignee <guid>`` catches the ``GraphError`` in ``_resolve_object_id`` and falls back to
treating the GUID as an object id, and fills principal names only where Graph answers —
whereas a Graph that did not answer at all (the proxy's 502) makes the CLI fail.

Without a bearer token the answer is Graph's 401 ``InvalidAuthenticationToken`` ("Access
token is empty."); with a token that is not a valid sandbox token, or one issued for another
audience, 401 ``InvalidAuthenticationToken`` ("Access token validation failure."). Error
bodies carry Graph's ``innerError`` (``date``, ``request-id``, ``client-request-id``) and
responses Graph's ``request-id`` / ``client-request-id`` headers.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from cmk.sandbox.platform.context import ServiceContext, normalize_audience

GRAPH_HOSTS = ("graph.microsoft.com", "microsoftgraph.chinacloudapi.cn", "graph.microsoft.us")
#: The audiences a Graph token may carry (the resource, with or without a trailing slash,
#: for each cloud).
GRAPH_AUDIENCES = frozenset(f"https://{host}" for host in GRAPH_HOSTS) | {
    "00000003-0000-0000-c000-000000000000"  # Graph's application id, as v1 tokens name it
}


def graph_error(request: web.Request, status: int, code: str, message: str) -> web.Response:
    """Graph's error body and request-id headers."""
    request_id = str(uuid.uuid4())
    client_request_id = request.headers.get("client-request-id", request_id)
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id,
                "client-request-id": client_request_id,
            },
        }
    }
    return web.json_response(
        body,
        status=status,
        headers={"request-id": request_id, "client-request-id": client_request_id},
    )


def build_app(ctx: ServiceContext) -> web.Application:
    """The Graph application: 401 without a valid Graph token, else 403 for every path."""

    async def refuse(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if not header.strip():
            return graph_error(request, 401, "InvalidAuthenticationToken", "Access token is empty.")
        claims = ctx.bearer_claims(request)
        if claims is None or normalize_audience(claims.audience) not in GRAPH_AUDIENCES:
            return graph_error(
                request, 401, "InvalidAuthenticationToken", "Access token validation failure."
            )
        return graph_error(
            request,
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    return app
