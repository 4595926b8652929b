"""The mapping of azure.core.exceptions to cmk.errors (cmk.adapters._errors)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from cmk.adapters._errors import azure_errors, retry_after, translate
from cmk.errors import (
    AccessDenied,
    CmkError,
    NotFound,
    ServiceUnavailable,
    ThrottledError,
    UpdateFailed,
)


class _Response:
    """Just enough of an HTTP response for HttpResponseError."""

    def __init__(self, status: int, code: str | None = None, **headers: str) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = {name.replace("_", "-"): value for name, value in headers.items()}
        self._body = json.dumps({"error": {"code": code, "message": "m"}}) if code else ""
        self.request = None
        self.content_type = "application/json"

    def text(self, encoding: str | None = None) -> str:
        return self._body

    def body(self) -> bytes:
        return self._body.encode()


def _http(status: int, code: str | None = None, **headers: str) -> HttpResponseError:
    return HttpResponseError(response=_Response(status, code, **headers))  # type: ignore[arg-type]


class TestTranslate:
    @pytest.mark.parametrize(
        ("error", "expected"),
        [
            (_http(429), ThrottledError),
            (_http(500), ServiceUnavailable),
            (_http(503), ServiceUnavailable),
            (_http(408), ServiceUnavailable),
            (_http(409, "RequestConflict"), ServiceUnavailable),
            (_http(403), AccessDenied),
            (_http(401), AccessDenied),
            (_http(401, "ExpiredAuthenticationToken"), ServiceUnavailable),  # a new token next time
            (_http(401, "InvalidAuthenticationToken"), ServiceUnavailable),
            (_http(401, "InvalidAuthenticationTokenTenant"), AccessDenied),  # wrong tenant: setup
            (_http(401, "Unauthorized"), AccessDenied),  # Key Vault refused a new token too
            (_http(403, "Forbidden"), AccessDenied),  # Key Vault: no permission
            (_http(404), NotFound),
            (_http(400, "BadRequest"), UpdateFailed),
            (_http(400, "AuthorizationFailed"), AccessDenied),
            (ServiceRequestError("connection refused"), ServiceUnavailable),
            (ServiceResponseError("connection reset"), ServiceUnavailable),
            (ClientAuthenticationError("no token"), ServiceUnavailable),
            (TimeoutError(), ServiceUnavailable),
        ],
    )
    def test_maps_status_and_kind(self, error: BaseException, expected: type[CmkError]) -> None:
        """Each SDK failure maps to the documented cmk error."""
        assert type(translate(error, "doing it")) is expected

    def test_operation_failed_is_update_failed_with_code(self) -> None:
        """A Failed LRO (status 200) is UpdateFailed and names the RP's code."""
        failure = translate(_http(200, "KeyDisabled"), "updating", operation_failed=True)
        assert isinstance(failure, UpdateFailed)
        assert "KeyDisabled" in str(failure)
        # The 200 is the status poll's: the text says the operation failed, not "HTTP 200".
        assert "HTTP 200" not in str(failure)
        assert "the operation ended Failed" in str(failure)

    def test_operation_failed_for_access_is_access_denied(self) -> None:
        """A Failed LRO whose code is about access is AccessDenied."""
        failure = translate(_http(200, "KeyVaultAccessDenied"), "updating", operation_failed=True)
        assert isinstance(failure, AccessDenied)

    def test_context_manager_chains_the_cause(self) -> None:
        """azure_errors raises the cmk error from the SDK error."""
        with pytest.raises(NotFound) as caught, azure_errors("reading"):
            raise ResourceNotFoundError("gone")
        assert isinstance(caught.value.__cause__, ResourceNotFoundError)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"retry-after": "7"}, 7.0),
            ({"retry-after-ms": "1500"}, 1.5),
            ({"x-ms-retry-after-ms": "250"}, 0.25),
            ({}, None),
            ({"retry-after": "soon"}, None),
        ],
    )
    def test_reads_the_hint(self, headers: dict[str, str], seconds: float | None) -> None:
        """Retry-After in seconds or milliseconds headers becomes seconds."""
        assert retry_after(_http(429, **{k.replace("-", "_"): v for k, v in headers.items()})) == (
            seconds
        )

    def test_reads_an_http_date(self) -> None:
        """Retry-After as an HTTP date becomes the seconds until then."""
        when = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
        found: Any = retry_after(_http(429, retry_after=when))
        assert 55 <= found <= 61
