//! `snapshot status` of the full snapshots written by the real Go etcdbrctl, judged by
//! `etcdctl snapshot status` (3.4.23) and `etcdutl snapshot status` (3.5.1) on the same files.

use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_format::snapshot_file::{Sha256Trailer, TrailerStatus, verify_snapshot_file};
use etcd_format::status::snapshot_status;
use testsupport::EtcdVersion;

const STORES: [&str; 2] = ["etcdbrctl-0.28.4-etcd-3.4.23", "etcdbrctl-0.43.0-etcd-3.5.30"];

/// The store's Full snapshot, decompressed into `dir`.
fn gunzip_full(store: &str, dir: &Path) -> PathBuf {
    testsupport::go_full_snapshot(store, &dir.join(format!("{store}.db")))
}

#[test]
fn status_of_store_full_snapshots_matches_etcdctl_and_etcdutl() {
    let dir = tempfile::tempdir().unwrap();
    for store in STORES {
        let file = gunzip_full(store, dir.path());
        let db = bbolt::Db::open(&file).unwrap();
        let ours = serde_json::to_value(snapshot_status(&db).unwrap()).unwrap();
        for version in [EtcdVersion::V3_4, EtcdVersion::V3_5] {
            assert_eq!(ours, version.snapshot_status(&file), "{store} vs {version:?}");
        }
        // Plausible on its own: the Full is named after revision 166, and the status size
        // excludes the trailer.
        assert_eq!(ours["revision"], 166, "{store}");
        let len = std::fs::metadata(&file).unwrap().len();
        assert_eq!(ours["totalSize"].as_u64().unwrap() + 32, len, "{store}");
    }
}

#[test]
fn store_full_snapshots_carry_a_valid_sha256_trailer() {
    let dir = tempfile::tempdir().unwrap();
    for store in STORES {
        let file = gunzip_full(store, dir.path());
        assert_eq!(verify_snapshot_file(&file).unwrap(), TrailerStatus::Verified, "{store}");
        // The same check fed in odd chunks, as a restore streaming from a store does.
        let bytes = std::fs::read(&file).unwrap();
        let mut checker = Sha256Trailer::new();
        for chunk in bytes.chunks(7919) {
            checker.update(chunk);
        }
        assert_eq!(checker.data_len(), bytes.len() as u64 - 32);
        assert_eq!(checker.finish(store).unwrap(), TrailerStatus::Verified);
        // One flipped bit anywhere in the db part is caught.
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 0x10;
        let bad_path = dir.path().join("bad.db");
        std::fs::write(&bad_path, &bad).unwrap();
        assert!(verify_snapshot_file(&bad_path).is_err(), "{store}");
    }
}

#[test]
fn corrupted_page_fails_status_like_etcdctl() {
    let dir = tempfile::tempdir().unwrap();
    let file = gunzip_full(STORES[0], dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    let (page, page_size) = {
        let db = bbolt::Db::open(&file).unwrap();
        let root = db.bucket(b"key").unwrap().unwrap().root_page().expect("key bucket is not inline");
        (root, db.page_size() as usize)
    };
    // Page flags 0x20 are no page type bbolt knows.
    bytes[page as usize * page_size + 8] = 0x20;
    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, &bytes).unwrap();

    let db = bbolt::Db::open(&bad).unwrap();
    let err = snapshot_status(&db).unwrap_err();
    assert!(matches!(err, etcd_format::mvcc::Error::CheckFailed { .. }), "{err}");
    let out = Command::new(EtcdVersion::V3_4.etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "etcdctl accepted the corrupted file too");
}
