// The app's user-assigned identity. A user-assigned identity (not system-assigned) so that its role
// assignments exist before the app starts and survive a re-created app.

@description('Name of the user-assigned identity.')
param name string

@description('Region of the identity.')
param location string

@description('Tags for the identity.')
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
