// The three subscriptions on one vault's system topic, one per Key Vault event type, each
// delivered to its function. Delivery is at least once and unordered; the functions re-read
// the key and the accounts, so duplicates are harmless. Retries and dead-lettering are set
// explicitly: after maxDeliveryAttempts or eventTimeToLiveInMinutes the event goes to the
// dead-letter container, written with the topic's own identity (no storage key), and the
// sweep catches anything it stood for.
param systemTopicName string
param functionAppId string

// Event subscription names are unique per system topic, and a vault has one system topic: two
// environments (or two apps) on one vault must not share a name, or each deployment overwrites
// the other's subscriptions and a teardown deletes them. So every name ends in the
// environment's resource token (main.bicep output EVENT_SUBSCRIPTION_SUFFIX).
@minLength(1)
@maxLength(44)
@description('Ends each subscription name (cmk-key-new-version-{suffix}, ...): letters, digits and hyphens only (Event Grid names: 3-64 of those); the environment\'s resource token.')
param nameSuffix string
param storageAccountId string
param deadLetterContainerName string
param maxDeliveryAttempts int = 30
param eventTimeToLiveInMinutes int = 1440

var retryPolicy = {
  maxDeliveryAttempts: maxDeliveryAttempts
  eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
}

var deadLetter = {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: storageAccountId
      blobContainerName: deadLetterContainerName
    }
  }
}

// Key Vault also publishes secret and certificate events; only keys concern us.
var keysOnly = [
  {
    operatorType: 'StringIn'
    key: 'data.ObjectType'
    values: [
      'Key'
    ]
  }
]

resource systemTopic 'Microsoft.EventGrid/systemTopics@2025-02-15' existing = {
  name: systemTopicName
}

resource keyNewVersion 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: 'cmk-key-new-version-${nameSuffix}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/on_key_new_version'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.KeyNewVersionCreated'
      ]
      advancedFilters: keysOnly
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

resource keyNearExpiry 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: 'cmk-key-near-expiry-${nameSuffix}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/on_key_near_expiry'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.KeyNearExpiry'
      ]
      advancedFilters: keysOnly
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

resource keyExpired 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2025-02-15' = {
  parent: systemTopic
  name: 'cmk-key-expired-${nameSuffix}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/on_key_expired'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.KeyVault.KeyExpired'
      ]
      advancedFilters: keysOnly
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}
