//! The bbolt crate on a big etcd db (default ~1 GiB, written by real etcd): open + iterate
//! every key, `check()`, and `BulkWriter` writing it all again (Throughput in bytes of db).
//!
//! Size: `ETCDBR_BENCH_BBOLT_KEYS` (default 400000 keys of ~1.6 KB ≈ 1 GiB). The dataset is
//! generated once under /tmp/etcdbr-bench-data.

// `criterion_group!` generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bbolt::{BulkWriter, Db, Entry, WriterOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use etcdbr_benches::{Dataset, DatasetParams, ETCD_3_5_30_DIR, default_data_root};

fn dataset() -> Dataset {
    let keys = std::env::var("ETCDBR_BENCH_BBOLT_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000);
    let params = DatasetParams { keys, revisions: 1000, ..Default::default() };
    let etcd = PathBuf::from(ETCD_3_5_30_DIR).join("etcd");
    Dataset::open_or_generate(&default_data_root(), &params, &etcd).expect("generating the benchmark dataset")
}

/// One entry of [`Flat::bytes`]: offset, key length, value length.
type Span = (usize, usize, usize);

/// Every top-level bucket with its entries, flattened, for the writer bench.
struct Flat {
    buckets: Vec<(Vec<u8>, Vec<Span>)>,
    bytes: Vec<u8>,
}

fn flatten(db: &Db) -> Flat {
    let mut flat = Flat { buckets: Vec::new(), bytes: Vec::new() };
    for entry in db.root().iter() {
        let Entry::Bucket { name } = entry.expect("root entry") else { continue };
        let bucket = db.bucket(name).expect("bucket").expect("listed bucket");
        let mut entries = Vec::new();
        for e in bucket.iter() {
            if let Entry::Value { key, value } = e.expect("entry") {
                let at = flat.bytes.len();
                flat.bytes.extend_from_slice(key);
                flat.bytes.extend_from_slice(value);
                entries.push((at, key.len(), value.len()));
            }
        }
        flat.buckets.push((name.to_vec(), entries));
    }
    flat
}

fn iterate_all(db: &Db) -> u64 {
    let mut n = 0u64;
    for entry in db.root().iter() {
        let Entry::Bucket { name } = entry.expect("root entry") else { continue };
        for e in db.bucket(name).expect("bucket").expect("listed bucket").iter() {
            if let Entry::Value { key, value } = e.expect("entry") {
                n += (key.len() + value.len()) as u64;
            }
        }
    }
    n
}

fn bench_bbolt(c: &mut Criterion) {
    let ds = dataset();
    let path = ds.db_file();
    let size = std::fs::metadata(&path).expect("db size").len();

    let mut g = c.benchmark_group("bbolt");
    g.sample_size(10).measurement_time(Duration::from_secs(30)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(size));
    g.bench_function("open_iterate_all", |b| {
        b.iter(|| black_box(iterate_all(&Db::open(&path).expect("open"))));
    });
    let db = Db::open(&path).expect("open");
    g.bench_function("check", |b| b.iter(|| black_box(db.check().is_ok())));
    let flat = flatten(&db);
    g.bench_function("bulk_write", |b| {
        b.iter(|| {
            let out = std::io::BufWriter::new(tempfile::tempfile().expect("temp file"));
            let mut w = BulkWriter::new(out, WriterOptions::default()).expect("writer");
            for (name, entries) in &flat.buckets {
                w.begin_bucket(name).expect("begin");
                for &(at, kl, vl) in entries {
                    w.put(&flat.bytes[at..at + kl], &flat.bytes[at + kl..at + kl + vl]).expect("put");
                }
                w.end_bucket().expect("end");
            }
            black_box(w.finish().expect("finish").1)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_bbolt);
criterion_main!(benches);
