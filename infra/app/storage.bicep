// The app's own storage account: AzureWebJobsStorage (identity-based), the Flex deployment
// container, the job queue, its poison queue and the HTTP operations queue, the ledger table,
// and the container Event Grid dead-letters into. Shared-key access is off: every client uses
// Entra ID.
param location string
param tags object = {}
param name string
param deploymentContainerName string
param deadLetterContainerName string
param jobQueueName string
param ledgerTableName string
param logAnalyticsWorkspaceId string

@allowed([
  'Standard_GRS'
  'Standard_ZRS'
  'Standard_GZRS'
  'Standard_RAGRS'
  'Standard_RAGZRS'
])
@description('Replication; redundant by default because the ledger is the rotation history.')
param skuName string = 'Standard_GRS'

var poisonQueueName = '${jobQueueName}-poison'
var operationQueueName = '${jobQueueName}-ops'

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: without VNet integration the Flex app reaches storage over the public endpoint; access is Entra ID only (shared key off). docs/deployment.md describes the private variant.
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35; network isolation needs the VNet variant.
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deadLetterContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
}

resource jobQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: jobQueueName
}

// The host creates it on the first poison message; creating it up front lets the alert rule
// and the on_poison trigger exist from day one.
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: poisonQueueName
}

// The queue of accepted /api/status and /api/sweep calls (run_operation). The app creates it
// on first use too; declaring it keeps every queue of the app in one place.
resource operationQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: operationQueueName
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
}

resource ledgerTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: ledgerTableName
}

// Queue resource logs feed the poison-queue alert (alerting.bicep, on PutMessage) and answer
// "who added or removed job messages". Writes and deletes only: StorageRead (every GetMessages
// poll of every instance) is the bulk of the volume and no alert or question needs it.
resource queueDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'queue-logs'
  scope: queueService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

output name string = storageAccount.name
output id string = storageAccount.id
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
output queueEndpoint string = storageAccount.properties.primaryEndpoints.queue
output tableEndpoint string = storageAccount.properties.primaryEndpoints.table
output jobQueueName string = jobQueue.name
output poisonQueueName string = poisonQueue.name
output ledgerTableName string = ledgerTable.name
output deadLetterContainerName string = deadLetterContainer.name
output deploymentContainerName string = deploymentContainer.name
