"""The settings of cmk-rotator, read once from the environment into a frozen object.

:meth:`Settings.from_environ` is the only place that reads the environment; callers
pass ``os.environ`` (or any mapping, in tests). Every problem is collected and raised
together in one :class:`~cmk.errors.ConfigurationError` whose lines name the
variable, show the bad value and say how to fix it. An empty or blank value counts as
unset. Every name is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TypeVar
from urllib.parse import urlsplit

from cmk.cloud import AzureCloud, CloudEndpoints
from cmk.errors import ConfigurationError, InvalidKeyId
from cmk.keyid import VAULT_SUFFIXES, KeyId, parse_vault_url
from cmk.resource_id import parse_subscription_id

__all__ = [
    "ENVIRONMENT_VARIABLES",
    "AzureCloud",
    "CloudEndpoints",
    "Settings",
    "StorageSettings",
    "parse_boolean",
    "redact_connection_string",
]

T = TypeVar("T")

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{1,61})[a-z0-9]")
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?-]+")
_SECRET_PART = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;]*")
ALLOWED_KEY_SIZES = frozenset({2048, 3072, 4096})
_QUEUE_NAME_MAX = 63
#: The operations queue is CMK_JOB_QUEUE plus this (function_app.py binds the same name).
OPERATION_QUEUE_SUFFIX = "-ops"
#: The longest CMK_JOB_QUEUE whose derived queues are still valid names.
_JOB_QUEUE_MAX = _QUEUE_NAME_MAX - len(OPERATION_QUEUE_SUFFIX + "-poison")
#: The HTTP front end of Azure (App Service / Functions) ends a request after 230 s; an
#: answer window must leave room for the answer itself.
MAX_ANSWER_WINDOW = timedelta(seconds=220)
#: The longest CMK_KEY_CACHE_SECONDS: what a process read of a key version is trusted for
#: at most this long (Key Vault emits no event when a version is disabled or edited).
MAX_KEY_CACHE = timedelta(minutes=5)
_MISSING_STORAGE = (
    "AzureWebJobsStorage is not set: set it to a storage connection string, or set"
    " AzureWebJobsStorage__accountName (or __queueServiceUri and __tableServiceUri)"
    " to use the app's managed identity"
)

#: Every environment variable :meth:`Settings.from_environ` reads (all documented).
ENVIRONMENT_VARIABLES = (
    "CMK_VAULT_ALLOWLIST",
    "CMK_SUBSCRIPTIONS",
    "CMK_ALLOWED_KEY_SIZES",
    "CMK_EXPIRY_MARGIN_DAYS",
    "CMK_ROTATE_ON_NEAR_EXPIRY",
    "CMK_SWEEP_SCHEDULE",
    "CMK_ALERT_TOPIC_ENDPOINT",
    "CMK_JOB_QUEUE",
    "CMK_LEDGER_TABLE",
    "CMK_DRY_RUN",
    "CMK_AZURE_CLOUD",
    "CMK_STALE_GRACE_HOURS",
    "CMK_UPDATE_TIMEOUT_SECONDS",
    "CMK_PATCH_TIMEOUT_SECONDS",
    "CMK_MAX_CONCURRENCY",
    "CMK_ROTATE_COOLDOWN_MINUTES",
    "CMK_KEY_CACHE_SECONDS",
    "CMK_WRITE_LEASE_SECONDS",
    "CMK_HTTP_ANSWER_SECONDS",
    "CMK_OPERATION_DEADLINE_MINUTES",
    "CMK_OPERATION_RETENTION_HOURS",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
)


def redact_connection_string(value: str) -> str:
    """Hide account keys and SAS tokens in a storage connection string."""
    return _SECRET_PART.sub(lambda match: f"{match.group(1)}=***", value)


def _redact_uri(value: str) -> str:
    """``value`` fit for an error message: its query (a SAS token?) and any password in
    it become ``***``."""
    try:
        parts = urlsplit(value)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    except ValueError:
        return "(hidden: not a parsable URI)"
    return parts._replace(netloc=netloc, query="***" if parts.query else "").geturl()


@dataclass(frozen=True)
class StorageSettings:
    """The Function app's storage: a connection string, or service URIs for identity auth."""

    connection_string: str | None = field(default=None, repr=False)
    queue_service_uri: str | None = None
    table_service_uri: str | None = None

    @property
    def uses_identity(self) -> bool:
        """True when storage is reached with a managed identity (no connection string)."""
        return self.connection_string is None

    def __repr__(self) -> str:
        secret = self.connection_string
        shown = None if secret is None else redact_connection_string(secret)
        return (
            f"StorageSettings(connection_string={shown!r}, "
            f"queue_service_uri={self.queue_service_uri!r}, "
            f"table_service_uri={self.table_service_uri!r})"
        )


@dataclass(frozen=True)
class Settings:
    """Every setting of cmk-rotator, validated. Build it with :meth:`from_environ`."""

    vault_allowlist: frozenset[str] = frozenset()
    subscriptions: tuple[str, ...] = ()
    allowed_key_sizes: frozenset[int] = frozenset({2048})
    expiry_margin: timedelta = timedelta(days=30)
    rotate_on_near_expiry: bool = True
    sweep_schedule: str = "0 0 * * * *"
    alert_topic_endpoint: str | None = None
    job_queue: str = "cmk-rotation-jobs"
    ledger_table: str = "cmkledger"
    dry_run: bool = False
    cloud: AzureCloud = AzureCloud.PUBLIC
    stale_grace: timedelta = timedelta(hours=24)
    update_timeout: timedelta = timedelta(seconds=120)
    #: How long a PATCH may go unanswered before it is abandoned (then the job keeps
    #: the write lease until it expires: the PATCH may still land).
    patch_timeout: timedelta = timedelta(seconds=30)
    max_concurrency: int = 32
    rotate_cooldown: timedelta = timedelta(minutes=10)
    key_cache: timedelta = timedelta(seconds=30)
    write_lease: timedelta | None = None  # None: the update timeout plus a minute
    http_answer_window: timedelta = timedelta(seconds=120)
    operation_deadline: timedelta = timedelta(minutes=60)
    operation_retention: timedelta = timedelta(hours=24)
    storage: StorageSettings | None = None

    @property
    def operation_queue(self) -> str:
        """The queue of operations accepted by /api/status and /api/sweep (CMK_JOB_QUEUE
        + ``-ops``; the function app's binding is ``%CMK_JOB_QUEUE%-ops``)."""
        return f"{self.job_queue}{OPERATION_QUEUE_SUFFIX}"

    @property
    def write_lease_ttl(self) -> timedelta:
        """How long an account's write lease holds: how long a job that died holding it
        blocks the account. At least what a job may spend after renewing it right before
        its PATCH — the wait for ARM's write budget (at most the PATCH timeout), the PATCH's
        answer (the PATCH timeout) and the wait for the update — plus 5 s, and three
        PATCH timeouts (an unanswered PATCH, abandoned at its timeout, has as long again to
        land, or not, before another job may write); CMK_WRITE_LEASE_SECONDS, else the
        update timeout plus a minute."""
        floor = max(
            self.update_timeout + 2 * self.patch_timeout + timedelta(seconds=5),
            3 * self.patch_timeout,
        )
        wanted = self.write_lease or self.update_timeout + timedelta(minutes=1)
        return max(wanted, floor)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, require_storage: bool = False) -> Settings:
        """Read and validate every setting; raise one ConfigurationError listing all
        problems. With ``require_storage``, missing storage is one of those problems (so a
        command that needs it reports it together with the others, not on a later run)."""
        reader, default = _Reader(environ), cls()
        cloud = reader.get("CMK_AZURE_CLOUD", default.cloud, _cloud)
        settings = cls(
            cloud=cloud,
            vault_allowlist=reader.get(
                "CMK_VAULT_ALLOWLIST", default.vault_allowlist, _vaults(cloud)
            ),
            subscriptions=reader.get("CMK_SUBSCRIPTIONS", default.subscriptions, _subscriptions),
            allowed_key_sizes=reader.get(
                "CMK_ALLOWED_KEY_SIZES", default.allowed_key_sizes, _sizes
            ),
            expiry_margin=reader.get("CMK_EXPIRY_MARGIN_DAYS", default.expiry_margin, _days),
            rotate_on_near_expiry=reader.get(
                "CMK_ROTATE_ON_NEAR_EXPIRY", default.rotate_on_near_expiry, parse_boolean
            ),
            sweep_schedule=reader.get("CMK_SWEEP_SCHEDULE", default.sweep_schedule, _schedule),
            alert_topic_endpoint=reader.get(
                "CMK_ALERT_TOPIC_ENDPOINT", None, _topic(cloud), uri=True
            ),
            job_queue=reader.get("CMK_JOB_QUEUE", default.job_queue, _queue_name),
            ledger_table=reader.get("CMK_LEDGER_TABLE", default.ledger_table, _table_name),
            dry_run=reader.get("CMK_DRY_RUN", default.dry_run, parse_boolean),
            stale_grace=reader.get("CMK_STALE_GRACE_HOURS", default.stale_grace, _hours),
            update_timeout=reader.get(
                "CMK_UPDATE_TIMEOUT_SECONDS", default.update_timeout, _seconds
            ),
            patch_timeout=reader.get("CMK_PATCH_TIMEOUT_SECONDS", default.patch_timeout, _seconds),
            max_concurrency=reader.get(
                "CMK_MAX_CONCURRENCY", default.max_concurrency, _concurrency
            ),
            rotate_cooldown=reader.get(
                "CMK_ROTATE_COOLDOWN_MINUTES", default.rotate_cooldown, _minutes
            ),
            key_cache=reader.get("CMK_KEY_CACHE_SECONDS", default.key_cache, _key_cache),
            write_lease=reader.get("CMK_WRITE_LEASE_SECONDS", None, _lease_seconds),
            http_answer_window=reader.get(
                "CMK_HTTP_ANSWER_SECONDS", default.http_answer_window, _answer_window
            ),
            operation_deadline=reader.get(
                "CMK_OPERATION_DEADLINE_MINUTES", default.operation_deadline, _positive_minutes
            ),
            operation_retention=reader.get(
                "CMK_OPERATION_RETENTION_HOURS", default.operation_retention, _positive_hours
            ),
            storage=_storage(reader, cloud),
        )
        storage_named = any(p.startswith("AzureWebJobsStorage") for p in reader.problems)
        if require_storage and settings.storage is None and not storage_named:
            reader.problems.append(_MISSING_STORAGE)
        reader.raise_problems()
        return settings

    def with_dry_run(self, dry_run: bool) -> Settings:
        """These settings with CMK_DRY_RUN overridden (the CLI's ``--dry-run``)."""
        return replace(self, dry_run=dry_run)

    def require_subscriptions(self) -> tuple[str, ...]:
        """CMK_SUBSCRIPTIONS, or a ConfigurationError if it is empty: for code that has no
        subscription directory to default to (see :mod:`cmk.usecases.subscriptions`)."""
        if not self.subscriptions:
            raise ConfigurationError(
                "CMK_SUBSCRIPTIONS is empty and no list of the subscriptions the identity can"
                " read is available: set it to comma-separated subscription ids"
                " (e.g. CMK_SUBSCRIPTIONS=00000000-0000-0000-0000-000000000000)"
            )
        return self.subscriptions

    def require_storage(self) -> StorageSettings:
        """The Function app's storage, or a ConfigurationError if it is not configured."""
        if self.storage is None:
            raise ConfigurationError(_MISSING_STORAGE)
        return self.storage

    def vault_in_scope(self, key_id: KeyId) -> bool:
        """True if the key's vault is in CMK_VAULT_ALLOWLIST (an empty list allows none)."""
        return key_id.vault_url in self.vault_allowlist


class _Reader:
    """Reads variables, converting each and collecting every problem."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        return value.strip() if value is not None and value.strip() else None

    def get(self, name: str, default: T, convert: Callable[[str], T], *, uri: bool = False) -> T:
        """The converted value of ``name``; with ``uri``, a problem shows the value with its
        query and password hidden (a SAS token must not reach a log)."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            return convert(value)
        except ValueError as error:  # our InvalidInput errors are ValueErrors too
            shown = _redact_uri(value) if uri else value
            self.problems.append(f"{name}={shown!r}: {error}")
            return default

    def raise_problems(self) -> None:
        if self.problems:
            count = len(self.problems)
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            raise ConfigurationError(f"{count} invalid setting(s):\n{lines}")


def _items(value: str) -> list[str]:
    return [item for item in re.split(r"[,;\s]+", value) if item]


def parse_boolean(value: str) -> bool:
    """A boolean setting or parameter: true/false, 1/0, yes/no in any case; else ValueError."""
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError("must be true or false (also accepted: 1/0, yes/no)")


def _number(value: str, unit: str, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ValueError(f"must be a number of {unit}, {bound} (e.g. 30)")
    return number


#: No duration setting means anything beyond this (and Python's dates end in year 9999).
_LONGEST = timedelta(days=3650)
_UNIT = {"seconds": 1.0, "minutes": 60.0, "hours": 3600.0, "days": 86400.0}


def _span(value: str, unit: str, *, positive: bool = False) -> timedelta:
    """A duration in ``unit``: a number, 0 or more (more than 0 with ``positive``), and at
    most ten years."""
    number = _number(value, unit, positive=positive)
    most = _LONGEST.total_seconds() / _UNIT[unit]
    if number > most:
        raise ValueError(f"must be at most {most:,.0f} {unit} (ten years)")
    return timedelta(seconds=number * _UNIT[unit])


def _days(value: str) -> timedelta:
    return _span(value, "days")


def _hours(value: str) -> timedelta:
    return _span(value, "hours")


def _seconds_or_zero(value: str) -> timedelta:
    return _span(value, "seconds")


def _seconds_at_most(most: timedelta, why: str) -> Callable[[str], timedelta]:
    """A parser of seconds, 0 or more, refusing more than ``most`` and saying ``why``."""

    def parse(value: str) -> timedelta:
        span = _span(value, "seconds")
        if span > most:
            raise ValueError(f"must be at most {most.seconds} seconds: {why}")
        return span

    return parse


_key_cache = _seconds_at_most(
    MAX_KEY_CACHE,
    "a version disabled or edited in Key Vault goes unseen by this policy for up to this"
    " long (no event announces it)",
)
_answer_window = _seconds_at_most(
    MAX_ANSWER_WINDOW,
    "Azure's HTTP front end ends a request after 230 s (use 0 to always answer 202 at once)",
)


def _lease_seconds(value: str) -> timedelta | None:
    """CMK_WRITE_LEASE_SECONDS: 0 means the default, as the deployment's parameter does."""
    span = _span(value, "seconds")
    return span if span else None


def _minutes(value: str) -> timedelta:
    return _span(value, "minutes")


def _seconds(value: str) -> timedelta:
    return _span(value, "seconds", positive=True)


def _positive_minutes(value: str) -> timedelta:
    return _span(value, "minutes", positive=True)


def _positive_hours(value: str) -> timedelta:
    return _span(value, "hours", positive=True)


def _concurrency(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1024:
        raise ValueError("must be a whole number from 1 to 1024 (e.g. 32)")
    return int(value)


def _cloud(value: str) -> AzureCloud:
    try:
        return AzureCloud(value.lower())
    except ValueError:
        names = ", ".join(cloud.value for cloud in AzureCloud)
        raise ValueError(f"must be one of {names}") from None


def _vaults(cloud: AzureCloud) -> Callable[[str], frozenset[str]]:
    def convert(value: str) -> frozenset[str]:
        urls = set()
        for item in _items(value):
            try:
                url = parse_vault_url(item)
            except InvalidKeyId as error:
                hint = " (that is a key id; list the vault URL https://{vault}.vault.azure.net)"
                raise ValueError(f"{error}{hint if '/keys/' in item.lower() else ''}") from None
            if VAULT_SUFFIXES[url.partition(".")[2]] != cloud.value:
                raise ValueError(
                    f"vault {url} is not in the {cloud.value} cloud (CMK_AZURE_CLOUD);"
                    " list only vaults of that cloud"
                )
            urls.add(url)
        return frozenset(urls)

    return convert


def _subscriptions(value: str) -> tuple[str, ...]:
    ids = [parse_subscription_id(item) for item in _items(value)]
    return tuple(dict.fromkeys(ids))


def _sizes(value: str) -> frozenset[int]:
    allowed = ", ".join(str(size) for size in sorted(ALLOWED_KEY_SIZES))
    sizes = set()
    for item in _items(value):
        if not item.isdigit() or int(item) not in ALLOWED_KEY_SIZES:
            raise ValueError(f"{item!r} is not an RSA key size we accept; use {allowed}")
        sizes.add(int(item))
    return frozenset(sizes)


def _schedule(value: str) -> str:
    fields = value.split()
    if len(fields) != 6 or not all(_CRON_FIELD.fullmatch(part) for part in fields):
        raise ValueError(
            "must be a six-field NCRONTAB expression '{second} {minute} {hour} {day} {month}"
            " {day-of-week}' as Azure Functions uses (e.g. '0 0 * * * *' = hourly)"
        )
    return " ".join(fields)


def _topic(cloud: AzureCloud) -> Callable[[str], str]:
    def convert(value: str) -> str:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
        suffix = "." + cloud.endpoints.event_grid_suffix
        if parts.scheme != "https" or parts.username or parts.password or parts.query:
            raise ValueError("must be an https URL without user info or query")
        if not host.endswith(suffix) or host == suffix[1:]:
            raise ValueError(
                f"host {host!r} is not an Event Grid topic of the {cloud.value} cloud;"
                f" use https://{{topic}}.{{region}}-1{suffix}/api/events"
            )
        return value

    return convert


def _queue_name(value: str) -> str:
    """CMK_JOB_QUEUE: a queue name short enough that the queues the app derives from it
    are queue names too."""
    if not _QUEUE_NAME.fullmatch(value) or "--" in value or len(value) > _JOB_QUEUE_MAX:
        raise ValueError(
            f"a job queue name is 3-{_JOB_QUEUE_MAX} lowercase letters, digits and single"
            " dashes, starting and ending with a letter or digit (the app adds -poison,"
            f" {OPERATION_QUEUE_SUFFIX} and {OPERATION_QUEUE_SUFFIX}-poison to it for its"
            " other queues)"
        )
    return value


def _table_name(value: str) -> str:
    if not _TABLE_NAME.fullmatch(value) or value.lower() == "tables":
        raise ValueError("a table name is 3-63 letters and digits, starting with a letter")
    return value


def _storage(reader: _Reader, cloud: AzureCloud) -> StorageSettings | None:
    """AzureWebJobsStorage: a connection string, or identity-based service URIs."""
    connection = reader.raw("AzureWebJobsStorage")
    if connection is not None:
        if "=" not in connection:
            reader.problems.append(
                "AzureWebJobsStorage=(hidden, may be a secret): not a connection string; use"
                " 'DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...' or"
                " 'UseDevelopmentStorage=true', or remove it and set AzureWebJobsStorage__*"
            )
            return None
        return StorageSettings(connection_string=connection)
    account = reader.get("AzureWebJobsStorage__accountName", None, _account_name)
    queue = reader.get("AzureWebJobsStorage__queueServiceUri", None, _https_uri, uri=True)
    table = reader.get("AzureWebJobsStorage__tableServiceUri", None, _https_uri, uri=True)
    if account is not None:
        queue = queue or f"https://{account}.queue.{cloud.endpoints.storage_suffix}"
        table = table or f"https://{account}.table.{cloud.endpoints.storage_suffix}"
    if queue is None and table is None:
        return None
    if queue is None or table is None:
        reader.problems.append(
            "AzureWebJobsStorage__queueServiceUri and __tableServiceUri: set both"
            " (or AzureWebJobsStorage__accountName instead)"
        )
        return None
    return StorageSettings(queue_service_uri=queue, table_service_uri=table)


def _account_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{3,24}", value):
        raise ValueError("a storage account name is 3-24 lowercase letters and digits")
    return value


def _https_uri(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.query:
        raise ValueError("must be a service URI such as https://{account}.queue.core.windows.net")
    return value.rstrip("/")
