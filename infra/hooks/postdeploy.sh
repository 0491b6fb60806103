#!/bin/sh
# azd postdeploy hook. Creates (or updates) the Event Grid subscription from the vault's system topic to
# the on_key_event function. It runs after the code deploy because Event Grid validates an AzureFunction
# destination when the subscription is created. Idempotent: safe to run again.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"

for name in AZURE_ENV_NAME AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME \
    AZURE_FUNCTION_APP_ID AZURE_STORAGE_ACCOUNT_ID EVENTGRID_SYSTEM_TOPIC_NAME \
    EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "postdeploy: $name is not set (run azd provision first, see docs/deploy.md)" >&2
        exit 1
    fi
done

# The Functions host indexes the functions shortly after the deploy; wait (bounded) until it has.
attempt=1
until az functionapp function show --subscription "$AZURE_SUBSCRIPTION_ID" \
    --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
    --function-name on_key_event --output none 2>/dev/null; do
    if [ "$attempt" -ge 30 ]; then
        echo "postdeploy: on_key_event does not exist on $AZURE_FUNCTION_APP_NAME after 5 minutes" >&2
        exit 1
    fi
    echo "postdeploy: waiting for on_key_event to be indexed ($attempt/30)"
    attempt=$((attempt + 1))
    sleep 10
done

subscription_name="cmk-rotator-${AZURE_ENV_NAME}"
echo "postdeploy: creating Event Grid subscription $subscription_name on $EVENTGRID_SYSTEM_TOPIC_NAME"
az deployment group create \
    --subscription "$EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID" \
    --resource-group "$EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP" \
    --name "cmk-rotator-eventsub-${AZURE_ENV_NAME}" \
    --template-file "$here/../eventgrid-subscription.bicep" \
    --parameters \
        systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" \
        subscriptionName="$subscription_name" \
        functionAppResourceId="$AZURE_FUNCTION_APP_ID" \
        deadLetterStorageAccountId="$AZURE_STORAGE_ACCOUNT_ID" \
        deadLetterContainerName="${EVENTGRID_DEADLETTER_CONTAINER:-eventgrid-deadletter}" \
        keyNames="${KEY_NAME_FILTER:-[]}" \
        maxDeliveryAttempts="${EVENTGRID_MAX_DELIVERY_ATTEMPTS:-30}" \
        eventTimeToLiveInMinutes="${EVENTGRID_EVENT_TTL_MINUTES:-1440}" \
    --output none
azd env set EVENTGRID_SUBSCRIPTION_NAME "$subscription_name"
echo "postdeploy: done"
