#!/usr/bin/env bash
# Refreshes advisory-db/ (the RustSec advisories scripts/audit.sh checks Cargo.lock against, kept
# in the repository so a clone audits with no network and nothing beside it) from a full copy of
# https://github.com/rustsec/advisory-db: the advisories of every crate named in Cargo.lock, plus
# the list of those crate names (CRATES), so audit.sh can tell when Cargo.lock gained a crate the
# copy was not trimmed for. Run it after a dependency change or to take newer advisories.
# Usage: bash scripts/update-advisories.sh <advisory-db checkout>
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:?usage: bash scripts/update-advisories.sh <advisory-db checkout>}"
[ -d "$src/crates" ] || { echo "$src has no crates/ folder: not an advisory-db checkout" >&2; exit 1; }

dst=advisory-db
rm -rf "$dst"
mkdir -p "$dst/crates"
cp "$src/LICENSE.txt" "$dst/"
[ -d "$src/rust" ] && cp -r "$src/rust" "$dst/"
grep '^name = ' Cargo.lock | sed 's/^name = "\(.*\)"$/\1/' | sort -u > "$dst/CRATES"
while read -r crate; do
    if [ -d "$src/crates/$crate" ]; then cp -r "$src/crates/$crate" "$dst/crates/"; fi
done < "$dst/CRATES"
origin=$(cat "$src/SOURCE" 2>/dev/null || git -C "$src" log -1 --format='rustsec/advisory-db at %H (%cs)' 2>/dev/null || echo "$src")
cat > "$dst/SOURCE" <<SRC
$origin
Trimmed by scripts/update-advisories.sh to the crates in CRATES (those of Cargo.lock when it ran):
$(ls "$dst/crates" | wc -l) of them have advisories. CC0-1.0 (LICENSE.txt).
SRC
echo "advisory-db/: $(find "$dst/crates" -name '*.md' | wc -l) advisories for $(wc -l < "$dst/CRATES") crates"
