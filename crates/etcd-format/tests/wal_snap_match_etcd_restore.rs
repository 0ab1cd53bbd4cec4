//! Real etcd is the judge: `etcdutl snapshot restore` (3.5.1, 3.5.30) and etcd 3.4.23's
//! `etcdctl snapshot restore` run on a real snapshot, and `write_member_files` with the same
//! cluster flags must produce the same WAL segment and `.snap` file byte for byte.
//!
//! etcd 3.4 writes its last WAL snapshot record without `conf_state` (3.5 added it), so for 3.4
//! only the `.snap` file is compared byte for byte; its WAL must equal ours up to that record.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use etcd_format::membership::{Cluster, write_member_files};
use etcd_format::wal::{FIRST_SEGMENT, SEGMENT_SIZE_BYTES, read_wal_dir};
use testsupport::{Etcd, EtcdVersion};

struct Case {
    label: &'static str,
    initial_cluster: &'static str,
    token: &'static str,
    name: &'static str,
    advertise: &'static str,
}

const CASES: [Case; 2] = [
    Case {
        label: "one member (spec vector)",
        initial_cluster: "n1=http://127.0.0.1:24801",
        token: "tok1",
        name: "n1",
        advertise: "http://127.0.0.1:24801",
    },
    Case {
        label: "three members, one with two peer URLs, custom token",
        initial_cluster: "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381,b=http://10.0.0.2:2381,c=http://127.0.0.1:2382",
        token: "custom-token",
        name: "b",
        advertise: "http://10.0.0.2:2381,http://127.0.0.1:2381",
    },
];

/// Starts etcd `version`, writes a key, saves a snapshot and stops it.
fn make_snapshot(version: EtcdVersion, dir: &Path) -> PathBuf {
    let mut etcd = Etcd::start(version);
    etcd.etcdctl(&["put", "foo", "bar"]);
    let path = dir.join(format!("{version:?}.db"));
    etcd.etcdctl(&["snapshot", "save", path.to_str().unwrap()]);
    etcd.stop();
    path
}

/// Runs etcd's own restore into `data_dir`.
fn etcd_restore(version: EtcdVersion, snapshot: &Path, case: &Case, data_dir: &Path) {
    let bin = match version {
        EtcdVersion::V3_4 => version.etcdctl_bin(),
        _ => version.etcdutl_bin(),
    };
    let out = Command::new(&bin)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore", snapshot.to_str().unwrap()])
        .args(["--data-dir", data_dir.to_str().unwrap()])
        .args(["--name", case.name])
        .args(["--initial-cluster", case.initial_cluster])
        .args(["--initial-cluster-token", case.token])
        .args(["--initial-advertise-peer-urls", case.advertise])
        .output()
        .expect("run etcd restore");
    assert!(out.status.success(), "{} restore failed: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
}

fn only_snap_file(snap_dir: &Path) -> PathBuf {
    let snaps: Vec<PathBuf> = fs::read_dir(snap_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    snaps.into_iter().next().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Index of the first differing byte, for a readable failure.
fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then_some(a.len().min(b.len())))
}

#[test]
fn member_files_equal_etcd_restore_output() {
    let tmp = tempfile::tempdir().unwrap();
    let snap35 = make_snapshot(EtcdVersion::V3_5, tmp.path());
    let snap34 = make_snapshot(EtcdVersion::V3_4, tmp.path());

    for (ci, case) in CASES.iter().enumerate() {
        let cluster = Cluster::from_initial_cluster(case.initial_cluster, case.token).unwrap();
        let ours_dir = tmp.path().join(format!("ours-{ci}"));
        let files = write_member_files(&ours_dir.join("member"), &cluster, case.name).unwrap();
        assert_eq!(files.consistent_index, cluster.members.len() as u64);
        assert_eq!(files.term, 1);
        if ci == 0 {
            assert_eq!(format!("{:x}", files.member_id), "18e0185557c0ce00");
            assert_eq!(format!("{:x}", files.cluster_id), "d02ac130b9ebfd3b");
        }
        let our_wal = fs::read(&files.wal_file).unwrap();
        let our_snap = fs::read(&files.snap_file).unwrap();
        assert_eq!(our_wal.len() as u64, SEGMENT_SIZE_BYTES);
        assert_eq!(mode(&files.wal_file), 0o600);
        assert_eq!(mode(&ours_dir.join("member/wal")), 0o700);
        assert!(!ours_dir.join("member/wal.tmp").exists());

        for version in [EtcdVersion::V3_5, EtcdVersion::V3_5Latest, EtcdVersion::V3_4] {
            let what = format!("{} vs {version:?}", case.label);
            let data = tmp.path().join(format!("etcd-{ci}-{version:?}"));
            let snapshot = if version == EtcdVersion::V3_4 { &snap34 } else { &snap35 };
            etcd_restore(version, snapshot, case, &data);

            let their_snap_path = only_snap_file(&data.join("member/snap"));
            assert_eq!(their_snap_path.file_name(), files.snap_file.file_name(), "{what}: snap file name");
            let their_snap = fs::read(&their_snap_path).unwrap();
            assert_eq!(first_diff(&their_snap, &our_snap), None, "{what}: .snap bytes differ");

            let their_wal_path = data.join("member/wal").join(FIRST_SEGMENT);
            let their_wal = fs::read(&their_wal_path).unwrap();
            assert_eq!(mode(&their_wal_path), mode(&files.wal_file), "{what}: WAL file mode");
            assert_eq!(mode(&data.join("member/wal")), 0o700, "{what}: WAL dir mode");

            let theirs = read_wal_dir(&data.join("member/wal")).unwrap();
            let ours = read_wal_dir(&ours_dir.join("member/wal")).unwrap();
            assert_eq!(theirs.metadata.unwrap().node_id, files.member_id, "{what}");
            assert_eq!(theirs.metadata.unwrap().cluster_id, files.cluster_id, "{what}");
            if version == EtcdVersion::V3_4 {
                // Identical up to the last record, whose walpb.Snapshot has no conf_state in 3.4.
                let last = ours.segments[0].end_offset as usize;
                assert_eq!(theirs.hard_state, ours.hard_state, "{what}");
                assert_eq!(theirs.entries, ours.entries, "{what}");
                assert_eq!(theirs.snapshots.len(), 2);
                let (t, o) = (&theirs.snapshots[1], &ours.snapshots[1]);
                assert_eq!((t.index, t.term, t.conf_state.is_none()), (o.index, o.term, true), "{what}");
                // Every frame before the final snapshot record is byte-identical.
                let theirs_end = theirs.segments[0].end_offset as usize;
                let common = frames_before_last(&our_wal[..last]);
                assert_eq!(common, frames_before_last(&their_wal[..theirs_end]), "{what}: frame layout");
                assert_eq!(first_diff(&their_wal[..common], &our_wal[..common]), None, "{what}: WAL prefix");
            } else {
                assert_eq!(first_diff(&their_wal, &our_wal), None, "{what}: WAL bytes differ");
            }
        }
    }
}

/// Offset of the last frame in a sequence of frames.
fn frames_before_last(frames: &[u8]) -> usize {
    let (mut off, mut last) = (0usize, 0usize);
    while off + 8 <= frames.len() {
        let lf = u64::from_le_bytes(frames[off..off + 8].try_into().unwrap());
        let len = (lf & 0x00ff_ffff_ffff_ffff) as usize;
        let pad = if lf >> 63 == 1 { ((lf >> 56) & 7) as usize } else { 0 };
        last = off;
        off += 8 + len + pad;
    }
    last
}
