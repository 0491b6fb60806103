// The on-call dashboard: an Azure Monitor workbook over the app's log records (AppTraces in the workspace).
// Rotations over time, outcomes and error codes, clusters behind their key's newest version, and the time
// from a Key Vault event to each cluster verified on the new version. Linked from docs/runbook.md.
// The content is workbook.json (the portal's "Advanced editor" format, Notebook/1.0), loaded at build time;
// its queries read the event names the code logs (tests/infra/test_monitoring.py checks them).

@description('Region of the workbook.')
param location string

@description('Tags for the workbook.')
param tags object

@description('Resource id of the Log Analytics workspace the queries run against.')
param workspaceId string

@description('Display name of the workbook in Azure Monitor > Workbooks.')
param displayName string = 'cmk-rotator'

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  // A workbook's name must be a GUID; this one is stable per resource group and display name.
  name: guid(resourceGroup().id, 'cmk-rotator-workbook', displayName)
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: displayName
    category: 'workbook'
    sourceId: workspaceId
    version: 'Notebook/1.0'
    serializedData: loadTextContent('workbook.json')
  }
}

output workbookId string = workbook.id
