"""The ``api-version`` values Key Vault's data plane accepts, and what each one changes.

The list is the folders of the REST specification (``Azure/azure-rest-api-specs``,
``specification/keyvault/data-plane``: ``Microsoft.KeyVault/{stable,preview}/*`` up to 7.6,
then ``Keys/{stable,preview}/*/keys.json``): every stable version and every published
preview. Clients pin any of them: ``az keyvault key`` speaks ``7.6-preview.2``, the
Python SDK 4.11 ``2025-07-01`` down to ``2016-10-01``.

Whether the live service still answers the oldest previews (``7.0-preview``,
``7.1-preview``) is not documented; they are accepted here because the specification
still publishes them. A version outside the list answers what Key Vault answers:
400 ``BadParameter`` "The specified version (...) is not recognized. Consider using the
latest supported version (...)." — the latest *stable* version.
"""

from __future__ import annotations

# version -> (major, minor) "level": what the response shape depends on (recoverableDays
# from 7.1, exportable from 7.3, ...). Dated versions after 7.6 are (8, year).
API_VERSIONS: dict[str, tuple[int, int]] = {
    "2015-06-01": (5, 0),
    "2016-10-01": (6, 0),
    "7.0-preview": (7, 0),
    "7.0": (7, 0),
    "7.1-preview": (7, 1),
    "7.1": (7, 1),
    "7.2-preview": (7, 2),
    "7.2": (7, 2),
    "7.3-preview": (7, 3),
    "7.3": (7, 3),
    "7.4-preview.1": (7, 4),
    "7.4": (7, 4),
    "7.5-preview.1": (7, 5),
    "7.5": (7, 5),
    "7.6-preview.1": (7, 6),
    "7.6-preview.2": (7, 6),
    "7.6": (7, 6),
    "2025-06-01-preview": (8, 2025),
    "2025-07-01-preview": (8, 2025),
    "2025-07-01": (8, 2025),
    "2026-01-01-preview": (8, 2026),
    "2026-03-01-preview": (8, 2026),
    "2026-04-01": (8, 2026),
    "2026-05-01-preview": (8, 2026),
    "2026-07-01-preview": (8, 2026),
}

STABLE_VERSIONS: tuple[str, ...] = tuple(v for v in API_VERSIONS if "preview" not in v)
PREVIEW_VERSIONS: tuple[str, ...] = tuple(v for v in API_VERSIONS if "preview" in v)
LATEST_STABLE = STABLE_VERSIONS[-1]


def api_level(api_version: str) -> tuple[int, int] | None:
    """The level of an accepted api-version; None when Key Vault would not recognize it."""
    return API_VERSIONS.get(api_version)


def unrecognized_message(api_version: str) -> str:
    """Key Vault's message for an api-version it does not serve."""
    return (
        f"The specified version ({api_version}) is not recognized. "
        f"Consider using the latest supported version ({LATEST_STABLE})."
    )
