# What the bench-*.sh scripts share; they source it (`. "$ROOT/scripts/bench-lib.sh"`).
# Functions only: nothing runs when it is sourced.

# A TCP port on 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# A Python expression's value: calc "round($a / $b, 3)".
calc() { python3 -c "print($1)"; }
# The median of the arguments, rounded to milliseconds.
median() { python3 -c "import statistics,sys; print(round(statistics.median(float(x) for x in sys.argv[1:]), 3))" "$@"; }
# The peak RSS (KiB) in a `/usr/bin/time -v` report.
rss_kib() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

# reference_store_size: the size of the generated store bench-restore.sh and bench-verify.sh
# measure (165 MB full, 60,000 revisions; gen-store caches it, so both read the same one), for
# each of KEYS, VALUE_SIZE, REVISIONS and EVENTS_PER_DELTA not set already.
reference_store_size() {
    KEYS=${KEYS:-64000}
    VALUE_SIZE=${VALUE_SIZE:-1600}
    REVISIONS=${REVISIONS:-60000}
    EVENTS_PER_DELTA=${EVENTS_PER_DELTA:-1000}
}

# bench_scratch: a run dir RUN under $WORK and the list PIDS of processes to kill, both removed
# or killed when the script exits.
bench_scratch() {
    mkdir -p "$WORK"
    RUN=$(mktemp -d "$WORK/run.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}

# stop_pid PID: SIGTERM, then wait for it.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_etcd DATA_DIR PEER_PORT [extra flags...]: a one-member etcd ($EBIN/etcd) on a free
# client port, its backend quota $ETCD_QUOTA (default 8 GiB), logging to DATA_DIR.log; sets
# ETCD_PID (also added to PIDS) and ENDPOINT and returns once it is healthy (up to 2 minutes:
# a large db takes a while to open), or exits with the log's tail.
start_etcd() {
    local dir=$1 peer=$2
    shift 2
    local client
    client=$(free_port)
    ENDPOINT=http://127.0.0.1:$client
    "$EBIN/etcd" --name bench --data-dir "$dir" \
        --listen-client-urls "$ENDPOINT" --advertise-client-urls "$ENDPOINT" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" \
        --quota-backend-bytes "${ETCD_QUOTA:-8589934592}" --log-level warn "$@" >"$dir.log" 2>&1 &
    ETCD_PID=$!
    PIDS+=("$ETCD_PID")
    wait_etcd_healthy "$dir.log" 1200
}

# wait_etcd_healthy LOG TRIES: returns once etcd at $ENDPOINT answers healthy, polling every
# 0.1 s; after TRIES polls exits with the tail of LOG.
wait_etcd_healthy() {
    for _ in $(seq "$2"); do
        if curl -fs "$ENDPOINT/health" 2>/dev/null | grep -q '"health":"true"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "etcd did not become healthy:" >&2
    tail -20 "$1" >&2
    exit 1
}

# timed OUT CMD...: runs CMD under `/usr/bin/time -v` (after a sync), its stdout in OUT.out,
# stderr in OUT.err and the time report in OUT.time; sets WALL (seconds) and RSS_KIB. A failed
# run ends the script with the tail of its stderr.
timed() {
    local out=$1
    shift
    sync
    local t0 t1
    t0=$(now)
    if ! /usr/bin/time -v -o "$out.time" "$@" >"$out.out" 2>"$out.err"; then
        echo "$(basename "$0" .sh): $(basename "$out") failed; see $out.err" >&2
        tail -5 "$out.err" >&2
        exit 1
    fi
    t1=$(now)
    WALL=$(echo "$t1 - $t0" | bc -l)
    RSS_KIB=$(rss_kib "$out.time")
}

# snapshot_once LABEL LOG [flags...]: `$BRCTL snapshot` of $SRC with no schedule, deltas or GC
# (a full snapshot at start only), under the command prefix in the array SNAP_WRAP (/usr/bin/time,
# perf; may be empty), stderr in LOG; returns once the full snapshot is stored, with its seconds
# since the start in SNAP_SECS, and stops etcdbrctl. Ends the script if it fails.
snapshot_once() {
    local label=$1 log=$2
    shift 2
    : >"$log"
    local start pid
    start=$(now)
    "${SNAP_WRAP[@]}" "$BRCTL" snapshot --endpoints "$SRC" --schedule "0 0 1 1 *" \
        --delta-snapshot-period 0s --garbage-collection-period 0s "$@" >/dev/null 2>"$log" &
    pid=$!
    PIDS+=("$pid")
    wait_full_stored "$log" "$pid" "$label"
    SNAP_SECS=$(calc "$(now) - $start")
    stop_etcdbrctl "$pid"
}

# wait_full_stored LOG PID LABEL: returns once an `etcdbrctl snapshot` run's LOG says "full
# snapshot stored" (the object is complete and visible then); ends the script with the log's
# tail if PID (etcdbrctl or a wrapper running it) exits first or 30 minutes pass.
wait_full_stored() {
    local log=$1 pid=$2 label=$3 deadline=$(($(date +%s) + 1800))
    until grep -q "full snapshot stored" "$log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "etcdbrctl snapshot ($label) exited early:" >&2
            tail -20 "$log" >&2
            exit 1
        fi
        if (($(date +%s) > deadline)); then
            echo "etcdbrctl snapshot ($label) stored no full snapshot in 30 min" >&2
            exit 1
        fi
        sleep 0.02
    done
}

# stop_etcdbrctl PID: SIGTERM to the etcdbrctl that PID is or runs (/usr/bin/time and perf do
# not forward the signal, so it goes to the etcdbrctl found among PID's descendants), then waits
# for PID.
stop_etcdbrctl() {
    local pid=$1
    while [[ -n $pid ]] && ! ps -o comm= -p "$pid" | grep -q etcdbrctl; do
        pid=$(pgrep -P "$pid" | head -1 || true)
    done
    if [[ -n $pid ]]; then kill -TERM "$pid"; fi
    wait "$1" || true
}
