"""The HTTP front of the local Functions host (aiohttp on loopback): HTTP-triggered
functions at ``/{routePrefix}/{route or function name}``, function keys, and the Event
Grid extension's webhook ``/runtime/webhooks/eventgrid?functionName=...``.

Authorization, as the host does it: the key comes from the ``code`` query parameter or
the ``x-functions-key`` header. ``anonymous`` needs none; ``function`` accepts the
function's own key, a host key or the master key; ``admin`` only the master key; the
Event Grid webhook the ``eventgrid_extension`` system key (or the master key). A missing
or wrong key is answered ``401`` with an empty body.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cmk.sandbox.funchost.index import IndexedFunction
from cmk.sandbox.funchost.invoke import HttpResult, TriggerInput, http_input

EVENTGRID_WEBHOOK = "/runtime/webhooks/eventgrid"
EVENTGRID_SYSTEM_KEY = "eventgrid_extension"
_CONSTRAINT = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\??)\}")

InvokeHttp = Callable[[IndexedFunction, TriggerInput], Awaitable[HttpResult]]
DeliverEvent = Callable[[str, Mapping[str, Any]], Awaitable[None]]


def _new_key() -> str:
    return secrets.token_urlsafe(40)


@dataclass(frozen=True)
class HostKeys:
    """The master key, the ``default`` host key, each function's ``default`` key and the
    system keys, generated fresh for every host."""

    master: str = field(default_factory=_new_key)
    host: str = field(default_factory=_new_key)
    functions: dict[str, str] = field(default_factory=dict)
    system: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls, function_names: list[str]) -> HostKeys:
        return cls(
            functions={name: _new_key() for name in function_names},
            system={EVENTGRID_SYSTEM_KEY: _new_key()},
        )

    def allows(self, auth_level: str, function_name: str, presented: str | None) -> bool:
        """Whether ``presented`` opens a function of ``auth_level``."""
        level = auth_level.lower()
        if level == "anonymous":
            return True
        if not presented:
            return False
        accepted = [self.master]
        if level == "function":
            accepted += [self.host, self.functions.get(function_name, "")]
        elif level == "system":
            accepted += list(self.system.values())
        return any(key and hmac.compare_digest(presented, key) for key in accepted)


def presented_key(request: web.Request) -> str | None:
    return request.query.get("code") or request.headers.get("x-functions-key")


def aiohttp_paths(route_prefix: str, route: str) -> list[str]:
    """The aiohttp path(s) of a Functions route template: constraints (``{id:int}``) are
    dropped, a trailing optional ``{x?}`` gives two paths, ``{*rest}`` matches the rest."""
    prefix = f"/{route_prefix}" if route_prefix else ""
    route = route.strip("/")
    optional_tail = False

    def convert(match: re.Match[str]) -> str:
        nonlocal optional_tail
        catch_all, name, optional = match.groups()
        if optional:
            optional_tail = True
        return f"{{{name}:.*}}" if catch_all else f"{{{name}}}"

    path = f"{prefix}/{_CONSTRAINT.sub(convert, route)}" if route else prefix or "/"
    if optional_tail and path.endswith("}"):
        return [path, path.rsplit("/", 1)[0] or "/"]
    return [path]


def build_http_app(
    functions: Mapping[str, IndexedFunction],
    keys: HostKeys,
    route_prefix: str,
    invoke: InvokeHttp,
    deliver_event: DeliverEvent,
) -> web.Application:
    """The aiohttp application serving every HTTP function and the Event Grid webhook."""
    app = web.Application()
    for function in functions.values():
        if function.trigger_type != "httpTrigger":
            continue
        handler = _http_handler(function, keys, invoke)
        methods = [str(m).upper() for m in function.trigger.get("methods") or []] or ["*"]
        for path in aiohttp_paths(
            route_prefix, str(function.trigger.get("route") or function.name)
        ):
            for method in methods:
                app.router.add_route(method, path, handler)
    app.router.add_route("*", EVENTGRID_WEBHOOK, _eventgrid_handler(functions, keys, deliver_event))
    return app


def _http_handler(function: IndexedFunction, keys: HostKeys, invoke: InvokeHttp) -> Any:
    level = str(function.trigger.get("authLevel") or "function")

    async def handle(request: web.Request) -> web.StreamResponse:
        if not keys.allows(level, function.name, presented_key(request)):
            return web.Response(status=401)
        trigger = http_input(
            method=request.method,
            url=str(request.url),
            headers={k.lower(): v for k, v in request.headers.items()},
            query=dict(request.query),
            route_params=dict(request.match_info),
            body=await request.read(),
        )
        try:
            result = await invoke(function, trigger)
        except Exception:  # the function failed: the host answers 500 without details
            return web.Response(status=500)
        response = web.Response(status=result.status, body=result.body)
        for name, value in result.headers.items():
            response.headers[name] = value
        return response

    return handle


def _eventgrid_handler(
    functions: Mapping[str, IndexedFunction], keys: HostKeys, deliver: DeliverEvent
) -> Any:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":  # CloudEvents webhook abuse protection handshake
            origin = request.headers.get("WebHook-Request-Origin", "*")
            return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})
        if request.method != "POST":
            return web.Response(status=405)
        name = request.query.get("functionName", "")
        function = functions.get(name)
        if function is None or function.trigger_type != "eventGridTrigger":
            return web.Response(status=404)
        if not keys.allows("system", name, presented_key(request)):
            return web.Response(status=401)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400)
        events = body if isinstance(body, list) else [body]
        if request.headers.get("aeg-event-type") == "SubscriptionValidation":
            code = events[0].get("data", {}).get("validationCode") if events else None
            return web.json_response({"validationResponse": code})
        try:
            for event in events:
                await deliver(name, event)
        except Exception:  # a failed invocation: Event Grid retries the delivery
            return web.Response(status=500)
        return web.Response(status=200)

    return handle
