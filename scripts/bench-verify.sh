#!/usr/bin/env bash
# Verification benchmark: `etcdbrctl verify` (fetch and check every object, rebuild offline in a
# temp dir, bbolt check, HashKV at the chain's end) against `etcdbrctl restore` of the same
# store, in one run, alternating so both see the same machine. The store is bench-restore.sh's
# (benches/src/generate.rs: a full snapshot written by real etcd 3.5 + synthetic deltas), so the
# deltas come from no live etcd and verify runs offline (without --endpoints).
#
# Usage: scripts/bench-verify.sh            (reference size: 165 MB full, 60,000 revisions)
#        KEYS=12000 REVISIONS=5000 scripts/bench-verify.sh   (quick check)
# Env: KEYS, VALUE_SIZE, REVISIONS, EVENTS_PER_DELTA (as bench-restore.sh), REPEAT (3),
#      ETCDBRCTL (another binary to measure; default target/release/etcdbrctl), WORK (scratch dir),
#      ETCDBR_BENCH_DATA (the generated stores' cache).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/bench-lib.sh"
reference_store_size
REPEAT=${REPEAT:-3}

if [[ ! -x /usr/bin/time ]]; then
    echo "bench-verify: /usr/bin/time is missing (apt-get install time)" >&2
    exit 1
fi
cd "$ROOT"
# One build of both: built alone, the benches resolve their dependencies' features differently
# and recompile most of them (tens of minutes on the shared machine).
cargo build --release -p etcdbrctl -p etcdbr-benches --bins >&2
ETCDBRCTL=${ETCDBRCTL:-$ROOT/target/release/etcdbrctl}
DS=$("$ROOT/target/release/gen-store" --keys "$KEYS" --value-size "$VALUE_SIZE" --revisions "$REVISIONS" \
    --events-per-delta "$EVENTS_PER_DELTA" | tail -1)
WORK=${WORK:-$(mktemp -d /tmp/etcdbr-bench-verify.XXXXXX)}
mkdir -p "$WORK/verify-tmp"
RESULTS=$WORK/results.tsv
: >"$RESULTS"
PEER=http://127.0.0.1:2380
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
cat "$DS"/snapshot.db "$DS"/stores/*/v2/* >/dev/null

# once NAME CMD...: one timed run; appends "NAME wall rss_kib" to $RESULTS.
once() {
    local name=$1
    shift
    timed "$WORK/$name" "$@"
    printf '%s\t%s\t%s\n' "${name%.*}" "$WALL" "$RSS_KIB" >>"$RESULTS"
}

store=(--storage-provider Local --store-container "$DS/stores")
for prefix in gz raw; do
    for ((i = 0; i < REPEAT; i++)); do
        rm -rf "$WORK/data" "$WORK/data.part"
        once "restore_$prefix.$i" "$ETCDBRCTL" restore --log-level warn "${store[@]}" --store-prefix "$prefix" \
            --data-dir "$WORK/data" --name n1 --initial-cluster "n1=$PEER" --initial-advertise-peer-urls "$PEER"
        rm -rf "$WORK/data"
        once "verify_$prefix.$i" "$ETCDBRCTL" verify --log-level warn "${store[@]}" --store-prefix "$prefix" \
            --temp-dir "$WORK/verify-tmp"
    done
done
if [[ -n "$(ls -A "$WORK/verify-tmp")" ]]; then
    echo "bench-verify: verify left files in $WORK/verify-tmp" >&2
    exit 1
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
HASH=$(grep -o 'hashkv [0-9]* at revision [0-9]*' "$WORK/verify_gz.0.out" || grep 'result:' "$WORK/verify_gz.0.out")

python3 - "$RESULTS" <<EOF
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, wall, rss = line.split("\t")
    runs.setdefault(name, []).append((float(wall), int(rss)))
info = json.load(open("$DS/info.json"))
print()
print(f"dataset: $DS")
print(f"  full: {info['snapshot_bytes']/1e6:.0f} MB snapshot, revision {info['base_revision']}; "
      f"{len(info['deltas'])} deltas, {info['last_revision'] - info['base_revision']} revisions")
print(f"  runs: $REPEAT of each, alternating; load average $LOAD_BEFORE before / $LOAD_AFTER after")
print(f"  verify's result: $HASH")
print()
print("| store | restore min s | verify min s | verify / restore | restore median s | verify median s | restore peak RSS MiB | verify peak RSS MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for prefix, label in (("gz", "Full .gz + Incr .gz"), ("raw", "Full uncompressed + Incr .gz")):
    r, v = runs[f"restore_{prefix}"], runs[f"verify_{prefix}"]
    rmin, vmin = min(w for w, _ in r), min(w for w, _ in v)
    print(f"| {label} | {rmin:.2f} | {vmin:.2f} | {vmin / rmin:.2f}x | {statistics.median(w for w, _ in r):.2f} | "
          f"{statistics.median(w for w, _ in v):.2f} | {max(m for _, m in r) / 1024:.0f} | {max(m for _, m in v) / 1024:.0f} |")
EOF
rm -rf "$WORK/data" "$WORK/data.part"
