#!/usr/bin/env bash
# A standing fault run: real etcd under continuous writes, `etcdbrctl server` snapshotting it to
# SeaweedFS's S3 gateway, and faults at random intervals:
#   SIGKILL, or SIGSTOP then SIGCONT, of etcd, of the sidecar and of SeaweedFS (then restarted);
#   a SIGKILL of the sidecar 0.1-2 s into a full snapshot asked for on demand;
#   a full temp disk (a tmpfs filled up) with a restore that must fail cleanly on it;
#   a restore in the middle of it all, whose HashKV must equal etcd's at the same revision.
# At the end everything resumes, the writer stops, the backups catch up, and a restore of the
# latest backup must equal the live etcd (HashKV at its revision, and that revision is etcd's
# last). Every object the sidecar stored is read back through SeaweedFS's filer (not through
# etcdbr), after each fault and at the end, and must be whole: it decompresses and its sha256
# trailer matches.
#
# Before each fault etcd, the sidecar and SeaweedFS must all be running: one that exited by
# itself is logged, restarted, and fails the run.
#
# Prints a table: faults injected by kind, revisions written, revisions lost (must be 0), restores
# and their checks, objects half-written (must be 0). Exits non-zero if any check fails, and then
# keeps its work dir.
#
# Usage: bash scripts/chaos.sh [--short | --long | --duration SECONDS] [--seed N]
#                              [--bin PATH/TO/etcdbrctl] [--keep]
#   --short      about 2 minutes of faults, and every kind at least once (what the test suite runs)
#   --long       25 minutes of faults, at least 100 of them (about 150)
#   --bin        the etcdbrctl to test (default: build and use target/release/etcdbrctl)
#   --keep       keep the work dir (logs, data) for inspection
# Needs root (it mounts a tmpfs), etcd 3.5 and SeaweedFS from scripts/install-test-deps.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=120
MODE=short
SEED=$(( $(date +%s) % 100000 ))
BIN=""
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --short) DURATION=120; MODE=short ;;
        --long) DURATION=1500; MODE=long ;;
        --duration) DURATION="$2"; MODE=custom; shift ;;
        --seed) SEED="$2"; shift ;;
        --bin) BIN="$2"; shift ;;
        --keep) KEEP=1 ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done

DEPS=${ETCDBR_DEPS:-/opt/etcdbr-deps}
ETCD=$DEPS/etcd-sid/usr/bin/etcd
ETCDCTL=$DEPS/etcd-sid/usr/bin/etcdctl
WEED=$DEPS/venv/bin/weed
for need in "$ETCD" "$ETCDCTL" "$WEED"; do
    [ -x "$need" ] || { echo "missing $need: run bash scripts/install-test-deps.sh (as root)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "python3 is needed (the writer and the object check)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root: the full-disk fault mounts a tmpfs" >&2; exit 1; }
if [ -z "$BIN" ]; then
    cargo build --release --locked -p etcdbrctl >&2
    BIN=$PWD/target/release/etcdbrctl
fi
BIN=$(realpath "$BIN")

W=$(mktemp -d /tmp/etcdbr-chaos-XXXXXX)
mkdir -p "$W/etcd" "$W/weed" "$W/creds" "$W/tmp" "$W/restores" "$W/logs"
T0=$(date +%s)
log() { printf '[chaos %4ds] %s\n' $(( $(date +%s) - T0 )) "$*" >&2; }
RANDOM=$SEED
# rand LOW HIGH: R = a number in LOW..HIGH. It sets R rather than printing it: a $(rand …)
# subshell would draw from a reseeded generator, and --seed would not repeat the run.
R=0
rand() { R=$(( $1 + RANDOM % ($2 - $1 + 1) )); }

# --- ports: free ones below the ephemeral range ------------------------------------------------
read -r P_CLIENT P_PEER P_METRICS P_SIDECAR P_S3 P_S3G P_FILER P_FILERG P_MASTER P_MASTERG \
    P_VOL P_VOLG P_ADMIN P_ADMING P_WMETRICS P_ICE P_LANCE < <(python3 - <<'EOF'
import random, socket
ports = set()
while len(ports) < 17:
    p = random.randint(10000, 30000)
    if p in ports or p + 10000 in ports:
        continue
    try:
        s = socket.socket(); s.bind(("127.0.0.1", p)); s.close()
        if p in (10000,):
            continue
        ports.add(p)
    except OSError:
        pass
print(*ports)
EOF
)
# weed's admin gRPC port must be its HTTP port + 10000.
P_ADMING=$(( P_ADMIN + 10000 ))

PIDS_ETCD="" PID_SIDECAR="" PID_WEED="" PID_WRITER=""
cleanup() {
    local rc=$?
    set +e
    for p in $PID_WRITER $PID_SIDECAR $PIDS_ETCD $PID_WEED; do
        kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null
    done
    umount -l "$W/tmp" 2>/dev/null
    for port in $P_MASTERG $P_VOLG $P_FILER $P_FILERG $P_S3 $P_S3G $P_ADMING; do
        rm -f /tmp/seaweedfs-*-"$port".sock
    done
    # A failed run (a check, or the script itself) keeps its logs and data.
    if [ "$KEEP" = 1 ] || [ "$rc" != 0 ]; then echo "work dir kept: $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT

# --- the tmpfs the sidecar and every restore use as temp dir ------------------------------------
TMPFS_MIB=768
mount -t tmpfs -o size=${TMPFS_MIB}m,mode=0700 tmpfs "$W/tmp"

# --- etcd ------------------------------------------------------------------------------------
EP=http://127.0.0.1:$P_CLIENT
start_etcd() {
    "$ETCD" --name chaos --data-dir "$W/etcd/data" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls "http://127.0.0.1:$P_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$P_PEER" \
        --initial-cluster "chaos=http://127.0.0.1:$P_PEER" --listen-metrics-urls "http://127.0.0.1:$P_METRICS" \
        >>"$W/logs/etcd.log" 2>&1 &
    PIDS_ETCD=$!
    for _ in $(seq 1 300); do
        ETCDCTL_API=3 "$ETCDCTL" --endpoints "$EP" --command-timeout=2s endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "etcd did not come up"; tail -20 "$W/logs/etcd.log" >&2; exit 1
}
etcdctl() { ETCDCTL_API=3 "$ETCDCTL" --endpoints "$EP" --command-timeout=10s "$@"; }
etcd_revision() { etcdctl endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'; }
etcd_hashkv() { etcdctl endpoint hashkv --rev "$1" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["HashKV"]["hash"])'; }

# --- SeaweedFS (S3 gateway, filer) -----------------------------------------------------------
BUCKET=chaos
PREFIX=etcd-chaos
cat >"$W/weed/s3.json" <<EOF
{"identities":[{"name":"admin","credentials":[{"accessKey":"chaoskey","secretKey":"chaossecret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
printf chaoskey >"$W/creds/accessKeyID"
printf chaossecret >"$W/creds/secretAccessKey"
printf us-east-1 >"$W/creds/region"
start_weed() {
    for port in $P_MASTERG $P_VOLG $P_FILER $P_FILERG $P_S3 $P_S3G $P_ADMING; do
        rm -f /tmp/seaweedfs-*-"$port".sock
    done
    mkdir -p "$W/weed/data"
    (cd "$W/weed" && exec "$WEED" mini -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$W/weed/data" -bucket=$BUCKET \
        -s3.config="$W/weed/s3.json" -admin.ui=false -webdav=false -master.telemetry=false -volume.preStopSeconds=0 \
        -master.port=$P_MASTER -master.port.grpc=$P_MASTERG -volume.port=$P_VOL -volume.port.grpc=$P_VOLG \
        -filer.port=$P_FILER -filer.port.grpc=$P_FILERG -s3.port=$P_S3 -s3.port.grpc=$P_S3G \
        -s3.port.iceberg=$P_ICE -s3.port.lance=$P_LANCE -admin.port=$P_ADMIN -admin.port.grpc=$P_ADMING \
        -metricsPort=$P_WMETRICS >>"$W/logs/weed.log" 2>&1) &
    PID_WEED=$!
    for _ in $(seq 1 600); do
        if curl -s -o /dev/null "http://127.0.0.1:$P_S3/" &&
            curl -fs -X PUT --data ready "http://127.0.0.1:$P_FILER/buckets/$BUCKET/.chaos-probe" >/dev/null 2>&1 &&
            curl -fs -X DELETE "http://127.0.0.1:$P_FILER/buckets/$BUCKET/.chaos-probe" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    log "SeaweedFS did not come up"; tail -20 "$W/logs/weed.log" >&2
    # weed marks every volume read-only when its disk has less than 1 % free ("No writable
    # volumes"), and `weed mini` has no flag to lower that: say so rather than leave a riddle.
    local free_pct
    free_pct=$(df --output=avail,size "$W/weed" | awk 'NR==2 {printf "%.2f", 100 * $1 / $2}')
    if awk -v p="$free_pct" 'BEGIN {exit !(p < 1)}'; then
        log "the disk of $W/weed has $(df -h --output=avail "$W/weed" | tail -1 | tr -d ' ') free ($free_pct %): SeaweedFS stores nothing below 1 %; free disk space and run again"
    fi
    exit 1
}

# --- the sidecar ---------------------------------------------------------------------------------
DELTA_PERIOD=2
STORE=(--storage-provider S3 --store-container $BUCKET --store-prefix $PREFIX
       --store-endpoint-override "http://127.0.0.1:$P_S3")
export AWS_APPLICATION_CREDENTIALS=$W/creds
start_sidecar() {
    "$BIN" server --server-port "$P_SIDECAR" --endpoints "$EP" "${STORE[@]}" \
        --schedule "*/1 * * * *" --delta-snapshot-period ${DELTA_PERIOD}s \
        --garbage-collection-policy LimitBased --max-backups 3 --garbage-collection-period 1m \
        --data-dir "$W/etcd/data" --snapstore-temp-directory "$W/tmp" --restoration-temp-snapshots-dir "$W/tmp" \
        --etcd-connection-timeout 5s >>"$W/logs/sidecar.log" 2>&1 &
    PID_SIDECAR=$!
}

# --- the writer: puts (and some deletes) as fast as etcd takes them, each acknowledged one logged
start_writer() {
    python3 - "$P_CLIENT" "$W/writer.log" "$W/writer.stop" "$W/writer.summary" <<'EOF' &
import base64, http.client, json, os, sys, time
port, log_path, stop, summary = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
b64 = lambda s: base64.b64encode(s.encode()).decode()
conn, i, acked, failed = None, 0, 0, 0
with open(log_path, "a", buffering=1 << 16) as log:
    while not os.path.exists(stop):
        i += 1
        if i % 10 == 0:
            # A key the puts write (i % 400 of a multiple of 10 is never put).
            key = f"/chaos/k{(i // 10) % 400 | 1:03d}"
            path, body = "/v3/kv/deleterange", {"key": b64(key)}
        else:
            key = f"/chaos/k{i % 400:03d}"
            path, body = "/v3/kv/put", {"key": b64(key), "value": b64(f"v{i}-" + "x" * (i % 200))}
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError(r.status)
            log.write(f"{i} {json.loads(data)['header']['revision']}\n")
            acked += 1
        except Exception:
            failed += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.1)
        time.sleep(0.002)  # about 300 writes/s at most: load, not a benchmark
with open(summary, "w") as f:
    f.write(f"{i} {acked} {failed}\n")
EOF
    PID_WRITER=$!
}

# --- the objects: read back through SeaweedFS's filer, not through etcdbr -----------------------
# check_objects [final]: every object under v2/ not read before is read now; it must decompress
# and carry a matching sha256 trailer (a full snapshot: a whole number of 4 KiB pages before it).
# Run after every fault, so that objects garbage collection deletes later are read too. A
# listed object that fails is read again 2 s later and is half-written if it fails again. The
# verdicts accumulate in $W/objects.txt; `final` prints: objects read, of them full, delta,
# half-written, staging objects left, objects in the bucket now.
cat >"$W/check_objects.py" <<'EOF'
import gzip, hashlib, json, os, sys, time, urllib.error, urllib.request, zlib
port, bucket, prefix, state, final = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], len(sys.argv) > 5
base = f"http://127.0.0.1:{port}/buckets/{bucket}/{prefix}"
def listing(path):
    req = urllib.request.Request(f"{base}/{path}/?limit=100000", headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return [e["FullPath"].rsplit("/", 1)[1] for e in (json.load(r).get("Entries") or [])
                    if e.get("Mode", 0) & 0o40000 == 0]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise
def whole(name):
    """True, False, or None when it is gone (garbage collected meanwhile)."""
    try:
        with urllib.request.urlopen(f"{base}/v2/{name}", timeout=300) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise
    try:
        stem = name[:-len(".final")] if name.endswith(".final") else name
        if stem.endswith(".gz"):
            data = gzip.decompress(raw)
        elif stem.endswith(".zlib"):
            data = zlib.decompress(raw)
        else:
            data = raw
        ok = len(data) > 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
        if name.startswith("Full-"):
            ok = ok and (len(data) - 32) % 4096 == 0
        return ok
    except Exception:
        return False
seen = {}
if os.path.exists(state):
    for line in open(state):
        name, verdict = line.split()
        seen[name] = verdict
try:
    names = [n for n in listing("v2") if n.startswith("Full-") or n.startswith("Incr-")]
    with open(state, "a") as out:
        for name in names:
            if name in seen:
                continue
            ok = whole(name)
            if ok is False:
                time.sleep(2)
                ok = whole(name)
            if ok is None:
                continue
            seen[name] = "whole" if ok else "half"
            out.write(f"{name} {seen[name]}\n")
            if not ok:
                print(f"half-written: {name}", file=sys.stderr)
    staging = len(listing(".etcdbr-staging")) if final else 0
except (OSError, urllib.error.URLError) as e:
    if final:
        raise
    print(f"object check skipped this time (the filer: {e})", file=sys.stderr)
    sys.exit(0)
if final:
    v = list(seen.items())
    print(len(v), sum(n.startswith("Full-") for n, _ in v), sum(n.startswith("Incr-") for n, _ in v),
          sum(x == "half" for _, x in v), staging, len(names))
EOF
check_objects() {
    python3 "$W/check_objects.py" "$P_FILER" "$BUCKET" "$PREFIX" "$W/objects.txt" "$@" 2>"$W/objects.err" || true
    while read -r line; do log "$line"; done <"$W/objects.err"
}

# --- faults ------------------------------------------------------------------------------------
KINDS=(etcd-kill etcd-stop sidecar-kill sidecar-stop sidecar-kill-in-full weed-kill weed-stop disk-full restore)
declare -A DESC=(
    [etcd-kill]="etcd SIGKILL, restarted"
    [etcd-stop]="etcd SIGSTOP, SIGCONT 2-8 s later"
    [sidecar-kill]="sidecar SIGKILL, restarted"
    [sidecar-stop]="sidecar SIGSTOP, SIGCONT 2-8 s later"
    [sidecar-kill-in-full]="sidecar SIGKILL 0.1-2 s into a full snapshot"
    [weed-kill]="SeaweedFS SIGKILL, restarted"
    [weed-stop]="SeaweedFS SIGSTOP, SIGCONT 2-8 s later"
    [disk-full]="temp disk full (restore on it refused)"
    [restore]="restore in the middle, HashKV checked"
)
declare -A COUNT=()
for k in "${KINDS[@]}"; do COUNT[$k]=0; done
RESTORES_OK=0 RESTORES_FAILED=0 FULL_REFUSED=0 FULL_BAD=0 FULL_SKIPPED=0
FULLS_CUT=0 FULLS_DONE=0 FULLS_NOT_STARTED=0
DIED=""   # processes that exited without a fault of ours: "name(exit N)" each
: >"$W/restores.txt"   # revision hash, one line per mid-run restore

# proc_alive PID: the process runs. A child that exited stays a zombie until waited for, and
# `kill -0` would still find it; /proc's state tells.
proc_alive() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# Before each fault and after the last: etcd, the sidecar and SeaweedFS all run. One that exited
# by itself (no fault of ours killed it) is a finding: logged with its exit code and counted (the
# run fails), then restarted so that the run goes on and can find more.
check_alive() {
    local name pid code
    for name in etcd sidecar weed; do
        case $name in etcd) pid=$PIDS_ETCD ;; sidecar) pid=$PID_SIDECAR ;; weed) pid=$PID_WEED ;; esac
        proc_alive "$pid" && continue
        code=0
        wait "$pid" 2>/dev/null || code=$?
        DIED="$DIED $name(exit $code)"
        log "$name (pid $pid) exited by itself with exit $code: restarting it"
        case $name in etcd) start_etcd ;; sidecar) start_sidecar ;; weed) start_weed ;; esac
    done
}

# kill_restart PID START: SIGKILL, reap, 1-3 s down, START again.
kill_restart() {
    kill -9 "$1"
    wait "$1" 2>/dev/null || true
    rand 1 3
    sleep "$R"
    "$2"
}

# stop_cont PID: SIGSTOP, 2-8 s frozen, SIGCONT.
stop_cont() {
    kill -STOP "$1"
    rand 2 8
    sleep "$R"
    kill -CONT "$1"
}

restore_into() {   # restore_into DIR -> exit code; output in DIR.log
    "$BIN" restore "${STORE[@]}" --data-dir "$1" --restoration-temp-snapshots-dir "$W/tmp" >"$1.log" 2>&1
}

fault_restore() {
    local n=$1 dir="$W/restores/mid-$1"
    if restore_into "$dir"; then
        if grep -q "nothing to restore" "$dir.log"; then
            log "restore $n: no backup yet"; RESTORES_FAILED=$((RESTORES_FAILED + 1)); return
        fi
        "$BIN" db hashkv "$dir/member/snap/db" -w json |
            python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["revision"], h["hash"])' >>"$W/restores.txt"
        RESTORES_OK=$((RESTORES_OK + 1))
        log "restore $n: $(tail -1 "$W/restores.txt") (revision hash)"
    else
        RESTORES_FAILED=$((RESTORES_FAILED + 1))
        log "restore $n FAILED: $(tail -3 "$dir.log")"
    fi
    rm -rf "$dir" "$dir.part"
}

fault_disk_full() {
    local n=$1 dir="$W/restores/full-$1" code=0
    dd if=/dev/zero of="$W/tmp/filler" bs=1M status=none 2>/dev/null || true
    restore_into "$dir" || code=$?
    local left
    left=$(find "$W/tmp" -mindepth 1 ! -name filler | wc -l)
    if [ "$code" = 9 ] && grep -q "no space left on the filesystem of $W/tmp/" "$dir.log" &&
        [ ! -e "$dir/member" ] && [ ! -e "$dir.part" ] && [ "$left" = 0 ]; then
        FULL_REFUSED=$((FULL_REFUSED + 1))
        log "disk full $n: refused cleanly: $(grep -o 'no space left[^;]*' "$dir.log" | head -1)"
    elif [ "$code" = 0 ] && grep -q "nothing to restore" "$dir.log"; then
        FULL_SKIPPED=$((FULL_SKIPPED + 1))
    else
        FULL_BAD=$((FULL_BAD + 1))
        log "disk full $n: NOT refused cleanly (exit $code, $left files left in the temp dir): $(tail -3 "$dir.log")"
    fi
    # The sidecar shares the full disk meanwhile (its temp dir is the same tmpfs).
    rand 2 6
    sleep "$R"
    rm -rf "$W/tmp/filler" "$dir" "$dir.part"
}

# A SIGKILL timed to land inside a full snapshot (the stream from etcd, the upload, the GC after
# it), where a half-written object would come from: the sidecar is asked for a full snapshot on
# demand once it is healthy, and killed 0.1-2 s later. Counted by whether the snapshot answered
# before the kill (done) or the kill cut it (no answer).
fault_kill_in_full() {
    local n=$1 code="" healthy=no delay=0
    for _ in $(seq 1 300); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$P_SIDECAR/healthz" 2>/dev/null)" = 200 ]; then
            healthy=yes
            break
        fi
        sleep 0.1
    done
    if [ "$healthy" = yes ]; then
        curl -s -o /dev/null -w '%{http_code}' -m 300 "http://127.0.0.1:$P_SIDECAR/snapshot/full" \
            >"$W/full-$n.code" 2>/dev/null &
        local curl_pid=$!
        rand 1 20
        delay="$((R / 10)).$((R % 10))"
        sleep "$delay"
        kill -9 "$PID_SIDECAR"
        wait "$PID_SIDECAR" 2>/dev/null || true
        wait "$curl_pid" 2>/dev/null || true
        code=$(cat "$W/full-$n.code" 2>/dev/null || true)
        rm -f "$W/full-$n.code"
    else
        kill -9 "$PID_SIDECAR"
        wait "$PID_SIDECAR" 2>/dev/null || true
    fi
    if [ "$healthy" = no ]; then
        FULLS_NOT_STARTED=$((FULLS_NOT_STARTED + 1))
        log "kill in full $n: the sidecar was not healthy within 30 s; killed without a full snapshot"
    elif [ "$code" = 200 ]; then
        FULLS_DONE=$((FULLS_DONE + 1))
        log "kill in full $n: the full snapshot answered before the kill $delay s after it was asked for"
    else
        FULLS_CUT=$((FULLS_CUT + 1))
        log "kill in full $n: the full snapshot was cut $delay s after it was asked for (HTTP ${code:-none})"
    fi
    rand 1 3
    sleep "$R"
    start_sidecar
}

inject() {
    local kind=$1 n=$2
    log "fault $n: ${DESC[$kind]}"
    case $kind in
        etcd-kill) kill_restart "$PIDS_ETCD" start_etcd ;;
        etcd-stop) stop_cont "$PIDS_ETCD" ;;
        sidecar-kill) kill_restart "$PID_SIDECAR" start_sidecar ;;
        sidecar-stop) stop_cont "$PID_SIDECAR" ;;
        sidecar-kill-in-full) fault_kill_in_full "$n" ;;
        weed-kill) kill_restart "$PID_WEED" start_weed ;;
        weed-stop) stop_cont "$PID_WEED" ;;
        disk-full) fault_disk_full "$n" ;;
        restore) fault_restore "$n" ;;
    esac
    COUNT[$kind]=$(( COUNT[$kind] + 1 ))
}

# --- run ---------------------------------------------------------------------------------------
log "work dir $W, seed $SEED, $DURATION s of faults, binary $BIN"
LOAD_START=$(cut -d' ' -f1 /proc/loadavg)
start_etcd
start_weed
START_REV=$(etcd_revision)
start_writer
start_sidecar
sleep 8   # the first full snapshot

END=$(( $(date +%s) + DURATION ))
n=0
cycle=()
# Until the time is up, and at least one whole cycle: a loaded machine's short run still sees
# every kind.
while [ "$(date +%s)" -lt "$END" ] || [ "$n" -lt ${#KINDS[@]} ]; do
    if [ ${#cycle[@]} = 0 ]; then
        # Every kind once per cycle, in a random order: the short run sees each kind.
        mapfile -t cycle < <(printf '%s\n' "${KINDS[@]}" | python3 -c "import random,sys; r=random.Random($SEED+$n); l=sys.stdin.read().split(); r.shuffle(l); print('\n'.join(l))")
    fi
    kind=${cycle[0]}
    cycle=("${cycle[@]:1}")
    n=$((n + 1))
    check_alive
    inject "$kind" "$n"
    check_objects
    rand 2 8
    sleep "$R"
done
check_alive
FAULTS=$n
LOAD_END=$(cut -d' ' -f1 /proc/loadavg)

# --- the end: everything resumes, writes stop, the backups catch up ----------------------------
log "faults over; letting the backups catch up"
for p in $PIDS_ETCD $PID_SIDECAR $PID_WEED; do kill -CONT "$p" 2>/dev/null || true; done
touch "$W/writer.stop"
wait "$PID_WRITER" || true
PID_WRITER=""
FINAL_REV=$(etcd_revision)
STORED=0
deadline=$(( $(date +%s) + 180 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    STORED=$("$BIN" status "${STORE[@]}" -w json 2>/dev/null | python3 -c 'import json,sys
try: print(json.load(sys.stdin)["lastRevision"] or 0)
except Exception: print(0)')
    [ "$STORED" -ge "$FINAL_REV" ] && break
    sleep 1
done
CAUGHT_UP=$(( $(date +%s) - deadline + 180 ))
log "etcd at revision $FINAL_REV, the backups at $STORED after $CAUGHT_UP s"

FINAL_DIR=$W/restores/final
FINAL_OK=no FINAL_R=0 FINAL_EQ=no
if restore_into "$FINAL_DIR"; then
    read -r FINAL_R FINAL_HASH < <("$BIN" db hashkv "$FINAL_DIR/member/snap/db" -w json |
        python3 -c 'import json,sys; h=json.load(sys.stdin); print(h["revision"], h["hash"])')
    FINAL_OK=yes
    [ "$(etcd_hashkv "$FINAL_R")" = "$FINAL_HASH" ] && FINAL_EQ=yes
else
    log "the final restore FAILED: $(tail -5 "$FINAL_DIR.log")"
fi
LOST=$(( FINAL_REV - FINAL_R ))

MID_EQ=0 MID_NE=0
while read -r rev hash; do
    if [ "$(etcd_hashkv "$rev")" = "$hash" ]; then MID_EQ=$((MID_EQ + 1)); else
        MID_NE=$((MID_NE + 1)); log "mid-run restore at revision $rev: HashKV $hash differs from etcd's"
    fi
done <"$W/restores.txt"

read -r WRITES ACKED UNACKED <"$W/writer.summary"
MAX_ACKED=$(awk 'BEGIN{m=0} $2>m{m=$2} END{print m}' "$W/writer.log")

# The objects, read through the filer (checked after every fault, and once more here).
if ! read -r OBJECTS FULLS DELTAS HALF STAGING IN_BUCKET < <(check_objects final); then
    log "FAIL: the objects could not be read back through the filer"
    OBJECTS=0 FULLS=0 DELTAS=0 HALF=unknown STAGING=unknown IN_BUCKET=unknown
fi

DIED_TEXT=${DIED# }
DIED_TEXT=${DIED_TEXT:-none}

# --- the table ------------------------------------------------------------------------------
{
    echo
    echo "etcdbr fault run: $MODE, seed $SEED, $DURATION s of faults ($(date -u +%Y-%m-%dT%H:%MZ)), load average $LOAD_START at the start, $LOAD_END at the end of the faults, $(nproc) cores"
    echo
    printf '| %-44s | %8s |\n' "fault" "injected"
    printf '|%s|%s|\n' "----------------------------------------------" "---------:"
    for k in "${KINDS[@]}"; do printf '| %-44s | %8d |\n' "${DESC[$k]}" "${COUNT[$k]}"; done
    printf '| %-44s | %8d |\n' "**total**" "$FAULTS"
    echo
    printf '| %-44s | %s |\n' "check" "result"
    printf '|%s|%s|\n' "----------------------------------------------" "---"
    printf '| %-44s | %s |\n' "revisions written" "$((FINAL_REV - START_REV)) ($ACKED puts and deletes acknowledged, $UNACKED cut by a fault; a delete of an absent key makes no revision)"
    printf '| %-44s | %s |\n' "revisions lost" "$LOST (etcd at $FINAL_REV, the backups at $FINAL_R, $CAUGHT_UP s after the writes stopped; delta period ${DELTA_PERIOD} s)"
    printf '| %-44s | %s |\n' "final restore equals live etcd (HashKV)" "$FINAL_EQ (revision $FINAL_R)"
    printf '| %-44s | %s |\n' "restores in the middle" "$RESTORES_OK, HashKV equal to etcd's: $MID_EQ, different: $MID_NE, failed: $RESTORES_FAILED"
    printf '| %-44s | %s |\n' "full snapshots on demand killed" "$FULLS_CUT cut by the SIGKILL, $FULLS_DONE answered before it, $FULLS_NOT_STARTED sidecar not healthy in time"
    printf '| %-44s | %s |\n' "processes that exited by themselves" "$DIED_TEXT"
    printf '| %-44s | %s |\n' "restores on the full temp disk" "$FULL_REFUSED refused cleanly (exit 9, disk named, nothing left), $FULL_BAD not, $FULL_SKIPPED before any backup"
    printf '| %-44s | %s |\n' "objects read back through the filer" "$OBJECTS ($FULLS full, $DELTAS delta; after every fault and at the end), $IN_BUCKET in the bucket at the end"
    printf '| %-44s | %s |\n' "objects left half-written" "$HALF"
    printf '| %-44s | %s |\n' "staging objects left (never listed)" "$STAGING"
    echo
}

status=0
[ "$LOST" = 0 ] || { log "FAIL: $LOST revisions lost"; status=1; }
[ "$FINAL_EQ" = yes ] || { log "FAIL: the final restore does not equal etcd"; status=1; }
[ "$MID_NE" = 0 ] && [ "$RESTORES_FAILED" = 0 ] || { log "FAIL: a restore in the middle failed or differs"; status=1; }
[ "$FULL_BAD" = 0 ] || { log "FAIL: a restore on the full disk was not refused cleanly"; status=1; }
[ "$HALF" = 0 ] || { log "FAIL: $HALF objects half-written"; status=1; }
[ -z "$DIED" ] || { log "FAIL: processes exited without a fault of ours:$DIED"; status=1; }
[ "$MAX_ACKED" -le "$FINAL_REV" ] || { log "FAIL: etcd acknowledged revision $MAX_ACKED but is at $FINAL_REV"; status=1; }
[ "$OBJECTS" -gt 0 ] && [ "$FULLS" -gt 0 ] || { log "FAIL: no snapshot object was found in the bucket"; status=1; }
[ "$RESTORES_OK" -gt 0 ] && [ "$FULL_REFUSED" -gt 0 ] || { log "FAIL: no restore in the middle succeeded, or none was refused on the full disk"; status=1; }
[ $((FINAL_REV - START_REV)) -gt 1000 ] || { log "FAIL: only $((FINAL_REV - START_REV)) revisions written: the writer did not keep up"; status=1; }
for k in "${KINDS[@]}"; do
    [ "${COUNT[$k]}" -gt 0 ] || { log "FAIL: no $k fault was injected (run longer)"; status=1; }
done
if [ "$MODE" = long ] && [ "$FAULTS" -lt 100 ]; then log "FAIL: only $FAULTS faults in the long run"; status=1; fi
[ "$status" = 0 ] && log "all checks passed" || KEEP=1
exit $status
