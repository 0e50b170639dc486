#!/usr/bin/env bash
# Create (or reuse) the Python virtualenv with moto's EC2 server, which the tests of
# crates/jitgate-aws (and the cloud connector's) talk to as if it were EC2
# (`jitgate_aws::testing::Moto` starts `<venv>/bin/moto_server` on a free port).
#
#   scripts/moto-venv.sh            # venv at <repo>/target/moto-venv
#   JITGATE_MOTO_VENV=/tmp/v scripts/moto-venv.sh
#
# Prints the venv path on the last line of stdout. Idempotent: when the venv already has
# moto_server nothing is installed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${JITGATE_MOTO_VENV:-${repo_root}/target/moto-venv}"
python="${PYTHON:-python3}"

if [[ -x "${venv}/bin/moto_server" ]] && "${venv}/bin/python" -c 'import moto.server' 2>/dev/null; then
    echo "moto-venv: ${venv} already has moto_server" >&2
    echo "${venv}"
    exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "moto-venv: creating ${venv}" >&2
    mkdir -p "$(dirname "${venv}")"
    "${python}" -m venv "${venv}"
fi

echo "moto-venv: installing moto[server] into ${venv}" >&2
"${venv}/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6"
"${venv}/bin/python" -c 'import moto.server' >/dev/null
test -x "${venv}/bin/moto_server"

echo "${venv}"
