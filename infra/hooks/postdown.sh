#!/bin/sh
# azd postdown hook: runs after `azd down` has deleted the app's resource group, and removes what the
# postprovision and postdeploy hooks created outside it, which `azd down` does not know about: the Event
# Grid subscription, the app's role assignments on the vault, the watched scopes and the identities, the
# custom roles, and the system topic when this environment created it and nobody else subscribes to it.
# It does nothing while the app's resource group still exists (the down was declined or failed): access
# and events stay exactly as they were.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/hooks/lib.sh
. "$here/lib.sh"

# `azd down` has already deleted main.bicep's outputs (AZURE_RESOURCE_GROUP, ...) from the environment:
# the app's resource group comes from CMK_ROTATOR_ENVIRONMENT_ID, which the postprovision hook recorded.
require_env postdown AZURE_ENV_NAME AZURE_SUBSCRIPTION_ID CMK_ROTATOR_ENVIRONMENT_ID
require_az postdown

env_id="$CMK_ROTATOR_ENVIRONMENT_ID"
app_group="${env_id##*/}"
exists="$(az group exists --subscription "$AZURE_SUBSCRIPTION_ID" --name "$app_group" --output tsv)"
if [ "$exists" != "false" ]; then
    echo "postdown: resource group $app_group still exists, so azd down did not remove the app; nothing outside it was changed" >&2
    exit 1
fi

FAILED=0
topic_id=""
if [ -n "${EVENTGRID_SYSTEM_TOPIC_NAME:-}" ]; then
    topic_id="/subscriptions/${EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID}/resourceGroups/${EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP}/providers/Microsoft.EventGrid/systemTopics/${EVENTGRID_SYSTEM_TOPIC_NAME}"
    subscription_name="${EVENTGRID_SUBSCRIPTION_NAME:-$(safe_name cmk-rotator- "$AZURE_ENV_NAME")}"
    echo "postdown: deleting Event Grid subscription $subscription_name"
    az resource delete --ids "$topic_id/eventSubscriptions/$subscription_name" --output none ||
        echo "postdown: event subscription $subscription_name already gone"
fi

for kind in $ACCESS_KINDS; do
    for id in $(recorded "$kind"); do
        delete_assignment postdown "$id"
    done
done

for name in CLUSTER_ROTATOR_ROLE_ID OPERATION_STATUS_ROLE_ID IDENTITY_ASSIGNER_ROLE_ID; do
    eval "role=\${$name:-}"
    if [ -n "$role" ]; then
        echo "postdown: deleting custom role $role"
        az role definition delete --name "$role" --scope "/subscriptions/$AZURE_SUBSCRIPTION_ID" --output none ||
            echo "postdown: custom role $role already gone"
    fi
done

if [ -n "$topic_id" ]; then
    owner="$(az resource show --ids "$topic_id" --query 'tags."cmk-rotator-owner"' --output tsv 2>/dev/null || true)"
    if same_id "$owner" "$env_id"; then
        others="$(az eventgrid system-topic event-subscription list \
            --subscription "$EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID" \
            --resource-group "$EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP" \
            --system-topic-name "$EVENTGRID_SYSTEM_TOPIC_NAME" --query 'length(@)' --output tsv)"
        if [ "$others" = "0" ]; then
            echo "postdown: deleting system topic $EVENTGRID_SYSTEM_TOPIC_NAME (created by this environment)"
            az resource delete --ids "$topic_id" --output none
        else
            echo "postdown: keeping system topic $EVENTGRID_SYSTEM_TOPIC_NAME: $others other event subscription(s) use it"
        fi
    else
        echo "postdown: keeping system topic $EVENTGRID_SYSTEM_TOPIC_NAME (created by ${owner:-someone else})"
    fi
fi

if [ "$FAILED" -ne 0 ]; then
    echo "postdown: some role assignments could not be removed (see above); the records are kept, run azd hooks run postdown again" >&2
    exit 1
fi
az deployment sub delete --subscription "$AZURE_SUBSCRIPTION_ID" \
    --name "$(safe_name cmk-rotator-access- "$AZURE_ENV_NAME")" --output none || true
for kind in $ACCESS_KINDS; do
    azd env set "ACCESS_${kind}_ASSIGNMENT_IDS" ""
done
echo "postdown: done"
