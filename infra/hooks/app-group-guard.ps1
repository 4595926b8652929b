# Dot-sourced by the preprovision and postprovision hooks (Windows), as app-group-guard.sh:
# the app's resource group must never be a Key Vault's, because `azd down` deletes every
# resource group main.bicep deployed into, and a vault's group holds the keys. Names compare
# case-insensitively (-eq); without AZURE_SUBSCRIPTION_ID a vault group of the same name in any
# subscription counts. Returns $true when the group is safe.
function Test-AppGroup([string]$Hook, [string]$When, [string]$AppGroup, $Vaults) {
    $clashes = @($Vaults | Where-Object {
            ($_.resourceGroup -eq $AppGroup) -and
            (-not $env:AZURE_SUBSCRIPTION_ID -or $_.subscriptionId -eq $env:AZURE_SUBSCRIPTION_ID)
        } | ForEach-Object { $_.name })
    if ($clashes.Count -eq 0) { return $true }
    $what = if ($When -eq 'before') {
        "Nothing was deployed. Give the app a group of its own: a different environment name " +
        "(the group is rg-<environment name>), then run azd up again."
    }
    else {
        "Do NOT run ``azd down`` for this environment. Give the app a group of its own (a different " +
        "environment name, or main.bicep's resourceGroupName), provision that, and remove what " +
        "main.bicep created in $AppGroup by hand (docs/deployment.md)."
    }
    Write-Error ("${Hook}: refusing: the app's resource group $AppGroup is the resource group " +
        "of vault(s) $($clashes -join ', ') (CMK_VAULTS). ``azd down`` deletes every resource group this " +
        "deployment touched: it would delete the vault and its keys. $what") -ErrorAction Continue
    return $false
}
