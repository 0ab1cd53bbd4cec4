//! `etcdbrctl compact` and `etcdbrctl copy` on stores written by the Go etcdbrctl, judged by
//! restoring the result and booting real etcd on it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use testsupport::{Etcd, EtcdVersion, free_port, go_testdata};

const STORE_34: &str = "etcdbrctl-0.28.4-etcd-3.4.23";

fn etcdbrctl(args: &[&str]) -> Output {
    let out = common::run(args);
    assert!(
        out.status.success(),
        "etcdbrctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Restores `container`/`prefix` and returns hashkv at `rev` from real etcd.
fn restored_hashkv(container: &Path, prefix: &str, rev: i64) -> u32 {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let peer = free_port();
    let out = common::restore_one(container, &data, peer).args(["--store-prefix", prefix]).output().unwrap();
    assert!(out.status.success(), "restore failed: {}\n{}", common::text(&out.stdout), common::text(&out.stderr));
    let etcd = Etcd::start_on(EtcdVersion::V3_5, &data, "n1", peer, free_port());
    etcd.hashkv(rev).0
}

fn expected_final_hash() -> u32 {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_34).join("hashkv-final.json")).unwrap()).unwrap();
    v[0]["HashKV"]["hash"].as_u64().unwrap() as u32
}

#[test]
fn compact_folds_the_chain_into_one_full_snapshot_that_restores_bit_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");
    common::copy_go_store(STORE_34, &container);
    let before = names(&container.join("v2"));
    let out = etcdbrctl(&[
        "compact",
        "--storage-provider",
        "Local",
        "--store-container",
        container.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("work").to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("compacted 11 objects"), "{stdout}");
    let after = names(&container.join("v2"));
    let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "one new object: {after:?}");
    assert!(new[0].starts_with("Full-00000000-00000338-") && new[0].ends_with(".gz"), "{new:?}");
    assert!(before.iter().all(|n| after.contains(n)), "compact deleted or renamed an object");
    // The new full snapshot alone is the latest set now; restoring it gives the source's data.
    assert_eq!(restored_hashkv(&container, "", 338), expected_final_hash());
}

#[test]
fn copy_moves_backup_sets_between_stores_and_skips_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let source: PathBuf = go_testdata().join(STORE_34).join("store");
    let dest = tmp.path().join("dest");
    let args = [
        "copy",
        "--storage-provider",
        "Local",
        "--store-container",
        dest.to_str().unwrap(),
        "--store-prefix",
        "copied",
        "--source-store-container",
        source.to_str().unwrap(),
        "--source-store-prefix",
        "",
    ];
    let out = etcdbrctl(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 11 objects"), "{out:?}");
    assert_eq!(names(&dest.join("copied/v2")), names(&source.join("v2")));
    let out = etcdbrctl(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("copied 0 objects"), "{out:?}");
    assert_eq!(restored_hashkv(&dest, "copied", 338), expected_final_hash());
}
