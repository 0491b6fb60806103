// Data-plane roles of the app's identity on its own storage account and Application Insights.
// Role assignment names are guid(scope, principal, role): deterministic, so re-deploying is a no-op.

@description('Object id of the app\'s user-assigned identity.')
param principalId string

@description('Name of the app\'s storage account (same resource group).')
param storageAccountName string

@description('Name of the Application Insights component (same resource group).')
param appInsightsName string

// Each role and why the app needs it.
var storageRoles = [
  {
    // Functions host with identity-based AzureWebJobsStorage: creates and leases blobs in its own
    // containers (azure-webjobs-hosts: timer and singleton locks; azure-webjobs-secrets: function keys),
    // and Flex Consumption reads the app package from the deployment container. The host docs require
    // Owner (it sets container metadata and manages leases), not Contributor.
    name: 'Storage Blob Data Owner'
    id: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  }
  {
    // Queue trigger on rotation-jobs (read, process, delete), enqueueing jobs from on_key_event and
    // reconcile (add), and the host creating/writing rotation-jobs-poison. Contributor covers the
    // Message Processor and Message Sender roles together, plus creating the poison queue.
    name: 'Storage Queue Data Contributor'
    id: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  }
  {
    // Registry (watchedclusters: read, ETag-conditional claims, register/unregister) and history
    // (rotationhistory: append, query).
    name: 'Storage Table Data Contributor'
    id: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  }
]

// Application Insights with local auth disabled accepts telemetry only from a principal holding this role.
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource storageAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, principalId, role.id)
    scope: storage
    properties: {
      description: 'cmk-rotator app: ${role.name}'
      principalId: principalId
      principalType: 'ServicePrincipal'
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.id)
    }
  }
]

resource telemetryAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    description: 'cmk-rotator app: Monitoring Metrics Publisher (Entra ID telemetry ingestion)'
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
  }
}
