"""Key Vault's error answers: ``{"error": {"code", "message", "innererror"?}}`` (the spec's
``KeyVaultError``), with the status codes, challenge header and message texts the real
service uses (AKV100xx codes for 401s; the RBAC and access-policy 403 texts)."""

from __future__ import annotations

from cmk.sandbox.world import KEY_PERMISSION_ACTIONS, Principal, VaultKind, VaultState

#: Vault DNS suffix -> the Entra ID authority of its cloud.
LOGIN_AUTHORITIES = {
    "vault.azure.net": "https://login.microsoftonline.com",
    "managedhsm.azure.net": "https://login.microsoftonline.com",
    "vault.azure.cn": "https://login.chinacloudapi.cn",
    "managedhsm.azure.cn": "https://login.chinacloudapi.cn",
    "vault.usgovcloudapi.net": "https://login.microsoftonline.us",
    "managedhsm.usgovcloudapi.net": "https://login.microsoftonline.us",
}
_RBAC_HELP = (
    "Caller is not authorized to perform action on resource.\r\n"
    "If role assignments, deny assignments or role definitions were changed recently, "
    "please observe propagation time.\r\n"
)
_POLICY_HELP = "https://go.microsoft.com/fwlink/?linkid=2125287"
_NOT_FOUND_HELP = (
    "If you recently deleted this key you may be able to recover it using the correct "
    "recovery command. For help resolving this issue, please see "
    "https://go.microsoft.com/fwlink/?linkid=2125182"
)


class KeyVaultError(Exception):
    """An error answer: HTTP status, Key Vault error code, message, optional inner code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        inner_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return {"error": error}


def challenge(vault: VaultState) -> str:
    """The ``WWW-Authenticate`` value Key Vault sends: the tenant's authority and the
    resource the SDK turns into ``{resource}/.default`` (and checks against the host)."""
    authority = LOGIN_AUTHORITIES.get(vault.dns_suffix, "https://login.microsoftonline.com")
    return (
        f'Bearer authorization="{authority}/{vault.tenant_id}", '
        f'resource="https://{vault.dns_suffix}"'
    )


def unauthorized(vault: VaultState, message: str) -> KeyVaultError:
    return KeyVaultError(
        401, "Unauthorized", message, headers={"WWW-Authenticate": challenge(vault)}
    )


def bad_parameter(message: str) -> KeyVaultError:
    return KeyVaultError(400, "BadParameter", message)


def key_not_found(name_or_id: str) -> KeyVaultError:
    return KeyVaultError(
        404,
        "KeyNotFound",
        f"A key with (name/id) {name_or_id} was not found in this key vault. {_NOT_FOUND_HELP}",
    )


def _caller(principal: Principal) -> str:
    return (
        f"appid={principal.client_id};oid={principal.object_id};"
        f"iss=https://sts.windows.net/{principal.tenant_id}/"
    )


def forbidden(vault: VaultState, principal: Principal, perm: str, key_name: str) -> KeyVaultError:
    """403 for RBAC vaults and Managed HSM (inner ``ForbiddenByRbac``) or access-policy
    vaults (inner ``AccessDenied``), with the texts the real service writes."""
    where = f"{vault.name};location={vault.location}"
    rbac = vault.enable_rbac_authorization or vault.kind is VaultKind.MANAGED_HSM
    if rbac:
        resource = vault.resource_id.lower() + (f"/keys/{key_name}" if key_name else "")
        message = (
            f"{_RBAC_HELP}Caller: {_caller(principal)}\r\n"
            f"Action: '{KEY_PERMISSION_ACTIONS[perm]}'\r\n"
            f"Resource: '{resource}'\r\n"
            "Assignment: (not found)\r\n"
            "DenyAssignmentId: null\r\n"
            "DecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            f"Vault: {where}\r\n"
        )
        return KeyVaultError(403, "Forbidden", message, "ForbiddenByRbac")
    if principal.object_id not in vault.access_policies:
        message = (
            "Access denied. Caller was not found on any access policy.\r\n"
            f"Caller: {_caller(principal)}\r\nVault: {where}"
        )
    else:
        message = (
            f"The user, group or application '{_caller(principal)}' does not have keys "
            f"{perm} permission on key vault '{where}'. For help resolving this issue, "
            f"please see {_POLICY_HELP}"
        )
    return KeyVaultError(403, "Forbidden", message, "AccessDenied")
