// Step 2 of the deployment: the vault side. For each vault, in the vault's own subscription
// and resource group, an Event Grid system topic and the app's key role; in the app's resource
// group, the topics' dead-letter grant. It is a deployment of its own, never a module of
// main.bicep: `azd down` deletes every resource group that a deployment it made has touched
// (Azure/azure-dev#2916), and a vault's resource group holds the keys. The azd postprovision
// hook (infra/hooks/) runs it after main.bicep, before the code is published, or
//   az deployment sub create --location <region> \
//     --template-file infra/app/vaults.bicep --parameters @<file>
// with the values main.bicep outputs (docs/deployment.md). `azd down` leaves all of it in place.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('The azd environment name (main.bicep environmentName); names the custom key role.')
param environmentName string

@description('Principal the key role is granted to (main.bicep output CMK_APP_PRINCIPAL_ID).')
param appPrincipalId string

@description('The app\'s resource group (AZURE_RESOURCE_GROUP).')
param appResourceGroup string

@description('The app storage account (AZURE_STORAGE_ACCOUNT_NAME).')
param storageAccountName string

@description('Dead-letter container (EVENT_DEAD_LETTER_CONTAINER).')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('The vaults: [{name, subscriptionId, resourceGroup, location, systemTopicName}] (EVENT_VAULTS).')
param vaults array

@description('Principal ids of operators granted the key role too (main.bicep output CMK_OPERATOR_PRINCIPAL_IDS).')
param operatorPrincipalIds array = []

@allowed([
  'User'
  'Group'
  'ServicePrincipal'
])
@description('Principal type of operatorPrincipalIds (CMK_OPERATOR_PRINCIPAL_TYPE).')
param operatorPrincipalType string = 'Group'

@description('Tags of the system topics the template creates.')
param tags object = {}

// One Key Vault system topic per vault (a system topic lives next to its source). Its
// identity writes dead letters.
module vaultTopics './vault-topic.bicep' = [for v in vaults: {
  name: 'cmk-vault-topic-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    vaultName: v.name
    location: v.location
    tags: tags
    topicName: v.systemTopicName
  }
}]

// batchSize(1): vaults sharing a resource group share its custom role definition.
@batchSize(1)
module rbacVaults './rbac-vault.bicep' = [for v in vaults: {
  name: 'cmk-rbac-vault-${uniqueString(v.subscriptionId, v.resourceGroup, v.name)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    appPrincipalId: appPrincipalId
    vaultName: v.name
    environmentName: environmentName
    operatorPrincipalIds: operatorPrincipalIds
    operatorPrincipalType: operatorPrincipalType
  }
}]

module deadLetterWriters './rbac-dead-letter.bicep' = {
  name: 'cmk-rbac-dead-letter-${uniqueString(environmentName)}'
  scope: resourceGroup(appResourceGroup)
  params: {
    storageAccountName: storageAccountName
    deadLetterContainerName: deadLetterContainerName
    systemTopicPrincipalIds: [for (v, i) in vaults: vaultTopics[i].outputs.principalId]
  }
}

output systemTopicIds array = [for (v, i) in vaults: vaultTopics[i].outputs.id]
