//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

use bbolt::{Bucket, Db, Entry};

/// The Full snapshots the real Go etcdbrctl wrote, one per etcd version.
pub fn full_snapshots() -> Vec<PathBuf> {
    let root = testsupport::go_testdata();
    let mut out = Vec::new();
    for dir in ["etcdbrctl-0.28.4-etcd-3.4.23", "etcdbrctl-0.43.0-etcd-3.5.30"] {
        let store = root.join(dir).join("store/v2");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&store)
            .unwrap_or_else(|e| panic!("{}: {e}", store.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("Full-")))
            .collect();
        found.sort();
        assert_eq!(found.len(), 1, "one Full snapshot in {}", store.display());
        out.extend(found);
    }
    out
}

/// Gunzips a snapshot (the bytes still carry etcd's 32-byte sha256 trailer).
pub fn gunzip(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("open snapshot");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).expect("gunzip");
    out
}

/// Every bucket, recursively, as (path, entries): the same shape for any two dbs to compare.
pub type Dump = Vec<(Vec<Vec<u8>>, Vec<(Vec<u8>, Vec<u8>)>)>;

pub fn dump(db: &Db) -> Dump {
    let mut out = Vec::new();
    dump_bucket(&db.root(), &mut Vec::new(), &mut out);
    out
}

fn dump_bucket(b: &Bucket<'_>, path: &mut Vec<Vec<u8>>, out: &mut Dump) {
    let mut kvs = Vec::new();
    let mut subs = Vec::new();
    for e in b.iter() {
        match e.expect("iterate") {
            Entry::Value { key, value } => kvs.push((key.to_vec(), value.to_vec())),
            Entry::Bucket { name } => subs.push(name.to_vec()),
        }
    }
    out.push((path.clone(), kvs));
    for name in subs {
        let child = b.bucket(&name).expect("open bucket").expect("bucket exists");
        path.push(name);
        dump_bucket(&child, path, out);
        path.pop();
    }
}

/// Copies every top-level bucket of `db` through a BulkWriter.
pub fn copy_db<W: std::io::Write + std::io::Seek>(
    db: &Db,
    out: W,
    opts: bbolt::WriterOptions,
) -> (W, bbolt::WriteStats) {
    let mut w = bbolt::BulkWriter::new(out, opts).expect("writer");
    copy_bucket(&db.root(), &mut w, true);
    w.finish().expect("finish")
}

fn copy_bucket<W: std::io::Write + std::io::Seek>(b: &Bucket<'_>, w: &mut bbolt::BulkWriter<W>, root: bool) {
    for e in b.iter() {
        match e.expect("iterate") {
            Entry::Value { key, value } => {
                assert!(!root, "root bucket holds a plain key");
                w.put(key, value).expect("put");
            }
            Entry::Bucket { name } => {
                w.begin_bucket(name).expect("begin");
                copy_bucket(&b.bucket(name).expect("open").expect("exists"), w, false);
                w.end_bucket().expect("end");
            }
        }
    }
}
