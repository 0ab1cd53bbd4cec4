//! HashKV of the full snapshots written by the real Go etcdbrctl, judged by real etcd.
//!
//! The snapshot is restored with etcd's own tool (`etcdctl snapshot restore` 3.4,
//! `etcdutl snapshot restore` 3.5), which keeps the `key` bucket and the compaction marks as
//! they are, and booted; its `hashkv --rev R` and `get --rev R` must equal what we compute from
//! the unrestored snapshot file.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use etcd_format::hashkv::hash_kv;
use etcd_format::meta::DbRevisions;
use etcd_format::mvcc;
use testsupport::{Etcd, EtcdVersion, free_port};

/// The store's Full snapshot, decompressed into `dir`.
fn gunzip_full(store: &str, dir: &Path) -> PathBuf {
    testsupport::go_full_snapshot(store, &dir.join("full.db"))
}

fn restore_and_boot(version: EtcdVersion, snapshot: &Path, dir: &Path, skip_hash_check: bool) -> Etcd {
    let data = dir.join("data");
    let peer_port = free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = match version {
        EtcdVersion::V3_4 => {
            let mut c = Command::new(version.etcdctl_bin());
            c.env("ETCDCTL_API", "3");
            c
        }
        _ => Command::new(version.etcdutl_bin()),
    };
    let out = cmd
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&data)
        .args(skip_hash_check.then_some("--skip-hash-check"))
        .args(["--name", "n1", "--initial-cluster", &format!("n1={peer}"), "--initial-advertise-peer-urls", &peer])
        .output()
        .expect("run snapshot restore");
    assert!(out.status.success(), "snapshot restore failed: {}", String::from_utf8_lossy(&out.stderr));
    Etcd::start_on(version, &data, "n1", peer_port, free_port())
}

fn full_snapshot_hashkv_matches(store: &str, version: EtcdVersion) {
    let dir = tempfile::tempdir().unwrap();
    let snap = gunzip_full(store, dir.path());
    let db = bbolt::Db::open(&snap).unwrap();
    let revs = DbRevisions::read(&db).unwrap();
    let compact = revs.compact_revision.expect("the store's source compacted before the Full");
    let last = revs.current_revision;

    let mut etcd = restore_and_boot(version, &snap, dir.path(), false);
    // Every revision the booted etcd can still hash, and the current one.
    for rev in (compact + 1..=last).chain([0]) {
        let (hash, compact_revision, revision) = etcd.hashkv(rev);
        let ours = hash_kv(&db, Some(rev)).unwrap();
        assert_eq!(
            (ours.hash, ours.compact_revision, ours.revision),
            (hash, compact_revision, revision),
            "{store} on {version:?}: hashkv --rev {rev}"
        );
    }
    for rev in [compact + 1, (compact + last) / 2, last] {
        let (kvs, _) = etcd.get_all(rev);
        let ours = mvcc::keys_at(&db, rev).unwrap();
        assert_eq!(ours.len(), kvs.len(), "{store}: key count at {rev}");
        for (want, (key, kv)) in kvs.iter().zip(&ours) {
            let ctx = format!("{store} at {rev}: {}", String::from_utf8_lossy(key));
            assert_eq!(B64.decode(want["key"].as_str().unwrap()).unwrap(), *key, "{ctx}");
            let value = want["value"].as_str().map(|v| B64.decode(v).unwrap()).unwrap_or_default();
            assert_eq!(value, kv.value, "{ctx}");
            assert_eq!(want["create_revision"].as_i64().unwrap(), kv.create_revision, "{ctx}");
            assert_eq!(want["mod_revision"].as_i64().unwrap(), kv.mod_revision, "{ctx}");
            assert_eq!(want["version"].as_i64().unwrap(), kv.version, "{ctx}");
            assert_eq!(want["lease"].as_i64().unwrap_or(0), kv.lease, "{ctx}");
        }
    }
    etcd.stop();
}

#[test]
fn hashkv_of_the_etcd_3_4_store_full_matches_etcd_3_4() {
    full_snapshot_hashkv_matches("etcdbrctl-0.28.4-etcd-3.4.23", EtcdVersion::V3_4);
}

#[test]
fn hashkv_of_the_etcd_3_5_store_full_matches_etcd_3_5() {
    full_snapshot_hashkv_matches("etcdbrctl-0.43.0-etcd-3.5.30", EtcdVersion::V3_5);
}

/// Copies `source` with `meta/scheduledCompactRev` set to `(scheduled, 0)`: a compaction that
/// was requested but had not finished when the file was taken.
fn with_pending_compaction(source: &bbolt::Db, scheduled: i64, out: &Path) {
    let file = std::fs::File::create(out).unwrap();
    let mut w = bbolt::BulkWriter::new(file, bbolt::WriterOptions::default()).unwrap();
    for top in source.root().iter() {
        let bbolt::Entry::Bucket { name } = top.unwrap() else { panic!("plain key in root") };
        w.begin_bucket(name).unwrap();
        for e in source.bucket(name).unwrap().unwrap().iter() {
            let bbolt::Entry::Value { key, value } = e.unwrap() else { panic!("nested bucket") };
            if name == b"meta" && key == b"scheduledCompactRev" {
                w.put(key, &etcd_format::meta::encode_compact_rev(scheduled)).unwrap();
            } else {
                w.put(key, value).unwrap();
            }
        }
        w.end_bucket().unwrap();
    }
    w.finish().unwrap();
}

/// etcd resumes a pending compaction at boot (3.5) or during restore (3.4); HashKV of the
/// uncompacted file must equal what the booted member reports afterwards.
fn pending_compaction_matches(version: EtcdVersion) {
    let store = "etcdbrctl-0.28.4-etcd-3.4.23";
    let dir = tempfile::tempdir().unwrap();
    let full = bbolt::Db::open(&gunzip_full(store, dir.path())).unwrap();
    let pending = dir.path().join("pending.db");
    let scheduled = 150;
    with_pending_compaction(&full, scheduled, &pending);
    let db = bbolt::Db::open(&pending).unwrap();
    let revs = DbRevisions::read(&db).unwrap();
    assert_eq!((revs.compact_revision, revs.scheduled_compact_revision), (Some(135), Some(scheduled)));
    assert_eq!(revs.effective_compact_revision(), scheduled);
    assert!(matches!(hash_kv(&db, Some(scheduled)), Err(mvcc::Error::Compacted { compact: 150, .. })));

    let mut etcd = restore_and_boot(version, &pending, dir.path(), true);
    for rev in (scheduled + 1..=revs.current_revision).chain([0]) {
        let (hash, compact_revision, revision) = etcd.hashkv(rev);
        let ours = hash_kv(&db, Some(rev)).unwrap();
        assert_eq!(
            (ours.hash, ours.compact_revision, ours.revision),
            (hash, compact_revision, revision),
            "{version:?}: hashkv --rev {rev} after the pending compaction at {scheduled}"
        );
    }
    etcd.stop();
}

#[test]
fn hashkv_with_a_pending_compaction_matches_etcd_3_4() {
    pending_compaction_matches(EtcdVersion::V3_4);
}

#[test]
fn hashkv_with_a_pending_compaction_matches_etcd_3_5() {
    pending_compaction_matches(EtcdVersion::V3_5);
}
