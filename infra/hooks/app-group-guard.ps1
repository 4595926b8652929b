# Dot-sourced by the preprovision and postprovision hooks (Windows), as app-group-guard.sh:
# `azd down` must never be able to delete a Key Vault's resource group. It deletes every
# resource group of the deployment's subscription tagged azd-env-name=<environment name> (and
# with --purge purges the Key Vaults in them), and main.bicep tags the app's group so: a vault's
# group is at risk when it is the app's group or already carries the tag. Names compare
# case-insensitively (-eq, -contains); without AZURE_SUBSCRIPTION_ID a vault group of the same
# name in any subscription counts. Each test returns $true when the vaults are safe.

function Get-VaultsAtRisk($Vaults) {
    @($Vaults | Where-Object {
            -not $env:AZURE_SUBSCRIPTION_ID -or $_.subscriptionId -eq $env:AZURE_SUBSCRIPTION_ID
        })
}

function Get-UntagCommand([string]$Group) {
    $subscription = if ($env:AZURE_SUBSCRIPTION_ID) { $env:AZURE_SUBSCRIPTION_ID } else { '<subscription-id>' }
    "az tag update --resource-id /subscriptions/$subscription/resourceGroups/$Group --operation Delete --tags azd-env-name=$($env:AZURE_ENV_NAME)"
}

function Test-AppGroup([string]$Hook, [string]$When, [string]$AppGroup, $Vaults) {
    $clashes = @(Get-VaultsAtRisk $Vaults | Where-Object { $_.resourceGroup -eq $AppGroup } | ForEach-Object { $_.name })
    if ($clashes.Count -eq 0) { return $true }
    $what = if ($When -eq 'before') {
        "Nothing was deployed. Give the app a group of its own: a different environment name " +
        "(the group is rg-<environment name>), then run azd up again."
    }
    else {
        "Do NOT run ``azd down`` for this environment. Give the app a group of its own (a different " +
        "environment name, or main.bicep's resourceGroupName), provision that, remove what " +
        "main.bicep created in $AppGroup by hand, and remove the tag from it: " +
        "$(Get-UntagCommand $AppGroup) (docs/deployment.md)."
    }
    Write-Error ("${Hook}: refusing: the app's resource group $AppGroup is the resource group " +
        "of vault(s) $($clashes -join ', ') (CMK_VAULTS). main.bicep tags the app's group " +
        "azd-env-name=<environment name>, and ``azd down`` deletes every group so tagged: it would " +
        "delete the vault and its keys. $what") -ErrorAction Continue
    return $false
}

function Test-VaultGroupTags([string]$Hook, [string]$When, $Vaults) {
    $atRisk = Get-VaultsAtRisk $Vaults
    if ($atRisk.Count -eq 0) { return $true }
    if (-not $env:AZURE_SUBSCRIPTION_ID) {
        if ($When -eq 'after') {
            Write-Error ("${Hook}: refusing: AZURE_SUBSCRIPTION_ID is not set, so the resource groups ``azd down`` " +
                "would delete (those tagged azd-env-name=$($env:AZURE_ENV_NAME) in it) cannot be checked. Set it " +
                "(azd env set AZURE_SUBSCRIPTION_ID <id>), then run azd provision again.") -ErrorAction Continue
            return $false
        }
        # A first `azd provision` may run this before azd has chosen the subscription: check the
        # Azure CLI's current one now; postprovision checks azd's, before any `azd down`.
        Write-Warning ("${Hook}: AZURE_SUBSCRIPTION_ID is not set yet: checking the Azure CLI's current " +
            "subscription; postprovision checks the deployment's own.")
    }
    $list = @('group', 'list', '--tag', "azd-env-name=$($env:AZURE_ENV_NAME)", '--query', '[].name', '--output', 'tsv')
    if ($env:AZURE_SUBSCRIPTION_ID) { $list += @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }
    $tagged = @(az @list | ForEach-Object { "$_".Trim() } | Where-Object { $_ })
    if ($LASTEXITCODE -ne 0) {
        Write-Error ("${Hook}: refusing: cannot list the resource groups tagged azd-env-name=$($env:AZURE_ENV_NAME) " +
            "(``az group list`` failed). ``azd down`` deletes every such group, so a vault's group must not be " +
            "one, and that cannot be checked. The hooks use the Azure CLI: sign in (az login), select this " +
            "subscription, then run it again.") -ErrorAction Continue
        return $false
    }
    $clashes = @($atRisk | Where-Object { $tagged -contains $_.resourceGroup })
    if ($clashes.Count -eq 0) { return $true }
    $fixes = @($clashes | ForEach-Object {
            "the resource group $($_.resourceGroup) of vault $($_.name): $(Get-UntagCommand $_.resourceGroup)"
        })
    $what = if ($When -eq 'before') {
        'Nothing was deployed. Remove the tag (or choose another environment name), then run azd up again.'
    }
    else {
        "Do NOT run ``azd down`` for this environment while a vault's group has the tag. Remove it, " +
        'then run `azd provision` again (docs/deployment.md).'
    }
    Write-Error ("${Hook}: refusing: ``azd down`` deletes every resource group of this subscription tagged " +
        "azd-env-name=$($env:AZURE_ENV_NAME) (and ``azd down --purge`` purges the Key Vaults in them), and a " +
        "Key Vault's group carries that tag: it would delete the vault and its keys. Remove the tag: " +
        "$($fixes -join '; '). $what") -ErrorAction Continue
    return $false
}
