//! The WAL reader against WALs written by live etcd servers (3.4.23 and 3.5.1): every record
//! and the CRC chain verify, metadata names the member and cluster etcd reports, and a flipped
//! byte or a truncation in the middle is reported at the right frame without a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use etcd_format::wal::{Corruption, FIRST_SEGMENT, SEGMENT_SIZE_BYTES, WalContents, WalError, read_wal_dir};
use testsupport::{Etcd, EtcdVersion};

/// A live etcd with some history, stopped; returns it (keeps the dir), its member and cluster IDs.
fn live_wal(version: EtcdVersion) -> (Etcd, u64, u64) {
    let mut etcd = Etcd::start(version);
    for i in 0..60 {
        etcd.etcdctl(&["put", &format!("key-{i:03}"), &"v".repeat(i * 10)]);
    }
    etcd.etcdctl(&["del", "key-007"]);
    let lease = etcd.etcdctl(&["lease", "grant", "600"]);
    let lease_id = lease.split_whitespace().nth(1).expect("lease id");
    etcd.etcdctl(&["put", "leased", "x", "--lease", lease_id]);
    let v: serde_json::Value = serde_json::from_str(&etcd.etcdctl(&["member", "list", "-w", "json"])).unwrap();
    let member = v["header"]["member_id"].as_u64().unwrap();
    let cluster = v["header"]["cluster_id"].as_u64().unwrap();
    etcd.stop();
    (etcd, member, cluster)
}

fn copy_wal(from: &Path, to: &Path) -> PathBuf {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
    to.join(FIRST_SEGMENT)
}

fn check_contents(w: &WalContents, member: u64, cluster: u64) {
    let md = w.metadata.expect("metadata");
    assert_eq!((md.node_id, md.cluster_id), (member, cluster));
    let hs = w.hard_state.expect("hard state");
    let (last_index, _) = w.last_entry.expect("entries");
    assert!(w.entries >= 63, "{} entries", w.entries);
    assert!(hs.commit >= 63 && hs.commit <= last_index, "{hs:?} last {last_index}");
    assert_eq!(hs.vote, member);
    assert_eq!((w.snapshots[0].index, w.snapshots[0].term), (0, 0));
    assert_eq!(w.segments.len(), 1);
    assert!(w.segments[0].end_offset < SEGMENT_SIZE_BYTES);
}

#[test]
fn live_wal_reads_and_corruption_is_located() {
    for version in [EtcdVersion::V3_4, EtcdVersion::V3_5] {
        let (etcd, member, cluster) = live_wal(version);
        let wal_dir = etcd.data_dir().join("member/wal");
        let contents = read_wal_dir(&wal_dir).unwrap_or_else(|e| panic!("{version:?}: {e}"));
        check_contents(&contents, member, cluster);

        let seg = fs::read(wal_dir.join(FIRST_SEGMENT)).unwrap();
        let fr = common::frames(&seg);
        assert_eq!(fr.len() as u64, contents.segments[0].records);
        let (off, len, _) = fr[fr.len() / 2];

        let tmp = tempfile::tempdir().unwrap();

        // One flipped byte in the last byte of a middle record (inside its data).
        let dir = tmp.path().join("flip");
        let seg_path = copy_wal(&wal_dir, &dir);
        let mut bad = seg.clone();
        bad[off + 8 + len - 1] ^= 0x40;
        fs::write(&seg_path, &bad).unwrap();
        match read_wal_dir(&dir) {
            Err(WalError::Corrupt { file, offset, kind: Corruption::CrcMismatch { .. } }) => {
                assert_eq!((file, offset), (seg_path.clone(), off as u64), "{version:?}");
            }
            other => panic!("{version:?}: flipped byte gave {other:?}"),
        }

        // Truncated in the middle of that record.
        let dir = tmp.path().join("trunc");
        let seg_path = copy_wal(&wal_dir, &dir);
        fs::write(&seg_path, &seg[..off + 8 + len / 2]).unwrap();
        match read_wal_dir(&dir) {
            Err(WalError::Corrupt { offset, kind: Corruption::TornRecord { needed, available }, .. }) => {
                assert_eq!(offset, off as u64);
                assert!(available < needed);
            }
            other => panic!("{version:?}: truncation gave {other:?}"),
        }

        // Truncated inside a length field.
        fs::write(&seg_path, &seg[..off + 3]).unwrap();
        match read_wal_dir(&dir) {
            Err(WalError::Corrupt { offset, kind: Corruption::TornLengthField { available: 3 }, .. }) => {
                assert_eq!(offset, off as u64);
            }
            other => panic!("{version:?}: truncated length gave {other:?}"),
        }

        // Truncated exactly at a frame boundary is a clean (shorter) log.
        fs::write(&seg_path, &seg[..off]).unwrap();
        let short = read_wal_dir(&dir).unwrap();
        assert_eq!(short.segments[0].records, (fr.len() / 2) as u64);
    }
}

#[test]
fn stray_files_and_bad_names() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(read_wal_dir(tmp.path()), Err(WalError::NoSegments(_))));
    fs::write(tmp.path().join("0.tmp"), b"x").unwrap();
    assert!(matches!(read_wal_dir(tmp.path()), Err(WalError::NoSegments(_))));
    fs::write(tmp.path().join("garbage.wal"), b"").unwrap();
    assert!(matches!(read_wal_dir(tmp.path()), Err(WalError::BadSegmentName(_))));
    assert!(matches!(read_wal_dir(&tmp.path().join("missing")), Err(WalError::Io { .. })));
}
