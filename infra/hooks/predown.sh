#!/bin/sh
# azd predown hook. Removes what the postprovision and postdeploy hooks created outside the app's resource
# group, which `azd down` does not know about: the Event Grid subscription, the app's role assignments on
# the vault and the watched scopes, the two custom roles, and the system topic if the hook created it.
# `azd down` then deletes the app's resource group (storage with registry, history and dead letters included).
set -eu

if [ -z "${AZURE_ENV_NAME:-}" ] || [ -z "${AZURE_SUBSCRIPTION_ID:-}" ]; then
    echo "predown: AZURE_ENV_NAME and AZURE_SUBSCRIPTION_ID must be set" >&2
    exit 1
fi

topic_id=""
if [ -n "${EVENTGRID_SYSTEM_TOPIC_NAME:-}" ]; then
    topic_id="/subscriptions/${EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID}/resourceGroups/${EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP}/providers/Microsoft.EventGrid/systemTopics/${EVENTGRID_SYSTEM_TOPIC_NAME}"
    echo "predown: deleting Event Grid subscription cmk-rotator-${AZURE_ENV_NAME}"
    az resource delete --ids "$topic_id/eventSubscriptions/cmk-rotator-${AZURE_ENV_NAME}" --output none ||
        echo "predown: event subscription already gone"
fi

deployment="cmk-rotator-access-${AZURE_ENV_NAME}"
ids="$(az deployment sub show --subscription "$AZURE_SUBSCRIPTION_ID" --name "$deployment" \
    --query "properties.outputResources[].id" --output tsv 2>/dev/null || true)"
for id in $ids; do
    case "$id" in
        */providers/Microsoft.Authorization/roleAssignments/*)
            echo "predown: deleting role assignment $id"
            az role assignment delete --ids "$id" --output none || true
            ;;
    esac
done
for id in $ids; do
    case "$id" in
        */providers/Microsoft.Authorization/roleDefinitions/*)
            echo "predown: deleting custom role $id"
            az role definition delete --name "${id##*/}" --scope "/subscriptions/$AZURE_SUBSCRIPTION_ID" \
                --output none || true
            ;;
    esac
done

if [ -n "$topic_id" ] && [ "${EVENTGRID_SYSTEM_TOPIC_CREATED:-false}" = "true" ]; then
    echo "predown: deleting the system topic the postprovision hook created"
    az resource delete --ids "$topic_id" --output none || true
fi

if [ -n "$ids" ]; then
    az deployment sub delete --subscription "$AZURE_SUBSCRIPTION_ID" --name "$deployment" --output none || true
fi
echo "predown: done"
