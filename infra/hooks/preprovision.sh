#!/bin/sh
# azd preprovision hook. Refuses AZURE_RESOURCE_GROUP_NAME when it names a resource group that exists and
# is not this environment's (tag azd-env-name): azd would treat the group as its own, and `azd down`
# would delete every resource in it. Also refuses an environment name azd itself would not accept.
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=infra/hooks/lib.sh
. "$here/lib.sh"

require_env preprovision AZURE_ENV_NAME
check_env_name preprovision

group="${AZURE_RESOURCE_GROUP_NAME:-}"
if [ -z "$group" ]; then
    echo "preprovision: the app gets its own resource group rg-$AZURE_ENV_NAME"
    exit 0
fi
# azd may not have asked for the subscription yet on a first `azd up`; naming a group needs it now.
require_env preprovision AZURE_SUBSCRIPTION_ID
require_az preprovision
exists="$(az group exists --subscription "$AZURE_SUBSCRIPTION_ID" --name "$group" --output tsv)"
if [ "$exists" = "true" ]; then
    owner="$(az group show --subscription "$AZURE_SUBSCRIPTION_ID" --name "$group" \
        --query 'tags."azd-env-name"' --output tsv)"
    if [ "$owner" != "$AZURE_ENV_NAME" ]; then
        echo "preprovision: resource group $group already exists and was not created by environment $AZURE_ENV_NAME (tag azd-env-name: ${owner:-none}); azd down would delete everything in it. Unset AZURE_RESOURCE_GROUP_NAME (azd env set AZURE_RESOURCE_GROUP_NAME '') or name a group that does not exist yet." >&2
        exit 1
    fi
fi
echo "preprovision: resource group $group is this environment's"
