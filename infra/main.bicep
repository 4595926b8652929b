// cmk-rotator: the whole deployment except the Event Grid subscriptions.
//
// Step 1 (this file, `azd provision` or `az deployment sub create`): resource group, storage,
// monitoring, Function app, alert topic and rules, a Key Vault system topic per vault, and
// every role assignment. Step 2 (app/event-subscriptions.bicep, run by the azd postdeploy hook
// or by hand) subscribes the functions to the system topics once the code is published,
// because Event Grid validates an AzureFunction endpoint when the subscription is created.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the environment; used to derive a unique token for every resource name.')
param environmentName string

@minLength(1)
@description('Region of the app (a region where the Flex Consumption plan is offered).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Name of the resource group to create; empty derives rg-{environmentName}.')
param resourceGroupName string = ''

@description('Key Vaults whose keys the app rotates: [{name, resourceGroup, subscriptionId, location, systemTopicName?}]. Each gets an Event Grid system topic in its own resource group (systemTopicName adopts the one a vault already has) and the key role for the app.')
param vaults array = []

@description('Further vault URLs the app may act on but that get no system topic (e.g. Managed HSM: https://{name}.managedhsm.azure.net). The sweep covers them.')
param additionalVaultUrls array = []

@description('Subscriptions whose Cognitive Services accounts the app manages; empty means this subscription only.')
param managedSubscriptionIds array = []

@description('CMK_ALLOWED_KEY_SIZES: comma-separated RSA sizes; Cognitive Services documents 2048 only.')
param allowedKeySizes string = '2048'

@minValue(1)
@maxValue(365)
@description('CMK_EXPIRY_MARGIN_DAYS: a version expiring within this many days is not bound.')
param expiryMarginDays int = 30

@description('CMK_ROTATE_ON_NEAR_EXPIRY: create a new key version on KeyNearExpiry when none exists.')
param rotateOnNearExpiry bool = true

@description('CMK_SWEEP_SCHEDULE: six-field NCRONTAB schedule of the inventory sweep.')
param sweepSchedule string = '0 0 * * * *'

@description('CMK_JOB_QUEUE: the per-account job queue; the host names its poison queue {name}-poison.')
param jobQueueName string = 'cmk-rotation-jobs'

@description('CMK_LEDGER_TABLE: the ledger table.')
param ledgerTableName string = 'cmkledger'

@description('CMK_DRY_RUN: plan and alert, never PATCH an account or create a key version.')
param dryRun bool = false

@allowed([
  'public'
  'china'
  'usgovernment'
])
@description('CMK_AZURE_CLOUD: the cloud the app talks to; defaults to the cloud of this deployment.')
param azureCloud string = environment().name == 'AzureChinaCloud' ? 'china' : (environment().name == 'AzureUSGovernment' ? 'usgovernment' : 'public')

@minValue(1)
@description('CMK_STALE_GRACE_HOURS: a binding older than the newest valid version for this long is a finding.')
param staleGraceHours int = 24

@minValue(10)
@description('CMK_UPDATE_TIMEOUT_SECONDS: how long a worker waits on one encryption update before a verify job takes over.')
param updateTimeoutSeconds int = 120

@minValue(1)
@description('CMK_MAX_CONCURRENCY: bound on parallel Azure calls of one invocation (fan-out, inline runs).')
param maxConcurrency int = 32

@description('E-mail address the action group notifies; empty for none.')
param alertEmailAddress string = ''

@secure()
@description('Webhook (Teams, PagerDuty, ...) the action group calls; empty for none. Secure: such URLs often embed a token.')
param alertWebhookUrl string = ''

@allowed([
  'CloudEventSchemaV1_0'
  'EventGridSchema'
])
@description('Schema of the alerts the app publishes to its custom topic.')
param alertTopicInputSchema string = 'CloudEventSchemaV1_0'

@minValue(40)
@maxValue(1000)
@description('Flex Consumption: upper bound of instances the queue worker scales out to.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption: memory per instance.')
param instanceMemoryMB int = 2048

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}cmk-${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}-${take(resourceToken, 7)}'
var deadLetterContainerName = 'eventgrid-deadletter'
var managedSubscriptions = empty(managedSubscriptionIds) ? [
  subscription().subscriptionId
] : managedSubscriptionIds

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module monitoring './app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
  }
}

module storage './app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    jobQueueName: jobQueueName
    ledgerTableName: ledgerTableName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module alerting './app/alerting.bicep' = {
  name: 'alerting'
  scope: rg
  params: {
    location: location
    tags: tags
    topicName: '${abbrs.eventGridDomainsTopics}cmk-alerts-${resourceToken}'
    actionGroupName: '${abbrs.insightsActionGroups}cmk-${resourceToken}'
    rulePrefix: '${abbrs.insightsScheduledQueryRules}cmk-${resourceToken}'
    alertEmailAddress: alertEmailAddress
    alertWebhookUrl: alertWebhookUrl
    alertTopicInputSchema: alertTopicInputSchema
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    poisonQueueName: storage.outputs.poisonQueueName
  }
}

module functionApp './app/function.bicep' = {
  name: 'function'
  scope: rg
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    cmkSettings: {
      CMK_VAULT_ALLOWLIST: join(concat(vaultUrls, additionalVaultUrls), ',')
      CMK_SUBSCRIPTIONS: join(managedSubscriptions, ',')
      CMK_ALLOWED_KEY_SIZES: allowedKeySizes
      CMK_EXPIRY_MARGIN_DAYS: string(expiryMarginDays)
      CMK_ROTATE_ON_NEAR_EXPIRY: string(rotateOnNearExpiry)
      CMK_SWEEP_SCHEDULE: sweepSchedule
      CMK_ALERT_TOPIC_ENDPOINT: alerting.outputs.topicEndpoint
      CMK_JOB_QUEUE: jobQueueName
      CMK_LEDGER_TABLE: ledgerTableName
      CMK_DRY_RUN: string(dryRun)
      CMK_AZURE_CLOUD: azureCloud
      CMK_STALE_GRACE_HOURS: string(staleGraceHours)
      CMK_UPDATE_TIMEOUT_SECONDS: string(updateTimeoutSeconds)
      CMK_MAX_CONCURRENCY: string(maxConcurrency)
    }
  }
}

var vaultUrls = [for v in vaults: 'https://${v.name}${environment().suffixes.keyvaultDns}']

// One Key Vault system topic per vault, in the vault's own subscription and resource group
// (a system topic lives next to its source). Its identity writes dead letters.
module vaultTopics './app/vault-topic.bicep' = [for v in vaults: {
  name: 'vault-topic-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    location: v.location
    tags: tags
    topicName: contains(v, 'systemTopicName') ? v.systemTopicName : '${abbrs.eventGridSystemTopics}${v.name}'
  }
}]

// Role assignments, one module per kind of scope (Bicep deploys to another scope only
// through a module): the app's own resource group, each managed subscription, each vault.
module rbac './app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    appPrincipalId: functionApp.outputs.principalId
    storageAccountName: storage.outputs.name
    deadLetterContainerName: deadLetterContainerName
    alertTopicName: alerting.outputs.topicName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    systemTopicPrincipalIds: [for (v, i) in vaults: vaultTopics[i].outputs.principalId]
  }
}

module rbacSubscriptions './app/rbac-subscription.bicep' = [for s in managedSubscriptions: {
  name: 'rbac-sub-${uniqueString(s, environmentName)}'
  scope: subscription(s)
  params: {
    appPrincipalId: functionApp.outputs.principalId
    environmentName: environmentName
  }
}]

// batchSize(1): vaults sharing a resource group share its custom role definition.
@batchSize(1)
module rbacVaults './app/rbac-vault.bicep' = [for v in vaults: {
  name: 'rbac-vault-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    appPrincipalId: functionApp.outputs.principalId
    vaultName: v.name
    environmentName: environmentName
  }
}]

// Outputs: azd stores them in the environment; the postdeploy hook reads the EVENT_* ones.
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output CMK_ALERT_TOPIC_ENDPOINT string = alerting.outputs.topicEndpoint
output EVENT_STORAGE_ACCOUNT_ID string = storage.outputs.id
output EVENT_DEAD_LETTER_CONTAINER string = deadLetterContainerName
output EVENT_VAULTS array = [for (v, i) in vaults: {
  subscriptionId: v.subscriptionId
  resourceGroup: v.resourceGroup
  systemTopicName: vaultTopics[i].outputs.name
}]
