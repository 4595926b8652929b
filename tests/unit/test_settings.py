"""Tests for cmk.settings: reading, validating and reporting the configuration."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path

import pytest

from cmk.errors import ConfigurationError
from cmk.keyid import KeyId
from cmk.settings import ENVIRONMENT_VARIABLES, AzureCloud, Settings, StorageSettings

SUB_A = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
SUB_B = "1C2D3E4F-0000-4000-8000-000000000001"
ACCOUNT_KEY = "c2VjcmV0LWtleS12YWx1ZQ=="
CONNECTION = (
    "DefaultEndpointsProtocol=https;AccountName=cmkstore;"
    f"AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
)


class TestDefaults:
    """Settings.from_environ on an empty environment."""

    def test_every_default(self) -> None:
        """An empty environment yields the documented defaults."""
        settings = Settings.from_environ({})
        assert settings == Settings()
        assert settings.vault_allowlist == frozenset()
        assert settings.subscriptions == ()
        assert settings.allowed_key_sizes == frozenset({2048})
        assert settings.expiry_margin == timedelta(days=30)
        assert settings.rotate_on_near_expiry is True
        assert settings.sweep_schedule == "0 0 * * * *"
        assert settings.alert_topic_endpoint is None
        assert settings.job_queue == "cmk-rotation-jobs"
        assert settings.ledger_table == "cmkledger"
        assert settings.dry_run is False
        assert settings.cloud is AzureCloud.PUBLIC
        assert settings.stale_grace == timedelta(hours=24)
        assert settings.update_timeout == timedelta(seconds=120)
        assert settings.max_concurrency == 32
        assert settings.storage is None

    def test_empty_allowlist_allows_no_vault(self) -> None:
        """With no CMK_VAULT_ALLOWLIST no vault is in scope (fail safe)."""
        key = KeyId.parse("https://kv-prod.vault.azure.net/keys/cmk")
        assert not Settings.from_environ({}).vault_in_scope(key)

    def test_blank_value_counts_as_unset(self) -> None:
        """A variable set to whitespace falls back to its default."""
        assert Settings.from_environ({"CMK_EXPIRY_MARGIN_DAYS": "  "}).expiry_margin == timedelta(
            days=30
        )

    def test_settings_are_frozen(self) -> None:
        """Settings cannot be changed after they are read."""
        settings = Settings.from_environ({})
        with pytest.raises(AttributeError):
            settings.dry_run = True  # type: ignore[misc]


class RecordingEnviron(Mapping[str, str]):
    """An empty environment that remembers which names were looked up."""

    def __init__(self) -> None:
        self.looked_up: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.looked_up.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class TestDocumentation:
    """docs/configuration.md and the code agree on the variables."""

    def test_reads_exactly_the_declared_variables(self) -> None:
        """from_environ looks up every declared variable and nothing else."""
        environ = RecordingEnviron()
        Settings.from_environ(environ)
        assert environ.looked_up == set(ENVIRONMENT_VARIABLES)

    def test_every_variable_is_documented(self) -> None:
        """The settings table in docs/configuration.md lists exactly the declared variables."""
        doc = Path(__file__).parents[2] / "docs" / "configuration.md"
        documented = set(re.findall(r"^\| `([A-Za-z_]+)` \|", doc.read_text(), re.MULTILINE))
        assert documented - {"public", "china", "usgovernment"} == set(ENVIRONMENT_VARIABLES)


GOOD_VALUES = [
    (
        "CMK_VAULT_ALLOWLIST",
        "https://KV-Prod.vault.azure.net:443/, https://hsm-one.managedhsm.azure.net",
        "vault_allowlist",
        frozenset({"https://kv-prod.vault.azure.net", "https://hsm-one.managedhsm.azure.net"}),
    ),
    ("CMK_SUBSCRIPTIONS", f"{SUB_A}, {SUB_B},{SUB_A}", "subscriptions", (SUB_A, SUB_B.lower())),
    (
        "CMK_ALLOWED_KEY_SIZES",
        "2048, 3072 4096",
        "allowed_key_sizes",
        frozenset({2048, 3072, 4096}),
    ),
    ("CMK_EXPIRY_MARGIN_DAYS", "7.5", "expiry_margin", timedelta(days=7.5)),
    ("CMK_EXPIRY_MARGIN_DAYS", "0", "expiry_margin", timedelta(0)),
    ("CMK_ROTATE_ON_NEAR_EXPIRY", "No", "rotate_on_near_expiry", False),
    ("CMK_ROTATE_ON_NEAR_EXPIRY", "0", "rotate_on_near_expiry", False),
    ("CMK_SWEEP_SCHEDULE", " 0  */15 * * * 1-5 ", "sweep_schedule", "0 */15 * * * 1-5"),
    (
        "CMK_ALERT_TOPIC_ENDPOINT",
        "https://cmk-alerts.westeurope-1.eventgrid.azure.net/api/events",
        "alert_topic_endpoint",
        "https://cmk-alerts.westeurope-1.eventgrid.azure.net/api/events",
    ),
    ("CMK_JOB_QUEUE", "rotate-jobs-2", "job_queue", "rotate-jobs-2"),
    ("CMK_HTTP_ANSWER_SECONDS", "0", "http_answer_window", timedelta(0)),
    ("CMK_HTTP_ANSWER_SECONDS", "220", "http_answer_window", timedelta(seconds=220)),
    ("CMK_OPERATION_DEADLINE_MINUTES", "90", "operation_deadline", timedelta(minutes=90)),
    ("CMK_OPERATION_RETENTION_HOURS", "0.5", "operation_retention", timedelta(minutes=30)),
    ("CMK_LEDGER_TABLE", "CmkLedger2", "ledger_table", "CmkLedger2"),
    ("CMK_DRY_RUN", "TRUE", "dry_run", True),
    ("CMK_DRY_RUN", "yes", "dry_run", True),
    ("CMK_AZURE_CLOUD", "USGovernment", "cloud", AzureCloud.US_GOVERNMENT),
    ("CMK_STALE_GRACE_HOURS", "6", "stale_grace", timedelta(hours=6)),
    ("CMK_UPDATE_TIMEOUT_SECONDS", "45.5", "update_timeout", timedelta(seconds=45.5)),
    ("CMK_MAX_CONCURRENCY", "8", "max_concurrency", 8),
    ("CMK_ROTATE_COOLDOWN_MINUTES", "0", "rotate_cooldown", timedelta(0)),
    ("CMK_KEY_CACHE_SECONDS", "0", "key_cache", timedelta(0)),
    ("CMK_KEY_CACHE_SECONDS", "5", "key_cache", timedelta(seconds=5)),
    ("CMK_KEY_CACHE_SECONDS", "300", "key_cache", timedelta(seconds=300)),
    ("CMK_WRITE_LEASE_SECONDS", "90", "write_lease", timedelta(seconds=90)),
    # 0 is the default, as infra/main.parameters.json sets it (the same azd env name):
    ("CMK_WRITE_LEASE_SECONDS", "0", "write_lease", None),
]


class TestGoodValues:
    """Each setting's accepted spellings and the value they produce."""

    @pytest.mark.parametrize(("name", "raw", "attribute", "expected"), GOOD_VALUES)
    def test_value_is_converted(
        self, name: str, raw: str, attribute: str, expected: object
    ) -> None:
        """A valid value of one variable becomes the documented typed value."""
        assert getattr(Settings.from_environ({name: raw}), attribute) == expected

    def test_sovereign_vaults_with_their_cloud(self) -> None:
        """China vaults are accepted when CMK_AZURE_CLOUD is china."""
        settings = Settings.from_environ(
            {
                "CMK_AZURE_CLOUD": "china",
                "CMK_VAULT_ALLOWLIST": "https://kv-cn.vault.azure.cn",
                "CMK_ALERT_TOPIC_ENDPOINT": "https://t.chinaeast2-1.eventgrid.azure.cn/api/events",
            }
        )
        assert settings.vault_allowlist == frozenset({"https://kv-cn.vault.azure.cn"})

    def test_vault_in_scope_uses_normalized_url(self) -> None:
        """A key in an allow-listed vault is in scope whatever the case of its host."""
        settings = Settings.from_environ(
            {"CMK_VAULT_ALLOWLIST": "https://kv-prod.vault.azure.net/"}
        )
        assert settings.vault_in_scope(KeyId.parse("https://KV-PROD.vault.azure.net/keys/k/"))
        assert not settings.vault_in_scope(KeyId.parse("https://kv-test.vault.azure.net/keys/k"))


BAD_VALUES = [
    ("CMK_VAULT_ALLOWLIST", "https://kv-prod.vault.azure.net/keys/cmk", "that is a key id"),
    ("CMK_VAULT_ALLOWLIST", "http://kv-prod.vault.azure.net", "https"),
    ("CMK_VAULT_ALLOWLIST", "https://kv-prod.vault.azure.net.evil.com", "not a Key Vault"),
    ("CMK_VAULT_ALLOWLIST", "https://kv-cn.vault.azure.cn", "not in the public cloud"),
    ("CMK_SUBSCRIPTIONS", "my-subscription", "not a GUID"),
    ("CMK_ALLOWED_KEY_SIZES", "1024", "use 2048, 3072, 4096"),
    ("CMK_ALLOWED_KEY_SIZES", "2048,big", "'big'"),
    ("CMK_EXPIRY_MARGIN_DAYS", "-1", "0 or more"),
    ("CMK_EXPIRY_MARGIN_DAYS", "nan", "number of days"),
    ("CMK_EXPIRY_MARGIN_DAYS", "thirty", "number of days"),
    ("CMK_ROTATE_ON_NEAR_EXPIRY", "sometimes", "true or false"),
    ("CMK_SWEEP_SCHEDULE", "0 * * * *", "six-field NCRONTAB"),
    ("CMK_SWEEP_SCHEDULE", "0 0 * * * * *", "six-field NCRONTAB"),
    ("CMK_ALERT_TOPIC_ENDPOINT", "http://t.westus-1.eventgrid.azure.net/api/events", "https"),
    ("CMK_ALERT_TOPIC_ENDPOINT", "https://example.com/api/events", "not an Event Grid topic"),
    ("CMK_ALERT_TOPIC_ENDPOINT", "https://eventgrid.azure.net.evil.com/api", "not an Event Grid"),
    ("CMK_ALERT_TOPIC_ENDPOINT", "https://t.westus-1.eventgrid.azure.cn/api/events", "public"),
    ("CMK_JOB_QUEUE", "Rotation_Jobs", "queue name"),
    ("CMK_JOB_QUEUE", "ab", "queue name"),
    ("CMK_JOB_QUEUE", "a--b", "queue name"),
    ("CMK_JOB_QUEUE", "jobs-", "queue name"),
    ("CMK_JOB_QUEUE", "j" * 53, "a job queue name is 3-52"),
    ("CMK_EXPIRY_MARGIN_DAYS", "3000000", "at most 3,650 days"),
    ("CMK_STALE_GRACE_HOURS", "1e12", "at most 87,600 hours"),
    ("CMK_KEY_CACHE_SECONDS", "1e300", "at most 315,360,000 seconds"),
    ("CMK_KEY_CACHE_SECONDS", "301", "at most 300 seconds"),
    ("CMK_PATCH_TIMEOUT_SECONDS", "1e308", "ten years"),
    ("CMK_OPERATION_DEADLINE_MINUTES", "99999999999999999999", "ten years"),
    ("CMK_HTTP_ANSWER_SECONDS", "221", "230 s"),
    ("CMK_HTTP_ANSWER_SECONDS", "-1", "0 or more"),
    ("CMK_OPERATION_DEADLINE_MINUTES", "0", "greater than 0"),
    ("CMK_OPERATION_RETENTION_HOURS", "never", "number of hours"),
    ("CMK_LEDGER_TABLE", "1ledger", "table name"),
    ("CMK_LEDGER_TABLE", "cmk-ledger", "table name"),
    ("CMK_LEDGER_TABLE", "tables", "table name"),
    ("CMK_DRY_RUN", "2", "true or false"),
    ("CMK_AZURE_CLOUD", "germany", "public, china, usgovernment"),
    ("CMK_STALE_GRACE_HOURS", "-3", "0 or more"),
    ("CMK_UPDATE_TIMEOUT_SECONDS", "0", "greater than 0"),
    ("CMK_MAX_CONCURRENCY", "0", "1 to 1024"),
    ("CMK_MAX_CONCURRENCY", "2.5", "whole number"),
    ("AzureWebJobsStorage__accountName", "Not_A_Name", "storage account name"),
    ("AzureWebJobsStorage__queueServiceUri", "ftp://x", "service URI"),
]


class TestBadValues:
    """Every invalid value is refused with a message that names it and says the fix."""

    @pytest.mark.parametrize(("name", "raw", "hint"), BAD_VALUES)
    def test_message_names_variable_value_and_fix(self, name: str, raw: str, hint: str) -> None:
        """The error names the variable, quotes the bad value and contains the fix."""
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ({name: raw})
        message = str(caught.value)
        assert f"{name}={raw!r}" in message
        assert hint in message

    def test_all_problems_reported_together(self) -> None:
        """Several bad variables produce one error that lists each of them."""
        environ = {
            "CMK_DRY_RUN": "maybe",
            "CMK_JOB_QUEUE": "Bad_Queue",
            "CMK_ALLOWED_KEY_SIZES": "1024",
            "CMK_EXPIRY_MARGIN_DAYS": "30",
        }
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ(environ)
        message = str(caught.value)
        assert message.startswith("3 invalid setting(s):")
        for name in ("CMK_DRY_RUN", "CMK_JOB_QUEUE", "CMK_ALLOWED_KEY_SIZES"):
            assert name in message
        assert "CMK_EXPIRY_MARGIN_DAYS" not in message

    def test_missing_storage_is_reported_with_the_other_problems(self) -> None:
        """With require_storage, a missing AzureWebJobsStorage is one line of the same error
        as a bad value elsewhere: one run names every problem (not one per run)."""
        environ = {"CMK_DRY_RUN": "maybe", "CMK_SUBSCRIPTIONS": "not-a-subscription"}
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ(environ, require_storage=True)
        message = str(caught.value)
        assert message.startswith("3 invalid setting(s):")
        for name in ("CMK_DRY_RUN", "CMK_SUBSCRIPTIONS", "AzureWebJobsStorage is not set"):
            assert name in message

    def test_missing_storage_alone_when_required(self) -> None:
        """With require_storage and nothing else wrong, the one problem is storage."""
        with pytest.raises(ConfigurationError, match="AzureWebJobsStorage is not set"):
            Settings.from_environ({}, require_storage=True)

    def test_bad_storage_is_not_also_reported_missing(self) -> None:
        """A malformed AzureWebJobsStorage is reported once, as malformed."""
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ({"AzureWebJobsStorage": "garbage"}, require_storage=True)
        assert str(caught.value).startswith("1 invalid setting(s):")
        assert "not a connection string" in str(caught.value)

    def test_storage_not_required_by_default(self) -> None:
        """Without require_storage, no storage is fine (ARM-only commands)."""
        assert Settings.from_environ({}).storage is None

    def test_subscriptions_are_optional(self) -> None:
        """No CMK_SUBSCRIPTIONS is not a problem: the scope is then every subscription the
        identity can read (cmk.usecases.subscriptions)."""
        assert Settings.from_environ({}).subscriptions == ()

    def test_require_subscriptions_when_empty(self) -> None:
        """require_subscriptions() refuses an empty scope and names CMK_SUBSCRIPTIONS."""
        with pytest.raises(ConfigurationError, match="CMK_SUBSCRIPTIONS"):
            Settings.from_environ({}).require_subscriptions()

    def test_require_subscriptions_when_set(self) -> None:
        """require_subscriptions() returns the configured scope."""
        settings = Settings.from_environ({"CMK_SUBSCRIPTIONS": SUB_A})
        assert settings.require_subscriptions() == (SUB_A,)


class TestStorage:
    """AzureWebJobsStorage as a connection string or as identity-based settings."""

    def test_connection_string(self) -> None:
        """A connection string is kept as given and marks key-based access."""
        storage = Settings.from_environ({"AzureWebJobsStorage": CONNECTION}).require_storage()
        assert storage.connection_string == CONNECTION
        assert not storage.uses_identity

    def test_repr_redacts_account_key(self) -> None:
        """Neither StorageSettings nor Settings shows the account key in its repr."""
        settings = Settings.from_environ({"AzureWebJobsStorage": CONNECTION})
        assert ACCOUNT_KEY not in repr(settings)
        assert ACCOUNT_KEY not in repr(settings.storage)
        assert "AccountKey=***" in repr(settings.storage)

    def test_repr_redacts_sas(self) -> None:
        """A SAS token in the connection string is redacted too."""
        storage = StorageSettings(
            connection_string="QueueEndpoint=https://q;SharedAccessSignature=sv=1&sig=abc"
        )
        assert "sig=abc" not in repr(storage)

    def test_bad_connection_string_is_not_echoed(self) -> None:
        """A malformed connection string is reported without its secret content."""
        with pytest.raises(ConfigurationError, match="AzureWebJobsStorage") as caught:
            Settings.from_environ({"AzureWebJobsStorage": "just-a-secret-value-without-pairs"})
        assert "just-a-secret-value" not in str(caught.value)
        assert "not a connection string" in str(caught.value)

    def test_account_name_derives_service_uris(self) -> None:
        """AzureWebJobsStorage__accountName yields the cloud's queue and table URIs."""
        environ = {"AzureWebJobsStorage__accountName": "cmkstore", "CMK_AZURE_CLOUD": "china"}
        storage = Settings.from_environ(environ).require_storage()
        assert storage.uses_identity
        assert storage.queue_service_uri == "https://cmkstore.queue.core.chinacloudapi.cn"
        assert storage.table_service_uri == "https://cmkstore.table.core.chinacloudapi.cn"

    def test_explicit_service_uris(self) -> None:
        """Explicit __queueServiceUri and __tableServiceUri are used as given."""
        environ = {
            "AzureWebJobsStorage__queueServiceUri": "https://s.queue.core.windows.net/",
            "AzureWebJobsStorage__tableServiceUri": "https://s.table.core.windows.net",
        }
        storage = Settings.from_environ(environ).require_storage()
        assert storage.queue_service_uri == "https://s.queue.core.windows.net"
        assert storage.table_service_uri == "https://s.table.core.windows.net"

    def test_only_one_service_uri(self) -> None:
        """A queue URI without a table URI is an error that says to set both."""
        with pytest.raises(ConfigurationError, match="set both"):
            Settings.from_environ(
                {"AzureWebJobsStorage__queueServiceUri": "https://s.queue.core.windows.net"}
            )

    @pytest.mark.parametrize(
        "name",
        [
            "AzureWebJobsStorage__queueServiceUri",
            "AzureWebJobsStorage__tableServiceUri",
            "CMK_ALERT_TOPIC_ENDPOINT",
        ],
    )
    def test_rejected_uri_hides_its_sas(self, name: str) -> None:
        """A URI refused for carrying a SAS query is named with its query shown as ***,
        never the signature."""
        value = (
            "https://s.queue.core.windows.net/?sv=2022-11-02&ss=q&sp=rwdlacup"
            "&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D"
        )
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ({name: value})
        message = str(caught.value)
        assert f"{name}='https://s.queue.core.windows.net/?***'" in message
        for secret in ("sig=", "c2VjcmV0LXNpZ25hdHVyZQ", "sv=2022"):
            assert secret not in message

    def test_rejected_uri_hides_its_password(self) -> None:
        """User info with a password in a refused service URI is shown as ***."""
        with pytest.raises(ConfigurationError) as caught:
            Settings.from_environ(
                {
                    "AzureWebJobsStorage__tableServiceUri": "http://me:hunter2@s.table.core.windows.net"
                }
            )
        assert "hunter2" not in str(caught.value)
        assert "me:***@s.table.core.windows.net" in str(caught.value)

    def test_require_storage_when_absent(self) -> None:
        """require_storage() names AzureWebJobsStorage when nothing is configured."""
        with pytest.raises(ConfigurationError, match="AzureWebJobsStorage"):
            Settings.from_environ({}).require_storage()


class TestAzureCloud:
    """The endpoint table of each Azure cloud."""

    @pytest.mark.parametrize(
        ("cloud", "arm", "login", "vault"),
        [
            (
                AzureCloud.PUBLIC,
                "management.azure.com",
                "login.microsoftonline.com",
                "vault.azure.net",
            ),
            (
                AzureCloud.CHINA,
                "management.chinacloudapi.cn",
                "login.chinacloudapi.cn",
                "vault.azure.cn",
            ),
            (
                AzureCloud.US_GOVERNMENT,
                "management.usgovcloudapi.net",
                "login.microsoftonline.us",
                "vault.usgovcloudapi.net",
            ),
        ],
    )
    def test_endpoints(self, cloud: AzureCloud, arm: str, login: str, vault: str) -> None:
        """Each cloud maps to its real ARM host, authority, scope and vault suffix."""
        endpoints = cloud.endpoints
        assert endpoints.arm_endpoint == f"https://{arm}"
        assert endpoints.arm_scope == f"https://{arm}/.default"
        assert endpoints.resource_graph_endpoint == f"https://{arm}"
        assert endpoints.authority_host == login
        assert endpoints.key_vault_suffix == vault

    @pytest.mark.parametrize("cloud", list(AzureCloud))
    def test_suffixes_agree_with_key_ids(self, cloud: AzureCloud) -> None:
        """A key id in the cloud's vault and HSM suffixes reports that same cloud."""
        endpoints = cloud.endpoints
        for suffix in (endpoints.key_vault_suffix, endpoints.managed_hsm_suffix):
            assert KeyId.parse(f"https://kv-one.{suffix}/keys/k").cloud == cloud.value


class TestWriteLease:
    def test_lease_outlasts_the_update_wait(self) -> None:
        """After its last renewal (right before the PATCH) a job may wait its PATCH timeout
        for ARM's write budget, its PATCH timeout for the answer, then the update timeout:
        the lease is never shorter than that plus 5 s. By default it is the update timeout
        plus a minute when that is longer."""
        default = Settings(update_timeout=timedelta(seconds=120))
        assert default.write_lease_ttl == timedelta(seconds=185)  # 120 + 2 x 30 + 5
        roomy = Settings(update_timeout=timedelta(seconds=120), patch_timeout=timedelta(seconds=5))
        assert roomy.write_lease_ttl == timedelta(seconds=180)  # 120 + 60 > 120 + 10 + 5
        short = Settings(update_timeout=timedelta(seconds=120), write_lease=timedelta(seconds=10))
        assert short.write_lease_ttl == timedelta(seconds=185)
        chosen = Settings(
            update_timeout=timedelta(seconds=5),
            patch_timeout=timedelta(seconds=5),
            write_lease=timedelta(seconds=20),
        )
        assert chosen.write_lease_ttl == timedelta(seconds=20)

    def test_lease_outlasts_an_unanswered_patch(self) -> None:
        """An unanswered PATCH keeps the lease: it lasts at least three PATCH timeouts
        (the wait for the budget, the PATCH's own, and as long again to land)."""
        quick = Settings(update_timeout=timedelta(seconds=5), write_lease=timedelta(seconds=20))
        assert quick.write_lease_ttl == timedelta(seconds=90)  # 3 x the 30 s default
        read = Settings.from_environ({"CMK_PATCH_TIMEOUT_SECONDS": "12"})
        assert read.patch_timeout == timedelta(seconds=12)
