#!/bin/sh
# Helpers shared by the azd hooks (sourced, POSIX sh). Nothing here calls Azure except delete_assignment.
# shellcheck disable=SC2034 # ACCESS_KINDS and FAILED are read by the hooks that source this file

# require_env HOOK NAME...: exit 1 with one line naming the first unset variable.
require_env() {
    hook="$1"
    shift
    for name in "$@"; do
        eval "value=\${$name:-}"
        if [ -z "$value" ]; then
            echo "$hook: $name is not set (azd env set $name VALUE, or run azd provision first; see docs/deploy.md)" >&2
            exit 1
        fi
    done
}

# require_az HOOK: the Azure CLI must be installed (and logged in: its first call fails otherwise).
require_az() {
    if ! command -v az >/dev/null 2>&1; then
        echo "$1: the Azure CLI (az) is required and must be logged in (az login)" >&2
        exit 1
    fi
}

# check_env_name HOOK: azd accepts letters, digits, '-', '_', '.', '(' and ')', 1 to 64 characters
# (Azure/azure-dev cli/azd/pkg/environment/environment.go, EnvironmentNameRegexp); anything else is refused
# before a name is derived from it.
check_env_name() {
    case "$AZURE_ENV_NAME" in
        *[!A-Za-z0-9._\(\)-]*)
            echo "$1: AZURE_ENV_NAME '$AZURE_ENV_NAME' has characters azd does not allow" >&2
            exit 1
            ;;
    esac
    if [ "${#AZURE_ENV_NAME}" -gt 64 ]; then
        echo "$1: AZURE_ENV_NAME is longer than 64 characters" >&2
        exit 1
    fi
}

# safe_name PREFIX VALUE: PREFIX + VALUE with every character outside [A-Za-z0-9-] replaced by '-', at most 64
# characters. Event Grid event subscription names allow [A-Za-z0-9-] and 3-64 characters; deployment names
# allow at most 64 characters of [-\w._()]. A name that would be longer is cut and ends with '-' and 8 hex
# digits of a checksum of the whole VALUE, so two long environment names still get two names.
safe_name() {
    cleaned="$(printf '%s%s' "$1" "$2" | LC_ALL=C tr -c 'A-Za-z0-9-' '-')"
    if [ "${#cleaned}" -le 64 ]; then
        printf '%s\n' "$cleaned"
        return
    fi
    crc="$(printf '%s' "$2" | cksum | cut -d ' ' -f 1)"
    suffix="$(printf '%08x' "$crc")"
    printf '%s-%s\n' "$(printf '%s' "$cleaned" | cut -c 1-55)" "$suffix"
}

# json_ids JSON: the elements of a JSON array of ARM ids, one per line (ids contain no quotes, commas or
# brackets, so no JSON parser is needed; an empty or absent array prints nothing).
json_ids() {
    printf '%s' "${1:-[]}" | tr -d '[]"\t\r ' | tr ',' '\n' | grep -v '^$' || true
}

# lower TEXT: ARM ids compare case-insensitively.
lower() {
    printf '%s' "$1" | LC_ALL=C tr '[:upper:]' '[:lower:]'
}

# same_id A B: true when the two ARM ids are equal, ignoring case and a trailing '/'.
same_id() {
    [ -n "$1" ] && [ "$(lower "${1%/}")" = "$(lower "${2%/}")" ]
}

# in_list ITEM LIST: true when ITEM equals (same_id) one of the whitespace-separated entries of LIST.
in_list() {
    # shellcheck disable=SC2086 # LIST is split on whitespace on purpose (ids contain none)
    for entry in $2; do
        if same_id "$entry" "$1"; then
            return 0
        fi
    done
    return 1
}

# assignment_scope ID: the scope of a role assignment id (everything before its
# /providers/Microsoft.Authorization/roleAssignments/ part).
assignment_scope() {
    printf '%s' "$1" | sed 's#/[Pp][Rr][Oo][Vv][Ii][Dd][Ee][Rr][Ss]/[Mm][Ii][Cc][Rr][Oo][Ss][Oo][Ff][Tt]\.[Aa][Uu][Tt][Hh][Oo][Rr][Ii][Zz][Aa][Tt][Ii][Oo][Nn]/[Rr][Oo][Ll][Ee][Aa][Ss][Ss][Ii][Gg][Nn][Mm][Ee][Nn][Tt][Ss]/.*##'
}

# subscription_scopes ID...: /subscriptions/GUID of each id, without duplicates.
subscription_scopes() {
    for id in "$@"; do
        printf '/subscriptions/%s\n' "$(printf '%s' "$id" | cut -d / -f 3)"
    done | sort -uf
}

# environment_id: this environment's id, the app's resource group id (tags the system topic it creates).
environment_id() {
    printf '/subscriptions/%s/resourceGroups/%s\n' "$AZURE_SUBSCRIPTION_ID" "$AZURE_RESOURCE_GROUP"
}

# The kinds of role assignment the access deployment makes; each is recorded in the azd environment as
# ACCESS_<KIND>_ASSIGNMENT_IDS (space-separated ids) by the postprovision hook.
ACCESS_KINDS="VAULT CLUSTER_RG CLUSTER_SUB OPERATION IDENTITY"

# desired_scopes KIND: the scopes the current environment values ask for, one per line.
desired_scopes() {
    case "$1" in
        VAULT) printf '%s\n' "${KEY_VAULT_RESOURCE_ID:-}" ;;
        CLUSTER_RG) json_ids "${WATCHED_RESOURCE_GROUP_IDS:-[]}" ;;
        CLUSTER_SUB) json_ids "${WATCHED_SUBSCRIPTION_IDS:-[]}" ;;
        OPERATION)
            # shellcheck disable=SC2046 # one argument per id (ids contain no whitespace)
            set -- $(json_ids "${WATCHED_RESOURCE_GROUP_IDS:-[]}") $(json_ids "${WATCHED_SUBSCRIPTION_IDS:-[]}")
            if [ "$#" -gt 0 ]; then
                subscription_scopes "$@"
            fi
            ;;
        IDENTITY) json_ids "${CLUSTER_IDENTITY_SCOPES:-[]}" ;;
    esac
}

# recorded KIND: the assignment ids recorded for KIND.
recorded() {
    eval "printf '%s\n' \"\${ACCESS_${1}_ASSIGNMENT_IDS:-}\""
}

# delete_assignment HOOK ID: remove one role assignment; on failure say so and remember it (FAILED=1).
delete_assignment() {
    echo "$1: removing role assignment $2"
    if ! az role assignment delete --ids "$2" --output none; then
        echo "$1: could not remove role assignment $2 (remove it by hand: az role assignment delete --ids $2)" >&2
        FAILED=1
    fi
}
