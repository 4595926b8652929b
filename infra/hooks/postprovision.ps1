# azd postprovision hook (Windows): step 2 of the deployment, as postprovision.sh. Deploys the
# vault side (infra/app/vaults.bicep) as a deployment of its own, which azd does not tear down,
# after checking that `azd down` cannot delete a vault's resource group (app-group-guard.ps1).
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_ENV_NAME', 'AZURE_LOCATION', 'AZURE_RESOURCE_GROUP', 'AZURE_STORAGE_ACCOUNT_NAME', 'CMK_APP_PRINCIPAL_ID', 'EVENT_DEAD_LETTER_CONTAINER') {
    if (-not (Get-Item "env:$name" -ErrorAction SilentlyContinue)) {
        throw "postprovision: $name is not set; run through azd, or set the outputs of main.bicep"
    }
}
$vaults = if ($env:EVENT_VAULTS) { $env:EVENT_VAULTS | ConvertFrom-Json -NoEnumerate } else { @() }
if ($vaults.Count -eq 0) {
    Write-Host 'postprovision: no vaults configured (CMK_VAULTS); no vault-side resources to deploy.'
    exit 0
}

# The app's resource group must not be a vault's, nor a vault's group carry this environment's
# azd-env-name tag (preprovision refused both already; checked again here, before the vault
# side, for a run that skipped that hook or a tag set since).
. (Join-Path $PSScriptRoot 'app-group-guard.ps1')
if (-not (Test-AppGroup 'postprovision' 'after' $env:AZURE_RESOURCE_GROUP $vaults)) { exit 1 }
if (-not (Test-VaultGroupTags 'postprovision' 'after' $vaults)) { exit 1 }

# An adopted system topic (systemTopicName given in CMK_VAULTS) is read, never redeployed, so
# its tags and identity stay as they are; it must already have a system-assigned identity.
$refused = $false
foreach ($vault in @($vaults | Where-Object { $_.adopt })) {
    $identity = az eventgrid system-topic show --subscription $vault.subscriptionId `
        --resource-group $vault.resourceGroup --name $vault.systemTopicName --query identity.type --output tsv
    if ($LASTEXITCODE -ne 0) {
        Write-Error "postprovision: cannot read the system topic $($vault.systemTopicName) in $($vault.resourceGroup) to adopt it" -ErrorAction Continue
        $refused = $true
    }
    elseif ("$identity" -notmatch 'SystemAssigned') {
        Write-Error ("postprovision: refusing to adopt the system topic $($vault.systemTopicName) in $($vault.resourceGroup): " +
            "it has no system-assigned identity (identity: $identity), which writes this app's dead letters. " +
            "cmk-rotator does not change an adopted topic; add one yourself (keeping any user-assigned identity), then rerun.") -ErrorAction Continue
        $refused = $true
    }
}
if ($refused) { exit 1 }

$operators = if ($env:CMK_OPERATOR_PRINCIPAL_IDS) { $env:CMK_OPERATOR_PRINCIPAL_IDS | ConvertFrom-Json -NoEnumerate } else { @() }
$operatorType = if ($env:CMK_OPERATOR_PRINCIPAL_TYPE) { $env:CMK_OPERATOR_PRINCIPAL_TYPE } else { 'Group' }

$parameters = @{
    '$schema'      = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#'
    contentVersion = '1.0.0.0'
    parameters     = @{
        environmentName         = @{ value = $env:AZURE_ENV_NAME }
        appPrincipalId          = @{ value = $env:CMK_APP_PRINCIPAL_ID }
        appResourceGroup        = @{ value = $env:AZURE_RESOURCE_GROUP }
        storageAccountName      = @{ value = $env:AZURE_STORAGE_ACCOUNT_NAME }
        deadLetterContainerName = @{ value = $env:EVENT_DEAD_LETTER_CONTAINER }
        operatorPrincipalIds    = @{ value = $operators }
        operatorPrincipalType   = @{ value = $operatorType }
        tags                    = @{ value = @{ 'azd-env-name' = $env:AZURE_ENV_NAME } }
        vaults                  = @{ value = $vaults }
    }
}
$file = New-TemporaryFile
try {
    $parameters | ConvertTo-Json -Depth 10 | Set-Content -Path $file -Encoding utf8
    $arguments = @(
        'deployment', 'sub', 'create',
        '--name', "cmk-vaults-$($env:AZURE_ENV_NAME)",
        '--location', $env:AZURE_LOCATION,
        '--template-file', (Join-Path $PSScriptRoot '../app/vaults.bicep'),
        '--parameters', "@$file",
        '--output', 'none'
    )
    if ($env:AZURE_SUBSCRIPTION_ID) { $arguments += @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }
    Write-Host "postprovision: deploying the vault side (system topics, key roles) outside azd's deployment"
    az @arguments
    if ($LASTEXITCODE -ne 0) { throw "postprovision: az deployment sub create failed ($LASTEXITCODE)" }
    Write-Host 'postprovision: vault side in place'
}
finally {
    Remove-Item $file -ErrorAction SilentlyContinue
}
