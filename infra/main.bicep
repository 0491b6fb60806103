// cmk-rotator: everything `azd provision` deploys. This deployment touches ONLY the app's own resource
// group (and nothing outside it), because `azd down` deletes every resource group its deployment put a
// resource in. Access on the Key Vault and on the clusters' scopes, and the Event Grid system topic, are
// deployed by hooks (infra/access.bicep after provision, infra/eventgrid-subscription.bicep after deploy)
// as separate deployments that `azd down` never sees. See docs/deploy.md.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used in resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Region for every resource of the app (must offer Flex Consumption).')
@metadata({ azd: { type: 'location' } })
param location string

@description('Name of the app resource group; empty: rg-<environmentName>.')
param resourceGroupName string = ''

@description('Resource id of the existing Key Vault whose key events drive rotations (/subscriptions/.../providers/Microsoft.KeyVault/vaults/NAME).')
param keyVaultResourceId string

@description('Subscription ids (/subscriptions/GUID) in which every mongoCluster may be rotated. Prefer resource groups.')
param watchedSubscriptionIds array = []

@description('Resource group ids (/subscriptions/GUID/resourceGroups/NAME) holding watched clusters or their user-assigned identities.')
param watchedResourceGroupIds array = []

@description('Key names to receive events for (Event Grid subject filter); empty: every key of the vault.')
param keyNameFilter array = []

@description('Name of a system topic that already exists for the vault (a vault can have only one); empty: create one.')
param existingSystemTopicName string = ''

@description('Deploy in dry-run mode: the app logs the PUT body instead of sending it (ROTATION_DRY_RUN).')
param dryRun bool = false

@description('mongoClusters api-version the app uses (ROTATION_ARM_API_VERSION).')
param armApiVersion string = '2025-07-01-preview'

@description('Comma-separated vault host suffixes the app accepts (ROTATION_ALLOWED_VAULT_SUFFIXES).')
param allowedVaultSuffixes string = '.vault.azure.net,.vault.azure.cn,.vault.usgovcloudapi.net,.managedhsm.azure.net'

// 512: host.json lets the queue trigger run batchSize + newBatchThreshold = 32 + 480 invocations at once; a
// default above @maxValue is BCP327 and ARM rejects such a value.
@minValue(1)
@maxValue(512)
@description('Clusters at work at once per app instance (ROTATION_MAX_CONCURRENCY); a cluster waiting for its operation gives its place up. host.json lets the queue trigger run 512 invocations at once.')
param maxConcurrency int = 512

@description('NCRONTAB schedule of the reconcile timer (ROTATION_RECONCILE_SCHEDULE).')
param reconcileSchedule string = '0 */15 * * * *'

@minValue(1)
@maxValue(1000)
@description('Flex Consumption: most instances the app scales out to (each runs up to maxConcurrency rotations).')
param maximumInstanceCount int = 40

@allowed([512, 2048, 4096])
@description('Flex Consumption: memory of one instance in MB.')
param instanceMemoryMB int = 2048

@minValue(30)
@maxValue(730)
@description('Days Log Analytics keeps the app logs.')
param logRetentionInDays int = 90

@description('Resource id of an existing action group the alerts notify; empty: alerts fire in Azure Monitor without notifying anyone.')
param actionGroupId string = ''

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName, application: 'cmk-rotator' }
var deploymentContainerName = 'app-package'
var deadLetterContainerName = 'eventgrid-deadletter'
// The Functions host's own blob containers (timer and singleton leases; function keys).
var hostContainerNames = ['azure-webjobs-hosts', 'azure-webjobs-secrets']
var armEndpoint = environment().resourceManager

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-rotator-${resourceToken}'
    location: location
    tags: tags
  }
}

// Writes the code package (Flex Consumption one-deploy uploads with the identity named in
// functionAppConfig.deployment.storage); the app's own identity may only read the package.
module deployIdentity 'modules/identity.bicep' = {
  name: 'deploy-identity'
  scope: rg
  params: {
    name: 'id-deploy-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    workspaceName: 'log-${resourceToken}'
    appInsightsName: 'appi-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: 'st${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    hostContainerNames: hostContainerNames
  }
}

module appAccess 'modules/app-access.bicep' = {
  name: 'app-access'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    deploymentPrincipalId: deployIdentity.outputs.principalId
    storageAccountName: storage.outputs.name
    hostContainerNames: hostContainerNames
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  // The host reaches its storage with the identity from its first start: grant the roles first.
  dependsOn: [appAccess]
  params: {
    name: 'func-rotator-${resourceToken}'
    planName: 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    deploymentIdentityId: deployIdentity.outputs.id
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    appInsightsName: monitoring.outputs.appInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    armEndpoint: endsWith(armEndpoint, '/') ? substring(armEndpoint, 0, length(armEndpoint) - 1) : armEndpoint
    armApiVersion: armApiVersion
    allowedVaultSuffixes: allowedVaultSuffixes
    dryRun: dryRun
    maxConcurrency: maxConcurrency
    reconcileSchedule: reconcileSchedule
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: 'cmk-rotator-${environmentName}'
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
    storageAccountName: storage.outputs.name
    actionGroupId: actionGroupId
  }
}

module workbook 'modules/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
    displayName: 'cmk-rotator (${environmentName})'
  }
}

// Read by the hooks (azd puts outputs in the environment) and by operators.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output AZURE_FUNCTION_APP_URL string = functionApp.outputs.url
output AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_FUNCTION_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_ACCOUNT_ID string = storage.outputs.id
output AZURE_STORAGE_TABLE_ENDPOINT string = storage.outputs.tableEndpoint
output AZURE_STORAGE_QUEUE_ENDPOINT string = storage.outputs.queueEndpoint
output AZURE_STORAGE_BLOB_ENDPOINT string = storage.outputs.blobEndpoint
output AZURE_LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.workspaceId
output AZURE_WORKBOOK_ID string = workbook.outputs.workbookId
output EVENTGRID_DEADLETTER_CONTAINER string = deadLetterContainerName
output KEY_VAULT_RESOURCE_ID string = keyVaultResourceId
output WATCHED_SUBSCRIPTION_IDS array = watchedSubscriptionIds
output WATCHED_RESOURCE_GROUP_IDS array = watchedResourceGroupIds
output KEY_NAME_FILTER array = keyNameFilter
output EVENTGRID_EXISTING_SYSTEM_TOPIC_NAME string = existingSystemTopicName
// EVENTGRID_MAX_DELIVERY_ATTEMPTS and EVENTGRID_EVENT_TTL_MINUTES are read by the postdeploy hook from the
// environment and deliberately NOT outputs: azd writes every output back into the environment, which
// would replace the operator's values with this template's defaults.
