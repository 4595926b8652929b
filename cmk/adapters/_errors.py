"""Turn ``azure.core.exceptions`` into the errors of :mod:`cmk.errors`, in one place.

Every adapter wraps its SDK calls in :func:`azure_errors`, so no SDK exception leaves
:mod:`cmk.adapters`. The mapping:

==============================================  =========================================
what the SDK raised                             what we raise
==============================================  =========================================
429                                             ThrottledError (``retry_after`` from the
                                                ``Retry-After`` / ``x-ms-retry-after-ms``
                                                headers)
408, 5xx, 409 (busy: another update running),   ServiceUnavailable
ServiceRequestError / ServiceResponseError,
timeouts, no token (credential not reachable)
401 ExpiredAuthenticationToken /               ServiceUnavailable (a new token next time:
InvalidAuthenticationToken                      :mod:`cmk.adapters.credential` renews the
                                                credential that handed the token out)
401, 403, an authorization error code           AccessDenied
404                                             NotFound
other 4xx, and a long-running operation that    UpdateFailed (the RP's error code first in
ended Failed                                    the message)
==============================================  =========================================

A Failed long-running operation arrives as an ``HttpResponseError`` whose status is that
of the status poll (200); :func:`translate` with ``operation_failed=True`` classifies it
by the RP's error code instead.
"""

from __future__ import annotations

import email.utils
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
)

from cmk.errors import (
    AccessDenied,
    CmkError,
    KeyAccessDenied,
    NotFound,
    ServiceUnavailable,
    ThrottledError,
    UpdateFailed,
)

__all__ = ["azure_errors", "error_code", "retry_after", "status_code", "translate"]

# Error codes (any status) that mean "the caller or the account's identity lacks a right".
_ACCESS_CODES = frozenset(
    {
        "authorizationfailed",
        "linkedauthorizationfailed",
        "forbidden",
        "forbiddenbypolicy",
        "accessdenied",
        "unauthorized",
        "keyvaultaccessdenied",
        "keyvaultaccessforbidden",
        "authenticationfailed",
    }
)

# 401 codes of a token ARM refused (expired by its clock, revoked, signed by a key it no
# longer trusts): the credential is renewed (cmk.adapters.credential) and the next
# attempt carries a new token, so these are retried, never an account's permanent
# failure. (Key Vault's 401 "Unauthorized" reaches us only after a new token was refused
# too — cmk.adapters.credential sends the request again with one — so it stays
# AccessDenied.)
_STALE_TOKEN_CODES = frozenset(
    {"expiredauthenticationtoken", "invalidauthenticationtoken", "tokenexpired"}
)


def status_code(error: BaseException) -> int | None:
    """The HTTP status of an SDK error, if it carries a response."""
    if not isinstance(error, HttpResponseError):
        return None
    if error.status_code is not None:
        return int(error.status_code)
    response = error.response
    found = None if response is None else response.status_code
    return None if found is None else int(found)


def error_code(error: BaseException) -> str | None:
    """The service's error code (``{"error": {"code": ...}}``), if any."""
    if not isinstance(error, HttpResponseError):
        return None
    odata = getattr(error, "error", None)
    code = getattr(odata, "code", None)
    if isinstance(code, str) and code:
        return code
    response = error.response
    if response is None:
        return None
    try:
        body = json.loads(response.text())
    except (ValueError, TypeError, AttributeError):
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        found = body["error"].get("code")
        return found if isinstance(found, str) and found else None
    return None


def retry_after(error: BaseException) -> float | None:
    """Seconds the service asked us to wait (``retry-after-ms``, ``x-ms-retry-after-ms``,
    ``Retry-After`` as seconds or an HTTP date), if it said."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(
    action: str, error: BaseException, code: str | None, *, operation_failed: bool = False
) -> str:
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    first_line = str(message).strip().splitlines()[0] if str(message).strip() else ""
    status = status_code(error)
    parts = [action, "failed:"]
    if code:
        parts.append(f"{code}:")
    if operation_failed:
        # The status is the poll's (200): the operation itself ended Failed.
        parts.append("(the operation ended Failed)")
    elif status is not None:
        parts.append(f"(HTTP {status})")
    parts.append(first_line)
    return " ".join(part for part in parts if part)


def translate(error: BaseException, action: str, *, operation_failed: bool = False) -> CmkError:
    """The :mod:`cmk.errors` error for an SDK error raised while doing ``action``.

    ``operation_failed`` marks the error of a long-running operation that ended Failed.
    """
    if isinstance(error, CmkError):
        return error
    code = error_code(error)
    status = status_code(error)
    text = _describe(action, error, code, operation_failed=operation_failed)
    if status == 401 and code is not None and code.lower() in _STALE_TOKEN_CODES:
        return ServiceUnavailable(f"{text} (the token is refreshed on the next attempt)")
    if code is not None and code.lower() in _ACCESS_CODES:
        # In a failed operation it is the account's identity the key refused, not us.
        return KeyAccessDenied(text) if operation_failed else AccessDenied(text)
    if operation_failed:
        return UpdateFailed(text)
    if isinstance(error, ClientAuthenticationError) and status is None:
        # The credential could not get a token (managed identity endpoint unreachable,
        # misconfigured): retry, and let the poison queue alert if it persists.
        return ServiceUnavailable(text)
    if status is None and isinstance(error, ResourceNotFoundError):
        return NotFound(text)
    if status is None:
        # ServiceRequestError / ServiceResponseError (connection refused or dropped,
        # read timeouts), TimeoutError, and malformed responses: all worth a retry.
        return ServiceUnavailable(text)
    if status == 429:
        return ThrottledError(text, retry_after=retry_after(error))
    if status in (401, 403):
        return AccessDenied(text)
    if status == 404:
        return NotFound(text)
    if status in (408, 409) or status >= 500:
        return ServiceUnavailable(text)
    return UpdateFailed(text)


@contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Translate SDK errors raised inside the block into :mod:`cmk.errors` errors."""
    try:
        yield
    except CmkError:
        raise
    except (AzureError, TimeoutError) as error:
        raise translate(error, action) from error
