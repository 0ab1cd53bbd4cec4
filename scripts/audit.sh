#!/usr/bin/env bash
# Offline supply-chain check: `cargo audit` of Cargo.lock against a local copy of the RustSec
# advisory database (no network). Fails on any vulnerability, and on unsound or unmaintained
# crates unless .cargo/audit.toml ignores them with a written reason.
#   ETCDBR_ADVISORY_DB  a full advisory database folder to use instead of the repository's own
#                       advisory-db/ (the advisories of Cargo.lock's crates, kept current by
#                       scripts/update-advisories.sh)
# Where no copy exists, the check says so and passes. scripts/install-test-deps.sh installs
# cargo-audit.
set -euo pipefail
cd "$(dirname "$0")/.."

db="${ETCDBR_ADVISORY_DB:-advisory-db}"
if [ ! -d "$db/crates" ]; then
    echo "[audit] NOTE: no RustSec advisory database at $db; the supply-chain check did not run." \
         "Restore advisory-db/ from git, or set ETCDBR_ADVISORY_DB to a clone of" \
         "https://github.com/rustsec/advisory-db." >&2
    exit 0
fi
if [ -f "$db/CRATES" ]; then
    # A trimmed copy vouches only for the crates it was trimmed for.
    missing=$(grep '^name = ' Cargo.lock | sed 's/^name = "\(.*\)"$/\1/' | sort -u | comm -23 - <(sort -u "$db/CRATES"))
    if [ -n "$missing" ]; then
        echo "[audit] $db was trimmed before Cargo.lock gained: $(echo $missing)." \
             "Run bash scripts/update-advisories.sh <advisory-db clone> to take their advisories." >&2
        exit 1
    fi
fi
if ! command -v cargo-audit >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-audit" ]; then
    echo "[audit] cargo-audit is not installed: run bash scripts/install-test-deps.sh" >&2
    exit 1
fi
echo "[audit] advisories from $db ($(find "$db/crates" -name '*.md' | wc -l) files)"
# --no-fetch: the database is a plain folder; nothing is downloaded.
exec cargo audit --db "$db" --no-fetch --file Cargo.lock --deny warnings
