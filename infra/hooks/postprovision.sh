#!/bin/sh
# azd postprovision hook. Deploys infra/access.bicep as its own subscription deployment (not part of the
# azd deployment, so `azd down` never deletes the vault's or the clusters' resource groups):
# Key Vault Reader on the vault, the vault's Event Grid system topic, the topic's write access to the
# dead-letter container, the custom roles on the watched scopes and on the clusters' identities.
# Access converges to the current lists: assignments for scopes no longer listed are removed here.
# Idempotent: safe to run again.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/hooks/lib.sh
. "$here/lib.sh"

require_env postprovision AZURE_ENV_NAME AZURE_LOCATION AZURE_SUBSCRIPTION_ID AZURE_RESOURCE_GROUP \
    AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID AZURE_STORAGE_ACCOUNT_NAME KEY_VAULT_RESOURCE_ID \
    EVENTGRID_DEADLETTER_CONTAINER
check_env_name postprovision
require_az postprovision

if [ -z "$(json_ids "${CLUSTER_IDENTITY_SCOPES:-[]}")" ] &&
    [ -n "$(json_ids "${WATCHED_RESOURCE_GROUP_IDS:-[]}")$(json_ids "${WATCHED_SUBSCRIPTION_IDS:-[]}")" ]; then
    echo "postprovision: WARNING: CLUSTER_IDENTITY_SCOPES is empty: the app may not name any identity in a cluster PUT, so rotations fail with 403 until you list the clusters' identities (docs/deploy.md)" >&2
fi

env_id="$(environment_id)"
deployment="$(safe_name cmk-rotator-access- "$AZURE_ENV_NAME")"
FAILED=0

# 1. The vault's system topic. A vault has one system topic: one that exists and was not created by this
#    environment (its cmk-rotator-owner tag names another environment, or it has none) is reused as it is,
#    never re-tagged; this environment creates (and later may delete) only a topic it owns.
existing_topic="${EVENTGRID_EXISTING_SYSTEM_TOPIC_NAME:-}"
if [ -z "$existing_topic" ]; then
    vault_rg="$(printf '%s' "$KEY_VAULT_RESOURCE_ID" | cut -d / -f 5)"
    vault_sub="$(printf '%s' "$KEY_VAULT_RESOURCE_ID" | cut -d / -f 3)"
    topics="$(az eventgrid system-topic list --subscription "$vault_sub" --resource-group "$vault_rg" \
        --query '[].[name, source, tags."cmk-rotator-owner"]' --output tsv)"
    tab="$(printf '\t')"
    while IFS="$tab" read -r name source owner; do
        if same_id "$source" "$KEY_VAULT_RESOURCE_ID" && ! same_id "$owner" "$env_id"; then
            existing_topic="$name"
            echo "postprovision: reusing the vault's system topic $name (created by ${owner:-someone else}; it stays theirs)"
        fi
    done <<TOPICS
$topics
TOPICS
fi

# 2. Before deploying: remove the recorded assignments whose scope is no longer listed. (ARM does not let a
#    custom role drop an assignable scope that still holds an assignment of it, and an incremental
#    deployment never deletes anything.)
removed=""
for kind in $ACCESS_KINDS; do
    wanted="$(desired_scopes "$kind")"
    for id in $(recorded "$kind"); do
        if ! in_list "$(assignment_scope "$id")" "$wanted"; then
            delete_assignment postprovision "$id"
            removed="$removed $id"
        fi
    done
done

echo "postprovision: deploying $deployment (vault access, system topic, cluster and identity roles)"
az deployment sub create \
    --subscription "$AZURE_SUBSCRIPTION_ID" \
    --location "$AZURE_LOCATION" \
    --name "$deployment" \
    --template-file "$here/../access.bicep" \
    --parameters \
        environmentName="$AZURE_ENV_NAME" \
        environmentId="$env_id" \
        appResourceGroupName="$AZURE_RESOURCE_GROUP" \
        appPrincipalId="$AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID" \
        storageAccountName="$AZURE_STORAGE_ACCOUNT_NAME" \
        deadLetterContainerName="$EVENTGRID_DEADLETTER_CONTAINER" \
        keyVaultResourceId="$KEY_VAULT_RESOURCE_ID" \
        existingSystemTopicName="$existing_topic" \
        watchedSubscriptionIds="${WATCHED_SUBSCRIPTION_IDS:-[]}" \
        watchedResourceGroupIds="${WATCHED_RESOURCE_GROUP_IDS:-[]}" \
        clusterIdentityScopes="${CLUSTER_IDENTITY_SCOPES:-[]}" \
        tags="{\"cmk-rotator-env\": \"$AZURE_ENV_NAME\"}" \
    --output none

output() {
    az deployment sub show --subscription "$AZURE_SUBSCRIPTION_ID" --name "$deployment" \
        --query "properties.outputs.$1.value" --output tsv
}

# 3. After deploying: record what this deployment holds, and remove any recorded assignment it no longer
#    holds (for example one made with an earlier role definition).
for kind in $ACCESS_KINDS; do
    name="ACCESS_${kind}_ASSIGNMENT_IDS"
    current="$(output "$name" | tr '\n' ' ')"
    for id in $(recorded "$kind"); do
        if ! in_list "$id" "$current" && ! in_list "$id" "$removed"; then
            delete_assignment postprovision "$id"
        fi
    done
    azd env set "$name" "$(printf '%s' "$current" | sed 's/  */ /g; s/^ //; s/ $//')"
done

# The postdeploy and postdown hooks read these from the azd environment. (azd deletes main.bicep's outputs,
# AZURE_RESOURCE_GROUP among them, from the environment when `azd down` has run, before postdown starts; so
# this environment's id is recorded under a name of its own.)
azd env set CMK_ROTATOR_ENVIRONMENT_ID "$env_id"
for name in EVENTGRID_SYSTEM_TOPIC_NAME EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP \
    EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID CLUSTER_ROTATOR_ROLE_ID OPERATION_STATUS_ROLE_ID \
    IDENTITY_ASSIGNER_ROLE_ID; do
    azd env set "$name" "$(output "$name")"
done

if [ "$FAILED" -ne 0 ]; then
    echo "postprovision: access deployed, but some assignments for removed scopes are still there (see above)" >&2
    exit 1
fi
echo "postprovision: done"
