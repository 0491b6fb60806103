#!/bin/sh
# azd postprovision hook. Deploys infra/access.bicep as its own subscription deployment (not part of the
# azd deployment, so `azd down` never deletes the vault's or the clusters' resource groups):
# Key Vault Reader on the vault, the vault's Event Grid system topic, the topic's write access to the
# dead-letter container, and the custom roles on the watched scopes. Idempotent: safe to run again.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"

for name in AZURE_ENV_NAME AZURE_LOCATION AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP \
    AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID AZURE_STORAGE_ACCOUNT_NAME KEY_VAULT_RESOURCE_ID; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "postprovision: $name is not set (azd env set $name VALUE, see docs/deploy.md)" >&2
        exit 1
    fi
done
if ! command -v az >/dev/null 2>&1; then
    echo "postprovision: the Azure CLI (az) is required and must be logged in (az login)" >&2
    exit 1
fi

deployment="cmk-rotator-access-${AZURE_ENV_NAME}"
echo "postprovision: deploying $deployment (vault access, system topic, cluster roles)"
az deployment sub create \
    --subscription "$AZURE_SUBSCRIPTION_ID" \
    --location "$AZURE_LOCATION" \
    --name "$deployment" \
    --template-file "$here/../access.bicep" \
    --parameters \
        environmentName="$AZURE_ENV_NAME" \
        appResourceGroupName="$AZURE_RESOURCE_GROUP" \
        appPrincipalId="$AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID" \
        storageAccountName="$AZURE_STORAGE_ACCOUNT_NAME" \
        deadLetterContainerName="${EVENTGRID_DEADLETTER_CONTAINER:-eventgrid-deadletter}" \
        keyVaultResourceId="$KEY_VAULT_RESOURCE_ID" \
        existingSystemTopicName="${EVENTGRID_EXISTING_SYSTEM_TOPIC_NAME:-}" \
        watchedSubscriptionIds="${WATCHED_SUBSCRIPTION_IDS:-[]}" \
        watchedResourceGroupIds="${WATCHED_RESOURCE_GROUP_IDS:-[]}" \
        tags="{\"cmk-rotator-env\": \"$AZURE_ENV_NAME\"}" \
    --output none

# The postdeploy and predown hooks read these from the azd environment.
for name in EVENTGRID_SYSTEM_TOPIC_NAME EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP \
    EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID EVENTGRID_SYSTEM_TOPIC_CREATED; do
    value="$(az deployment sub show --subscription "$AZURE_SUBSCRIPTION_ID" --name "$deployment" \
        --query "properties.outputs.$name.value" --output tsv)"
    azd env set "$name" "$value"
done
echo "postprovision: done"
