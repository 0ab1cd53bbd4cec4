//! `etcdbrctl snapshot` killed with SIGKILL while its first full snapshot is being written to
//! the Local store: no object under a snapshot name is incomplete (every `Full-*`/`Incr-*`
//! decompresses and its sha256 trailer is right), the next start carries on, and a restore from
//! the store gives etcd the source's data (equal `hashkv`). Also: a brand-new, empty etcd gets
//! exactly one full snapshot, named after etcd's revision 1.
//!
//! Real components: etcd 3.5, the `etcdbrctl` binary, the Local store on disk, `etcdbrctl
//! restore`, and etcd booted on the restored data dir.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use brcore::name::{SnapshotKind, SnapshotName};
use common::etcdbrctl;
use etcd_format::snapshot_file::{Sha256Trailer, TrailerStatus};
use testsupport::{Etcd, EtcdVersion, free_port};

/// The Local store's staging directory for atomic writes (`snapstore::LOCAL_TEMP_DIR`).
const STAGING: &str = ".etcdbr-tmp";
const PREFIX: &str = "etcd-main";

/// `etcdbrctl snapshot` against `endpoint` into the Local store at `container`; its log goes to
/// `log` (a file, so a long run cannot block on a full pipe).
fn start_snapshotter(endpoint: &str, container: &Path, temp: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("create log");
    etcdbrctl()
        .args(["snapshot", "--endpoints", endpoint, "--schedule", "0 0 1 1 *", "--delta-snapshot-period", "1s"])
        .args(["--garbage-collection-period", "1m", "--storage-provider", "Local", "--store-prefix", PREFIX])
        .arg("--store-container")
        .arg(container)
        .arg("--snapstore-temp-directory")
        .arg(temp)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcdbrctl snapshot")
}

fn wait_exit(child: &mut Child, limit: Duration, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("etcdbrctl did not exit within {limit:?}: {}", std::fs::read_to_string(log).unwrap_or_default());
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// Every object under `<container>/<prefix>/v2/` with a snapshot name, parsed.
fn snapshot_objects(container: &Path) -> Vec<(PathBuf, SnapshotName)> {
    let dir = container.join(PREFIX).join("v2");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.expect("read dir entry");
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(name) = SnapshotName::parse(&file_name) {
            out.push((entry.path(), name));
        }
    }
    out.sort_by_key(|(_, n)| (n.start_revision, n.last_revision, n.kind == SnapshotKind::Incr));
    out
}

/// Whether the staging directory holds a file being written.
fn staging_busy(container: &Path) -> bool {
    std::fs::read_dir(container.join(STAGING)).is_ok_and(|mut d| d.next().is_some())
}

/// Decompresses one object and checks its sha256 trailer: a full snapshot's over the db, a
/// delta's over its JSON (and the JSON decodes).
fn check_object(path: &Path, name: &SnapshotName) {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).expect("open object");
    let mut reader = brcore::compress::decoder(name.compression, file);
    match name.kind {
        SnapshotKind::Full => {
            let mut trailer = Sha256Trailer::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = reader.read(&mut buf).unwrap_or_else(|e| panic!("{what} does not decompress: {e}"));
                if n == 0 {
                    break;
                }
                trailer.update(&buf[..n]);
            }
            let status = trailer.finish(&what).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(status, TrailerStatus::Verified, "{what}: a full snapshot must end in etcd's sha256 trailer");
        }
        SnapshotKind::Incr => {
            let events = brcore::delta::read_events(reader, &what).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(!events.is_empty(), "{what}: a stored delta holds events");
        }
    }
}

/// A value of `len` printable bytes that gzip cannot shrink much (xorshift over 62 symbols).
fn noisy_value(seed: u64, len: usize) -> String {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    testsupport::XorShift::seeded(seed).text(len, SYMBOLS)
}

/// Restores the store into a new data dir, boots etcd on it and compares it with `source`.
fn restore_and_compare(container: &Path, source: &Etcd, rev: i64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("restored");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out: Output = etcdbrctl()
        .args(["restore", "--data-dir", data_dir.to_str().expect("utf-8 path"), "--name", "n1"])
        .args(["--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls", &peer_url])
        .args(["--storage-provider", "Local", "--store-prefix", PREFIX])
        .arg("--store-container")
        .arg(container)
        .output()
        .expect("run etcdbrctl restore");
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    let restored = Etcd::start_on(EtcdVersion::V3_5, &data_dir, "n1", peer, free_port());
    assert_eq!(restored.revision(), rev, "restored revision");
    assert_eq!(restored.hashkv(rev).0, source.hashkv(rev).0, "hashkv of the restored member");
}

#[test]
fn sigkill_during_the_first_full_upload_leaves_no_partial_object_and_the_next_start_carries_on() {
    let source = Etcd::start(EtcdVersion::V3_5);
    // About 80 MiB of values that do not compress well, so the full snapshot takes a moment.
    for i in 0..80u64 {
        source.etcdctl_stdin(&["put", &format!("/big/{i:03}")], &noisy_value(i, 1 << 20));
    }
    for i in 0..20 {
        source.etcdctl(&["put", &format!("/app/k{i}"), &format!("v{i}")]);
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("snapshot.log");
    let spool = tmp.path().join("spool");
    std::fs::create_dir_all(&spool).expect("create spool dir");
    // The upload is a short window of a slower stream; a busy machine may let one slip by, so a
    // few attempts (each with a fresh store) may be needed to kill exactly inside it.
    let mut caught = None;
    for attempt in 0..4 {
        let container = tmp.path().join(format!("backups-{attempt}"));
        std::fs::create_dir_all(&container).expect("create container");
        let mut child = start_snapshotter(&source.endpoint(), &container, &spool, &log);
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut killed = false;
        while Instant::now() < deadline {
            if staging_busy(&container) {
                child.kill().expect("SIGKILL etcdbrctl");
                killed = true;
                break;
            }
            if !snapshot_objects(&container).is_empty() {
                break; // the upload finished between two looks
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("etcdbrctl exited early ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
        if killed {
            eprintln!("killed inside the upload on attempt {}", attempt + 1);
            caught = Some(container);
            break;
        }
    }
    let container = caught.expect("etcdbrctl was never caught while writing its first full snapshot");

    // The write in flight is only in the staging directory; nothing incomplete has a snapshot name.
    for (path, name) in snapshot_objects(&container) {
        check_object(&path, &name);
    }
    assert!(
        snapshot_objects(&container).iter().all(|(_, n)| n.kind != SnapshotKind::Full),
        "the killed full snapshot must not be visible"
    );

    // The next start takes its full snapshot and carries on with deltas.
    let mut child = start_snapshotter(&source.endpoint(), &container, &spool, &log);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !snapshot_objects(&container).iter().any(|(_, n)| n.kind == SnapshotKind::Full) {
        assert!(Instant::now() < deadline, "no full snapshot after the restart");
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("etcdbrctl exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 0..10 {
        source.etcdctl(&["put", &format!("/app/k{i}"), &format!("after-{i}")]);
    }
    source.etcdctl(&["del", "--prefix", "/app/k1"]);
    source.etcdctl_stdin(&["put", "/big/after"], &noisy_value(999, 64 * 1024));
    std::thread::sleep(Duration::from_millis(1500));
    let rev = source.revision();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(60), &log);
    assert!(status.success(), "etcdbrctl snapshot failed: {}", std::fs::read_to_string(&log).unwrap_or_default());

    let objects = snapshot_objects(&container);
    let fulls = objects.iter().filter(|(_, n)| n.kind == SnapshotKind::Full).count();
    assert_eq!(fulls, 1, "one full snapshot after the restart: {objects:?}");
    assert!(objects.iter().any(|(_, n)| n.kind == SnapshotKind::Incr), "deltas after the restart: {objects:?}");
    assert_eq!(
        objects.iter().map(|(_, n)| n.last_revision).max(),
        Some(rev as u64),
        "the chain reaches etcd's revision"
    );
    for (path, name) in &objects {
        check_object(path, name);
    }
    restore_and_compare(&container, &source, rev);
}

#[test]
fn a_brand_new_etcd_gets_one_full_snapshot_at_revision_1() {
    let source = Etcd::start(EtcdVersion::V3_5);
    assert_eq!(source.revision(), 1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let container = tmp.path().join("backups");
    let log = tmp.path().join("snapshot.log");
    let mut child = start_snapshotter(&source.endpoint(), &container, tmp.path(), &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot_objects(&container).iter().any(|(_, n)| n.kind == SnapshotKind::Full) {
        assert!(Instant::now() < deadline, "no full snapshot: {}", std::fs::read_to_string(&log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Give a repeated snapshot (the bug this guards against) time to appear, then write.
    std::thread::sleep(Duration::from_millis(2500));
    source.etcdctl(&["put", "/first", "1"]);
    std::thread::sleep(Duration::from_millis(1500));
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(60), &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "etcdbrctl snapshot failed: {text}");
    let objects = snapshot_objects(&container);
    let fulls: Vec<_> = objects.iter().filter(|(_, n)| n.kind == SnapshotKind::Full).collect();
    assert_eq!(fulls.len(), 1, "one full snapshot of an empty etcd: {objects:?}\n{text}");
    assert_eq!(fulls[0].1.last_revision, 1, "an empty etcd is at revision 1");
    assert!(!text.contains("predates the watch position"), "{text}");
    // Repeats would reuse the same name within a second, so count them in the log too.
    assert_eq!(text.matches("full snapshot stored").count(), 1, "{text}");
    for (path, name) in &objects {
        check_object(path, name);
    }
    restore_and_compare(&container, &source, 2);
}
