#!/bin/bash
# End-to-end check of etcdbrctl server with etcd-bootstrap.sh, on loopback, in a temp dir:
#   1. first start: no data, no backups -> initialization lets etcd start empty; the
#      snapshotter starts (full snapshot, then 1 s deltas) and /healthz turns 200;
#   2. 50 keys are written; etcd is SIGKILLed and its member dir deleted;
#   3. second start (validation `full`, after a crash) restores full + deltas; the keys are back;
#   4. clean stop, third start validates with `sanity` and keeps the data dir.
# Usage: examples/server/e2e.sh [path/to/etcdbrctl]   (ETCD_BIN, ETCDCTL_BIN override etcd)
# Exits 0 when every check passed; prints the failing check and the logs' tails otherwise.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BR=${1:-$HERE/../../target/debug/etcdbrctl}
ETCD_BIN=${ETCD_BIN:-/opt/etcdbr-deps/etcd-sid/usr/bin/etcd}
ETCDCTL_BIN=${ETCDCTL_BIN:-/opt/etcdbr-deps/etcd-sid/usr/bin/etcdctl}
for bin in "$BR" "$ETCD_BIN" "$ETCDCTL_BIN"; do
    [ -x "$bin" ] || { echo "missing $bin (build with cargo build -p etcdbrctl; etcd via scripts/)" >&2; exit 2; }
done
T=$(mktemp -d /tmp/etcdbr-server-e2e.XXXXXX)
PIDS=()
cleanup() {
    # Children first (etcd under a bootstrap script), then the processes started here.
    for p in "${PIDS[@]}"; do pkill -9 -P "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    rm -rf "$T"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    for f in "$T"/server.log "$T"/boot*.log; do echo "== $f" >&2; tail -n 15 "$f" >&2; done
    exit 1
}
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
CP=$(free_port); PP=$(free_port); SP=$(free_port); MP=$(free_port)
ctl() { "$ETCDCTL_BIN" --endpoints "http://127.0.0.1:$CP" "$@"; }
wait_until() { # wait_until SECONDS CMD...
    local n=$1; shift
    for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

cat >"$T/etcd.conf.yaml" <<YAML
name: default
data-dir: $T/data
listen-client-urls: http://127.0.0.1:$CP
advertise-client-urls:
  default:
  - http://127.0.0.1:$CP
listen-peer-urls: http://127.0.0.1:$PP
initial-advertise-peer-urls: [http://127.0.0.1:$PP]
initial-cluster: default=http://127.0.0.1:$PP
initial-cluster-state: new
listen-metrics-urls: http://127.0.0.1:$MP
YAML
ETCD_CONF=$T/etcd.conf.yaml HOME=$T "$BR" server -p "$SP" --endpoints "http://127.0.0.1:$CP" \
    --storage-provider Local --store-container "$T/store" --snapstore-temp-directory "$T/tmp" \
    --data-dir "$T/data" --name default --initial-cluster "default=http://127.0.0.1:$PP" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PP" --delta-snapshot-period 1s \
    --server-auth-token e2e-token >"$T/server.log" 2>&1 &
PIDS+=($!)
SRV=$!
export BACKUP_ENDPOINT=http://127.0.0.1:$SP BACKUP_TOKEN=e2e-token ETCD_BIN \
    ETCD_CONFIG_OUT=$T/served.yaml VALIDATION_MARKER=$T/marker
boot() { "$HERE/etcd-bootstrap.sh" >"$T/boot$1.log" 2>&1 & PIDS+=($!); BOOT=$!; }

boot 1
wait_until 60 curl -fs "http://127.0.0.1:$SP/healthz" || fail "/healthz never became 200 after the first start"
for i in $(seq 1 50); do ctl put "/k$i" "v$i" >/dev/null || fail "put /k$i"; done
REV=$(ctl endpoint status -w json | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
has_rev() { curl -fs "http://127.0.0.1:$SP/snapshot/latest" | grep -q "\"lastRevision\":$REV,"; }
wait_until 30 has_rev || fail "no snapshot reached revision $REV"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$SP/snapshot/full")" = 401 ] || fail "/snapshot/full without the token must be 401"

ETCD_PID=$(pgrep -P "$BOOT") || fail "etcd was not running under the bootstrap script"
kill -9 $ETCD_PID
wait "$BOOT"; [ "$(cat "$T/marker")" = 137 ] || fail "the crash was not recorded"
rm -rf "$T/data/member"

boot 2
wait_until 60 ctl endpoint health || fail "etcd did not come back after the restore"
[ "$(ctl get /k50 --print-value-only)" = v50 ] || fail "/k50 was not restored"
[ "$(ctl get /k --prefix --keys-only | grep -c '^/k')" = 50 ] || fail "not all 50 keys were restored"
grep -q "validation mode: full" "$T/boot2.log" || fail "a crash must lead to full validation"
kill -TERM "$BOOT"; wait "$BOOT"

boot 3
wait_until 60 ctl endpoint health || fail "etcd did not restart after a clean stop"
grep -q "validation mode: sanity" "$T/boot3.log" || fail "a clean stop must lead to sanity validation"
[ "$(ctl get /k1 --print-value-only)" = v1 ] || fail "the data dir was not kept"
kill -TERM "$BOOT"; wait "$BOOT"
kill -TERM "$SRV"; wait "$SRV" || fail "etcdbrctl server did not exit 0 on SIGTERM"
echo "etcdbrctl server e2e: 1 passed, 0 failed"
