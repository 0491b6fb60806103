#!/usr/bin/env bash
# Static checks of the infrastructure code in infra/, offline:
#   1. every inline checkov skip states its reason (//checkov:skip=CKV_ID:reason);
#   2. checkov (pinned, in its own virtualenv .venv-checkov: it pins packaging<24 and pycep-parser 0.5.1,
#      which would clash with the project's .venv) scans infra/ for Bicep misconfigurations without
#      downloading anything (BC_SKIP_MAPPING, --skip-download); any failed check, and any file checkov
#      could not parse (it would otherwise be skipped silently, exit 0), fails this script.
# The pycep-based tests of the Bicep (tests/infra) run with the rest of the test suite.
set -euo pipefail

cd "$(dirname "$0")/.."

CHECKOV_VERSION="3.3.30"
VENV=".venv-checkov"
PYTHON="${PYTHON:-python3}"

if ! [ -x "$VENV/bin/checkov" ] || ! ls -d "$VENV"/lib/python3*/site-packages/checkov-"$CHECKOV_VERSION".dist-info >/dev/null 2>&1; then
    echo "infra-check: installing checkov==$CHECKOV_VERSION into $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

# 1. Skips without a reason.
bad_skips="$(grep -rnE 'checkov:skip=' infra --include='*.bicep' | grep -vE 'checkov:skip=CKV2?_[A-Z0-9_]+:[[:space:]]*[^[:space:]]' || true)"
if [ -n "$bad_skips" ]; then
    echo "infra-check: checkov skips must read //checkov:skip=CKV_ID:reason" >&2
    echo "$bad_skips" >&2
    exit 1
fi

# 2. checkov, offline.
output="$(
    BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false "$VENV/bin/checkov" \
        --directory infra \
        --framework bicep \
        --skip-download \
        --compact \
        --quiet
)" && status=0 || status=$?
echo "$output"
if [ "$status" -ne 0 ]; then
    echo "infra-check: checkov found failed checks (fix them, or skip inline with a reason)" >&2
    exit "$status"
fi
if echo "$output" | grep -qE 'Parsing errors: [1-9]'; then
    echo "infra-check: checkov could not parse a Bicep file (its pycep-parser 0.5.1 lacks lambdas such as map/filter)" >&2
    exit 1
fi
if ! echo "$output" | grep -qE 'Passed checks: [1-9]'; then
    echo "infra-check: checkov ran no check on infra/" >&2
    exit 1
fi
echo "infra-check: OK"
