#!/usr/bin/env bash
# Provision a Debian machine (the Vagrant VM, or any Debian 12 host) for byok and run the
# experiments. Used by the Vagrantfile; CI runs it too, in a fresh venv and state directory.
#
#   scripts/provision.sh [SOURCE_DIR]
#
# Environment (all optional):
#   BYOK_VENV                   virtualenv to create/use       (default SOURCE_DIR/.venv)
#   BYOK_HOME                   state: stack, pool             (default SOURCE_DIR/.byok)
#   BYOK_RESULTS                run directory for the results  (default SOURCE_DIR/results/provision-<time>)
#   BYOK_PROVISION_EXPERIMENTS  space-separated ids to run     (default: all, as the main job)
#   BYOK_KEYSTONE_PORT / BYOK_BARBICAN_PORT   ports of the embedded stack
set -euo pipefail
SRC=$(cd "${1:-$(dirname "$0")/..}" && pwd)
export BYOK_VENV=${BYOK_VENV:-$SRC/.venv}
export BYOK_HOME=${BYOK_HOME:-$SRC/.byok}
RESULTS=${BYOK_RESULTS:-$SRC/results/provision-$(date -u +%Y%m%dT%H%M%S)}
echo "[provision] source $SRC, venv $BYOK_VENV, state $BYOK_HOME, results $RESULTS"
cd "$SRC"
./dev setup
BYOK="$BYOK_VENV/bin/byok"
if [ -n "${BYOK_PROVISION_EXPERIMENTS:-}" ]; then
  # shellcheck disable=SC2086  # ids are words on purpose
  "$BYOK" experiments run $BYOK_PROVISION_EXPERIMENTS --out "$RESULTS" --report
else
  "$BYOK" main-job --out "$RESULTS" --no-spec
fi
echo "[provision] results in $RESULTS"
