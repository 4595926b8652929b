// cmk-rotator: everything in the app's own resource group, and the grants on the managed
// subscriptions. `azd down` deletes every resource group of this subscription tagged
// azd-env-name=<environment name> (the tag `rg` below carries), whatever the deployment
// touched, and with --purge purges the Key Vaults in them (azure-dev,
// StandardDeployments.ListSubscriptionDeploymentResources). A vault's group holds the keys, so
// the preprovision and postprovision hooks refuse a vault group that is the app's or carries
// that tag (infra/hooks/app-group-guard.sh). Nothing here touches a vault's resource group
// either: the vault side lives in deployments azd neither records nor tears down
// (docs/deployment.md):
//
// Step 1 (this file, `azd provision` or `az deployment sub create`): resource group, the
//   app's user-assigned identity and its grants, storage, monitoring, the Function app, alert
//   topic and rules, and the account grants on each managed subscription.
// Step 2 (app/vaults.bicep, azd postprovision hook or by hand): a Key Vault system topic per
//   vault and the app's key role on each vault, in the vaults' own resource groups.
// Step 3 (app/event-subscriptions.bicep, azd postdeploy hook or by hand): subscribes the
//   functions to the system topics once the code is published and the functions are listed,
//   because Event Grid validates an AzureFunction endpoint when the subscription is created.
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

@description('Name of the app\'s own resource group; empty derives rg-{environmentName}. NEVER a Key Vault\'s resource group (nor a group holding anything else): it is tagged azd-env-name, and `azd down` deletes every group so tagged, keys included. The pre- and postprovision hooks refuse a group that is one of vaults[].resourceGroup in this subscription, and a vault group carrying the tag.')
param resourceGroupName string = ''

@description('Key Vaults whose keys the app rotates: [{name, resourceGroup, subscriptionId, location, systemTopicName?}]. They make CMK_VAULT_ALLOWLIST here; their system topics and key roles are deployed by app/vaults.bicep (step 2), outside what azd down deletes.')
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

@maxLength(52)
@description('CMK_JOB_QUEUE: the per-account job queue; the host names its poison queue {name}-poison, and HTTP operations run on {name}-ops (whose poison queue is {name}-ops-poison: hence at most 52 characters).')
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
@description('CMK_PATCH_TIMEOUT_SECONDS: how long the PATCH of an account\'s keyVersion may go unanswered; unanswered, its job keeps the account\'s write lease until it expires (the lease lasts at least twice this).')
param patchTimeoutSeconds int = 30

@minValue(0)
@description('CMK_ROTATE_COOLDOWN_MINUTES: POST /api/rotate refuses a second rotation of one key within this many minutes unless forced; 0 turns it off.')
param rotateCooldownMinutes int = 10

@minValue(0)
@maxValue(300)
@description('CMK_KEY_CACHE_SECONDS: how long one instance reuses what it read of a key version (at most 300); 0 reads Key Vault for every job.')
param keyCacheSeconds int = 30

@minValue(0)
@description('CMK_WRITE_LEASE_SECONDS: how long a crashed job blocks its account (0: the update timeout plus a minute).')
param writeLeaseSeconds int = 0

@minValue(0)
@maxValue(220)
@description('CMK_HTTP_ANSWER_SECONDS: how long GET /api/status, GET /api/plan and POST /api/sweep wait for their work before answering 202 with a status URL (Azure ends an HTTP request after 230 s).')
param httpAnswerSeconds int = 120

@minValue(1)
@description('CMK_OPERATION_DEADLINE_MINUTES: an accepted status, plan or sweep not finished this long after it was accepted is answered as failed at its status URL.')
param operationDeadlineMinutes int = 60

@minValue(1)
@description('CMK_OPERATION_RETENTION_HOURS: how long a finished operation answers at its status URL.')
param operationRetentionHours int = 24

@minValue(1)
@maxValue(1024)
@description('CMK_MAX_CONCURRENCY: accounts one inline run updates at once per subscription, and the bound on parallel reads of one invocation (fan-out); the app refuses more than 1024.')
param maxConcurrency int = 32

@description('E-mail address the action group notifies; empty for none.')
param alertEmailAddress string = ''

@secure()
@description('Webhook (Teams, PagerDuty, ...) the action group calls; empty for none. Secure: such URLs often embed a token.')
param alertWebhookUrl string = ''

@allowed([
  'UserAssigned'
  'SystemAssigned'
])
@description('UserAssigned (default, as the Azure-Samples Flex templates): a user-assigned identity is created and granted before the app exists. SystemAssigned: the app runs as its own identity, granted after the app is created.')
param appIdentityType string = 'UserAssigned'

@description('Principal ids (object ids) of operators, people or a group, who run the cmk CLI against this deployment: they get the ledger and queue data roles, the alert sender role, the account role on each managed subscription and (step 2) the key role on each vault, as the app has; besides, Storage Blob Data Reader on the dead-letter container only (cmk replay), read access to the role assignments on those subscriptions and vaults (cmk smoke), and the app operator role on the Function app (its settings, functions and function keys, for the az commands of docs/deployment.md).')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalIds; a group is the usual choice.')
param operatorPrincipalType string = 'Group'

@minValue(40)
@maxValue(1000)
@description('Flex Consumption: upper bound of instances the queue worker scales out to (40 is the platform floor). Each instance runs up to host.json\'s queue batch of jobs; see docs/deployment.md for the ARM write budget this must respect.')
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
var userAssigned = appIdentityType == 'UserAssigned'

resource rg 'Microsoft.Resources/resourceGroups@2024-11-01' = {
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

// Created first: the grants below go to it before the Function app exists.
module identity './app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    location: location
    tags: tags
    name: '${abbrs.managedIdentityUserAssignedIdentities}cmk-${resourceToken}'
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
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    poisonQueueName: storage.outputs.poisonQueueName
  }
}

module functionApp './app/function.bicep' = {
  name: 'function'
  scope: rg
  // The host reads its storage and writes telemetry from its first start: with the
  // user-assigned identity its grants are in place before the app exists.
  dependsOn: [
    rbacBeforeApp
  ]
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
    identityType: appIdentityType
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
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
      CMK_PATCH_TIMEOUT_SECONDS: string(patchTimeoutSeconds)
      CMK_MAX_CONCURRENCY: string(maxConcurrency)
      CMK_ROTATE_COOLDOWN_MINUTES: string(rotateCooldownMinutes)
      CMK_KEY_CACHE_SECONDS: string(keyCacheSeconds)
      CMK_WRITE_LEASE_SECONDS: writeLeaseSeconds == 0 ? '' : string(writeLeaseSeconds)
      CMK_HTTP_ANSWER_SECONDS: string(httpAnswerSeconds)
      CMK_OPERATION_DEADLINE_MINUTES: string(operationDeadlineMinutes)
      CMK_OPERATION_RETENTION_HOURS: string(operationRetentionHours)
    }
  }
}

var vaultUrls = [for v in vaults: 'https://${v.name}${environment().suffixes.keyvaultDns}']

// The vault side as app/vaults.bicep and app/event-subscriptions.bicep take it.
var vaultSides = [for v in vaults: {
  name: v.name
  subscriptionId: v.subscriptionId
  resourceGroup: v.resourceGroup
  location: v.location
  systemTopicName: contains(v, 'systemTopicName') ? v.systemTopicName : '${abbrs.eventGridSystemTopics}${v.name}'
  // A topic named by the user already exists: step 2 reads it and leaves it as it is.
  adopt: contains(v, 'systemTopicName')
}]

// The principal every grant goes to.
var appPrincipalId = userAssigned ? identity.outputs.principalId : functionApp.outputs.systemAssignedPrincipalId

// Grants in the app's own resource group. Two declarations of one module, exactly one of
// which deploys (a loop over zero or one element; checkov does not scan `= if` resources):
// with the user-assigned identity the grants come before the app (the app depends on them),
// with the system-assigned one they can only follow it.
module rbacBeforeApp './app/rbac.bicep' = [for i in range(0, userAssigned ? 1 : 0): {
  name: 'rbac-before-app-${i}'
  scope: rg
  params: {
    appPrincipalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    alertTopicName: alerting.outputs.topicName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}]

module rbacAfterApp './app/rbac.bicep' = [for i in range(0, userAssigned ? 0 : 1): {
  name: 'rbac-after-app-${i}'
  scope: rg
  params: {
    appPrincipalId: functionApp.outputs.systemAssignedPrincipalId
    storageAccountName: storage.outputs.name
    deadLetterContainerName: storage.outputs.deadLetterContainerName
    alertTopicName: alerting.outputs.topicName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}]

// The operators' role on the Function app: what the az commands of docs/deployment.md
// "Operating from your shell" need of it, nothing more. Why each action (Microsoft's operations
// list for Microsoft.Web; the az CLI requests in brackets):
// - sites/read: `az functionapp show` (the host name), `az functionapp identity show`, and the
//   GET of the site that `az functionapp config appsettings list` makes to tell a Flex
//   Consumption app [GET sites/{name}].
// - sites/config/list/action: `az functionapp config appsettings list`, the app's CMK_*
//   settings loaded into the shell [POST sites/{name}/config/appsettings/list]. It lists every
//   app setting; this template puts no secret in them (connections are identity-based).
// - sites/functions/listkeys/action: `az functionapp function keys list`, the keys of
//   http_status and http_operation that call /api/status and its status URL [POST
//   sites/{name}/functions/{function}/listkeys]. Not sites/host/listkeys/action: that
//   answer carries the master key, which opens the Functions admin API (invoke any
//   function, write keys).
// - sites/functions/read: `az functionapp function list`, the functions the smoke test
//   and the postdeploy hook look for [GET sites/{name}/functions].
// Not included: config/write, restart, publish, host keys, function or host key writes. Defined at this
// subscription (where `az role definition delete --scope /subscriptions/<id>` finds it after
// `azd down`); assigned on the app only (app/rbac-function.bicep), to operators only.
var appOperatorActions = [
  'Microsoft.Web/sites/read'
  'Microsoft.Web/sites/config/list/action'
  'Microsoft.Web/sites/functions/listkeys/action'
  'Microsoft.Web/sites/functions/read'
]

resource appOperatorRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'cmk-rotator-app-operator', environmentName)
  properties: {
    roleName: 'CMK rotator app operator (${environmentName}, ${subscription().subscriptionId})'
    description: 'Reads the cmk-rotator Function app, its settings, functions and function keys, for operators; changes nothing.'
    type: 'CustomRole'
    permissions: [
      {
        actions: appOperatorActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: [
      subscription().id
    ]
  }
}

module rbacFunction './app/rbac-function.bicep' = {
  name: 'rbac-function'
  scope: rg
  params: {
    functionAppName: functionApp.outputs.name
    roleDefinitionId: appOperatorRole.id
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}

// The account grants on each managed subscription. A role assignment at subscription scope
// lives in no resource group, so azd down deletes nothing there (nor these grants).
module rbacSubscriptions './app/rbac-subscription.bicep' = [for s in managedSubscriptions: {
  name: 'rbac-sub-${uniqueString(s, environmentName)}'
  scope: subscription(s)
  params: {
    appPrincipalId: appPrincipalId
    environmentName: environmentName
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}]

// Outputs: azd stores them in the environment; the hooks read CMK_APP_PRINCIPAL_ID and EVENT_*.
output AZURE_LOCATION string = location
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output CMK_APP_IDENTITY_TYPE string = appIdentityType
output CMK_APP_PRINCIPAL_ID string = appPrincipalId
output CMK_APP_CLIENT_ID string = userAssigned ? identity.outputs.clientId : ''
output CMK_OPERATOR_PRINCIPAL_IDS array = operatorPrincipalIds
output CMK_OPERATOR_PRINCIPAL_TYPE string = operatorPrincipalType
output CMK_ALERT_TOPIC_ENDPOINT string = alerting.outputs.topicEndpoint
output EVENT_STORAGE_ACCOUNT_ID string = storage.outputs.id
output EVENT_DEAD_LETTER_CONTAINER string = deadLetterContainerName
output EVENT_VAULTS array = vaultSides
// Ends the names of this environment's event subscriptions (cmk-key-new-version-{suffix}, ...):
// unique per subscription, environment and region, so environments sharing a vault keep apart.
output EVENT_SUBSCRIPTION_SUFFIX string = resourceToken
