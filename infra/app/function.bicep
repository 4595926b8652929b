// The Function app on the Flex Consumption plan: Python 3.11, HTTPS only, TLS 1.2, FTPS off.
// Its identity is the user-assigned one from identity.bicep (created and granted before the
// app, as in the Azure-Samples Flex templates) or, with identityType 'SystemAssigned', its own.
// AzureWebJobsStorage is identity-based (account name and service URIs, no key), the
// deployment package and App Insights use the same identity, and every CMK_* setting comes
// from main.bicep's parameters through cmkSettings.
param location string
param tags object = {}
param name string
param planName string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048

@allowed([
  'UserAssigned'
  'SystemAssigned'
])
@description('UserAssigned: the app runs as identityId (granted before the app exists). SystemAssigned: its own identity.')
param identityType string = 'UserAssigned'

@description('Resource id of the user-assigned identity (identity.bicep); used when identityType is UserAssigned.')
param identityId string

@description('Client id of the user-assigned identity; used when identityType is UserAssigned.')
param identityClientId string

@description('The CMK_* app settings, built in main.bicep from its parameters.')
param cmkSettings object

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// The CMK_* settings, as the name/value list siteConfig.appSettings takes.
var cmkAppSettings = [for setting in items(cmkSettings): {
  name: setting.key
  value: setting.value
}]

var userAssigned = identityType == 'UserAssigned'

// With a user-assigned identity every client must be told which identity to use: the
// Functions host's storage connection (AzureWebJobsStorage__clientId), the app's own
// DefaultAzureCredential (AZURE_CLIENT_ID; with only that variable set, EnvironmentCredential
// stays out of the way and ManagedIdentityCredential picks this client id), and App Insights.
var identitySettings = userAssigned ? [
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
] : []

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption zone redundancy is offered in a subset of regions only; enable zoneRedundant on the plan where the region supports it.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Event Grid delivers to AzureFunction endpoints over the public endpoint (it cannot reach a private endpoint); HTTP functions require function keys.
  // checkov:skip=CKV_AZURE_17: Event Grid and the queue/timer triggers present no client certificate; HTTP endpoints are function-key protected and HTTPS only.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales per trigger from zero; there is no fixed instance count to set.
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no health-check path; the app serves triggers, not a web front end.
  // checkov:skip=CKV_AZURE_71: the identity is `identityType == 'UserAssigned' ? UserAssigned : SystemAssigned`, which checkov cannot evaluate; both branches are a managed identity (tests/infra assert them).
  // checkov:skip=CKV_AZURE_16: same conditional identity as CKV_AZURE_71; the app is a managed-identity client, HTTP endpoints take function keys.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'cmk'
  })
  kind: 'functionapp,linux'
  identity: userAssigned ? {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  } : {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      // Identity-based AzureWebJobsStorage: account name plus explicit service URIs (they carry
      // the cloud's DNS suffix, which matters in sovereign clouds). No key, no connection string.
      appSettings: concat(cmkAppSettings, identitySettings, [
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storageAccount.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__blobServiceUri'
          value: storageAccount.properties.primaryEndpoints.blob
        }
        {
          name: 'AzureWebJobsStorage__queueServiceUri'
          value: storageAccount.properties.primaryEndpoints.queue
        }
        {
          name: 'AzureWebJobsStorage__tableServiceUri'
          value: storageAccount.properties.primaryEndpoints.table
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: userAssigned ? 'ClientId=${identityClientId};Authorization=AAD' : 'Authorization=AAD'
        }
      ])
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageAccount.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: userAssigned ? {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          } : {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// Basic-auth publishing (FTP and SCM with a password) off: deploy with Entra ID only.
resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = functionApp.name
output id string = functionApp.id
// The app's own principal when it runs as its system-assigned identity; empty otherwise
// (main.bicep then grants the user-assigned identity).
output systemAssignedPrincipalId string = userAssigned ? '' : functionApp.identity.principalId
output defaultHostName string = functionApp.properties.defaultHostName
