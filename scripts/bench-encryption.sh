#!/usr/bin/env bash
# Encryption's cost (issue 19): the wall time of a full snapshot and of a restore with
# --encryption-key-file beside the same without it, on the same etcd 3.5 db (default 256 MiB of
# 16 KiB values), Local store, gzip at the default level. Rounds alternate plain and encrypted;
# medians and their ratio are printed. Goal: ratio <= 1.10 for both.
#
# Usage: scripts/bench-encryption.sh           SIZE_MIB=64 ROUNDS=3 scripts/bench-encryption.sh
# Env: SIZE_MIB (256), VALUE_SIZE (16384), ROUNDS (3), WORK (default /tmp/etcdbr-bench-data/encryption-bench)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/bench-lib.sh"
SIZE_MIB=${SIZE_MIB:-256}
VALUE_SIZE=${VALUE_SIZE:-16384}
ROUNDS=${ROUNDS:-3}
EBIN=/opt/etcdbr-deps/etcd-sid/usr/bin
WORK=${WORK:-${ETCDBR_BENCH_DATA:-/tmp/etcdbr-bench-data}/encryption-bench}

echo "== building (release)" >&2
(cd "$ROOT" && cargo build --release -q -p etcdbrctl --bin etcdbrctl && cargo build --release -q -p etcdbr-benches --bin etcd-load)
BRCTL=$ROOT/target/release/etcdbrctl
LOAD=$ROOT/target/release/etcd-load

bench_scratch

DB_DIR=$WORK/etcd-${SIZE_MIB}mib-v${VALUE_SIZE}
if [[ ! -f $DB_DIR.done ]]; then
    rm -rf "$DB_DIR"
    free_port >"$DB_DIR.peer"
    echo "== generating a ${SIZE_MIB} MiB db" >&2
    start_etcd "$DB_DIR" "$(cat "$DB_DIR.peer")" --unsafe-no-fsync
    "$LOAD" fill --endpoint "$ENDPOINT" --bytes $((SIZE_MIB * 1024 * 1024)) --value-size "$VALUE_SIZE" >&2
    kill -TERM "$ETCD_PID"
    wait "$ETCD_PID" || true
    touch "$DB_DIR.done"
fi
start_etcd "$DB_DIR" "$(cat "$DB_DIR.peer")"
SRC=$ENDPOINT

KEY=$RUN/backup.key
command -v age-keygen >/dev/null || { echo "age-keygen is missing: bash scripts/install-test-deps.sh" >&2; exit 1; }
age-keygen -o "$KEY" 2>/dev/null

# snapshot LABEL CONTAINER [flags...]: seconds until the first full snapshot is stored.
snapshot() {
    local label=$1 container=$2
    shift 2
    rm -rf "$container"
    SNAP_WRAP=()
    snapshot_once "$label" "$RUN/$label.log" --storage-provider Local --store-container "$container" \
        --store-prefix etcd-main "$@"
    echo "$SNAP_SECS"
}

# restore CONTAINER [flags...]: seconds of `etcdbrctl restore`.
restore() {
    local container=$1
    shift
    rm -rf "$RUN/restored" "$RUN/restored.part"
    local start
    start=$(now)
    "$BRCTL" restore --storage-provider Local --store-container "$container" --store-prefix etcd-main \
        --data-dir "$RUN/restored" --name n1 --initial-cluster n1=http://127.0.0.1:2380 \
        --initial-advertise-peer-urls http://127.0.0.1:2380 "$@" >/dev/null 2>"$RUN/restore.log" || {
        tail -20 "$RUN/restore.log" >&2
        exit 1
    }
    calc "$(now) - $start"
}

declare -a SP SE RP RE
for r in $(seq "$ROUNDS"); do
    SP+=("$(snapshot plain "$RUN/plain")")
    SE+=("$(snapshot encrypted "$RUN/encrypted" --encryption-key-file "$KEY")")
    RP+=("$(restore "$RUN/plain")")
    RE+=("$(restore "$RUN/encrypted" --encryption-key-file "$KEY")")
    echo "   round $r: snapshot ${SP[-1]} s / ${SE[-1]} s, restore ${RP[-1]} s / ${RE[-1]} s (plain / encrypted)" >&2
done
stored_plain=$(du -sb "$RUN/plain" | cut -f1)
stored_enc=$(du -sb "$RUN/encrypted" | cut -f1)
sp=$(median "${SP[@]}") se=$(median "${SE[@]}") rp=$(median "${RP[@]}") re=$(median "${RE[@]}")
echo
echo "db ${SIZE_MIB} MiB, gzip default level, Local store, $ROUNDS rounds, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| | plain | encrypted | ratio |"
echo "|---|---|---|---|"
echo "| full snapshot (s, median) | $sp | $se | $(calc "round($se / $sp, 3)") |"
echo "| restore (s, median) | $rp | $re | $(calc "round($re / $rp, 3)") |"
echo "| stored bytes | $stored_plain | $stored_enc | $(calc "round($stored_enc / $stored_plain, 4)") |"
