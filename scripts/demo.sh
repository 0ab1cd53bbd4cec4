#!/usr/bin/env bash
# The main job, end to end, on the default Local store:
#   a throwaway etcd on loopback → etcdbrctl snapshot (full + deltas) into a Local store →
#   etcdbrctl restore into a new data dir → etcd boots on it → same keys, same hashkv.
# Usage: bash scripts/demo.sh [WORK_DIR]   (default /tmp/etcdbr-demo; the store is WORK_DIR/store)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$(realpath -m "${1:-/tmp/etcdbr-demo}")
STORE="$WORK/store"

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'demo failed: %s\n' "$*" >&2; exit 1; }

# etcd and etcdctl for the demo; protoc (etcd-client's build) and ISA-L's build tools (nasm,
# autotools: brcore's `isal` feature builds the library it links) for the build.
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
for tool in nasm autoconf automake make; do command -v "$tool" >/dev/null || need+=("$tool"); done
command -v libtoolize >/dev/null || need+=(libtool)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || die "cargo not found: install Rust first"

say "building etcdbrctl (release)"
cargo build --release --locked -p etcdbrctl 2>&1 | tail -n 1
BR="$ROOT/target/release/etcdbrctl"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rm -rf "$WORK"; mkdir -p "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_healthy() {  # endpoint
    for _ in $(seq 1 100); do
        etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "etcd at $1 did not become healthy"
}

SRC_C=$(port); SRC_P=$(port)
SRC="http://127.0.0.1:$SRC_C"
say "starting a source etcd $(etcd --version | head -1 | awk '{print $3}') at $SRC"
etcd --name src --data-dir "$WORK/source.etcd" \
    --listen-client-urls "$SRC" --advertise-client-urls "$SRC" \
    --listen-peer-urls "http://127.0.0.1:$SRC_P" --initial-advertise-peer-urls "http://127.0.0.1:$SRC_P" \
    --initial-cluster "src=http://127.0.0.1:$SRC_P" >"$WORK/source-etcd.log" 2>&1 &
PIDS+=($!)
wait_healthy "$SRC"
export ETCDCTL_API=3
ctl() { etcdctl --endpoints "$SRC" "$@"; }

say "writing some data"
for i in $(seq 1 50); do ctl put "/demo/key-$i" "value-$i" >/dev/null; done
echo "50 keys written, revision $(ctl endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')"

say "etcdbrctl snapshot → Local store $STORE (full now, deltas every 2 s)"
"$BR" snapshot --endpoints "$SRC" --storage-provider Local --store-container "$STORE" \
    --schedule "0 */1 * * *" --delta-snapshot-period 2s --garbage-collection-period 1m \
    >"$WORK/snapshot.log" 2>&1 &
SNAP_PID=$!
PIDS+=($SNAP_PID)
sleep 3
say "more writes while it runs: updates, deletes, a txn, a lease"
for i in $(seq 1 20); do ctl put "/demo/key-$i" "updated-$i" >/dev/null; done
ctl del /demo/key-50 >/dev/null
ctl del --prefix /demo/key-4 >/dev/null
printf 'mod("/demo/key-1") > "0"\n\nput /demo/txn-a 1\nput /demo/txn-b 2\n\nput /demo/never x\n\n' | ctl txn >/dev/null
LEASE=$(ctl lease grant 600 | awk '{print $2}')
ctl put --lease="$LEASE" /demo/leased "I expire" >/dev/null
sleep 4
kill -TERM $SNAP_PID; wait $SNAP_PID || die "etcdbrctl snapshot exited with an error (see $WORK/snapshot.log)"
echo "objects in the store:"
ls -l "$STORE/v2" | tail -n +2 | awk '{print "  " $5 "\t" $9}'

SRC_REV=$(ctl endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
SRC_HASH=$(ctl endpoint hashkv --rev "$SRC_REV" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["HashKV"]["hash"])')
ctl get "" --prefix -w json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["kvs"], sort_keys=True))' >"$WORK/source-keys.json"
echo "source: revision $SRC_REV, hashkv $SRC_HASH"

say "the source etcd is gone; etcdbrctl restore (offline, no etcd process)"
kill "${PIDS[0]}"
NEW_C=$(port); NEW_P=$(port)
"$BR" restore --storage-provider Local --store-container "$STORE" --data-dir "$WORK/restored.etcd" \
    --name restored --initial-cluster "restored=http://127.0.0.1:$NEW_P" \
    --initial-advertise-peer-urls "http://127.0.0.1:$NEW_P"

say "booting etcd on the restored data dir"
NEW="http://127.0.0.1:$NEW_C"
etcd --name restored --data-dir "$WORK/restored.etcd" \
    --listen-client-urls "$NEW" --advertise-client-urls "$NEW" \
    --listen-peer-urls "http://127.0.0.1:$NEW_P" --initial-advertise-peer-urls "http://127.0.0.1:$NEW_P" \
    --initial-cluster "restored=http://127.0.0.1:$NEW_P" >"$WORK/restored-etcd.log" 2>&1 &
PIDS+=($!)
wait_healthy "$NEW"
NEW_HASH=$(etcdctl --endpoints "$NEW" endpoint hashkv --rev "$SRC_REV" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["HashKV"]["hash"])')
etcdctl --endpoints "$NEW" get "" --prefix -w json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["kvs"], sort_keys=True))' >"$WORK/restored-keys.json"
etcdctl --endpoints "$NEW" get /demo/leased
echo "restored: hashkv $NEW_HASH at revision $SRC_REV"

cmp -s "$WORK/source-keys.json" "$WORK/restored-keys.json" || die "the restored keys differ from the source's"
[ "$SRC_HASH" = "$NEW_HASH" ] || die "hashkv differs: source $SRC_HASH, restored $NEW_HASH"
say "OK: etcd serves the restored data dir with the source's keys, values, revisions and hashkv ($NEW_HASH)"
echo "store: $STORE   restored data dir: $WORK/restored.etcd   logs: $WORK/*.log"
