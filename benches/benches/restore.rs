//! The sync core of etcdbr's restore, in-process: `rebuild_db` of a ~165 MB full snapshot taken
//! from real etcd, alone and with 60,000 delta revisions, plus delta application and delta
//! decoding on their own (the ≥ 1,000,000 revisions/s goal).
//!
//! Data comes from `etcdbr_benches::Dataset` (generated once with a real etcd, cached under
//! /tmp/etcdbr-bench-data). Sizes: `ETCDBR_BENCH_KEYS` (100000), `ETCDBR_BENCH_REVISIONS`
//! (60000). Output goes to a temp file without fsync (the fsync is the command's, measured by
//! scripts/bench-restore.sh).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use brcore::delta::Event;
use brcore::rebuild::{LeasePolicy, Membership, RebuildOptions, rebuild_db};
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
    RebuildOptions {
        to_revision: None,
        to_time_nanos: None,
        membership: Membership::Keep,
        lease_policy: LeasePolicy::default(),
        bump_revision: None,
        writer: bbolt::WriterOptions::default(),
    }
}

/// One rebuild into a fresh temp file; returns the revisions applied.
fn rebuild(db: &bbolt::Db, events: Vec<Event>) -> u64 {
    let out = tempfile::tempfile().expect("temp file");
    let (_, stats) = rebuild_db(db, events.into_iter().map(Ok), &options(), std::io::BufWriter::new(out))
        .expect("rebuild of generated data");
    stats.revisions_applied
}

fn bench_rebuild(c: &mut Criterion) {
    let ds = dataset(env_u64("ETCDBR_BENCH_KEYS", 100_000));
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
    g.finish();
}

criterion_group!(benches, bench_rebuild, bench_deltas);
criterion_main!(benches);
