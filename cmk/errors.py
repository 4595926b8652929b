"""The errors of cmk-rotator, as one tree.

::

    CmkError                      every error this package raises on purpose
    ├── TransientError            retry later: the platform (queue, Event Grid) redelivers
    │   ├── ThrottledError        429 from ARM / Key Vault / Resource Graph (carries retry_after)
    │   │   └── AccountBusy       another job holds the account's write lease (retry_after, expires)
    │   └── ServiceUnavailable    5xx, timeouts, dropped connections, 409 while Updating
    └── PermanentError            retrying cannot help: record it, alert once, complete the message
        ├── InvalidInput          something we were given is malformed
        │   ├── InvalidKeyId      not a Key Vault / Managed HSM key identifier
        │   ├── InvalidResourceId not an ARM id of the expected type
        │   ├── InvalidEvent      not a well-formed Key Vault event, or inconsistent with itself
        │   └── ConfigurationError a setting is missing or invalid (the message names it)
        ├── OutOfScope            a vault or subscription outside the allow-list
        ├── PolicyRejected        the key version fails validation (reasons attached)
        ├── AccessDenied          403 / AuthorizationFailed / Forbidden (our own identity)
        │   └── KeyAccessDenied   the account's identity may not use the key (update Failed)
        ├── NotFound              the account, key or version no longer exists
        └── UpdateFailed          the resource provider rejected or failed the encryption update

Transient errors propagate so the Functions host (queue dequeue count, Event Grid
retry schedule) tries again; permanent ones become a ledger row and one alert.
"""

from __future__ import annotations

from datetime import datetime


class CmkError(Exception):
    """Base of every error cmk-rotator raises on purpose."""


class TransientError(CmkError):
    """A failure that may pass: retry with backoff."""


class ThrottledError(TransientError):
    """The service answered 429; ``retry_after`` is its hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AccountBusy(ThrottledError):
    """Another job holds the account's write lease: come back when it may have finished.
    Deferred like a 429 (it spends no delivery), never an account failure. ``expires`` is
    when the holder's lease runs out (UTC), when known."""

    def __init__(
        self, message: str, retry_after: float | None = None, expires: datetime | None = None
    ) -> None:
        super().__init__(message, retry_after)
        self.expires = expires


class ServiceUnavailable(TransientError):
    """5xx, timeout, dropped connection, or a resource busy with another update."""


class UpdateUnanswered(ServiceUnavailable):
    """A PATCH was sent and got no answer (timeout, connection lost after sending): it may
    still be applied. Its writer keeps the account's write lease until it expires, so no
    other job PATCHes until a late arrival can no longer land."""


class PermanentError(CmkError):
    """A failure retrying cannot fix: record, alert once, and move on."""


class InvalidInput(PermanentError, ValueError):
    """Something we were given is malformed."""


class NewerFormat(InvalidInput):
    """A message written by a newer release than this one (a rolling deployment): left
    for an instance that reads it, never discarded by one that cannot."""


class InvalidKeyId(InvalidInput):
    """Not a Key Vault or Managed HSM key identifier we accept."""


class InvalidResourceId(InvalidInput):
    """Not an ARM resource id of the expected type."""


class InvalidEvent(InvalidInput):
    """Not a well-formed Key Vault event, or one that disagrees with itself."""


class ConfigurationError(InvalidInput):
    """A setting is missing or invalid; the message names the setting and the fix."""


class OutOfScope(PermanentError):
    """The vault or subscription is not in the configured scope."""


class PolicyRejected(PermanentError):
    """The key version fails validation; ``reasons`` says why."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


class AccessDenied(PermanentError):
    """The caller (or the account's identity) lacks a permission."""


class KeyAccessDenied(AccessDenied):
    """The account's identity lacks get/wrapKey/unwrapKey on the key: the resource
    provider ended the encryption update Failed. Not a permission of ours."""


class NotFound(PermanentError):
    """The account, key or key version does not exist (any more)."""


class UpdateFailed(PermanentError):
    """The resource provider rejected or failed the encryption update."""
