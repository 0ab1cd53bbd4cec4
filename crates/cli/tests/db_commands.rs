//! `etcdbrctl db status|hashkv|check` on snapshots saved from real etcd 3.4.23 and 3.5.1, judged
//! by etcd's own tools: `snapshot status` (3.4's etcdctl, 3.5's etcdutl) on the same file and the
//! live server's `endpoint hashkv`. Damaged and missing files must give findings or a clear
//! error with the documented exit code, never a panic.

mod common;

use std::path::Path;

use common::{run as etcdbrctl, text};
use testsupport::{Etcd, EtcdVersion};

/// `cmd::EXIT_FAILURE`: an ordinary error, e.g. a file that cannot be read.
const EXIT_FAILURE: i32 = 1;
/// `cmd::EXIT_CORRUPT`: the file is damaged.
const EXIT_CORRUPT: i32 = 3;

/// Runs etcdbrctl, requires success and returns its stdout parsed as JSON.
fn etcdbrctl_json(args: &[&str]) -> serde_json::Value {
    let out = etcdbrctl(args);
    assert!(out.status.success(), "etcdbrctl {args:?} failed ({}): {}", out.status, text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("etcdbrctl {args:?} printed no JSON ({e}): {}", text(&out.stdout)))
}

/// Puts, overwrites, a delete, a compaction and more writes after it; returns (the compaction
/// revision, a revision between the compaction and the end, the last revision).
fn workload(etcd: &Etcd) -> (i64, i64, i64) {
    // Values of 200 bytes over 40 keys so that the `key` bucket spans several pages, not an inline bucket.
    let value = |i: usize, round: usize| format!("{round}-{i}-{}", "v".repeat(200));
    for i in 0..40 {
        etcd.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &value(i, 0)]);
    }
    for i in 0..10 {
        etcd.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &value(i, 1)]);
    }
    etcd.etcdctl(&["del", "/registry/pods/p05"]);
    let compact_rev = etcd.revision() - 5;
    etcd.etcdctl(&["compaction", &compact_rev.to_string(), "--physical"]);
    for i in 0..8 {
        etcd.etcdctl(&["put", &format!("/registry/services/s{i}"), &value(i, 2)]);
    }
    let middle = etcd.revision();
    etcd.etcdctl(&["del", "/registry/services/s3"]);
    for i in 20..26 {
        etcd.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &value(i, 3)]);
    }
    (compact_rev, middle, etcd.revision())
}

fn db_commands_match_etcd(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(version);
    let (compact_rev, middle, last) = workload(&etcd);
    let file = tmp.path().join("snapshot.db");
    let file_s = file.to_str().unwrap();
    etcd.etcdctl(&["snapshot", "save", file_s]);

    // status: the four numbers etcd prints for the same file.
    let ours = etcdbrctl_json(&["db", "status", file_s, "-w", "json"]);
    let theirs = version.snapshot_status(&file);
    for field in ["hash", "revision", "totalKey", "totalSize"] {
        assert!(theirs[field].is_number(), "etcd's status lacks {field}: {theirs}");
        assert_eq!(ours[field], theirs[field], "{version:?} status field {field}: ours {ours}, etcd {theirs}");
    }
    assert_eq!(ours["revision"].as_i64(), Some(last), "the snapshot holds every write");

    // hashkv: offline on the file equals the live server at the same revision.
    for rev in [middle, last] {
        let ours = etcdbrctl_json(&["db", "hashkv", file_s, "--rev", &rev.to_string(), "-w", "json"]);
        let (hash, live_compact, _) = etcd.hashkv(rev);
        assert_eq!(ours["hash"].as_u64(), Some(u64::from(hash)), "{version:?} hashkv at {rev}: ours {ours}");
        assert_eq!(ours["compact_revision"].as_i64(), Some(live_compact), "{version:?} compact revision: ours {ours}");
        assert_eq!(live_compact, compact_rev, "the live server reports the compaction we made");
    }

    // check: the saved file is sound.
    let out = etcdbrctl(&["db", "check", file_s]);
    assert_eq!(out.status.code(), Some(0), "check of a good file: {}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"), "check says ok: {}", text(&out.stdout));

    check_finds_zeroed_key_root(&file, tmp.path());
    check_finds_truncation(&file, tmp.path());
}

/// Zeroes the page header of the `key` bucket's root page: `db check` must report it and exit 3,
/// and `status` and `hashkv` must fail without a panic.
fn check_finds_zeroed_key_root(good: &Path, dir: &Path) {
    let (root, page_size) = {
        let db = bbolt::Db::open(good).expect("open the good file");
        let bucket = db.bucket(b"key").expect("read the root bucket").expect("a key bucket");
        let root = bucket.root_page().expect("the key bucket is large enough to have its own pages");
        (root, u64::from(db.page_size()))
    };
    let mut bytes = std::fs::read(good).unwrap();
    let start = usize::try_from(root * page_size).unwrap();
    assert!(start + 16 <= bytes.len(), "root page {root} lies inside the file");
    bytes[start..start + 16].fill(0);
    let bad = dir.join("zeroed-key-root.db");
    std::fs::write(&bad, &bytes).unwrap();
    let bad_s = bad.to_str().unwrap();

    let out = etcdbrctl(&["db", "check", bad_s]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(EXIT_CORRUPT), "check of a damaged file: {stdout}{}", text(&out.stderr));
    assert!(stdout.contains(&format!("page {root}")), "the findings name the zeroed page {root}: {stdout}");
    assert!(!stdout.contains(": ok"), "a damaged file is not ok: {stdout}");
    assert!(text(&out.stderr).contains("problem(s) found"), "stderr sums up: {}", text(&out.stderr));

    for args in [vec!["db", "status", bad_s], vec!["db", "hashkv", bad_s]] {
        let out = etcdbrctl(&args);
        assert!(!out.status.success(), "{args:?} on a damaged file must fail: {}", text(&out.stdout));
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("panicked"), "{args:?} panicked: {}", text(&out.stderr));
    }
}

/// A file cut short of its meta page's length is corrupt (exit 3), not an ordinary failure.
fn check_finds_truncation(good: &Path, dir: &Path) {
    let bytes = std::fs::read(good).unwrap();
    let cut = dir.join("truncated.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = etcdbrctl(&["db", "check", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(EXIT_CORRUPT), "check of a truncated file: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("truncated"), "the message names the truncation: {}", text(&out.stderr));
}

#[test]
fn db_commands_match_etcd_3_4() {
    db_commands_match_etcd(EtcdVersion::V3_4);
}

#[test]
fn db_commands_match_etcd_3_5() {
    db_commands_match_etcd(EtcdVersion::V3_5);
}

/// A path that does not exist is an ordinary failure (exit 1) naming the file, not corruption
/// and not a panic, for every `db` sub-command.
#[test]
fn missing_file_is_a_plain_error() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such.db");
    let missing_s = missing.to_str().unwrap();
    for sub in ["status", "hashkv", "check"] {
        let out = etcdbrctl(&["db", sub, missing_s]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_FAILURE), "db {sub} of a missing file: {stderr}");
        assert!(stderr.contains(missing_s), "db {sub} names the file: {stderr}");
        assert!(stderr.contains("No such file"), "db {sub} says why: {stderr}");
        assert!(!stderr.contains("panicked"), "db {sub} panicked: {stderr}");
        assert!(out.stdout.is_empty(), "db {sub} prints nothing on stdout: {}", text(&out.stdout));
    }
}
