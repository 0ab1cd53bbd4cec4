//! Real etcd judges our files: `snapshot status` (which runs bbolt's own `tx.Check()`) must accept
//! everything the BulkWriter writes and report the same hash, revision and key count as for the
//! source; and snapshots a live etcd just wrote must read back with the keys etcd serves.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bbolt::{Db, Entry, FreelistMode, WriterOptions};
use testsupport::{Etcd, EtcdVersion};

/// `snapshot status -w json` as (hash, revision, totalKey, totalSize), by each tool we have:
/// etcdctl 3.4.23 and etcdutl 3.5.1 and 3.5.30 (three bbolt versions).
fn statuses(file: &Path) -> Vec<(String, serde_json::Value)> {
    [
        (EtcdVersion::V3_4, "etcdctl 3.4"),
        (EtcdVersion::V3_5, "etcdutl 3.5.1"),
        (EtcdVersion::V3_5Latest, "etcdutl 3.5.30"),
    ]
    .into_iter()
    .map(|(version, name)| (name.to_string(), version.snapshot_status(file)))
    .collect()
}

/// Copies `src` through the BulkWriter with `opts`, then asks every etcd tool about both files.
fn assert_copy_accepted_by_etcd(src: &Path, opts: WriterOptions, dir: &Path) {
    let db = Db::open(src).expect("open source");
    let dst = dir.join(format!("copy-{}-{}-{:?}.db", opts.page_size, opts.fill, opts.freelist));
    let file = std::fs::File::create(&dst).unwrap();
    let (file, stats) = common::copy_db(&db, file, opts);
    file.sync_all().unwrap();
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), stats.bytes);
    let copy = Db::open(&dst).expect("open copy");
    assert!(copy.check().is_ok(), "{}", copy.check());
    assert_eq!(common::dump(&db), common::dump(&copy));
    for ((tool, want), (_, got)) in statuses(src).into_iter().zip(statuses(&dst)) {
        for field in ["hash", "revision", "totalKey"] {
            assert_eq!(got[field], want[field], "{tool}: {field} of the copy ({opts:?})");
        }
        assert_eq!(got["totalSize"].as_u64(), Some(stats.bytes), "{tool}: totalSize = pgid * page size");
    }
}

fn options() -> Vec<WriterOptions> {
    vec![
        WriterOptions::default(),
        WriterOptions::default().with_fill(0.9).with_freelist(FreelistMode::None),
        // Tiny fill: many leaves and several branch levels even for a small db.
        WriterOptions::default().with_fill(0.1).with_freelist(FreelistMode::Page),
        // Other page sizes (64 KiB is the OS page size on some arm64 kernels): bbolt takes the
        // page size from meta 0, so etcd must accept these on any host.
        WriterOptions::default().with_page_size(1024).with_fill(1.0).with_freelist(FreelistMode::None),
        WriterOptions::default().with_page_size(65536).with_fill(1.0).with_freelist(FreelistMode::Page),
    ]
}

#[test]
fn bulk_written_copies_of_real_snapshots_pass_etcd_snapshot_status() {
    let dir = tempfile::tempdir().unwrap();
    for snap in common::full_snapshots() {
        let src = dir.path().join("source.db");
        std::fs::write(&src, common::gunzip(&snap)).unwrap();
        for opts in options() {
            assert_copy_accepted_by_etcd(&src, opts, dir.path());
        }
    }
}

/// The user key of an `mvccpb.KeyValue` (field 1, always first as gogo writes it).
fn kv_user_key(value: &[u8]) -> Vec<u8> {
    assert_eq!(value.first(), Some(&0x0a), "KeyValue starts with field 1");
    let (mut len, mut shift, mut i) = (0usize, 0, 1);
    loop {
        let b = value[i];
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        i += 1;
        if b < 0x80 {
            break;
        }
    }
    value[i..i + len].to_vec()
}

/// Live keys from the `key` bucket: puts add, tombstones (18-byte keys) remove.
fn live_keys(db: &Db) -> BTreeMap<Vec<u8>, usize> {
    let mut live = BTreeMap::new();
    for e in db.bucket(b"key").unwrap().expect("key bucket").iter() {
        let Entry::Value { key, value } = e.expect("iterate") else { panic!("nested bucket in key") };
        let user = kv_user_key(value);
        if key.len() == 18 {
            live.remove(&user);
        } else {
            live.insert(user, value.len());
        }
    }
    live
}

#[test]
fn snapshots_of_a_live_etcd_read_back_and_copy_for_both_versions() {
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5, EtcdVersion::V3_5Latest] {
        let etcd = Etcd::start(version);
        for i in 0..150 {
            etcd.etcdctl(&["put", &format!("/registry/pods/p{i:04}"), &format!("value-{i}")]);
        }
        // Values beyond a page: leaves with overflow pages.
        let big = "x".repeat(9000);
        for i in 0..5 {
            etcd.etcdctl(&["put", &format!("/big/{i}"), &format!("{i}{big}")]);
        }
        etcd.etcdctl(&["put", "/big/huge", &"y".repeat(70_000)]);
        for i in 0..20 {
            etcd.etcdctl(&["del", &format!("/registry/pods/p{i:04}")]);
        }
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap.db");
        etcd.etcdctl(&["snapshot", "save", snap.to_str().unwrap()]);

        let db = Db::open(&snap).expect("open live snapshot");
        let report = db.check();
        assert!(report.is_ok(), "{version:?}: {report}");
        let live = live_keys(&db);
        let (kvs, _) = etcd.get_all(0);
        assert_eq!(live.len(), kvs.len(), "{version:?}: live keys in the snapshot vs etcdctl get --prefix");
        assert_eq!(live.len(), 150 - 20 + 6);
        assert_eq!(live.get(&b"/big/huge"[..]).map(|&n| n > 70_000), Some(true));
        for kv in &kvs {
            let key = kv["key"].as_str().expect("base64 key");
            assert!(!key.is_empty());
        }
        for opts in options() {
            assert_copy_accepted_by_etcd(&snap, opts, dir.path());
        }
    }
}
