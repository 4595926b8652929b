# azd postdeploy hook (Windows): step 2 of the deployment, as postdeploy.sh. The functions now
# exist, so Event Grid can validate them: subscribe them to each vault's system topic.
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_ENV_NAME', 'AZURE_LOCATION', 'AZURE_FUNCTION_APP_ID', 'EVENT_STORAGE_ACCOUNT_ID', 'EVENT_DEAD_LETTER_CONTAINER') {
    if (-not (Get-Item "env:$name" -ErrorAction SilentlyContinue)) {
        throw "postdeploy: $name is not set; run through azd, or set the outputs of main.bicep"
    }
}
$vaults = if ($env:EVENT_VAULTS) { $env:EVENT_VAULTS | ConvertFrom-Json -NoEnumerate } else { @() }
if ($vaults.Count -eq 0) {
    Write-Host 'postdeploy: no vaults configured (CMK_VAULTS); no event subscriptions to create.'
    exit 0
}

$parameters = @{
    '$schema'      = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#'
    contentVersion = '1.0.0.0'
    parameters     = @{
        functionAppId           = @{ value = $env:AZURE_FUNCTION_APP_ID }
        storageAccountId        = @{ value = $env:EVENT_STORAGE_ACCOUNT_ID }
        deadLetterContainerName = @{ value = $env:EVENT_DEAD_LETTER_CONTAINER }
        vaults                  = @{ value = $vaults }
    }
}
$file = New-TemporaryFile
try {
    $parameters | ConvertTo-Json -Depth 10 | Set-Content -Path $file -Encoding utf8
    $arguments = @(
        'deployment', 'sub', 'create',
        '--name', "cmk-event-subscriptions-$($env:AZURE_ENV_NAME)",
        '--location', $env:AZURE_LOCATION,
        '--template-file', (Join-Path $PSScriptRoot '../app/event-subscriptions.bicep'),
        '--parameters', "@$file",
        '--output', 'none'
    )
    if ($env:AZURE_SUBSCRIPTION_ID) { $arguments += @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }
    Write-Host "postdeploy: subscribing the functions to the vaults' system topics"
    az @arguments
    if ($LASTEXITCODE -ne 0) { throw "postdeploy: az deployment sub create failed ($LASTEXITCODE)" }
    Write-Host 'postdeploy: event subscriptions in place'
}
finally {
    Remove-Item $file -ErrorAction SilentlyContinue
}
