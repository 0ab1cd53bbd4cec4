#!/usr/bin/env bash
# Object-store benchmark: upload and download of one large object (default 1 GiB) to a real
# SeaweedFS S3 gateway started for the run, with 1 and 5 parallel parts of 5 MiB and 16 MiB.
# Prints one table: throughput (MB/s, 10^6 bytes) and the peak RSS of the client process during
# each phase (VmHWM of the client, reset before each phase), next to parts x part size: a
# streamed upload peaks near baseline RSS + parts x part size (plus the generator's 1 MiB chunk
# and HTTP buffers), whatever the object's size. SeaweedFS's memory is not counted (another
# process). Downloads are streamed and checked byte by byte against the generator.
#
# Usage: scripts/bench-store.sh                         (1 GiB; configs 1x5 5x5 1x16 5x16)
#        SIZE_MIB=256 CONFIGS="1x5 5x5" scripts/bench-store.sh   (quick check)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE_MIB=${SIZE_MIB:-1024}
CONFIGS=${CONFIGS:-"1x5 5x5 1x16 5x16"}

cd "$ROOT"
cargo build --release -q -p snapstore --example store_bench
BIN="$ROOT/target/release/examples/store_bench"

args=(--size-mib "$SIZE_MIB")
for c in $CONFIGS; do
    args+=(--config "$c")
done

OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
# Not /usr/bin/time -v: its "maximum resident set size" is that of the largest process in the
# tree, which is SeaweedFS, not the client.
"$BIN" "${args[@]}" >"$OUT"

grep '^#' "$OUT"
grep -v '^#' "$OUT" | awk -F'\t' '
    NR == 1 {
        printf "%-6s %-9s %10s %16s %17s %12s %18s\n", "parts", "part MiB", "up MB/s", "up peak RSS MiB",
            "parts x part MiB", "down MB/s", "down peak RSS MiB"
        next
    }
    { printf "%-6s %-9s %10s %16s %17d %12s %18s\n", $1, $2, $3, $4, $1 * $2, $5, $6 }'
