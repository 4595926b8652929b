// The app's role assignments in its own resource group. Every assignment is named
// guid(scope, principal, role) so a redeploy finds it again (idempotent), and says why it is
// needed. The grants on the managed subscriptions are in rbac-subscription.bicep, those on the
// vaults in rbac-vault.bicep and the system topics' dead-letter grant in rbac-dead-letter.bicep
// (both deployed by vaults.bicep): Bicep reaches another scope only through a module.
param appPrincipalId string
param storageAccountName string

@description('The container the vaults\' system topics dead-letter into (operators read it to replay).')
param deadLetterContainerName string
param alertTopicName string
param applicationInsightsName string

@description('Principal ids of operators (people or a group) who run the cmk CLI against this deployment.')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalIds.')
param operatorPrincipalType string = 'Group'

// Built-in role definition ids (the same in every cloud).
var roles = {
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  eventGridDataSender: 'd5a91429-5739-47e2-a06b-3470a27159e7'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${deadLetterContainerName}'
}

resource alertTopic 'Microsoft.EventGrid/topics@2025-02-15' existing = {
  name: alertTopicName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Why: the queue trigger reads, deletes and re-queues job messages, the host moves failures to
// the poison queue, and the planners enqueue one job per account. Own account only.
resource appQueueData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, roles.storageQueueDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: the ledger (one row per account and target version) and the near-expiry claim (an
// atomic Table insert) are rows in the app's table. Own account only.
resource appTableData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, roles.storageTableDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: the Functions host keeps its leases and timer state in blobs (AzureWebJobsStorage) and
// Flex Consumption reads the deployment package from the deployment container with this
// identity; the host's blob lease handling needs Owner, as in the azd Functions templates.
resource appBlobData 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storageAccount.id, appPrincipalId, roles.storageBlobDataOwner)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: the app publishes alerts to its own custom topic with Entra ID (the topic's local auth
// is disabled). Scoped to that topic only.
resource appAlertTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(alertTopic.id, appPrincipalId, roles.eventGridDataSender)
  scope: alertTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: Application Insights has local auth disabled, so the app sends its telemetry (and the
// ERROR logs the alert rules fire on) with its identity. Scoped to that component only.
resource appTelemetryPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Why: operators run `cmk status`, `history`, `sweep`, `rotate` and `replay` from their shell
// against this deployment: they read and write the ledger table (status, history, the
// records of what they move), and enqueue jobs (`rotate --enqueue`, `replay`). Shared-key
// access is off, so these are data roles. Own account only; blobs: the dead-letter container
// alone, read-only (operatorDeadLetterReader).
resource operatorQueueData 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(storageAccount.id, principalId, roles.storageQueueDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

// Why: see operatorQueueData; the ledger and the near-expiry claims are table rows.
resource operatorTableData 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(storageAccount.id, principalId, roles.storageTableDataContributor)
  scope: storageAccount
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

// Why: `cmk sweep` run by an operator raises the same alerts as the timer's sweep, through
// the same topic (local auth off). Scoped to that topic only.
resource operatorAlertTopicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(alertTopic.id, principalId, roles.eventGridDataSender)
  scope: alertTopic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventGridDataSender)
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]

// Why: `cmk replay` takes the events Event Grid dead-lettered; with shared keys off, operators
// download them with `az storage blob download-batch --auth-mode login`. Read only, on the
// dead-letter container only: not the host's leases, not the deployment package.
resource operatorDeadLetterReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for principalId in operatorPrincipalIds: {
  name: guid(deadLetterContainer.id, principalId, roles.storageBlobDataReader)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: principalId
    principalType: operatorPrincipalType
  }
}]
