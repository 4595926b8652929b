// Alerting: the Event Grid custom topic the app publishes its alerts to (consumers route them
// to mail, Teams, PagerDuty), an action group, log alert rules on the app's structured ERROR
// logs (customDimensions.cmk_alert_type), a rule on messages reaching the poison queue, and one
// on a timer sweep that keeps failing.
param location string
param tags object = {}
param topicName string
param actionGroupName string
param rulePrefix string
param applicationInsightsId string
param logAnalyticsWorkspaceId string
param poisonQueueName string

@description('E-mail address notified by the action group; empty for none.')
param alertEmailAddress string = ''

@secure()
@description('Webhook the action group calls; empty for none.')
param alertWebhookUrl string = ''

// Every cmk_alert_type the app logs, grouped by how urgent it is. Each rule splits on the
// type (a dimension), and alerts are stateful (autoMitigate): one alert per type until the
// condition clears, not one per evaluation.
var logAlertRules = [
  {
    name: 'update-failed'
    severity: 1
    description: 'An account could not be moved to a new key version (PATCH or verify failed), a new version failed validation, a Key Vault event could not be handled, a key could not be read (the app may not read it, or it is gone), or an event or queue message was malformed and dropped (log only).'
    alertTypes: [
      'account_update_failed'
      'version_rejected'
      'event_failed'
      'key_unreadable'
      'input_rejected'
    ]
  }
  {
    name: 'binding-at-risk'
    severity: 0
    description: 'An account is bound to an expired or unsafe version, or lost its identity: its data may become inaccessible.'
    alertTypes: [
      'key_expired_bound'
      'binding_unsafe'
      'identity_missing'
    ]
  }
  {
    name: 'findings'
    severity: 2
    description: 'Sweep findings: stale binding, key near expiry without a successor, vault without purge protection.'
    alertTypes: [
      'binding_stale'
      'key_near_expiry_unrotated'
      'vault_not_recoverable'
    ]
  }
]

resource alertTopic 'Microsoft.EventGrid/topics@2025-02-15' = {
  // checkov:skip=CKV_AZURE_193: the app (no VNet) publishes over the public endpoint; local (key) auth is off, so only principals with EventGrid Data Sender on this topic can publish.
  name: topicName
  location: location
  tags: tags
  // Lets consumers' subscriptions deliver with the topic's identity (deliveryWithResourceIdentity).
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    // The app publishes CloudEvents 1.0 only (cmk/adapters/alerts.py); a topic on another
    // schema would reject every alert.
    inputSchema: 'CloudEventSchemaV1_0'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
    minimumTlsVersionAllowed: '1.2'
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'cmkrotator'
    enabled: true
    emailReceivers: empty(alertEmailAddress) ? [] : [
      {
        name: 'cmk-email'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
    webhookReceivers: empty(alertWebhookUrl) ? [] : [
      {
        name: 'cmk-webhook'
        serviceUri: alertWebhookUrl
        useCommonAlertSchema: true
      }
    ]
  }
}

resource logAlerts 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for rule in logAlertRules: {
  name: '${rulePrefix}-${rule.name}'
  location: location
  tags: tags
  properties: {
    displayName: 'cmk-rotator: ${rule.name}'
    description: rule.description
    severity: rule.severity
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'traces | where severityLevel >= 3 | extend alertType = coalesce(tostring(customDimensions.cmk_alert_type), extract("cmk_alert_type=([a-z_]+)", 1, message)) | where alertType in (dynamic(${string(rule.alertTypes)})) | project timestamp, alertType, message'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          dimensions: [
            {
              name: 'alertType'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}]

// A message on the poison queue means a rotation job failed maxDequeueCount times. Log-based
// on the queue's own resource logs (StorageQueueLogs): the storage metric QueueMessageCount is
// account-wide (no per-queue dimension, the job queue's backlog would trip it) and hourly,
// and a rule on the on_poison function's own logs stays silent when the app is down.
resource poisonQueueAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${rulePrefix}-poison-queue'
  location: location
  tags: tags
  properties: {
    displayName: 'cmk-rotator: poison queue not empty'
    description: 'A rotation job reached ${poisonQueueName} after all retries.'
    severity: 1
    enabled: true
    scopes: [
      logAnalyticsWorkspaceId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'StorageQueueLogs | where OperationName == "PutMessage" | where StatusText == "Success" | where ObjectKey contains "/${poisonQueueName}"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The timer sweep is the safety net behind every event: a sweep that keeps failing (Resource
// Graph answering only part of the estate, storage or a role gone) leaves stale and unsafe
// bindings unfound, and a failing timer run is only an exception in the host's log. Every run
// is a request named after its function in Application Insights: the rule fires when every
// sweep of the last three hours failed (with the default hourly schedule, about three in a
// row; with a daily one, the day's run), so a single failure that the next run repairs stays
// quiet.
resource sweepFailingAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${rulePrefix}-sweep-failing'
  location: location
  tags: tags
  properties: {
    displayName: 'cmk-rotator: the timer sweep keeps failing'
    description: 'Every run of the sweep function in the last three hours failed: nothing catches what events missed.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT3H'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'requests | where name == "sweep" | summarize runs = count(), failed = countif(success == false) | where runs > 0 and failed == runs'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output topicName string = alertTopic.name
output topicId string = alertTopic.id
output topicEndpoint string = alertTopic.properties.endpoint
output actionGroupId string = actionGroup.id
