// The Function App on the Flex Consumption plan (Linux, Python 3.11) with its app settings.

@description('Name of the Function App.')
param name string

@description('Name of the Flex Consumption plan.')
param planName string

@description('Region of the plan and the app.')
param location string

@description('Tags for the plan and the app.')
param tags object

@description('Resource id of the app\'s user-assigned identity.')
param identityId string

@description('Client id of the app\'s user-assigned identity.')
param identityClientId string

@description('Resource id of the user-assigned identity the platform uploads the code package with.')
param deploymentIdentityId string

@description('Name of the app\'s storage account (same resource group).')
param storageAccountName string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('Name of the Application Insights component (same resource group).')
param appInsightsName string

@description('Most instances the app scales out to.')
param maximumInstanceCount int

@description('Memory of one instance in MB.')
param instanceMemoryMB int

@description('ARM endpoint the app calls (ROTATION_ARM_ENDPOINT).')
param armEndpoint string

@description('mongoClusters api-version (ROTATION_ARM_API_VERSION).')
param armApiVersion string

@description('Comma-separated vault host suffixes (ROTATION_ALLOWED_VAULT_SUFFIXES).')
param allowedVaultSuffixes string

@description('Log the PUT body instead of sending it (ROTATION_DRY_RUN).')
param dryRun bool

@description('Clusters in flight per instance (ROTATION_MAX_CONCURRENCY).')
param maxConcurrency int

@description('NCRONTAB schedule of reconcile (ROTATION_RECONCILE_SCHEDULE).')
param reconcileSchedule string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Zone redundancy for Flex Consumption is region-dependent; an outage delays rotations (reconcile catches up) and loses nothing, so it is left to the operator.
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

resource site 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17:Client certificates would make Event Grid unable to deliver to the on_key_event trigger.
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales by demand up to maximumInstanceCount; a fixed minimum instance count does not apply.
  //checkov:skip=CKV_AZURE_213:App Service health check does not apply to Flex Consumption (no fixed instance to take out of rotation); /api/health serves callers.
  //checkov:skip=CKV_AZURE_222:Public network access stays on: Event Grid delivers key events to the app's public endpoint (no VNet in this deployment).
  name: name
  location: location
  // azd finds the app to deploy to by this tag (service name in azure.yaml).
  tags: union(tags, { 'azd-service-name': 'rotator' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
      '${deploymentIdentityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      // Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION: the runtime is
      // functionAppConfig.runtime below.
      appSettings: [
        // Identity-based host storage; the app reads the same settings for its registry and job queue.
        { name: 'AzureWebJobsStorage__accountName', value: storage.name }
        { name: 'AzureWebJobsStorage__credential', value: 'managedidentity' }
        { name: 'AzureWebJobsStorage__clientId', value: identityClientId }
        { name: 'AzureWebJobsStorage__blobServiceUri', value: storage.properties.primaryEndpoints.blob }
        { name: 'AzureWebJobsStorage__queueServiceUri', value: storage.properties.primaryEndpoints.queue }
        { name: 'AzureWebJobsStorage__tableServiceUri', value: storage.properties.primaryEndpoints.table }
        // The connection string holds no secret; ingestion is authorised by the identity (local auth is off).
        { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
        { name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING', value: 'ClientId=${identityClientId};Authorization=AAD' }
        // the Python worker's records (with their fields as custom dimensions) go out through OpenTelemetry
        { name: 'PYTHON_ENABLE_OPENTELEMETRY', value: 'true' }
        // DefaultAzureCredential picks the user-assigned identity from this.
        { name: 'AZURE_CLIENT_ID', value: identityClientId }
        { name: 'ROTATION_ARM_ENDPOINT', value: armEndpoint }
        { name: 'ROTATION_ARM_API_VERSION', value: armApiVersion }
        { name: 'ROTATION_ALLOWED_VAULT_SUFFIXES', value: allowedVaultSuffixes }
        { name: 'ROTATION_DRY_RUN', value: dryRun ? 'true' : 'false' }
        { name: 'ROTATION_MAX_CONCURRENCY', value: string(maxConcurrency) }
        { name: 'ROTATION_RECONCILE_SCHEDULE', value: reconcileSchedule }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          // The deployment identity writes the package; the app's identity (AZURE_CLIENT_ID) only reads it.
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: deploymentIdentityId
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

// No FTP and no basic-auth (publishing profile) deployments: azd deploys with Entra ID.
resource ftpPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: { allow: false }
}

resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: { allow: false }
}

output name string = site.name
output id string = site.id
output url string = 'https://${site.properties.defaultHostName}'
