#!/usr/bin/env bash
# Whole-command benchmark in one run: the restore tables of scripts/bench-restore.sh (etcdbrctl
# restore beside etcdutl/etcdctl snapshot restore, the Go tool's replay algorithm and the dd
# floor), then the snapshot table of scripts/bench-snapshot.sh (etcdbrctl snapshot beside
# etcdctl snapshot save) and, with SCALE_GIB set, the scale table of scripts/bench-scale.sh (a
# SCALE_GIB GiB db through etcdctl/etcdbrctl snapshot, etcdbrctl/etcdutl restore and a full
# validation), with the machine's load average before and after, into one report.
# The two scripts are unchanged and still run alone; their environment variables pass through
# (bench-restore.sh: KEYS, REVISIONS, REPEAT, SCALE, BIG, VERIFY, DATA_ROOT, ...;
# bench-snapshot.sh: SIZE_MIB, ROUNDS, SKIP_S3, BURST_SECONDS, ...; bench-scale.sh gets
# SIZE_GIB=$SCALE_GIB, not SIZE_MIB, and COMPRESSED, KEEP, FORCE). WORK is given to none: each
# takes its own scratch directory.
#
# Usage: scripts/bench-all.sh                       (the reference sizes: slow, several GB of disk)
#        SCALE_GIB=8 scripts/bench-all.sh           (and the 8 GiB table: about 20 GB of disk more)
#        REPEAT=1 SCALE=1 BIG=0 SIZE_MIB=256 ROUNDS=1 SKIP_S3=1 scripts/bench-all.sh
# Output: the report on stdout and in $OUT/report.md (OUT: default a fresh /tmp/etcdbr-bench-all.*).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$(mktemp -d /tmp/etcdbr-bench-all.XXXXXX)}
mkdir -p "$OUT"
unset WORK

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo "bench-all: restore tables (log: $OUT/restore.err)" >&2
"$ROOT/scripts/bench-restore.sh" >"$OUT/restore.md" 2>"$OUT/restore.err"
LOAD_MIDDLE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "bench-all: snapshot table (log: $OUT/snapshot.err)" >&2
"$ROOT/scripts/bench-snapshot.sh" >"$OUT/snapshot.txt" 2>"$OUT/snapshot.err"
SCALE_GIB=${SCALE_GIB:-}
if [[ -n "$SCALE_GIB" ]]; then
    LOAD_SCALE=$(cut -d' ' -f1-3 /proc/loadavg)
    echo "bench-all: scale table, $SCALE_GIB GiB (log: $OUT/scale.err)" >&2
    env -u SIZE_MIB SIZE_GIB="$SCALE_GIB" "$ROOT/scripts/bench-scale.sh" >"$OUT/scale.txt" 2>"$OUT/scale.err"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo "# etcdbr whole-command benchmark ($STARTED, $(nproc) cores)"
    echo
    echo "load average: $LOAD_BEFORE before, $LOAD_MIDDLE between the restore and snapshot parts, ${LOAD_SCALE:+$LOAD_SCALE before the scale part, }$LOAD_AFTER after"
    echo
    echo "## Restore (scripts/bench-restore.sh)"
    cat "$OUT/restore.md"
    echo
    echo "## Snapshot (scripts/bench-snapshot.sh)"
    echo
    echo '```'
    cat "$OUT/snapshot.txt"
    echo '```'
    if [[ -n "$SCALE_GIB" ]]; then
        echo
        echo "## Scale, $SCALE_GIB GiB (scripts/bench-scale.sh)"
        echo
        echo '```'
        cat "$OUT/scale.txt"
        { grep -E "HashKV|restored db:" "$OUT/scale.err" || true; } | sed 's/^ *//'
        echo '```'
    fi
} >"$OUT/report.md"
cat "$OUT/report.md"
echo "bench-all: report in $OUT/report.md" >&2
