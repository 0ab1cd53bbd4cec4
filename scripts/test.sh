#!/usr/bin/env bash
# Installs what the tests need (idempotent), runs the gates a reviewer checks (rustfmt, clippy,
# rustdoc, an offline supply-chain audit), then the whole suite against real components: etcd 3.4
# and 3.5, SeaweedFS's S3 gateway, Azurite, Chromium. Any gate that fails fails the run.
# Usage: bash scripts/test.sh [cargo test args]
#   ETCDBR_ADVISORY_DB  a RustSec advisory database to audit against instead of the repository's
#                       own advisory-db/ (see scripts/audit.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (https://rustup.rs) and re-run" >&2
    exit 1
fi
bash scripts/install-test-deps.sh

start=$(date +%s)
step() { printf '[test.sh] %s (%d s)\n' "$*" $(( $(date +%s) - start )); }

step "gate: cargo fmt --check"
cargo fmt --all -- --check

step "gate: cargo clippy --workspace --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "gate: cargo doc --workspace --no-deps with -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

step "gate: cargo audit (offline)"
bash scripts/audit.sh

step "build"
cargo build --workspace --all-targets --locked 2>&1 | tail -n 3
# Tests start their own etcd, SeaweedFS and Azurite processes on free loopback ports.
step "tests"
cargo test --workspace --locked "$@"
step "tests of brcore's compression without the isal feature (libdeflate)"
cargo test -p brcore --no-default-features --lib --locked compress::
step "all passed"
