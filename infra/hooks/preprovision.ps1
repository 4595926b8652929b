# azd preprovision hook (Windows), as preprovision.sh: before main.bicep deploys anything,
# refuse an app resource group that is a Key Vault's, and a vault's group tagged
# azd-env-name=<environment name> (app-group-guard.ps1): `azd down` would delete either.
$ErrorActionPreference = 'Stop'
if (-not $env:AZURE_ENV_NAME) {
    throw 'preprovision: AZURE_ENV_NAME is not set; run through azd, or set AZURE_ENV_NAME and CMK_VAULTS'
}
. (Join-Path $PSScriptRoot 'app-group-guard.ps1')
$group = if ($env:AZURE_RESOURCE_GROUP) { $env:AZURE_RESOURCE_GROUP } else { "rg-$($env:AZURE_ENV_NAME)" }
$vaults = if ($env:CMK_VAULTS) { $env:CMK_VAULTS | ConvertFrom-Json -NoEnumerate } else { @() }
if (-not (Test-AppGroup 'preprovision' 'before' $group $vaults)) { exit 1 }
if (-not (Test-VaultGroupTags 'preprovision' 'before' $vaults)) { exit 1 }
