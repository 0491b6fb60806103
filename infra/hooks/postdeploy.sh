#!/bin/sh
# azd postdeploy hook. Creates (or updates) the Event Grid subscription from the vault's system topic to
# the on_key_event function (it runs after the code deploy because Event Grid validates an AzureFunction
# destination when the subscription is created), and the two function keys of the HTTP routes:
# "reader" opens the read routes, "operator" opens every route (docs/deploy.md). Idempotent: safe to run
# again; existing keys are kept.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/hooks/lib.sh
. "$here/lib.sh"

require_env postdeploy AZURE_ENV_NAME AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP AZURE_FUNCTION_APP_NAME \
    AZURE_FUNCTION_APP_ID AZURE_STORAGE_ACCOUNT_ID EVENTGRID_DEADLETTER_CONTAINER EVENTGRID_SYSTEM_TOPIC_NAME \
    EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID
check_env_name postdeploy
require_az postdeploy

# The HTTP functions of function_app.py by what they do (a test keeps these lists equal to the app's).
READ_FUNCTIONS="clusters history doctor health"
WRITE_FUNCTIONS="clusters_write rotate"

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

subscription_name="$(safe_name cmk-rotator- "$AZURE_ENV_NAME")"
echo "postdeploy: creating Event Grid subscription $subscription_name on $EVENTGRID_SYSTEM_TOPIC_NAME"
az deployment group create \
    --subscription "$EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID" \
    --resource-group "$EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP" \
    --name "$(safe_name cmk-rotator-eventsub- "$AZURE_ENV_NAME")" \
    --template-file "$here/../eventgrid-subscription.bicep" \
    --parameters \
        systemTopicName="$EVENTGRID_SYSTEM_TOPIC_NAME" \
        subscriptionName="$subscription_name" \
        functionAppResourceId="$AZURE_FUNCTION_APP_ID" \
        deadLetterStorageAccountId="$AZURE_STORAGE_ACCOUNT_ID" \
        deadLetterContainerName="$EVENTGRID_DEADLETTER_CONTAINER" \
        keyNames="${KEY_NAME_FILTER:-[]}" \
        maxDeliveryAttempts="${EVENTGRID_MAX_DELIVERY_ATTEMPTS:-30}" \
        eventTimeToLiveInMinutes="${EVENTGRID_EVENT_TTL_MINUTES:-1440}" \
    --output none
azd env set EVENTGRID_SUBSCRIPTION_NAME "$subscription_name"

# One value per key name, the same on each function it opens: kept if it exists, generated otherwise.
# The value is never printed (docs/deploy.md shows how to read it).
function_key() {
    az functionapp function keys list --subscription "$AZURE_SUBSCRIPTION_ID" \
        --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
        --function-name "$1" --query "\"$2\"" --output tsv 2>/dev/null || true
}
set_function_key() {
    az functionapp function keys set --subscription "$AZURE_SUBSCRIPTION_ID" \
        --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
        --function-name "$1" --key-name "$2" --key-value "$3" --output none
}
ensure_key() {
    key_name="$1"
    shift
    value="$(function_key "$1" "$key_name")"
    if [ -z "$value" ]; then
        value="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    fi
    for function_name in "$@"; do
        if [ "$(function_key "$function_name" "$key_name")" != "$value" ]; then
            echo "postdeploy: function key '$key_name' on $function_name"
            set_function_key "$function_name" "$key_name" "$value"
        fi
    done
}
# shellcheck disable=SC2086 # the lists are space-separated function names
ensure_key reader $READ_FUNCTIONS
# shellcheck disable=SC2086
ensure_key operator $READ_FUNCTIONS $WRITE_FUNCTIONS
echo "postdeploy: done"
