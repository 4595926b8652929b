"""Create a storage queue or table once per process, tolerating one that already exists."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError

from cmk.adapters._errors import status_code, translate

logger = logging.getLogger(__name__)


class CreateOnce:
    """Run ``create`` at most once successfully, even when called concurrently.

    An existing resource counts as created. A 403 means the identity may use but not
    create the resource (a data-plane role only): infra created it, so we go on.
    """

    def __init__(self, what: str, create: Callable[[], Awaitable[object]]) -> None:
        self._what = what
        self._create = create
        self._done = asyncio.Event()
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        if self._done.is_set():
            return
        async with self._lock:
            if self._done.is_set():
                return
            action = f"creating {self._what}"
            try:
                await self._create()
            except ResourceExistsError:
                pass
            except HttpResponseError as error:
                if status_code(error) != 403:
                    raise translate(error, action) from error
                logger.warning("%s: not allowed (%s); assuming it exists", action, error.reason)
            except AzureError as error:
                raise translate(error, action) from error
            self._done.set()
