#!/usr/bin/env bash
# Offline supply-chain check: `cargo audit` of Cargo.lock against a local copy of the RustSec
# advisory database (no network). Fails on any vulnerability, and on unsound or unmaintained
# crates unless audit.toml at the repository's root ignores them with a written reason.
#   ETCDBR_ADVISORY_DB  the advisory database folder (default: ../advisory-db, then
#                       ../shared/advisory-db beside the repository)
# Where no copy exists, the check says so and passes: a fresh clone must not need anything
# beside it. scripts/install-test-deps.sh installs cargo-audit.
set -euo pipefail
cd "$(dirname "$0")/.."

db="${ETCDBR_ADVISORY_DB:-}"
if [ -z "$db" ]; then
    for d in ../advisory-db ../shared/advisory-db; do
        if [ -d "$d/crates" ]; then db=$d; break; fi
    done
fi
if [ -z "$db" ] || [ ! -d "$db/crates" ]; then
    echo "[audit] NOTE: no RustSec advisory database found (ETCDBR_ADVISORY_DB, ../advisory-db," \
         "../shared/advisory-db); the supply-chain check did not run." \
         "Clone https://github.com/rustsec/advisory-db beside the repository to run it." >&2
    exit 0
fi
if ! command -v cargo-audit >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-audit" ]; then
    echo "[audit] cargo-audit is not installed: run bash scripts/install-test-deps.sh" >&2
    exit 1
fi
echo "[audit] advisories from $db ($(find "$db/crates" -name '*.md' | wc -l) files)"
# --no-fetch: the database is a plain folder; nothing is downloaded.
exec cargo audit --db "$db" --no-fetch --file Cargo.lock --deny warnings
