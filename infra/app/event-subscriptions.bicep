// Step 2 of the deployment: subscribe the functions to each vault's system topic. Run after
// the code is published (Event Grid validates an AzureFunction endpoint when a subscription is
// created, so the functions must exist): the azd postdeploy hook (infra/hooks/) runs it, or
//   az deployment sub create --location <region> \
//     --template-file infra/app/event-subscriptions.bicep --parameters @<file>
// with the values main.bicep outputs (docs/deployment.md).
targetScope = 'subscription'

@description('Resource id of the Function app (main.bicep output AZURE_FUNCTION_APP_ID).')
param functionAppId string

@description('Resource id of the app storage account (EVENT_STORAGE_ACCOUNT_ID).')
param storageAccountId string

@description('Dead-letter container (EVENT_DEAD_LETTER_CONTAINER).')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('The system topics: [{subscriptionId, resourceGroup, systemTopicName}] (EVENT_VAULTS).')
param vaults array

@minLength(1)
@maxLength(44)
@description('Ends the name of each event subscription, so that two environments on one vault keep theirs apart: main.bicep output EVENT_SUBSCRIPTION_SUFFIX (the environment\'s resource token).')
param subscriptionNameSuffix string

@minValue(1)
@maxValue(30)
@description('Delivery attempts before an event is dead-lettered.')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes Event Grid keeps retrying an event before it is dead-lettered.')
param eventTimeToLiveInMinutes int = 1440

module vaultSubscriptions './vault-event-subscriptions.bicep' = [for v in vaults: {
  name: 'cmk-evsub-${uniqueString(v.subscriptionId, v.resourceGroup, v.systemTopicName)}'
  scope: resourceGroup(v.subscriptionId, v.resourceGroup)
  params: {
    systemTopicName: v.systemTopicName
    nameSuffix: subscriptionNameSuffix
    functionAppId: functionAppId
    storageAccountId: storageAccountId
    deadLetterContainerName: deadLetterContainerName
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
}]
