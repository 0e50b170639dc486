#!/usr/bin/env bash
# Create (or reuse) the Python virtualenv used by tests/azure_sdk/jit_sdk_test.py:
# Azure's own SDK (azure-mgmt-security 7.x) talking to jitgate's ARM-compatible API.
#
#   scripts/azure-sdk-venv.sh            # venv at <repo>/target/azsdk-venv
#   JITGATE_AZSDK_VENV=/tmp/v scripts/azure-sdk-venv.sh
#
# Prints the venv path on the last line of stdout. Idempotent: when the venv already
# imports azure.mgmt.security nothing is installed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JITGATE_AZSDK_VENV:-${repo_root}/target/azsdk-venv}"
python="${PYTHON:-python3}"

if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c 'import azure.mgmt.security' 2>/dev/null; then
    echo "azure-sdk-venv: ${venv} already has azure-mgmt-security" >&2
    echo "${venv}"
    exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "azure-sdk-venv: creating ${venv}" >&2
    mkdir -p "$(dirname "${venv}")"
    "${python}" -m venv "${venv}"
fi

echo "azure-sdk-venv: installing azure-mgmt-security into ${venv}" >&2
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
    "azure-mgmt-security>=7,<8" azure-core
"${venv}/bin/python" -c 'import azure.mgmt.security' >/dev/null

echo "${venv}"
