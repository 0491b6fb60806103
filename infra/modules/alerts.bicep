// Alerts for on-call (docs/alerts.md). They are created whether or not an action group is given:
// without one they still fire and show in Azure Monitor > Alerts (and its API), they just notify nobody.

@description('Prefix of the alert rule names.')
param namePrefix string

@description('Region of the log alert rules (metric alerts are global).')
param location string

@description('Tags for the alert rules.')
param tags object

@description('Resource id of the Log Analytics workspace behind Application Insights.')
param workspaceId string

@description('Name of the app\'s storage account (same resource group).')
param storageAccountName string

@description('Resource id of an existing action group; empty: no notification.')
param actionGroupId string = ''

var actionGroups = empty(actionGroupId) ? [] : [actionGroupId]

// One alert per cluster: on-call sees which cluster failed in the alert itself.
var clusterDimension = [
  {
    name: 'cluster_id'
    operator: 'Include'
    values: ['*']
  }
]

// One alert per key (events about a key, not a cluster).
var keyDimension = [
  {
    name: 'key'
    operator: 'Include'
    values: ['*']
  }
]

// Each log alert: a KQL query over AppTraces (App Insights traces in the workspace). The app logs a stable
// event name as the message and its fields (outcome, cluster_id, event_id, reason) as custom dimensions,
// which arrive in the Properties column.
var logAlerts = [
  {
    key: 'cluster-failed'
    displayName: 'cmk-rotator: cluster rotation failed'
    description: 'A cluster could not be moved to the new key version after retries (rotation.cluster_failed). Runbook: docs/runbook.md#cluster-failed.'
    severity: 1
    dimensions: clusterDimension
    query: '''
AppTraces
| where Message == "rotation.cluster_failed"
| extend cluster_id = tostring(Properties["cluster_id"]), reason = tostring(Properties["reason"])
| project TimeGenerated, cluster_id, reason, event_id = tostring(Properties["event_id"])
'''
  }
  {
    key: 'key-not-usable'
    displayName: 'cmk-rotator: new key version not usable'
    description: 'A rotation was refused because the target key version is disabled, expired, not yet valid, of the wrong type or lacks wrapKey/unwrapKey (outcome key-not-usable). Runbook: docs/runbook.md#key-not-usable.'
    severity: 1
    dimensions: clusterDimension
    query: '''
AppTraces
| where tostring(Properties["outcome"]) == "key-not-usable"
| extend cluster_id = tostring(Properties["cluster_id"]), reason = tostring(Properties["reason"])
| project TimeGenerated, cluster_id, reason, event_id = tostring(Properties["event_id"])
'''
  }
  {
    key: 'collateral-change'
    displayName: 'cmk-rotator: a rotation changed more than the key'
    description: 'The cluster GET after a rotation differs from the one before it outside the key URL and status fields (rotation.collateral_change; a PUT replaces the resource). Runbook: docs/runbook.md#collateral-change.'
    severity: 2
    dimensions: clusterDimension
    query: '''
AppTraces
| where Message == "rotation.collateral_change"
| extend cluster_id = tostring(Properties["cluster_id"]), changed_paths = tostring(Properties["changed_paths"])
| project TimeGenerated, cluster_id, changed_paths, event_id = tostring(Properties["event_id"])
'''
  }
  {
    key: 'job-poisoned'
    displayName: 'cmk-rotator: rotation job moved to the poison queue'
    description: 'The Functions host gave up on a rotation job after maxDequeueCount attempts and moved it to rotation-jobs-poison. Runbook: docs/runbook.md#poison-message.'
    severity: 2
    dimensions: []
    query: '''
AppTraces
| where Message has "rotation-jobs-poison" and Message has "MaxDequeueCount"
| project TimeGenerated, Message
'''
  }
  {
    key: 'cluster-inaccessible'
    displayName: 'cmk-rotator: cluster Inaccessible'
    description: 'Reconcile found a watched cluster whose clusterStatus is Inaccessible: it cannot reach its key and is down until the key is usable again (rotation.drift_detected, reason inaccessible). Runbook: docs/runbook.md#cluster-inaccessible.'
    severity: 0
    dimensions: clusterDimension
    query: '''
AppTraces
| where Message == "rotation.drift_detected" and tostring(Properties["reason"]) == "inaccessible"
| extend cluster_id = tostring(Properties["cluster_id"]), reason = tostring(Properties["detail"])
| project TimeGenerated, cluster_id, reason, key = tostring(Properties["key"])
'''
  }
  {
    key: 'key-expired'
    displayName: 'cmk-rotator: key version expired'
    description: 'Key Vault reported that a version of a watched key expired (rotation.key_expired); clusters still on it lose access to their data. Runbook: docs/runbook.md#key-expired.'
    severity: 0
    dimensions: keyDimension
    query: '''
AppTraces
| where Message == "rotation.key_expired"
| extend key = tostring(Properties["key"]), reason = strcat("version ", tostring(Properties["to_version"]), " expired; clusters: ", tostring(Properties["clusters"]))
| project TimeGenerated, key, reason, event_id = tostring(Properties["event_id"])
'''
  }
  {
    key: 'job-poisoned-app'
    displayName: 'cmk-rotator: last delivery of a rotation job failed'
    description: 'A rotation job failed its last delivery (maxDequeueCount) and moves to rotation-jobs-poison (rotation.job_poisoned, logged by the app itself with the cluster, dequeue count and error). Runbook: docs/runbook.md#poison-message.'
    severity: 2
    dimensions: clusterDimension
    query: '''
AppTraces
| where Message == "rotation.job_poisoned"
| extend cluster_id = tostring(Properties["cluster_id"]), reason = tostring(Properties["reason"])
| project TimeGenerated, cluster_id, reason, dequeue_count = toint(Properties["dequeue_count"]), error_code = tostring(Properties["error_code"])
'''
  }
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource logAlertRules 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = [
  for alert in logAlerts: {
    name: '${namePrefix}-${alert.key}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: alert.displayName
      description: alert.description
      severity: alert.severity
      enabled: true
      scopes: [workspaceId]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT5M'
      // AppTraces may hold no row yet on a new workspace; the query is still valid.
      skipQueryValidation: true
      // A fired alert stays until someone closes it: a failed rotation does not heal by itself.
      autoMitigate: false
      criteria: {
        allOf: [
          {
            query: alert.query
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            dimensions: alert.dimensions
            failingPeriods: {
              numberOfEvaluationPeriods: 1
              minFailingPeriodsToAlert: 1
            }
          }
        ]
      }
      actions: {
        actionGroups: actionGroups
      }
    }
  }
]

// Queue length: Azure Storage publishes QueueMessageCount per account (all queues together, roughly hourly);
// there is no per-queue dimension. This account holds only rotation-jobs, which drains in minutes, and
// rotation-jobs-poison, which nothing drains. A count above zero through a whole 6-hour window therefore
// means poisoned jobs (or a stalled rotate_cluster), which is what on-call must look at.
resource queueBacklogAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-queue-backlog'
  location: 'global'
  tags: tags
  properties: {
    description: 'Messages stayed in the rotation queues for 6 hours: poisoned rotation jobs (rotation-jobs-poison) or a stalled worker. Runbook: docs/runbook.md#queue-backlog.'
    severity: 2
    enabled: true
    scopes: [queueService.id]
    evaluationFrequency: 'PT1H'
    windowSize: 'PT6H'
    autoMitigate: true
    targetResourceType: 'Microsoft.Storage/storageAccounts/queueServices'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'messages-stuck'
          metricNamespace: 'Microsoft.Storage/storageAccounts/queueServices'
          metricName: 'QueueMessageCount'
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Minimum'
        }
      ]
    }
    actions: [for group in actionGroups: { actionGroupId: group }]
  }
}

output logAlertNames array = [for (alert, i) in logAlerts: logAlertRules[i].name]
output metricAlertName string = queueBacklogAlert.name
