#!/usr/bin/env bash
# One command from a fresh clone to a running Berth: installs the engines and the instances' OS
# user (scripts/setup.sh), builds the release binary and starts `berth server` with its embedded
# defaults (SQLite store and local backend under ./berth-data, API on 127.0.0.1:7878).
# Arguments are passed to `berth server` (see `berth server --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "run.sh: cargo is missing; install a Rust toolchain (1.85 or newer) first" >&2
  exit 1
fi
./scripts/setup.sh
cargo build --release --locked --bin berth
echo "run.sh: the CLI is target/release/berth; export PATH=\"$PWD/target/release:\$PATH\"" >&2
exec ./target/release/berth server "$@"
