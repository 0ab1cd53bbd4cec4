#!/usr/bin/env bash
# Scale benchmark (issue 21): one etcd 3.5 db of SIZE_GIB GiB (etcd's largest recommended size is
# 8 GiB) through a full snapshot, a restore and a full validation, each beside etcd's own tool,
# in one run. Every row is a whole command under /usr/bin/time -v (wall, CPU, peak RSS), with the
# load average before and after it.
#
#   1. `etcdctl snapshot save` to a local file, then `etcdbrctl snapshot` uncompressed to a Local
#      store (until its log says "full snapshot stored"; goals >= 0.9x etcdctl, <= 64 MiB RSS).
#      COMPRESSED=1 adds `etcdbrctl snapshot` with gzip (default level) and zstd.
#   2. etcd is stopped and its data dir deleted (disk), then `etcdbrctl restore` of that store
#      into a data dir (goals <= 1.0x etcdutl, <= 256 MiB RSS), its db's HashKV (offline,
#      `etcdbrctl db hashkv`) compared with the snapshot's;
#   3. `etcdbrctl initialize --validation-mode full` of that data dir (the data dir is valid and
#      current, so it only validates; goal <= 0.5 s per GiB). The restore has just written the
#      db, so its pages are in the page cache; as root, the script then drops the cache, reads
#      the db once with `dd iflag=direct` (the disk's floor for any check that reads every page),
#      drops the cache again and runs the validation a second time, cold;
#   4. the data dir deleted, `etcdutl snapshot restore` (3.5.30) of the same snapshot object.
#
# Disk: never more than two copies of the db at once (the source data dir, its WAL kept short with
# --snapshot-count, beside the etcdctl file or the stored snapshot; then the stored snapshot beside
# one restored data dir), about 2.1 x the db at the peak; the script refuses to start unless that
# leaves 10 GB free (FORCE=1 overrides). SIZE is the db's size: etcd-load writes values of
# SIZE / 1.127 (a db of 16 KiB values is 1.127 x their bytes: 1,154 MiB for 1 GiB), and the
# report states the db's real size. Everything it wrote is deleted at the end (KEEP=1 keeps it).
#
# Usage: SIZE_GIB=8 scripts/bench-scale.sh
# Env: SIZE_GIB (8; SIZE_MIB overrides it, for a quick check), VALUE_SIZE (16384), WORK (default $ETCDBR_BENCH_DATA/scale or
#      /tmp/etcdbr-bench-data/scale), COMPRESSED (0), KEEP (0), FORCE (0).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# free_port, now, calc, rss_kib, stop_pid, start_etcd (with ETCD_QUOTA, below, sized to the db);
# timed is this script's own (a report row per run).
. "$ROOT/scripts/bench-lib.sh"
SIZE_GIB=${SIZE_GIB:-8}
SIZE_MIB=${SIZE_MIB:-$((SIZE_GIB * 1024))}
VALUE_SIZE=${VALUE_SIZE:-16384}
COMPRESSED=${COMPRESSED:-0}
KEEP=${KEEP:-0}
FORCE=${FORCE:-0}
EBIN=/opt/etcdbr-deps/etcd-sid/usr/bin
# The source etcd's --quota-backend-bytes (bench-lib's start_etcd reads it), and the quota the
# restore and validation are told (the same: an 8 GiB db sits at etcd's default quota of 8 GiB).
ETCD_QUOTA=$(((SIZE_MIB + 2048) * 1024 * 1024))
DATA_ROOT=${ETCDBR_BENCH_DATA:-/tmp/etcdbr-bench-data}
WORK=${WORK:-$DATA_ROOT/scale}

for need in /usr/bin/time "$EBIN/etcd" "$EBIN/etcdctl" "$EBIN/etcdutl" curl python3; do
    if ! command -v "$need" >/dev/null 2>&1; then
        echo "bench-scale: $need is missing (scripts/install-test-deps.sh)" >&2
        exit 1
    fi
done

mkdir -p "$WORK"
need_kib=$((SIZE_MIB * 1024 * 21 / 10 + 10 * 1000 * 1000 * 1000 / 1024))
free_kib=$(df -Pk "$WORK" | awk 'NR==2 {print $4}')
echo "== disk: $((free_kib / 1024 / 1024)) GiB free at $WORK; this run needs about $((need_kib / 1024 / 1024)) GiB (10 GB of it spare)" >&2
if ((free_kib < need_kib)) && [[ $FORCE != 1 ]]; then
    echo "bench-scale: not enough disk for $SIZE_MIB MiB; choose a smaller SIZE_GIB (or FORCE=1)" >&2
    exit 1
fi

echo "== building (release)" >&2
# The same cargo call as bench-snapshot.sh, so neither rebuilds the other's dependencies.
(cd "$ROOT" && cargo build --release -q -p etcdbrctl -p etcdbr-benches --bins)
BRCTL=$ROOT/target/release/etcdbrctl
LOAD=$ROOT/target/release/etcd-load

RUN=$(mktemp -d "$WORK/run.XXXXXX")
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [[ $KEEP != 1 ]]; then rm -rf "$RUN"; fi
}
trap cleanup EXIT

loadavg() { cut -d' ' -f1 /proc/loadavg; }
cpu_secs() { awk -F': ' '/User time/ {u=$2} /System time/ {s=$2} END {printf "%.2f", u+s}' "$1"; }

ROWS=$RUN/rows.tsv
: >"$ROWS"
# row LABEL SECONDS TIMEFILE LOAD_BEFORE: one line of the report.
row() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(cpu_secs "$3")" "$(rss_kib "$3")" "$4" "$(loadavg)" >>"$ROWS"
    echo "   $1: $2 s, peak RSS $(($(rss_kib "$3") / 1024)) MiB (load $4 -> $(loadavg))" >&2
}

# timed LABEL CMD...: runs CMD under /usr/bin/time -v and records its row.
timed() {
    local label=$1
    shift
    local before start
    before=$(loadavg)
    start=$(now)
    /usr/bin/time -v -o "$RUN/$label.time" "$@" >"$RUN/$label.out" 2>&1 || {
        echo "$label failed:" >&2
        tail -20 "$RUN/$label.out" >&2
        exit 1
    }
    row "$label" "$(calc "$(now) - $start")" "$RUN/$label.time" "$before"
}

# ---- the db ------------------------------------------------------------------------------------
SRC_DIR=$RUN/etcd-src
SRC_PEER=$(free_port)
echo "== generating a ${SIZE_MIB} MiB db ($VALUE_SIZE-byte values, etcd --unsafe-no-fsync)" >&2
start_etcd "$SRC_DIR" "$SRC_PEER" --snapshot-count 10000 --unsafe-no-fsync
"$LOAD" fill --endpoint "$ENDPOINT" --bytes $((SIZE_MIB * 1024 * 1024 * 1000 / 1127)) --value-size "$VALUE_SIZE" >&2
stop_pid "$ETCD_PID"
start_etcd "$SRC_DIR" "$SRC_PEER" --snapshot-count 10000
SRC=$ENDPOINT
DB_BYTES=$("$EBIN/etcdctl" --endpoints "$SRC" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "== db: $DB_BYTES bytes; disk now: $(df -h --output=avail "$WORK" | tail -1)" >&2

# ---- 1. snapshots ------------------------------------------------------------------------------
echo "== etcdctl snapshot save" >&2
timed etcdctl-save "$EBIN/etcdctl" --endpoints "$SRC" snapshot save "$RUN/etcdctl.db"
SNAP_BYTES=$(stat -c %s "$RUN/etcdctl.db")
rm -f "$RUN/etcdctl.db"

# brctl_snapshot LABEL STORE_DIR [flags...]: one etcdbrctl snapshot run until its first full
# snapshot is stored, then SIGTERM.
brctl_snapshot() {
    local label=$1 store=$2
    shift 2
    local log=$RUN/$label.out before
    mkdir -p "$RUN/spool"
    before=$(loadavg)
    SNAP_WRAP=(/usr/bin/time -v -o "$RUN/$label.time")
    snapshot_once "$label" "$log" --snapstore-temp-directory "$RUN/spool" \
        --storage-provider Local --store-container "$store" --store-prefix scale "$@"
    row "$label" "$SNAP_SECS" "$RUN/$label.time" "$before"
}

echo "== etcdbrctl snapshot, Local, uncompressed" >&2
STORE=$RUN/store
brctl_snapshot brctl-snapshot "$STORE" --compress-snapshots=false
FULL=$(find "$STORE/scale/v2" -name 'Full-*' | head -1)
if [[ $COMPRESSED == 1 ]]; then
    for policy in gzip zstd; do
        echo "== etcdbrctl snapshot, Local, $policy" >&2
        brctl_snapshot "brctl-snapshot-$policy" "$RUN/store-$policy" --compression-policy "$policy"
        echo "   object: $(find "$RUN/store-$policy/scale/v2" -name 'Full-*' -printf '%s') bytes" >&2
        rm -rf "$RUN/store-$policy"
    done
fi
stop_pid "$ETCD_PID"
rm -rf "$SRC_DIR"
echo "== source etcd stopped and deleted; disk now: $(df -h --output=avail "$WORK" | tail -1)" >&2
WANT_HASH=$("$BRCTL" db hashkv "$FULL" -w json)

# ---- 2. restore --------------------------------------------------------------------------------
PEER=http://127.0.0.1:$(free_port)
RESTORED=$RUN/restored.etcd
echo "== etcdbrctl restore" >&2
timed brctl-restore "$BRCTL" restore --storage-provider Local --store-container "$STORE" --store-prefix scale \
    --embedded-etcd-quota-bytes "$ETCD_QUOTA" --data-dir "$RESTORED" --name scale --initial-cluster "scale=$PEER" --initial-advertise-peer-urls "$PEER"
GOT_HASH=$("$BRCTL" db hashkv "$RESTORED/member/snap/db" -w json)
if [[ $GOT_HASH != "$WANT_HASH" ]]; then
    echo "bench-scale: the restored db's HashKV differs from the snapshot's: $GOT_HASH vs $WANT_HASH" >&2
    exit 1
fi
echo "   HashKV of the restored db equals the snapshot's" >&2
RESTORED_BYTES=$(stat -c %s "$RESTORED/member/snap/db")
echo "   restored db: $RESTORED_BYTES bytes, $(python3 -c "print(f'{$RESTORED_BYTES / $DB_BYTES:.3f}')")x the source's" >&2

# ---- 3. full validation ------------------------------------------------------------------------
# validate_full LABEL: `initialize --validation-mode full` of the restored data dir, which must
# only validate it.
validate_full() {
    local label=$1
    timed "$label" "$BRCTL" initialize --validation-mode full --storage-provider Local \
        --store-container "$STORE" --store-prefix scale --embedded-etcd-quota-bytes "$ETCD_QUOTA" --data-dir "$RESTORED" --name scale \
        --initial-cluster "scale=$PEER" --initial-advertise-peer-urls "$PEER"
    if grep -qi "restor" "$RUN/$label.out" && ! grep -qi "valid" "$RUN/$label.out"; then
        echo "bench-scale: initialize restored instead of only validating:" >&2
        tail -5 "$RUN/$label.out" >&2
        exit 1
    fi
    tail -2 "$RUN/$label.out" | sed 's/^/   /' >&2
}
echo "== etcdbrctl initialize --validation-mode full" >&2
validate_full brctl-validate-full

# ---- 3b. full validation from a cold page cache, beside the disk's read floor ------------------
# Above, the restore has just written the db, so its pages are cached. At a real start-up they
# often are not; then validation reads the whole file from disk, and the floor is the disk's
# sequential read of the same file (`dd iflag=direct`, which the page cache cannot help).
if [[ -w /proc/sys/vm/drop_caches ]]; then
    drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }
    echo "== the disk's read floor, then the full validation again, each after dropping the page cache" >&2
    drop_caches
    timed disk-read-floor dd if="$RESTORED/member/snap/db" of=/dev/null bs=4M iflag=direct
    drop_caches
    validate_full brctl-validate-full-cold
else
    echo "== /proc/sys/vm/drop_caches is not writable (not root): no cold-cache validation row" >&2
fi
rm -rf "$RESTORED"

# ---- 4. etcdutl --------------------------------------------------------------------------------
echo "== etcdutl snapshot restore" >&2
timed etcdutl-restore "$EBIN/etcdutl" snapshot restore "$FULL" --data-dir "$RUN/etcdutl.etcd" --name scale \
    --initial-cluster "scale=$PEER" --initial-advertise-peer-urls "$PEER"
rm -rf "$RUN/etcdutl.etcd"

# ---- report ------------------------------------------------------------------------------------
python3 - "$ROWS" "$DB_BYTES" "$SNAP_BYTES" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    label, secs, cpu, rss, before, after = line.rstrip("\n").split("\t")
    rows[label] = (float(secs), float(cpu), int(rss) / 1024, before, after)
db, snap = int(sys.argv[2]), int(sys.argv[3])
print(f"db {db / 2**30:.2f} GiB, snapshot stream {snap / 2**30:.2f} GiB")
print(f"{'command':<24} {'wall s':>8} {'CPU s':>7} {'peak RSS MiB':>13} {'ratio':>22}  load before/after")
for label, (secs, cpu, rss, before, after) in rows.items():
    if label.startswith("brctl-snapshot"):
        ratio = f"{rows['etcdctl-save'][0] / secs:.2f}x etcdctl speed"
    elif label == "brctl-restore":
        ratio = f"{secs / rows['etcdutl-restore'][0]:.2f}x etcdutl time"
    elif label == "brctl-validate-full":
        ratio = f"{secs / (db / 2**30):.3f} s per GiB"
    elif label == "brctl-validate-full-cold":
        ratio = f"{secs / (db / 2**30):.3f} s/GiB, {secs / rows['disk-read-floor'][0]:.2f}x floor"
    elif label == "disk-read-floor":
        ratio = f"{secs / (db / 2**30):.3f} s per GiB"
    else:
        ratio = "1.00x"
    print(f"{label:<24} {secs:8.2f} {cpu:7.2f} {rss:13.1f} {ratio:>22}  {before} / {after}")
EOF
