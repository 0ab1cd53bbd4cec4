#!/usr/bin/env bash
# Installs what the tests need (idempotent) and runs the whole suite against real components:
# etcd 3.4 and 3.5, SeaweedFS's S3 gateway, Azurite. Usage: bash scripts/test.sh [cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
    exit 1
fi
bash scripts/install-test-deps.sh

start=$(date +%s)
# Tests start their own etcd, SeaweedFS and Azurite processes on free loopback ports.
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
cargo test --workspace --locked "$@"
echo "[test.sh] suite took $(( $(date +%s) - start )) s"
