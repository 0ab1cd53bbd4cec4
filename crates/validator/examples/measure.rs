//! How long sanity and full validation take on a large synthetic data dir.
//!
//! `cargo run --release -p validator --example measure -- [MiB] [dir]` writes a data dir whose
//! db holds about MiB of etcd key revisions (1 KiB values) with the bulk writer, plus the WAL
//! and snap file of a restored member, then times each mode a few times (the page cache is warm
//! after the first run: the numbers are CPU cost, not disk speed).

use std::fs::{self, File};
use std::path::PathBuf;
use std::time::Instant;

use bbolt::{BulkWriter, WriterOptions};
use etcd_format::datadir;
use etcd_format::membership::{Cluster, write_member_files};
use etcd_format::meta::CONSISTENT_INDEX;
use etcd_format::mvcc::{KEY_BUCKET, KeyValue, META_BUCKET, RevKey, Revision};
use validator::{Mode, validate};

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let root = args.next().map(PathBuf::from).unwrap_or_else(|| std::env::temp_dir().join("validator-measure"));
    let _ = fs::remove_dir_all(&root);
    let member = datadir::member_dir(&root);
    fs::create_dir_all(datadir::snap_dir(&member)).expect("create the member dir");
    let cluster = Cluster::from_initial_cluster("default=http://127.0.0.1:2380", "etcd-cluster").expect("cluster");
    write_member_files(&member, &cluster, "default").expect("WAL and snap files");

    let started = Instant::now();
    let db_path = datadir::db_path(&member);
    let mut w = BulkWriter::new(File::create(&db_path).expect("create db"), WriterOptions::default()).expect("writer");
    let value = vec![b'v'; 1024];
    let n = mib * 1024 * 1024 / 1100;
    w.begin_bucket(KEY_BUCKET).expect("key bucket");
    for i in 0..n {
        let rev = i as i64 + 2;
        let kv = KeyValue {
            key: format!("/registry/pods/ns-{}/pod-{i}", i % 50).into_bytes(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            value: value.clone(),
            lease: 0,
        };
        w.put(&RevKey::put(Revision::new(rev, 0)).to_bytes(), &kv.encode()).expect("put");
    }
    w.end_bucket().expect("end key");
    w.begin_bucket(META_BUCKET).expect("meta bucket");
    w.put(CONSISTENT_INDEX, &1u64.to_be_bytes()).expect("put");
    w.end_bucket().expect("end meta");
    let (_, stats) = w.finish().expect("finish");
    let size = fs::metadata(&db_path).expect("db size").len();
    println!(
        "wrote {} revisions, db {:.1} MiB ({} pages) in {:.2} s",
        n,
        size as f64 / 1048576.0,
        stats.pages,
        started.elapsed().as_secs_f64()
    );

    for mode in [Mode::Sanity, Mode::Full] {
        let mut times = Vec::new();
        for _ in 0..3 {
            let r = validate(&root, mode, Some(n as i64 + 1)).expect("validation runs");
            assert!(r.verdict.is_valid(), "{}: {:?}", r.verdict, r.findings);
            times.push(r.elapsed.as_secs_f64());
        }
        let best = times.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "{mode:>6}: first {:.1} ms, best {:.1} ms ({:.2} s/GiB)",
            times[0] * 1e3,
            best * 1e3,
            best / (size as f64 / 1073741824.0)
        );
    }
    let _ = fs::remove_dir_all(&root);
}
