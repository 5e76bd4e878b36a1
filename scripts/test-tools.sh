#!/usr/bin/env bash
# Installs what only the test suite needs, once, outside the repository:
# - schemathesis (PyPI), the property-based API fuzzer that the OpenAPI document drives
#   (crates/berth/tests/api_fuzz.rs), in its own virtualenv under $BERTH_TOOLS_DIR.
# Idempotent: a second run checks the pinned version and returns.
set -euo pipefail

TOOLS_DIR=${BERTH_TOOLS_DIR:-/opt/berth/tools}
SCHEMATHESIS=${BERTH_SCHEMATHESIS:-4.32.5}

log() { printf 'test-tools: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

venv="$TOOLS_DIR/schemathesis"
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS"; then
  command -v python3 >/dev/null 2>&1 || { log "python3 is needed"; exit 1; }
  if ! python3 -m venv --help >/dev/null 2>&1; then
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  log "installing schemathesis $SCHEMATHESIS into $venv"
  # A half-made venv (an interrupted install) fails the version check above and is redone.
  $SUDO mkdir -p "$TOOLS_DIR"
  $SUDO rm -rf "$venv"
  $SUDO python3 -m venv "$venv"
  $SUDO "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS"
fi
log "ok: schemathesis $SCHEMATHESIS at $venv/bin/st"
