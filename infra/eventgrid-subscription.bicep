// cmk-rotator: the Key Vault system topic's event subscription to the on_key_event function.
// Deployed by the azd `postdeploy` hook (infra/hooks/postdeploy.sh) into the topic's resource group,
// after the code is deployed: Event Grid validates an AzureFunction destination when the subscription is
// created, which fails until the function exists.

@description('Name of the vault\'s Event Grid system topic (in this resource group).')
param systemTopicName string

// Event Grid event subscription names: 3-64 characters of [A-Za-z0-9-] (the hook sanitises and bounds them).
@minLength(3)
@maxLength(64)
@description('Name of the event subscription.')
param subscriptionName string = 'cmk-rotator'

@description('Resource id of the Function App that hosts on_key_event.')
param functionAppResourceId string

@description('Resource id of the storage account holding the dead-letter container.')
param deadLetterStorageAccountId string

@description('Blob container for events Event Grid could not deliver.')
param deadLetterContainerName string = 'eventgrid-deadletter'

@description('Key names to receive events for (matched against the event subject); empty: every key of the vault.')
param keyNames array = []

@minValue(1)
@maxValue(30)
@description('Delivery attempts before an event is dead-lettered.')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes Event Grid keeps retrying one event before it is dead-lettered.')
param eventTimeToLiveInMinutes int = 1440

// The three key events the app acts on (docs/design.md): a new version to rotate to, and the expiry warnings
// reconcile and on-call use. Secret and certificate events are never sent to the app.
var includedEventTypes = [
  'Microsoft.KeyVault.KeyNewVersionCreated'
  'Microsoft.KeyVault.KeyNearExpiry'
  'Microsoft.KeyVault.KeyExpired'
]

// The subject of a Key Vault event is the object (key) name.
var keyNameFilters = empty(keyNames) ? [] : [
  {
    operatorType: 'StringIn'
    key: 'subject'
    values: keyNames
  }
]

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource eventSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: subscriptionName
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppResourceId}/functions/on_key_event'
        // One event per invocation: on_key_event fans out to the job queue and answers in well under 30 s.
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: includedEventTypes
      advancedFilters: keyNameFilters
    }
    retryPolicy: {
      maxDeliveryAttempts: maxDeliveryAttempts
      eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
    }
    // Nothing is lost: what Event Grid cannot deliver (retries exhausted, or 400/413) lands in the app's
    // storage, written with the topic's own identity (no storage key exists), and can be replayed with
    // `python -m rotation replay`.
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output id string = eventSubscription.id
