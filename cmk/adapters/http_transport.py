"""The HTTP transport of every Azure client: aiohttp, with the environment's proxies
resolved once per process instead of once per request.

azure-core opens its aiohttp session with ``trust_env=True``, and aiohttp then asks the
environment twice for every request, each time on a worker thread: the ``~/.netrc`` file
(credentials for the host) and ``HTTPS_PROXY``/``NO_PROXY`` (which proxy, if any). Measured
on the fan-out benchmark, those two thread hops and file reads were a fifth of the
process's CPU (docs/performance.md). :func:`transport_options` gives each client a
transport that reads the same variables once, with aiohttp's own rules
(``urllib.request.getproxies`` / ``proxy_bypass``, ``https://`` proxies ignored), and names
the proxy per request.

Where aiohttp's per-request lookup does something this does not — a netrc file exists,
a proxy URL carries credentials, or the system (macOS, Windows) has proxy settings of its
own — nothing changes: the client keeps azure-core's default transport. The variables are
read when the client is built: a change afterwards is not seen (an app's settings do not
change under a running worker).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.transport._aiohttp import AioHttpTransport

__all__ = ["EnvironmentProxies", "ResolvedProxyTransport", "transport_options"]

_SCHEMES = ("http", "https")


def _netrc_exists() -> bool:
    """Whether the netrc file aiohttp would read exists (``NETRC``, else the home
    directory's); True when that cannot be told, so aiohttp keeps looking itself."""
    named = os.environ.get("NETRC")
    try:
        path = Path(named) if named is not None else Path.home() / ".netrc"
        return path.exists()
    except (OSError, RuntimeError):
        return True


@dataclass(frozen=True)
class EnvironmentProxies:
    """The proxy of each scheme and the ``NO_PROXY`` list, as aiohttp finds them."""

    by_scheme: Mapping[str, str] = field(default_factory=dict)
    no_proxy: str = ""
    _bypassed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def resolve(cls) -> EnvironmentProxies | None:
        """The environment's proxies now, or None when only aiohttp's per-request lookup
        does the right thing: on macOS and Windows (proxies from the system's settings),
        with a netrc file, or with credentials in a proxy URL."""
        if sys.platform in ("darwin", "win32") or _netrc_exists():
            return None
        found = urllib.request.getproxies_environment()
        proxies: dict[str, str] = {}
        for scheme in _SCHEMES:
            url = found.get(scheme)
            if not url:
                continue
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.username or parts.password:
                return None
            if parts.scheme == "https":
                continue  # aiohttp ignores (and warns about) https:// proxies
            proxies[scheme] = url
        return cls(proxies, str(found.get("no", "")))

    def for_url(self, url: str) -> str | None:
        """The proxy for ``url``, or None to connect directly (``NO_PROXY`` names its
        host, by the rule aiohttp applies through ``urllib.request.proxy_bypass``)."""
        parts = urlsplit(url)
        proxy = self.by_scheme.get(parts.scheme)
        if proxy is None or not parts.hostname:
            return proxy
        bypassed = self._bypassed.get(parts.hostname)
        if bypassed is None:
            bypassed = bool(
                urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                    parts.hostname, {"no": self.no_proxy}
                )
            )
            if len(self._bypassed) < 1024:
                self._bypassed[parts.hostname] = bypassed
        return None if bypassed else proxy


class ResolvedProxyTransport(AioHttpTransport):
    """azure-core's aiohttp transport with ``trust_env`` off and the proxy named per
    request from :class:`EnvironmentProxies` (a proxy the pipeline sets still wins)."""

    def __init__(self, proxies: EnvironmentProxies, **kwargs: Any) -> None:
        super().__init__(use_env_settings=False, **kwargs)
        self.proxies = proxies

    async def send(self, request: Any, **config: Any) -> Any:
        if not config.get("proxies") and "proxy" not in config:
            proxy = self.proxies.for_url(request.url)
            if proxy is not None:
                config["proxy"] = proxy
        return await super().send(request, **config)


def transport_options() -> dict[str, Any]:
    """Keyword arguments for one new Azure client: its own :class:`ResolvedProxyTransport`
    (each client owns and closes its transport), or none where aiohttp must look itself."""
    proxies = EnvironmentProxies.resolve()
    return {} if proxies is None else {"transport": ResolvedProxyTransport(proxies)}
