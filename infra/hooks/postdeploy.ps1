# azd postdeploy hook (Windows): step 3 of the deployment, as postdeploy.sh. Waits (bounded)
# until the app lists its event functions, since Event Grid validates an AzureFunction endpoint
# when a subscription is created, then subscribes them to each vault's system topic, under
# names that end in EVENT_SUBSCRIPTION_SUFFIX (environments sharing a vault keep theirs apart).
$ErrorActionPreference = 'Stop'

foreach ($name in 'AZURE_ENV_NAME', 'AZURE_LOCATION', 'AZURE_RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_ID', 'EVENT_STORAGE_ACCOUNT_ID', 'EVENT_DEAD_LETTER_CONTAINER', 'EVENT_SUBSCRIPTION_SUFFIX') {
    if (-not (Get-Item "env:$name" -ErrorAction SilentlyContinue)) {
        throw "postdeploy: $name is not set; run through azd, or set the outputs of main.bicep"
    }
}
$vaults = if ($env:EVENT_VAULTS) { $env:EVENT_VAULTS | ConvertFrom-Json -NoEnumerate } else { @() }
if ($vaults.Count -eq 0) {
    Write-Host 'postdeploy: no vaults configured (CMK_VAULTS); no event subscriptions to create.'
    exit 0
}

$attempts = if ($env:CMK_FUNCTIONS_WAIT_ATTEMPTS) { [int]$env:CMK_FUNCTIONS_WAIT_ATTEMPTS } else { 40 }
$interval = if ($env:CMK_FUNCTIONS_WAIT_SECONDS) { [int]$env:CMK_FUNCTIONS_WAIT_SECONDS } else { 15 }
$functions = @('on_key_new_version', 'on_key_near_expiry', 'on_key_expired')
for ($attempt = 1; ; $attempt++) {
    $list = @('functionapp', 'function', 'list', '--resource-group', $env:AZURE_RESOURCE_GROUP,
        '--name', $env:AZURE_FUNCTION_APP_NAME, '--query', '[].name', '--output', 'tsv')
    if ($env:AZURE_SUBSCRIPTION_ID) { $list += @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }
    $listed = @(az @list 2>$null | ForEach-Object { ($_ -split '/')[-1] })
    $missing = @($functions | Where-Object { $listed -notcontains $_ })
    if ($missing.Count -eq 0) { break }
    if ($attempt -ge $attempts) {
        throw "postdeploy: after $attempts attempts the app still does not list: $($missing -join ', '); rerun 'azd hooks run postdeploy' once it does"
    }
    Write-Host "postdeploy: waiting for the functions to be listed (missing: $($missing -join ', '); attempt $attempt/$attempts)"
    Start-Sleep -Seconds $interval
}
Write-Host "postdeploy: functions listed: $($functions -join ', ')"

$parameters = @{
    '$schema'      = 'https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#'
    contentVersion = '1.0.0.0'
    parameters     = @{
        functionAppId           = @{ value = $env:AZURE_FUNCTION_APP_ID }
        storageAccountId        = @{ value = $env:EVENT_STORAGE_ACCOUNT_ID }
        deadLetterContainerName = @{ value = $env:EVENT_DEAD_LETTER_CONTAINER }
        subscriptionNameSuffix  = @{ value = $env:EVENT_SUBSCRIPTION_SUFFIX }
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
