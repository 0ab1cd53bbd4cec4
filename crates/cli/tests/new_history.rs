//! One history, never two: the scenario against real etcd 3.4 and 3.5, twice in a row.
//!
//! An etcd is backed up by `etcdbrctl snapshot`; `etcdbrctl restore --to-revision` goes back in
//! time; etcd boots on the result and `etcdbrctl snapshot` resumes into the same store prefix
//! while new writes arrive. Then a plain restore (latest) must give exactly the live etcd's keys,
//! values and hashkv, a restore to a revision inside the new history the live etcd's hashkv at
//! that revision, and `initialize` must leave the live data dir alone. The whole branch is done
//! twice (two histories on top of the first), with the default bump past the store's newest
//! revision, and once more with `--keep-revision`, where the histories are told apart by the
//! objects' names.
//!
//! After each branch the store is also read the way the Go etcdbrctl reads it
//! (`GetLatestFullSnapshotAndDeltaSnapList`, pkg/miscellaneous/miscellaneous.go in v0.43.0 and
//! v0.28.4: the newest full snapshot by last revision and every delta sorted after it): with the
//! bump, that is exactly the chain we restore, the newest history.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use brcore::chain::{Chain, Target};
use brcore::name::{Snapshot, SnapshotKind, parse_listing};
use brcore::store::ObjectMeta;
use common::etcdbrctl;
use serde_json::Value;
use testsupport::{Etcd, EtcdVersion, free_port};

const PREFIX: &str = "etcd-main";

fn store_flags(container: &Path) -> Vec<String> {
    ["--storage-provider", "Local", "--store-prefix", PREFIX, "--store-container"]
        .iter()
        .map(|s| s.to_string())
        .chain([container.display().to_string()])
        .collect()
}

struct Snapshotter {
    child: Child,
    log: PathBuf,
}

impl Snapshotter {
    fn start(etcd: &Etcd, container: &Path, log: PathBuf) -> Snapshotter {
        let file = std::fs::File::create(&log).unwrap();
        let child = etcdbrctl()
            .args(["snapshot", "--endpoints", &etcd.endpoint(), "--schedule", "0 0 1 1 *"])
            .args(["--delta-snapshot-period", "1s", "--garbage-collection-period", "0s"])
            .args(store_flags(container))
            .arg("--snapstore-temp-directory")
            .arg(container.parent().unwrap())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start etcdbrctl snapshot");
        Snapshotter { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for the final delta and the exit.
    fn stop(mut self) -> String {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "etcdbrctl snapshot failed: {}", self.log());
                return self.log();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("etcdbrctl snapshot did not stop: {}", self.log());
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The snapshots under the prefix, in the reference's order.
fn snapshots(container: &Path) -> Vec<Snapshot> {
    let dir = container.join(PREFIX).join("v2");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let keys: Vec<(String, u64)> = entries
        .map(|e| e.unwrap())
        .map(|e| (format!("{PREFIX}/v2/{}", e.file_name().to_string_lossy()), e.metadata().unwrap().len()))
        .collect();
    parse_listing(keys.iter().map(|(k, s)| (k.as_str(), *s))).0
}

/// Waits until the store holds `rev` (an object whose last revision is at least it) and, when
/// `full_at_least` is given, a full snapshot at or above that revision.
fn wait_for_store(container: &Path, rev: i64, full_at_least: Option<i64>, snapshotter: &Snapshotter) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snaps = snapshots(container);
        let reached = snaps.iter().any(|s| s.name.last_revision as i64 >= rev);
        let full = full_at_least.is_none_or(|f| {
            snaps.iter().any(|s| s.name.kind == SnapshotKind::Full && s.name.last_revision as i64 >= f)
        });
        if reached && full {
            return;
        }
        assert!(Instant::now() < deadline, "the store never reached revision {rev}: {}", snapshotter.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn put_many(etcd: &Etcd, prefix: &str, n: usize) {
    for i in 0..n {
        etcd.etcdctl(&["put", &format!("{prefix}{i:03}"), &format!("value {i} of {prefix}")]);
        if i % 20 == 19 {
            // Several deltas, not one.
            std::thread::sleep(Duration::from_millis(1100));
        }
    }
}

fn expect_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `etcdbrctl restore` of the store into `data_dir` for member n1 on `peer`.
fn restore(container: &Path, data_dir: &Path, peer: u16, extra: &[&str]) -> String {
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = etcdbrctl()
        .arg("restore")
        .args(store_flags(container))
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--name", "n1", "--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls"])
        .arg(&peer_url)
        .args(extra)
        .output()
        .unwrap();
    expect_ok(&out, &format!("restore {extra:?}"))
}

/// The chain this tool restores as latest, and the one the Go tool would select.
fn chains(container: &Path) -> (Chain, (String, Vec<String>)) {
    let snaps = snapshots(container);
    let listing: Vec<ObjectMeta> = snaps.iter().map(|s| ObjectMeta { key: s.key.clone(), size: s.size }).collect();
    let ours = Chain::select(&listing, PREFIX, Target::Latest).unwrap();
    // GetLatestFullSnapshotAndDeltaSnapList: from the end of the sorted list, deltas until the
    // first full snapshot (chunks skipped), then the deltas sorted again.
    let mut deltas = Vec::new();
    let mut full = String::new();
    for s in snaps.iter().rev().filter(|s| !s.is_chunk) {
        if s.name.kind == SnapshotKind::Full {
            full = s.key.clone();
            break;
        }
        deltas.push(s.key.clone());
    }
    deltas.reverse();
    (ours, (full, deltas))
}

/// One run of the scenario: the etcd version, the scratch dir, the store and whether restores
/// keep their revision.
struct Scenario<'a> {
    version: EtcdVersion,
    tmp: &'a Path,
    container: &'a Path,
    keep_revision: bool,
}

/// One branch: back in time to `target` (whose keys are `expected`), boot, back up, write.
/// Returns the live etcd, its data dir and peer port.
fn branch(sc: &Scenario, round: usize, target: i64, expected: &[Value]) -> (Etcd, PathBuf, u16) {
    let Scenario { version, tmp, container, keep_revision } = *sc;
    let store_revision = snapshots(container).iter().map(|s| s.name.last_revision as i64).max().unwrap();
    let data = tmp.join(format!("live-{round}"));
    let peer = free_port();
    let mut extra = vec!["--to-revision".to_string(), target.to_string()];
    if keep_revision {
        extra.push("--keep-revision".into());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let summary = restore(container, &data, peer, &extra);
    let live = Etcd::start_on(version, &data, "n1", peer, free_port());
    let start_rev = live.revision();
    if keep_revision {
        assert_eq!(start_rev, target, "{summary}");
    } else {
        assert!(summary.contains("begins a new history"), "{summary}");
        assert_eq!(start_rev, store_revision + brcore::rebuild::DEFAULT_BUMP_MARGIN, "{summary}");
    }
    let (kvs, _) = live.get_all(0);
    assert_eq!(kvs, expected, "round {round}: the restored etcd serves the state at revision {target}");

    let snapshotter = Snapshotter::start(&live, container, tmp.join(format!("snapshot-{round}.log")));
    wait_for_store(container, start_rev, Some(start_rev), &snapshotter);
    // New keys, overwrites and deletes in the new history.
    put_many(&live, &format!("/round{round}/new/"), 60);
    for i in 0..5 {
        live.etcdctl(&["put", &format!("/k/{i:03}"), &format!("overwritten in round {round}")]);
    }
    live.etcdctl(&["del", "/k/010"]);
    let live_rev = live.revision();
    wait_for_store(container, live_rev, None, &snapshotter);
    let log = snapshotter.stop();
    if keep_revision {
        assert!(log.contains("a new history begins"), "the snapshotter says a new history begins: {log}");
    }
    (live, data, peer)
}

/// The checks after a branch: latest, a revision inside the new history, initialize, and what
/// the Go tool would select.
fn judge(sc: &Scenario, round: usize, live: &mut Etcd, data: &Path, peer: u16) {
    let Scenario { version, tmp, container, keep_revision } = *sc;
    let live_rev = live.revision();
    let (live_kvs, _) = live.get_all(0);
    let live_hash = live.hashkv(live_rev).0;

    let (ours, (go_full, go_deltas)) = chains(container);
    assert!(ours.abandoned.iter().all(|(s, _)| !ours.deltas.contains(s)));
    if !keep_revision {
        // One increasing sequence: the Go tool selects exactly our newest history.
        assert_eq!(ours.histories, 1);
        assert_eq!(go_full, ours.full.key, "the Go tool's full snapshot");
        let ours_deltas: Vec<String> = ours.deltas.iter().map(|d| d.key.clone()).collect();
        assert_eq!(go_deltas, ours_deltas, "the Go tool's deltas");
    } else {
        assert_eq!(ours.histories, round + 1, "one more history per branch");
        assert!(!ours.abandoned.is_empty(), "the abandoned objects are named");
    }

    // restore (latest) = the live etcd.
    let restored_dir = tmp.join(format!("latest-{round}"));
    let p = free_port();
    let summary = restore(container, &restored_dir, p, &[]);
    if keep_revision {
        for (s, _) in &ours.abandoned {
            assert!(summary.contains(&format!("left out {}", s.key)), "{summary}");
        }
    }
    {
        let restored = Etcd::start_on(version, &restored_dir, "n1", p, free_port());
        assert_eq!(restored.revision(), live_rev, "round {round}: {summary}");
        assert_eq!(restored.get_all(0).0, live_kvs, "round {round}: keys and values");
        assert_eq!(restored.hashkv(live_rev).0, live_hash, "round {round}: hashkv");
    }

    // compact folds the newest history (and nothing of an abandoned one) into a full snapshot,
    // which restores to the live etcd too.
    let out = etcdbrctl()
        .arg("compact")
        .args(store_flags(container))
        .arg("--data-dir")
        .arg(tmp.join(format!("compact-{round}")))
        .output()
        .unwrap();
    let stdout = expect_ok(&out, "compact");
    assert!(stdout.contains(&format!("compacted {} objects", ours.deltas.len() + 1)), "{stdout}");
    let compacted_dir = tmp.join(format!("compacted-{round}"));
    let p = free_port();
    restore(container, &compacted_dir, p, &[]);
    {
        let restored = Etcd::start_on(version, &compacted_dir, "n1", p, free_port());
        assert_eq!(restored.get_all(0).0, live_kvs, "round {round}: restored from the compacted snapshot");
        assert_eq!(restored.hashkv(live_rev).0, live_hash, "round {round}: hashkv after compact");
    }

    // --to-revision inside the new history = the live etcd at that revision.
    let first_full = ours.full.name.last_revision as i64;
    let mid = first_full + 30;
    assert!(mid < live_rev);
    let mid_dir = tmp.join(format!("mid-{round}"));
    let p = free_port();
    restore(container, &mid_dir, p, &["--to-revision", &mid.to_string(), "--keep-revision"]);
    {
        let restored = Etcd::start_on(version, &mid_dir, "n1", p, free_port());
        assert_eq!(restored.revision(), mid);
        assert_eq!(restored.hashkv(mid).0, live.hashkv(mid).0, "round {round}: hashkv at {mid}");
    }

    // initialize (the sidecar's start) on the live data dir leaves it alone.
    live.stop();
    let before = common::files(&data.join("member"));
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = etcdbrctl()
        .arg("initialize")
        .args(store_flags(container))
        .arg("--data-dir")
        .arg(data)
        .args(["--name", "n1", "--initial-cluster", &format!("n1={peer_url}"), "--initial-advertise-peer-urls"])
        .arg(&peer_url)
        .output()
        .unwrap();
    let stdout = expect_ok(&out, "initialize");
    assert!(stdout.contains("data dir kept as it is"), "{stdout}");
    assert_eq!(common::files(&data.join("member")), before, "initialize changed the live data dir");
    *live = Etcd::start_on(version, data, "n1", peer, free_port());
    assert_eq!(live.revision(), live_rev);
}

fn scenario(version: EtcdVersion, keep_revision: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let container = tmp.path().join("store");

    // History 0: an etcd backed up while it is written to.
    let source = Etcd::start(version);
    put_many(&source, "/k/", 20);
    let snapshotter = Snapshotter::start(&source, &container, tmp.path().join("snapshot-0.log"));
    wait_for_store(&container, source.revision(), Some(source.revision()), &snapshotter);
    put_many(&source, "/k/", 100);
    for i in 0..20 {
        source.etcdctl(&["del", &format!("/k/{:03}", 40 + i)]);
    }
    let source_rev = source.revision();
    wait_for_store(&container, source_rev, None, &snapshotter);
    snapshotter.stop();
    let target = 80;
    let expected = source.get_all(target).0;
    drop(source);

    // Back in time, twice: the second branch leaves the first's new history.
    let sc = Scenario { version, tmp: tmp.path(), container: &container, keep_revision };
    let (mut live, data, peer) = branch(&sc, 1, target, &expected);
    judge(&sc, 1, &mut live, &data, peer);
    let target = live.revision() - 40;
    let expected = live.get_all(target).0;
    drop(live);
    let (mut live, data, peer) = branch(&sc, 2, target, &expected);
    judge(&sc, 2, &mut live, &data, peer);
}

#[test]
fn point_in_time_restores_begin_new_histories_on_etcd_34() {
    scenario(EtcdVersion::V3_4, false);
}

#[test]
fn point_in_time_restores_begin_new_histories_on_etcd_35() {
    scenario(EtcdVersion::V3_5, false);
}

#[test]
fn without_the_bump_the_histories_are_told_apart_by_name() {
    scenario(EtcdVersion::V3_5, true);
}
