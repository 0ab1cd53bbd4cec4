#!/usr/bin/env bash
# Snapshot benchmark: etcdbr's `etcdbrctl snapshot` against `etcdctl snapshot save` on the same
# etcd 3.5 member with a large db (default 1 GiB of Kubernetes-like values), then delta ingest.
#
# Part 1, full snapshot (ROUNDS rounds of every case, the same db; medians reported):
#   - etcdctl snapshot save to a local file;
#   - etcdbrctl snapshot to the Local store: uncompressed, gzip at the default level, gzip at 6,
#     zstd (etcdbr's own opt-in policy);
#   - etcdbrctl snapshot to SeaweedFS's S3 gateway (`weed mini`): uncompressed and gzip.
#   etcdbrctl has no "one full and exit" mode: the time is from its start until its log says
#   "full snapshot stored" (the object is complete and visible then), after which it gets SIGTERM.
#   Throughput = db bytes / that time; peak RSS from /usr/bin/time -v. Goal: >= 0.9x etcdctl's
#   throughput, <= 64 MiB RSS.
# Part 2, delta ingest: a fresh etcd (fsync on). `etcd-load burst` puts as fast as etcd takes it
#   for BURST_SECONDS alone (etcd's rate), then again while etcdbrctl snapshot watches it with
#   --delta-snapshot-period 1s; the persist rate is the burst's revisions divided by the time
#   from the burst's start until a stored delta reaches its last revision.
#
# Usage: scripts/bench-snapshot.sh                  (1 GiB db; generated once, cached)
#        SIZE_MIB=64 BURST_SECONDS=5 scripts/bench-snapshot.sh   (quick check)
# Env: ROUNDS (3), SIZE_MIB (1024), VALUE_SIZE (16384), BURST_SECONDS (20), BURST_VALUE_SIZE (1024),
#      BURST_CONCURRENCY (64), WORK (scratch dir; default $ETCDBR_BENCH_DATA or
#      /tmp/etcdbr-bench-data, under snapshot-bench/), SKIP_S3 (1 to skip SeaweedFS),
#      PROFILE (1: record `perf` of the gzip Local run, if perf is installed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/bench-lib.sh"
SIZE_MIB=${SIZE_MIB:-1024}
VALUE_SIZE=${VALUE_SIZE:-16384}
BURST_SECONDS=${BURST_SECONDS:-20}
BURST_VALUE_SIZE=${BURST_VALUE_SIZE:-1024}
BURST_CONCURRENCY=${BURST_CONCURRENCY:-64}
SKIP_S3=${SKIP_S3:-0}
ROUNDS=${ROUNDS:-3}
PROFILE=${PROFILE:-0}
EBIN=/opt/etcdbr-deps/etcd-sid/usr/bin
WEED=/opt/etcdbr-deps/venv/bin/weed
DATA_ROOT=${ETCDBR_BENCH_DATA:-/tmp/etcdbr-bench-data}
WORK=${WORK:-$DATA_ROOT/snapshot-bench}

for need in /usr/bin/time "$EBIN/etcd" "$EBIN/etcdctl" curl python3; do
    if ! command -v "$need" >/dev/null 2>&1; then
        echo "bench-snapshot: $need is missing" >&2
        exit 1
    fi
done

echo "== building (release)" >&2
# One build of both, as bench-restore.sh does: built alone, etcdbr-benches unifies other
# features and rebuilds every dependency (and bench-all.sh would pay it between its parts).
(cd "$ROOT" && cargo build --release -q -p etcdbrctl -p etcdbr-benches --bins)
BRCTL=$ROOT/target/release/etcdbrctl
# gzip's default level, as `snapshot --help` states it ("Default: 1 for gzip ...").
DEFAULT_LEVEL=$("$BRCTL" snapshot --help | grep -A8 -- '--compression-level' | tr '\n' ' ' | tr -s ' ' | sed -n 's/.*Default: \([0-9]*\) for gzip.*/\1/p')
LOAD=$ROOT/target/release/etcd-load

bench_scratch

# ---- the db, cached by size -------------------------------------------------------------------
DB_DIR=$WORK/etcd-${SIZE_MIB}mib-v${VALUE_SIZE}
if [[ ! -f $DB_DIR.done ]]; then
    rm -rf "$DB_DIR" "$DB_DIR.peer"
    free_port >"$DB_DIR.peer"
    echo "== generating a ${SIZE_MIB} MiB db ($VALUE_SIZE-byte values, etcd --unsafe-no-fsync)" >&2
    start_etcd "$DB_DIR" "$(cat "$DB_DIR.peer")" --unsafe-no-fsync
    "$LOAD" fill --endpoint "$ENDPOINT" --bytes $((SIZE_MIB * 1024 * 1024)) --value-size "$VALUE_SIZE" >&2
    stop_pid "$ETCD_PID"
    touch "$DB_DIR.done"
fi
start_etcd "$DB_DIR" "$(cat "$DB_DIR.peer")"
SRC=$ENDPOINT
SRC_PID=$ETCD_PID
DB_BYTES=$("$EBIN/etcdctl" --endpoints "$SRC" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "== db: $DB_BYTES bytes at $SRC" >&2

declare -A SECS RSS
# record LABEL SECONDS TIMEFILE: adds one run's time and keeps the label's highest peak RSS.
record() {
    SECS[$1]="${SECS[$1]:-} $2"
    local rss
    rss=$(rss_kib "$3")
    if ((rss > ${RSS[$1]:-0})); then RSS[$1]=$rss; fi
}

# ---- etcdctl snapshot save --------------------------------------------------------------------
run_etcdctl() {
    echo "== etcdctl snapshot save" >&2
    local start
    start=$(now)
    /usr/bin/time -v -o "$RUN/etcdctl.time" "$EBIN/etcdctl" --endpoints "$SRC" snapshot save "$RUN/etcdctl.db" >/dev/null 2>&1
    record etcdctl "$(calc "$(now) - $start")" "$RUN/etcdctl.time"
    SNAP_BYTES=$(stat -c %s "$RUN/etcdctl.db")
    rm -f "$RUN/etcdctl.db"
}

# run_brctl LABEL [flags...]: one etcdbrctl snapshot run until its first full snapshot is stored.
run_brctl() {
    local label=$1
    shift
    local log=$RUN/$label.log
    local wrap=(/usr/bin/time -v -o "$RUN/$label.time")
    if [[ $PROFILE == 1 && $label == local-gzip ]] && command -v perf >/dev/null; then
        wrap=(perf record -g -o "$WORK/perf-$label.data" -- "${wrap[@]}")
    fi
    mkdir -p "$RUN/spool-$label"
    SNAP_WRAP=("${wrap[@]}")
    snapshot_once "$label" "$log" --snapstore-temp-directory "$RUN/spool-$label" "$@"
    record "$label" "$SNAP_SECS" "$RUN/$label.time"
    grep "full snapshot stored" "$log" | tail -1 | sed 's/^/   /' >&2
    rm -rf "$RUN/spool-$label"
}

if [[ $SKIP_S3 != 1 ]]; then
    echo "== SeaweedFS (weed mini)" >&2
    W=$RUN/weed
    mkdir -p "$W/data" "$W/creds"
    cat >"$W/s3.json" <<'EOF'
{"identities":[{"name":"admin","credentials":[{"accessKey":"benchaccess","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
    printf benchaccess >"$W/creds/accessKeyID"
    printf benchsecret >"$W/creds/secretAccessKey"
    printf us-east-1 >"$W/creds/region"
    S3PORT=$(free_port)
    wflags=()
    for f in -master.port -master.port.grpc -volume.port -volume.port.grpc -filer.port -filer.port.grpc \
        -s3.port.grpc -s3.port.iceberg -s3.port.lance -metricsPort; do
        wflags+=("$f=$(free_port)")
    done
    # weed's admin gRPC port is its HTTP port + 10000.
    while :; do
        ap=$(free_port)
        if ((ap + 10000 < 65536)) && python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$ap+10000))" 2>/dev/null; then
            break
        fi
    done
    (cd "$W" && exec "$WEED" mini -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$W/data" -bucket=bench \
        -s3.config="$W/s3.json" -admin.ui=false -webdav=false -master.telemetry=false -volume.preStopSeconds=0 \
        -s3.port="$S3PORT" -admin.port="$ap" -admin.port.grpc=$((ap + 10000)) "${wflags[@]}" >"$W/weed.log" 2>&1) &
    WEED_PID=$!
    PIDS+=("$WEED_PID")
    # Ready when the bucket answers a signed-less listing with any HTTP status and the filer is up.
    for _ in $(seq 600); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3PORT/bench" || true)
        if [[ $code != 000 ]]; then break; fi
        sleep 0.1
    done
    sleep 3
fi

# Each round runs etcdctl and every etcdbrctl case once; the report takes each case's median.
# (The page cache and the VM's memory make single runs vary by ±20 %.)
for round in $(seq "$ROUNDS"); do
    echo "== round $round of $ROUNDS" >&2
    run_etcdctl
    echo "== etcdbrctl snapshot, Local, uncompressed" >&2
    run_brctl local-none --storage-provider Local --store-container "$RUN/local-none" --store-prefix bench \
        --compress-snapshots=false
    echo "== etcdbrctl snapshot, Local, gzip (default level $DEFAULT_LEVEL)" >&2
    run_brctl local-gzip --storage-provider Local --store-container "$RUN/local-gzip" --store-prefix bench
    echo "== etcdbrctl snapshot, Local, gzip level 6 (the reference's level)" >&2
    run_brctl local-gzip6 --storage-provider Local --store-container "$RUN/local-gzip6" --store-prefix bench \
        --compression-level 6
    echo "== etcdbrctl snapshot, Local, zstd (etcdbr's own policy)" >&2
    run_brctl local-zstd --storage-provider Local --store-container "$RUN/local-zstd" --store-prefix bench \
        --compression-policy zstd
    SIZES=""
    for label in local-none local-gzip local-gzip6 local-zstd; do
        SIZES="$SIZES $label=$(find "$RUN/$label/bench/v2" -name 'Full-*' -printf '%s')"
    done
    rm -rf "$RUN/local-none" "$RUN/local-gzip" "$RUN/local-gzip6" "$RUN/local-zstd"
    if [[ $SKIP_S3 != 1 ]]; then
        echo "== etcdbrctl snapshot, S3 (SeaweedFS), uncompressed" >&2
        AWS_APPLICATION_CREDENTIALS=$W/creds run_brctl s3-none --storage-provider S3 --store-container bench \
            --store-prefix "none-$round" --store-endpoint-override "http://127.0.0.1:$S3PORT" --compress-snapshots=false
        echo "== etcdbrctl snapshot, S3 (SeaweedFS), gzip" >&2
        AWS_APPLICATION_CREDENTIALS=$W/creds run_brctl s3-gzip --storage-provider S3 --store-container bench \
            --store-prefix "gzip-$round" --store-endpoint-override "http://127.0.0.1:$S3PORT"
    fi
done
if [[ $SKIP_S3 != 1 ]]; then
    stop_pid "$WEED_PID"
fi
stop_pid "$SRC_PID"

# ---- delta ingest ------------------------------------------------------------------------------
echo "== delta ingest: burst alone (${BURST_SECONDS}s)" >&2
INGEST=$RUN/ingest-etcd
start_etcd "$INGEST" "$(free_port)"
ALONE=$("$LOAD" burst --endpoint "$ENDPOINT" --seconds "$BURST_SECONDS" --value-size "$BURST_VALUE_SIZE" \
    --concurrency "$BURST_CONCURRENCY")
echo "   $ALONE" >&2
echo "== delta ingest: burst while etcdbrctl snapshot watches (--delta-snapshot-period 1s, gzip)" >&2
DC=$RUN/ingest-store
/usr/bin/time -v -o "$RUN/ingest.time" "$BRCTL" snapshot --endpoints "$ENDPOINT" --schedule "0 0 1 1 *" \
    --delta-snapshot-period 1s --garbage-collection-period 0s --storage-provider Local \
    --store-container "$DC" --store-prefix bench --snapstore-temp-directory "$RUN" >/dev/null 2>"$RUN/ingest.log" &
IW=$!
PIDS+=("$IW")
until grep -q "full snapshot stored" "$RUN/ingest.log"; do sleep 0.05; done
bstart=$(now)
WITH=$("$LOAD" burst --endpoint "$ENDPOINT" --seconds "$BURST_SECONDS" --value-size "$BURST_VALUE_SIZE" \
    --concurrency "$BURST_CONCURRENCY")
echo "   $WITH" >&2
LAST=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["last_revision"])' "$WITH")
FIRST=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["first_revision"])' "$WITH")
stored_last() {
    ls "$DC/bench/v2" 2>/dev/null | awk -F- '/^Incr-/ {r=$3+0; if (r>m) m=r} END {print m+0}'
}
until (($(stored_last) >= LAST)); do sleep 0.05; done
persisted=$(now)
IPID=$(pgrep -P "$IW" || true)
if [[ -n $IPID ]]; then kill -TERM "$IPID"; fi
wait "$IW" || true
DELTAS=$(ls "$DC/bench/v2" | grep -c '^Incr-' || true)
PERSIST_SECS=$(calc "$persisted - $bstart")
stop_pid "$ETCD_PID"

# ---- report ------------------------------------------------------------------------------------
python3 - "$DB_BYTES" "$SNAP_BYTES" "$ALONE" "$WITH" "$FIRST" "$LAST" "$PERSIST_SECS" "$DELTAS" \
    "$(rss_kib "$RUN/ingest.time")" "$(declare -p SECS RSS)" "$SIZES" <<'EOF'
import json, re, sys
db, snap = int(sys.argv[1]), int(sys.argv[2])
alone, with_ = json.loads(sys.argv[3]), json.loads(sys.argv[4])
first, last, persist_secs, deltas, ingest_rss = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8]), int(sys.argv[9])
decl = sys.argv[10]
def parse(name):
    m = re.search(r'declare -A %s=\((.*?)\)' % name, decl)
    return {k: v for k, v in re.findall(r'\[([^\]]+)\]="([^"]*)"', m.group(1))} if m else {}
import statistics
runs = {k: [float(x) for x in v.split()] for k, v in parse("SECS").items()}
secs = {k: statistics.median(v) for k, v in runs.items()}
rss = parse("RSS")
mib = 1024 * 1024
print(f"db {db / mib:.0f} MiB, snapshot stream {snap / mib:.0f} MiB")
sizes = dict(kv.split("=") for kv in sys.argv[11].split())
print(f"median of {len(runs['etcdctl'])} rounds; each round runs every case once")
print(f"{'run':<12} {'seconds':>8} {'MiB/s':>8} {'vs etcdctl':>10} {'peak RSS MiB':>13} {'object MiB':>11}  runs (s)")
base = snap / float(secs["etcdctl"])
for label in ["etcdctl", "local-none", "local-gzip", "local-gzip6", "local-zstd", "s3-none", "s3-gzip"]:
    if label not in secs:
        continue
    s = float(secs[label]); tp = snap / s
    size = f"{int(sizes[label]) / mib:11.1f}" if label in sizes else f"{'':>11}"
    print(f"{label:<12} {s:8.2f} {tp / mib:8.1f} {tp / base:9.2f}x {int(rss[label]) / 1024:13.1f} {size}  "
          + " ".join(f"{x:.2f}" for x in runs[label]))
revs = last - first + 1
print(f"delta ingest: etcd alone {alone['revisions_per_second']:.0f} rev/s ({alone['mib_per_second']:.1f} MiB/s of values); "
      f"with etcdbrctl watching {with_['revisions_per_second']:.0f} rev/s")
print(f"  snapshotter persisted revisions {first}..{last} ({revs}) in {deltas} deltas within {persist_secs:.2f}s of the burst's start: "
      f"{revs / persist_secs:.0f} rev/s ({revs / persist_secs / alone['revisions_per_second']:.2f}x etcd's rate alone); "
      f"lag after the burst {persist_secs - with_['seconds']:.2f}s; peak RSS {ingest_rss / 1024:.1f} MiB")
EOF
