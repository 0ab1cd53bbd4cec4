//! etcdbr's own compression policy `--compression-policy zstd` (issue 21) through the real
//! binary against real etcd 3.5: the snapshotter stores `.zst` full and delta snapshots (`.zst.age`
//! with encryption), zstd(1) (Debian's `zstd`) decodes them to etcd's own bytes, and restore,
//! verify, status, compact and copy read them: etcd booted on a restore serves the source's
//! data with an equal `hashkv`. An unknown policy word is refused with exit 2 naming the flag
//! and the words it takes.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use brcore::encrypt::Keys;
use common::etcdbrctl;
use testsupport::{Etcd, EtcdVersion, free_port};

fn local(container: &Path, prefix: &str) -> Vec<String> {
    ["--storage-provider", "Local", "--store-container", container.to_str().unwrap(), "--store-prefix", prefix]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Runs `etcdbrctl snapshot` (a full snapshot at start, deltas every second) while etcd is
/// written to (puts, a txn, a range delete, a leased key), then SIGTERM (a last delta).
fn snapshot_while_writing(source: &Etcd, store: &[String], extra: &[&str]) {
    let child = etcdbrctl()
        .args(["snapshot", "--endpoints", &source.endpoint(), "--schedule", "0 0 1 1 *"])
        .args(["--delta-snapshot-period", "1s", "--garbage-collection-period", "1m"])
        .args(extra)
        .args(store)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start etcdbrctl snapshot");
    std::thread::sleep(Duration::from_millis(1500));
    common::change_keys(source);
    std::thread::sleep(Duration::from_millis(2000));
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let out = testsupport::wait_output(child, Duration::from_secs(30));
    assert!(out.status.success(), "etcdbrctl snapshot failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn source_etcd() -> Etcd {
    let source = Etcd::start(EtcdVersion::V3_5);
    for i in 0..30 {
        source.etcdctl(&["put", &format!("/app/k{i}"), &format!("v{i}-{}", "x".repeat(200))]);
    }
    source
}

/// The snapshot objects of a store's `v2/` directory, by name (not the lease sidecars).
fn names(v2: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(v2)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("Full-") || n.starts_with("Incr-"))
        .collect();
    out.sort();
    out
}

/// `etcdbrctl restore` of `store` into a fresh data dir, etcd 3.5 booted on it: it must serve
/// the source's keys at the source's revision with an equal hashkv.
fn restore_and_compare(store: &[String], extra: &[&str], source: &Etcd, what: &str) {
    let rev = source.revision();
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = etcdbrctl()
        .args(["restore", "--data-dir", data_dir.to_str().unwrap(), "--name", "n1"])
        .args(["--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls", &peer_url])
        .args(store)
        .args(extra)
        .output()
        .expect("run etcdbrctl restore");
    assert!(out.status.success(), "{what}: restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let restored = Etcd::start_on(EtcdVersion::V3_5, &data_dir, "n1", peer, free_port());
    assert_eq!(restored.revision(), rev, "{what}: restored revision");
    assert_eq!(restored.hashkv(rev).0, source.hashkv(rev).0, "{what}: hashkv of the restored member");
    assert_eq!(restored.get_all(rev).0, source.get_all(rev).0, "{what}: keys");
}

/// zstd(1) -d of one object: the reference implementation's own decoder.
fn zstd_cli_decode(path: &Path) -> Vec<u8> {
    let out = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(path)
        .output()
        .expect("zstd(1) is missing: run scripts/install-test-deps.sh (Debian package zstd)");
    assert!(out.status.success(), "zstd -d {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn zstd_snapshots_of_etcd_3_5_restore_verify_compact_and_copy_bit_exact() {
    let source = source_etcd();
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("backups");
    let store = local(&container, "etcd-main");
    snapshot_while_writing(&source, &store, &["--compression-policy", "zstd"]);

    // Every object is a `.zst` (the last delta `.zst` too), and zstd(1) reads each: the full
    // snapshot is etcd's db with its sha256 trailer, the deltas JSON with theirs.
    let v2 = container.join("etcd-main/v2");
    let stored = names(&v2);
    assert!(stored.iter().all(|n| n.ends_with(".zst")), "{stored:?}");
    let full = stored.iter().find(|n| n.starts_with("Full-")).expect("a full snapshot");
    assert!(stored.iter().filter(|n| n.starts_with("Incr-")).count() >= 1, "{stored:?}");
    let db = zstd_cli_decode(&v2.join(full));
    let (body, trailer) = db.split_at(db.len() - 32);
    assert_eq!(<sha2::Sha256 as sha2::Digest>::digest(body).as_slice(), trailer, "the full's sha256 trailer");
    let db_path = tmp.path().join("full.db");
    std::fs::write(&db_path, &db).unwrap();
    let check = etcdbrctl().args(["db", "check", db_path.to_str().unwrap()]).output().unwrap();
    assert!(check.status.success(), "db check of zstd -d's output: {}", String::from_utf8_lossy(&check.stdout));
    for delta in stored.iter().filter(|n| n.starts_with("Incr-")) {
        let json = zstd_cli_decode(&v2.join(delta));
        assert!(json.starts_with(b"["), "{delta}: the delta's JSON");
    }

    restore_and_compare(&store, &[], &source, "zstd chain");

    // verify: every object fetched and decoded, rebuilt, compared with etcd's HashKV.
    let out = etcdbrctl()
        .args(["verify", "--endpoints", &source.endpoint(), "--temp-dir", tmp.path().join("verify").to_str().unwrap()])
        .args(&store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("BIT-EXACT"),
        "verify: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // status: the chain of `.zst` objects, continuous, no lag.
    let out =
        etcdbrctl().args(["status", "--endpoints", &source.endpoint(), "-w", "json"]).args(&store).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "status: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(full.as_str()), "status names the full snapshot: {stdout}");

    // copy to another prefix: the same names, the copy restores.
    let copied = local(&container, "copied");
    let out = etcdbrctl()
        .arg("copy")
        .args(&copied)
        .args(["--source-store-container", container.to_str().unwrap(), "--source-store-prefix", "etcd-main"])
        .output()
        .unwrap();
    assert!(out.status.success(), "copy: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(names(&container.join("copied/v2")), stored);
    restore_and_compare(&copied, &[], &source, "copied zstd chain");

    // compact folds the chain into a new full snapshot, compressed as the newest object: zstd.
    let out = etcdbrctl()
        .args(["compact", "--data-dir", tmp.path().join("work").to_str().unwrap()])
        .args(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "compact: {}", String::from_utf8_lossy(&out.stderr));
    let after = names(&v2);
    let newest_full =
        after.iter().filter(|n| n.starts_with("Full-")).max_by_key(|n| n.split('-').nth(2).map(str::to_owned));
    let newest_full = newest_full.unwrap();
    assert!(newest_full != full && newest_full.ends_with(".zst"), "compacted full: {after:?}");
    restore_and_compare(&store, &[], &source, "compacted zstd chain");
}

#[test]
fn encrypted_zstd_objects_are_zst_age_and_restore_bit_exact() {
    let source = source_etcd();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("backup.key");
    std::fs::write(&key, Keys::generate().to_file_text()).unwrap();
    let container = tmp.path().join("backups");
    let store = local(&container, "etcd-main");
    let key_flag = ["--encryption-key-file", key.to_str().unwrap()];
    snapshot_while_writing(&source, &store, &[&["--compression-policy", "zstd"][..], &key_flag[..]].concat());
    let stored = names(&container.join("etcd-main/v2"));
    assert!(stored.iter().any(|n| n.starts_with("Full-")), "{stored:?}");
    assert!(stored.iter().all(|n| n.ends_with(".zst.age")), "{stored:?}");
    restore_and_compare(&store, &key_flag, &source, "encrypted zstd chain");
}

/// A store that holds the Go tool's gzip full snapshot and etcdbr's zstd deltas after it (a
/// snapshotter switched to zstd): one chain, restored whole.
#[test]
fn a_gzip_full_followed_by_zstd_deltas_restores_as_one_chain() {
    let source = source_etcd();
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("backups");
    let store = local(&container, "etcd-main");
    snapshot_while_writing(&source, &store, &[]);
    let first = names(&container.join("etcd-main/v2"));
    assert!(first.iter().all(|n| n.ends_with(".gz")), "{first:?}");
    // The second run (nothing written in between) starts with a zstd full snapshot at the
    // revision the gzip chain ends at; without it, its zstd deltas continue the gzip chain.
    snapshot_while_writing(&source, &store, &["--compression-policy", "zstd"]);
    let v2 = container.join("etcd-main/v2");
    for name in names(&v2) {
        if name.starts_with("Full-") && name.ends_with(".zst") {
            std::fs::remove_file(v2.join(&name)).unwrap();
        }
    }
    let chain = names(&v2);
    assert!(chain.iter().any(|n| n.starts_with("Incr-") && n.ends_with(".zst")), "{chain:?}");
    assert!(chain.iter().any(|n| n.starts_with("Full-") && n.ends_with(".gz")), "{chain:?}");
    restore_and_compare(&store, &[], &source, "gzip full + zstd deltas");
}

fn refused(argv: &[&str]) -> Output {
    let out = etcdbrctl().args(argv).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{argv:?}: {stderr}");
    assert!(stderr.contains("--compression-policy"), "{argv:?}: names the flag: {stderr}");
    for word in ["gzip", "lzw", "zlib", "zstd"] {
        assert!(stderr.contains(word), "{argv:?}: lists {word}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

#[test]
fn an_unknown_policy_word_is_a_usage_error_naming_the_words() {
    let tmp = tempfile::tempdir().unwrap();
    let store = local(&tmp.path().join("backups"), "p");
    let store: Vec<&str> = store.iter().map(String::as_str).collect();
    for word in ["zst", "ZSTD", "bzip2"] {
        refused(&[&["snapshot", "--compression-policy", word][..], &store].concat());
        let data = tmp.path().join("work");
        refused(
            &[&["compact", "--data-dir", data.to_str().unwrap(), "--compression-policy", word][..], &store].concat(),
        );
    }
    assert!(!tmp.path().join("backups").exists(), "a refused command created the store");
    // The help says what zstd costs: the Go tool cannot read it.
    let help = etcdbrctl().args(["snapshot", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let zstd = help.split("--compression-policy").nth(1).unwrap_or_default();
    assert!(zstd.contains("zstd") && zstd.contains("Go etcdbrctl"), "{help}");
}
