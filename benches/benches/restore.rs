//! The sync core of etcdbr's restore, in-process: `rebuild_db` of a ~165 MB full snapshot taken
//! from real etcd, alone and with 60,000 delta revisions, plus delta application and delta
//! decoding on their own (the ≥ 1,000,000 revisions/s goal).
//!
//! Data comes from `etcdbr_benches::Dataset` (generated once with a real etcd, cached under
//! /tmp/etcdbr-bench-data). Sizes: `ETCDBR_BENCH_KEYS` (64000), `ETCDBR_BENCH_REVISIONS`
//! (60000). Output goes to a temp file without fsync (the fsync is the command's, measured by
//! scripts/bench-restore.sh).

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use brcore::delta::Event;
use brcore::rebuild::{Membership, RebuildOptions, rebuild_db};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use etcdbr_benches::{Dataset, DatasetParams, ETCD_3_5_30_DIR, default_data_root};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dataset(keys: u64) -> Dataset {
    let params = DatasetParams { keys, revisions: env_u64("ETCDBR_BENCH_REVISIONS", 60_000), ..Default::default() };
    let etcd = PathBuf::from(ETCD_3_5_30_DIR).join("etcd");
    Dataset::open_or_generate(&default_data_root(), &params, &etcd).expect("generating the benchmark dataset")
}

fn options() -> RebuildOptions {
    RebuildOptions::new(Membership::Keep)
}

/// One rebuild into a fresh temp file; returns the revisions applied.
fn rebuild(db: &bbolt::Db, events: Vec<Event>) -> u64 {
    let out = tempfile::tempfile().expect("temp file");
    let (_, stats) = rebuild_db(db, events.into_iter().map(Ok), &options(), std::io::BufWriter::new(out))
        .expect("rebuild of generated data");
    stats.revisions_applied
}

fn bench_rebuild(c: &mut Criterion) {
    let ds = dataset(env_u64("ETCDBR_BENCH_KEYS", 64_000));
    let db = bbolt::Db::open(&ds.db_file()).expect("open db");
    let events = ds.read_events().expect("read deltas");
    let revisions = (ds.info.last_revision - ds.info.base_revision) as u64;

    let mut g = c.benchmark_group("rebuild");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(db.size()));
    g.bench_function("full_only", |b| b.iter(|| black_box(rebuild(&db, Vec::new()))));
    g.throughput(Throughput::Elements(revisions));
    g.bench_function("full_plus_deltas", |b| {
        b.iter_batched(|| events.clone(), |evs| black_box(rebuild(&db, evs)), BatchSize::PerIteration)
    });
    g.finish();
}

fn bench_deltas(c: &mut Criterion) {
    // A small full (1000 keys) so the time is the deltas' own.
    let ds = dataset(1000);
    let db = bbolt::Db::open(&ds.db_file()).expect("open db");
    let events = ds.read_events().expect("read deltas");
    let revisions = (ds.info.last_revision - ds.info.base_revision) as u64;

    let mut g = c.benchmark_group("deltas");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Elements(revisions));
    g.bench_function("apply", |b| {
        b.iter_batched(|| events.clone(), |evs| black_box(rebuild(&db, evs)), BatchSize::PerIteration)
    });
    g.bench_function("gunzip_verify_decode", |b| b.iter(|| black_box(ds.read_events().expect("decode").len())));
    // The floor of `apply` with the same building blocks: only the `key` bucket, a reused
    // encode buffer, no per-event allocation, no lease or duplicate-key bookkeeping. The gap
    // between this and `apply` is what brcore's per-event overhead costs.
    g.bench_function("apply_floor_writer_only", |b| b.iter(|| black_box(write_events_only(&events))));
    g.finish();
}

fn write_events_only(events: &[Event]) -> u64 {
    use brcore::delta::EventKind;
    use etcd_format::mvcc::{KeyValueRef, RevKey, Revision};
    let out = std::io::BufWriter::new(tempfile::tempfile().expect("temp file"));
    let mut w = bbolt::BulkWriter::new(out, bbolt::WriterOptions::default()).expect("writer");
    w.begin_bucket(etcd_format::mvcc::KEY_BUCKET).expect("bucket");
    let (mut current, mut sub) = (0, 0);
    let mut key = [0u8; 18];
    let mut value = Vec::with_capacity(4096);
    for e in events {
        if e.mod_revision == current {
            sub += 1;
        } else {
            (current, sub) = (e.mod_revision, 0);
        }
        key[..17].copy_from_slice(&Revision::new(current, sub).to_bytes());
        value.clear();
        let len = match e.kind {
            EventKind::Put => {
                KeyValueRef {
                    key: &e.key,
                    create_revision: e.create_revision,
                    mod_revision: current,
                    version: e.version,
                    value: &e.value,
                    lease: e.lease,
                }
                .encode_to(&mut value);
                17
            }
            EventKind::Delete => {
                KeyValueRef { key: &e.key, ..Default::default() }.encode_to(&mut value);
                key[17] = RevKey::tombstone(Revision::new(0, 0)).to_bytes()[17];
                18
            }
        };
        w.put(&key[..len], &value).expect("put");
    }
    w.end_bucket().expect("end");
    w.finish().expect("finish").1.pages
}

/// The steps a restore does to the full object before rebuilding: gunzip, sha256, and the
/// write of the decompressed bytes to a temp file (page cache, no fsync).
fn bench_full_object(c: &mut Criterion) {
    use sha2::Digest;
    use std::io::Write;
    let ds = dataset(env_u64("ETCDBR_BENCH_KEYS", 64_000));
    let gz = etcdbr_benches::generate::read_all(&ds.gz_objects().join(&ds.info.full_name)).expect("read full.gz");
    let raw = etcdbr_benches::generate::read_all(&ds.snapshot_file()).expect("read snapshot");

    let mut g = c.benchmark_group("full_object");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("gunzip", |b| {
        b.iter(|| {
            let mut d = flate2::read::GzDecoder::new(gz.as_slice());
            black_box(std::io::copy(&mut d, &mut std::io::sink()).expect("gunzip"))
        })
    });
    g.bench_function("sha256", |b| b.iter(|| black_box(sha2::Sha256::digest(&raw))));
    g.bench_function("write_temp_file", |b| {
        b.iter(|| {
            let mut f = tempfile::tempfile().expect("temp file");
            f.write_all(&raw).expect("write");
            black_box(f)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_rebuild, bench_deltas, bench_full_object);
criterion_main!(benches);
