"""Azure Resource Graph: ``POST /providers/Microsoft.ResourceGraph/resources``.

The ``Resources`` table holds the world's Cognitive Services accounts
(``microsoft.cognitiveservices/accounts``), key vaults (``microsoft.keyvault/vaults``,
``microsoft.keyvault/managedhsms``), the user-assigned identities accounts name
(``microsoft.managedidentity/userassignedidentities``) and Event Grid custom topics
(``microsoft.eventgrid/topics``) — the same resources as ARM's generic list
(:func:`cmk.sandbox.arm.resources.resources`) — with ARG's columns (``id``, ``name``, ``type``
lowercase, ``tenantId``, ``kind``, ``location``, ``resourceGroup`` lowercase,
``subscriptionId``, ``sku``, ``properties``, ``tags``, ``identity``, ...). Queries are
evaluated by :mod:`cmk.sandbox.resourcegraph.kql.language` (an honest subset); anything
outside it gets the real service's 400 (``BadRequest`` with details ``InvalidQuery`` then
``ParserFailure`` or ``InvalidQueryLanguage``, as seen in Azure/azure-powershell#13762 and
Azure/aztfexport#485). A query Kusto parses and then refuses (grouping by a ``dynamic`` key)
gets the same envelope with Kusto's message under the detail code ``SemanticError`` (ARG's
code for it is not documented).

Scope: the requested ``subscriptions`` (or, without any, every subscription of the world;
``managementGroups`` are treated the same way, since the world has no management groups),
narrowed to the rows the caller may read by RBAC (``<type>/read`` at the row or above).

Paging (learn.microsoft.com, "Paging results"): at most 1,000 rows a page (``$top`` is
clamped to 1..1000; default 1000), ``$skip`` honoured, and ``$skipToken`` returned only
while rows remain. As documented, no ``$skipToken`` is returned — ``resultTruncated`` is
``"true"`` instead — when the query contains ``limit``/``take`` or when every output
column is ``dynamic`` (why the product ``tostring()``s its projected columns). A first
page evaluates the query once and keeps the result as a snapshot; later pages are slices
of that snapshot, so paging through 100,000 rows costs one evaluation.

Quota: 15 queries per 5 s per caller (:mod:`cmk.sandbox.platform.throttling`), reported in
``x-ms-user-quota-remaining`` / ``x-ms-user-quota-resets-after``; over quota answers 429
``RateLimiting`` with ``Retry-After``.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cmk.sandbox.arm.cognitive.accounts import identity_json, properties_json, rp_for
from cmk.sandbox.arm.keyvault import vault_sku
from cmk.sandbox.arm.resources import Resource, other_resources
from cmk.sandbox.resourcegraph.kql import language as kql
from cmk.sandbox.world import AccountState, VaultKind, VaultState, World

log = logging.getLogger(__name__)

API_VERSIONS = frozenset(
    {"2018-09-01-preview", "2019-04-01", "2020-04-01-preview", "2021-03-01", "2022-10-01",
     "2024-04-01"}
)  # fmt: skip
MAX_PAGE = 1000
_KUSTO_TO_ARG_TYPE = {
    "string": "string",
    "bool": "boolean",
    "int": "integer",
    "long": "integer",
    "real": "number",
    "dynamic": "object",
}


class GraphError(Exception):
    """A Resource Graph error answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(json.dumps(body))
        self.status = status
        self.body = body


def support_message() -> str:
    """The message of every Resource Graph error body (ARM's route answers it too, for a
    throttled query): a timestamp and a fresh correlation id."""
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return (
        "Please provide below info when asking for support: "
        f"timestamp = {stamp}, correlationId = {uuid.uuid4()}."
    )


def query_error(error: kql.KqlError) -> GraphError:
    code = "InvalidQueryLanguage" if error.unsupported else "ParserFailure"
    if error.semantic:
        # What ARG names a Kusto semantic error in its details is not documented (the
        # sandbox has seen only ParserFailure and InvalidQueryLanguage); the message is
        # Kusto's own text.
        code = "SemanticError"
    detail: dict[str, Any] = {
        "code": code,
        "message": error.message,
        "line": error.line,
        "characterPositionInLine": error.position,
        "token": error.token,
    }
    return GraphError(
        400,
        {
            "error": {
                "code": "BadRequest",
                "message": support_message(),
                "details": [
                    {
                        "code": "InvalidQuery",
                        "message": "Query is invalid. Please refer to the documentation for "
                        "the Azure Resource Graph service and fix the error before retrying.",
                    },
                    detail,
                ],
            }
        },
    )


def bad_request(message: str) -> GraphError:
    return GraphError(
        400,
        {
            "error": {
                "code": "BadRequest",
                "message": support_message(),
                "details": [{"code": "InvalidRequest", "message": message}],
            }
        },
    )


# --- rows ----------------------------------------------------------------------------


def account_row(account: AccountState, tenant_id: str) -> kql.Row:
    return {
        "id": account.resource_id,
        "name": account.name,
        "type": "microsoft.cognitiveservices/accounts",
        "tenantId": tenant_id,
        "kind": account.kind,
        "location": account.location,
        "resourceGroup": account.resource_group.lower(),
        "subscriptionId": account.subscription_id,
        "managedBy": "",
        "sku": {"name": account.sku},
        "plan": None,
        "properties": properties_json(account),
        "tags": dict(account.tags),
        "identity": identity_json(account),
        "zones": None,
        "extendedLocation": None,
    }


def vault_row(vault: VaultState) -> kql.Row:
    common: dict[str, Any] = {
        "tenantId": vault.tenant_id,
        "enableSoftDelete": vault.soft_delete,
        "softDeleteRetentionInDays": vault.retention_days,
        "provisioningState": "Succeeded",
    }
    if vault.purge_protection:
        common["enablePurgeProtection"] = True
    if vault.kind is VaultKind.VAULT:
        rtype = "microsoft.keyvault/vaults"
        properties = common | {
            "sku": vault_sku(vault),
            "vaultUri": f"{vault.url}/",
            "enableRbacAuthorization": vault.enable_rbac_authorization,
            "accessPolicies": [
                {
                    "tenantId": vault.tenant_id,
                    "objectId": object_id,
                    "permissions": {"keys": sorted(perms)},
                }
                for object_id, perms in vault.access_policies.items()
            ],
            "networkAcls": {
                "defaultAction": vault.network_default_action,
                "bypass": vault.network_bypass,
                "ipRules": [],
                "virtualNetworkRules": [],
            },
        }
        sku: dict[str, Any] | None = None
    else:
        rtype = "microsoft.keyvault/managedhsms"
        properties = common | {"hsmUri": f"{vault.url}/"}
        sku = vault_sku(vault)
    return {
        "id": vault.resource_id,
        "name": vault.name,
        "type": rtype,
        "tenantId": vault.tenant_id,
        "kind": "",
        "location": vault.location,
        "resourceGroup": vault.resource_group.lower(),
        "subscriptionId": vault.subscription_id,
        "managedBy": "",
        "sku": sku,
        "plan": None,
        "properties": properties,
        "tags": {},
        "identity": None,
        "zones": None,
        "extendedLocation": None,
    }


def resource_row(resource: Resource, tenant_id: str) -> kql.Row:
    """A row for a kind without a builder of its own (user-assigned identity, topic)."""
    return {
        "id": resource.id,
        "name": resource.name,
        "type": resource.type.lower(),
        "tenantId": tenant_id,
        "kind": "",
        "location": resource.location,
        "resourceGroup": resource.resource_group.lower(),
        "subscriptionId": resource.subscription_id,
        "managedBy": "",
        "sku": None,
        "plan": None,
        "properties": dict(resource.properties or {}),
        "tags": {},
        "identity": None,
        "zones": None,
        "extendedLocation": None,
    }


# --- the service ---------------------------------------------------------------------


@dataclass
class _Snapshot:
    id: str
    rows: list[kql.Row]
    columns: tuple[tuple[str, str], ...]
    pageable: bool


@dataclass
class ResourceGraph:
    """Resource Graph for one world: evaluates queries and keeps paging snapshots."""

    world: World
    snapshots: int = 16
    _cache: OrderedDict[str, _Snapshot] = field(default_factory=OrderedDict)

    def rows(self, principal_id: str, subscriptions: list[str]) -> list[kql.Row]:
        """The ``Resources`` rows of ``subscriptions`` the principal may read."""
        world = self.world
        rp = rp_for(world)
        rp.settle_all()
        rows: list[kql.Row] = []
        others = list(other_resources(world))
        for sub_id in subscriptions:
            subscription = world.subscriptions.get(sub_id.lower())
            if subscription is None:
                continue
            scope = f"/subscriptions/{subscription.subscription_id}"
            accounts_readable = world.rbac_allows(
                principal_id, "Microsoft.CognitiveServices/accounts/read", scope
            )
            for key in rp.sorted_keys(f"{scope}/".lower()):
                account = world.accounts.get(key)
                if account is None:
                    continue
                if accounts_readable or world.rbac_allows(
                    principal_id, "Microsoft.CognitiveServices/accounts/read", key
                ):
                    rows.append(account_row(account, subscription.tenant_id))
            for vault in world.vaults.values():
                if vault.subscription_id.lower() != sub_id.lower():
                    continue
                rtype = "vaults" if vault.kind is VaultKind.VAULT else "managedHSMs"
                if world.rbac_allows(
                    principal_id, f"Microsoft.KeyVault/{rtype}/read", vault.resource_id
                ):
                    rows.append(vault_row(vault))
            for resource in others:
                if resource.subscription_id.lower() == sub_id.lower() and world.rbac_allows(
                    principal_id, f"{resource.type}/read", resource.id
                ):
                    rows.append(resource_row(resource, subscription.tenant_id))
        return rows

    def query(self, principal_id: str, request: object) -> dict[str, Any]:
        """Answer one QueryRequest body; raises :class:`GraphError`."""
        if not isinstance(request, dict) or not isinstance(request.get("query"), str):
            raise bad_request("The request body must be a QueryRequest with a 'query' string.")
        options = request.get("options") or {}
        if not isinstance(options, dict):
            raise bad_request("'options' must be an object.")
        result_format = str(options.get("resultFormat") or "objectArray")
        if result_format not in ("objectArray", "table"):
            raise bad_request(f"Unsupported resultFormat '{result_format}'.")
        top = _int_option(options, "$top", MAX_PAGE)
        top = max(1, min(MAX_PAGE, top))
        skip = max(0, _int_option(options, "$skip", 0))
        token = options.get("$skipToken")
        snapshot, offset = None, skip
        if isinstance(token, str) and token:
            snapshot_id, offset = _decode_token(token)
            snapshot = self._cache.get(snapshot_id)
            if snapshot is not None:
                self._cache.move_to_end(snapshot_id)
        if snapshot is None:
            snapshot = self._evaluate(principal_id, request)
        rows = snapshot.rows[offset : offset + top]
        end = offset + len(rows)
        more = end < len(snapshot.rows)
        body: dict[str, Any] = {
            "totalRecords": len(snapshot.rows),
            "count": len(rows),
            "resultTruncated": "true" if more and not snapshot.pageable else "false",
        }
        if more and snapshot.pageable:
            body["$skipToken"] = _encode_token(snapshot.id, end)
        body["data"] = (
            rows
            if result_format == "objectArray"
            else {
                "columns": [
                    {"name": name, "type": _KUSTO_TO_ARG_TYPE.get(kind, "object")}
                    for name, kind in snapshot.columns
                ],
                "rows": [[row.get(name) for name, _ in snapshot.columns] for row in rows],
            }
        )
        body["facets"] = []
        return body

    def _evaluate(self, principal_id: str, request: dict[str, Any]) -> _Snapshot:
        try:
            parsed = kql.parse(request["query"])
        except kql.KqlError as error:
            log.warning(
                "resource graph query rejected: %s at %s:%s (%r)",
                error.message,
                error.line,
                error.position,
                error.token,
                extra={"query": request["query"]},
            )
            raise query_error(error) from error
        requested = request.get("subscriptions")
        if isinstance(requested, list) and requested:
            subscriptions = [str(s) for s in requested]
        else:
            subscriptions = [s.subscription_id for s in self.world.subscriptions.values()]
        rows = parsed.run(self.rows(principal_id, subscriptions))
        columns = parsed.columns
        rows = [{name: row.get(name) for name, _ in columns} for row in rows]
        snapshot = _Snapshot(
            uuid.uuid4().hex, rows, columns, not parsed.limited and not parsed.all_dynamic
        )
        self._cache[snapshot.id] = snapshot
        while len(self._cache) > self.snapshots:
            self._cache.popitem(last=False)
        return snapshot


def _int_option(options: dict[str, Any], name: str, default: int) -> int:
    value = options.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise bad_request(f"'{name}' must be an integer.") from None


def _encode_token(snapshot_id: str, offset: int) -> str:
    raw = json.dumps({"s": snapshot_id, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return str(data["s"]), int(data["o"])
    except (ValueError, KeyError, TypeError):
        raise bad_request("The $skipToken is invalid.") from None


_GRAPHS: weakref.WeakKeyDictionary[World, ResourceGraph] = weakref.WeakKeyDictionary()


def graph_for(world: World) -> ResourceGraph:
    """The Resource Graph of a world (created on first use)."""
    graph = _GRAPHS.get(world)
    if graph is None:
        graph = _GRAPHS[world] = ResourceGraph(world)
    return graph
