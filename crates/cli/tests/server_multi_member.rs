//! `etcdbrctl server` beside each member of a real three-member etcd cluster on loopback,
//! sharing one Local store: only the raft leader's sidecar uploads, followers forward snapshot
//! requests to it, and after `etcdctl move-leader` the new leader's sidecar takes over with no
//! gap and no overlap in the stored chain; restores of the old and the new chain reproduce the
//! cluster's hashkv.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testsupport::{Etcd, EtcdVersion, free_port, http_get};

const DEADLINE: Duration = Duration::from_secs(40);

/// An `etcdbrctl server` process, killed on drop.
struct Sidecar {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    /// Successful uploads by this process: (full, delta), from its `/metrics`.
    fn uploads(&self) -> (u64, u64) {
        let (code, text) = self.get("/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        let count = |kind: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("etcdbr_snapshot_duration_seconds_count{"))
                .filter(|l| l.contains(&format!("kind=\"{kind}\"")) && l.contains("succeeded=\"true\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum()
        };
        (count("Full"), count("Incr"))
    }

    /// A metric's value from this process's `/metrics` (0 when absent).
    fn metric(&self, name: &str) -> f64 {
        let (code, text) = self.get("/metrics").expect("metrics answer");
        assert_eq!(code, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// How often this process's log says `line`.
    fn logged(&self, line: &str) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches(line).count()
    }

    fn healthy(&self) -> bool {
        matches!(self.get("/healthz"), Some((200, _)))
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool, sidecars: &[Sidecar]) {
    let deadline = Instant::now() + DEADLINE;
    while !ok() {
        if Instant::now() > deadline {
            let logs: Vec<String> = sidecars.iter().map(|s| format!("--- :{}\n{}", s.port, s.log_tail())).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (member id, leader id) as `etcdctl endpoint status` reports them.
fn status(etcd: &Etcd) -> (u64, u64) {
    let out = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let s = &v[0]["Status"];
    (s["header"]["member_id"].as_u64().expect("member id"), s["leader"].as_u64().unwrap_or(0))
}

fn leader_index(cluster: &[Etcd]) -> usize {
    let (_, leader) = status(&cluster[0]);
    cluster.iter().position(|e| status(e).0 == leader).expect("the leader is a member")
}

/// A stored snapshot object's name: (is full, start revision, last revision).
fn parse_object(name: &str) -> Option<(bool, u64, u64)> {
    let mut parts = name.split('-');
    let kind = parts.next()?;
    let start = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    match kind {
        "Full" => Some((true, start, last)),
        "Incr" => Some((false, start, last)),
        _ => None,
    }
}

fn objects(store: &Path) -> Vec<(bool, u64, u64, String)> {
    let mut v: Vec<(bool, u64, u64, String)> = std::fs::read_dir(store.join("v2"))
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().to_string_lossy().to_string();
                let (full, start, last) = parse_object(&name)?;
                Some((full, start, last, name))
            })
            .collect()
        })
        .unwrap_or_default();
    // By last revision; a delta before a full snapshot at the same revision.
    v.sort_by_key(|(full, _, last, _)| (*last, *full));
    v
}

fn put_keys(etcd: &Etcd, tag: &str, n: usize) {
    for i in 0..n {
        etcd.etcdctl(&["put", &format!("/{tag}/{i:03}"), &format!("value {tag} {i}")]);
    }
}

/// Restores the store (to `to_revision` if given) into a fresh data dir, boots it and returns
/// its hashkv at `revision`.
fn restored_hashkv(
    version: EtcdVersion,
    store: &Path,
    work: &Path,
    tag: &str,
    to_revision: Option<i64>,
    revision: i64,
) -> u32 {
    // Ports picked here can be taken by someone else before etcd binds them: try again on others.
    let mut attempt = 0;
    let etcd = loop {
        attempt += 1;
        let data = work.join(format!("restored-{tag}-{attempt}"));
        let (peer, client) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
        cmd.args(["restore", "--storage-provider", "Local", "--store-container"])
            .arg(store)
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "r", "--initial-cluster", &format!("r=http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")]);
        if let Some(rev) = to_revision {
            // Exactly that revision (not a new history bumped past the store's newest).
            cmd.args(["--to-revision", &rev.to_string(), "--keep-revision"]);
        }
        let out = cmd.output().expect("run etcdbrctl restore");
        assert!(out.status.success(), "restore {tag} failed: {}", String::from_utf8_lossy(&out.stderr));
        match Etcd::try_start_on(version, &data, "r", peer, client, Duration::from_secs(30)) {
            Ok(etcd) => break etcd,
            Err(log) if attempt < 3 && log.contains("address already in use") => continue,
            Err(log) => panic!("the restored {tag} data dir does not boot: {log}"),
        }
    };
    assert_eq!(etcd.revision(), revision, "restored {tag} is at the expected revision");
    etcd.hashkv(revision).0
}

#[test]
fn only_the_leaders_sidecar_snapshots_and_hands_over_on_a_leader_change_etcd_3_5() {
    leader_only_snapshots_and_hand_over(EtcdVersion::V3_5);
}

#[test]
fn only_the_leaders_sidecar_snapshots_and_hands_over_on_a_leader_change_etcd_3_4() {
    leader_only_snapshots_and_hand_over(EtcdVersion::V3_4);
}

/// A three-member cluster with a sidecar beside each member, all sharing one Local store.
struct Setup {
    // Dropped last: holds the data dirs, the store and the logs.
    tmp: tempfile::TempDir,
    store: PathBuf,
    names: [&'static str; 3],
    cluster: Vec<Etcd>,
    sidecars: Vec<Sidecar>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // Sidecars before their etcds, so none logs a lost etcd at the end.
        self.sidecars.clear();
        self.cluster.clear();
    }
}

fn start(version: EtcdVersion) -> Setup {
    start_with(version, &[])
}

/// [`start`] with `extra` flags for every sidecar.
fn start_with(version: EtcdVersion, extra: &[&str]) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let names = ["m0", "m1", "m2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let members: Vec<(&Path, &str, u16, u16)> =
        (0..3).map(|i| (dirs[i].as_path(), names[i], ports[i].0, ports[i].1)).collect();
    let cluster = Etcd::start_cluster(version, &members);
    // A first write, so the first full snapshot is not of an empty db (whose bbolt holds
    // revision 0 while etcd reports 1: the snapshotter then re-takes it under the same name).
    cluster[0].etcdctl(&["put", "/start", "0"]);

    let sidecar_ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let map: Vec<String> = (0..3).map(|i| format!("{}=http://127.0.0.1:{}", names[i], sidecar_ports[i])).collect();
    let map = map.join(",");
    let sidecars: Vec<Sidecar> = (0..3)
        .map(|i| {
            let log = tmp.path().join(format!("sidecar-{}.log", names[i]));
            let file = std::fs::File::create(&log).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
                .arg("server")
                .args(["-p", &sidecar_ports[i].to_string(), "--endpoints", &cluster[i].endpoint()])
                .args(["--storage-provider", "Local", "--store-container"])
                .arg(&store)
                .arg("--snapstore-temp-directory")
                .arg(tmp.path().join(format!("tmp-{i}")))
                .arg("--data-dir")
                .arg(tmp.path().join(format!("unused-{i}")))
                .args(["--delta-snapshot-period", "1s", "--reelection-period", "1s"])
                .args(["--garbage-collection-period", "0s", "--sidecar-endpoints", &map])
                .args(extra)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("start etcdbrctl server");
            Sidecar { child, port: sidecar_ports[i], log }
        })
        .collect();
    // Every sidecar listens before the test asks for its metrics.
    wait_until("every sidecar to listen", || sidecars.iter().all(|s| s.get("/healthz").is_some()), &sidecars);
    Setup { tmp, store, names, cluster, sidecars }
}

/// Checks that the store holds one continuous history (every delta starts right after the
/// object before it, every full snapshot is at or past it) and returns its last revision.
fn continuous_history(store: &Path) -> u64 {
    let all = objects(store);
    assert!(all.first().is_some_and(|o| o.0), "the history starts with a full snapshot: {all:?}");
    let mut covered = 0;
    for (full, start, last, name) in &all {
        if *full {
            assert!(*last >= covered, "{name} is behind revision {covered} already stored");
        } else {
            assert_eq!(*start, covered + 1, "{name} leaves a gap or overlaps: {all:?}");
        }
        covered = *last;
    }
    covered
}

fn leader_only_snapshots_and_hand_over(version: EtcdVersion) {
    let setup = start(version);
    let (tmp, store, names, cluster, sidecars) =
        (&setup.tmp, &setup.store, setup.names, &setup.cluster, &setup.sidecars);

    // The leader's sidecar starts snapshotting; the others do not.
    let a = leader_index(cluster);
    wait_until("the leader's sidecar to store a full snapshot", || sidecars[a].uploads().0 >= 1, sidecars);
    wait_until("the leader's sidecar to report healthy", || sidecars[a].healthy(), sidecars);
    put_keys(&cluster[a], "first", 15);
    let rev1 = cluster[a].revision();
    wait_until(
        "deltas up to the first writes",
        || objects(store).iter().any(|(full, _, last, _)| !full && *last == rev1 as u64),
        sidecars,
    );
    for (i, s) in sidecars.iter().enumerate() {
        if i != a {
            assert_eq!(s.uploads(), (0, 0), "follower {} uploaded", names[i]);
            assert_eq!(s.get("/healthz").map(|r| r.0), Some(503), "a follower's /healthz is 503");
            // Answered from the shared store by the follower itself.
            let (code, latest) = s.get("/snapshot/latest").unwrap();
            assert_eq!(code, 200);
            assert!(latest.contains(&format!("\"lastRevision\":{rev1},")), "{latest}");
        }
    }

    // Followers forward snapshot requests to the leader's sidecar.
    let f = (a + 1) % 3;
    let before = sidecars[a].uploads();
    let (code, body) = sidecars[f].get("/snapshot/full").unwrap();
    assert_eq!(code, 200, "forwarded full snapshot: {body}");
    assert!(body.contains(&format!("Full-00000000-{rev1:08}-")), "{body}");
    assert_eq!(sidecars[a].uploads().0, before.0 + 1, "the leader's sidecar took the forwarded full snapshot");
    assert_eq!(sidecars[f].uploads(), (0, 0), "the follower only forwarded");
    put_keys(&cluster[a], "second", 5);
    let rev2 = cluster[a].revision();
    // The answer is the leader's delta of what it buffered, or `null` when its period flushed first.
    let (code, body) = sidecars[f].get("/snapshot/delta").unwrap();
    assert_eq!(code, 200, "forwarded delta: {body}");
    assert!(body.trim() == "null" || body.contains("\"kind\":\"Incr\""), "{body}");
    wait_until(
        "deltas up to the second writes",
        || objects(store).iter().any(|(full, _, last, _)| !full && *last == rev2 as u64),
        sidecars,
    );
    assert_eq!(sidecars[f].uploads(), (0, 0), "the follower only forwarded");

    // Move leadership to another member and keep writing through the hand-off.
    let b = (a + 2) % 3;
    let (b_id, _) = status(&cluster[b]);
    cluster[a].etcdctl(&["move-leader", &format!("{b_id:x}")]);
    assert_eq!(leader_index(cluster), b, "etcd moved the leadership");
    put_keys(&cluster[b], "during", 10);
    wait_until("the new leader's sidecar to store a full snapshot", || sidecars[b].uploads().0 >= 1, sidecars);
    wait_until("the old leader's sidecar to stop", || !sidecars[a].healthy(), sidecars);
    let old_final = sidecars[a].uploads();
    put_keys(&cluster[b], "after", 10);
    let rev3 = cluster[b].revision();
    wait_until(
        "the new leader's deltas up to the last writes",
        || objects(store).iter().any(|(full, _, last, _)| !full && *last == rev3 as u64),
        sidecars,
    );
    assert_eq!(sidecars[a].uploads(), old_final, "the old leader's sidecar uploaded after the hand-off");
    assert_eq!(sidecars[f].uploads(), (0, 0), "the member that never led never uploaded");

    // The store holds one continuous history, and each object was uploaded once.
    let all = objects(store);
    let (fa, da) = sidecars[a].uploads();
    let (fb, db) = sidecars[b].uploads();
    assert_eq!(
        all.len() as u64,
        fa + da + fb + db,
        "objects vs. uploads counted by the sidecars ({:?} {:?}): {all:?}\n{}\n{}",
        (fa, da),
        (fb, db),
        sidecars[a].log_tail(),
        sidecars[b].log_tail()
    );
    let covered = continuous_history(store);
    assert_eq!(covered, rev3 as u64);
    // The old leader's chain ends where the new leader's full snapshot begins or before.
    let new_full = all.iter().filter(|o| o.0).map(|o| o.2).max().unwrap();
    let old_last = all.iter().filter(|o| !o.0 && o.2 <= new_full).map(|o| o.2).max().unwrap();
    assert!(old_last >= rev2 as u64 && new_full >= old_last, "old chain ends at {old_last}, new full at {new_full}");

    // Both chains restore to the cluster's state: the old leader's to just before its last
    // revision (below the new leader's full snapshot, so from the old chain only), the new
    // leader's to the end.
    let old = old_last as i64 - 1;
    let expected_old = cluster[b].hashkv(old).0;
    assert_eq!(restored_hashkv(version, store, tmp.path(), "old", Some(old), old), expected_old);
    let expected = cluster[b].hashkv(rev3).0;
    assert_eq!(restored_hashkv(version, store, tmp.path(), "latest", None, rev3), expected);
}

/// The leader's etcd crashes: a surviving member's sidecar takes over once its member leads,
/// the history stays continuous and the latest chain restores to the survivors' state.
#[test]
fn a_crashed_leader_is_replaced_etcd_3_5() {
    let version = EtcdVersion::V3_5;
    let mut setup = start(version);
    let a = leader_index(&setup.cluster);
    let (store, sidecars) = (setup.store.clone(), &setup.sidecars);
    wait_until("the leader's sidecar to store a full snapshot", || sidecars[a].uploads().0 >= 1, sidecars);
    put_keys(&setup.cluster[a], "before", 10);
    let rev1 = setup.cluster[a].revision();
    wait_until(
        "deltas up to the first writes",
        || objects(&store).iter().any(|(full, _, last, _)| !full && *last == rev1 as u64),
        sidecars,
    );

    setup.cluster[a].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != a).collect();
    let mut b = None;
    wait_until(
        "a surviving member to lead",
        || {
            let (_, leader) = status(&setup.cluster[survivors[0]]);
            b = survivors.iter().copied().find(|i| leader != 0 && status(&setup.cluster[*i]).0 == leader);
            b.is_some()
        },
        &setup.sidecars,
    );
    let b = b.unwrap();
    let sidecars = &setup.sidecars;
    wait_until("the new leader's sidecar to store a full snapshot", || sidecars[b].uploads().0 >= 1, sidecars);
    put_keys(&setup.cluster[b], "after", 10);
    let rev2 = setup.cluster[b].revision();
    wait_until(
        "the new leader's deltas up to the last writes",
        || objects(&store).iter().any(|(full, _, last, _)| !full && *last == rev2 as u64),
        sidecars,
    );
    let c = survivors.iter().copied().find(|i| *i != b).unwrap();
    assert_eq!(sidecars[c].uploads(), (0, 0), "the member that never led never uploaded");
    assert!(!sidecars[a].healthy(), "the crashed leader's sidecar stopped snapshotting");
    assert_eq!(continuous_history(&store), rev2 as u64);
    let expected = setup.cluster[b].hashkv(rev2).0;
    assert_eq!(restored_hashkv(version, &store, setup.tmp.path(), "latest", None, rev2), expected);
}

#[test]
fn scheduled_verification_runs_on_the_leader_only_etcd_3_5() {
    verification_on_the_leader_only(EtcdVersion::V3_5);
}

#[test]
fn scheduled_verification_runs_on_the_leader_only_etcd_3_4() {
    verification_on_the_leader_only(EtcdVersion::V3_4);
}

const LAST_SUCCESS: &str = "etcdbr_verification_last_success_timestamp_seconds";
const LAST_REVISION: &str = "etcdbr_verification_last_revision";
const FAILURES: &str = "etcdbr_verification_failures_total";

/// `--verification-period 2s` on every sidecar: only the leader's verifies, on schedule, against
/// its etcd; its metrics, status page and `/snapshot/verify/latest` show the result, which the
/// followers forward; after a leader change the new leader's sidecar takes over.
fn verification_on_the_leader_only(version: EtcdVersion) {
    let setup = start_with(version, &["--verification-period", "2s"]);
    let (cluster, sidecars) = (&setup.cluster, &setup.sidecars);
    let a = leader_index(cluster);
    wait_until("the leader's sidecar to store a full snapshot", || sidecars[a].uploads().0 >= 1, sidecars);
    put_keys(&cluster[a], "v", 20);
    let rev = cluster[a].revision();
    wait_until(
        "a verification of the chain up to the writes",
        || sidecars[a].metric(LAST_REVISION) >= rev as f64,
        sidecars,
    );
    let first = sidecars[a].metric(LAST_SUCCESS);
    assert!(first > 1.7e9, "a unix time: {first}");
    assert_eq!(sidecars[a].metric(FAILURES), 0.0, "{}", sidecars[a].log_tail());

    // What the leader serves: a bit-exact run, compared with etcd's HashKV at its revision.
    let (code, body) = sidecars[a].get("/snapshot/verify/latest").unwrap();
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["succeeded"], true, "{json:#}");
    assert_eq!(json["report"]["outcome"], "bit-exact", "{json:#}");
    let verified = json["report"]["revision"].as_i64().unwrap();
    let live_hash = json["report"]["checks"][0]["liveHash"].as_u64().unwrap();
    assert_eq!(live_hash, cluster[a].hashkv(verified).0 as u64, "etcd's own HashKV at {verified}");
    let (code, page) = sidecars[a].get("/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains(r#"id="verification">bit-exact</span> with etcd at revision"#), "{page}");

    // It keeps running on schedule.
    wait_until("a later verification", || sidecars[a].metric(LAST_SUCCESS) >= first + 2.0, sidecars);

    // The followers never verify; they forward the question to the leader's sidecar.
    for (i, s) in sidecars.iter().enumerate() {
        if i == a {
            continue;
        }
        assert_eq!((s.metric(LAST_SUCCESS), s.metric(FAILURES)), (0.0, 0.0), "follower {i} verified");
        assert_eq!(s.logged("scheduled verification"), 0, "follower {i}: {}", s.log_tail());
        let (code, body) = s.get("/snapshot/verify/latest").unwrap();
        assert_eq!(code, 200, "forwarded: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["report"]["outcome"], "bit-exact", "{json:#}");
        let (_, page) = s.get("/").unwrap();
        assert!(page.contains(r#"id="verification">Runs on the leader's sidecar (m"#), "{page}");
    }
    assert!(sidecars[a].logged("scheduled verification succeeded") >= 2, "{}", sidecars[a].log_tail());

    // Leadership moves: the new leader's sidecar verifies, the old one stops.
    let b = (a + 1) % 3;
    let (b_id, _) = status(&cluster[b]);
    cluster[a].etcdctl(&["move-leader", &format!("{b_id:x}")]);
    assert_eq!(leader_index(cluster), b, "etcd moved the leadership");
    put_keys(&cluster[b], "w", 5);
    let rev = cluster[b].revision();
    wait_until("the new leader's sidecar to verify", || sidecars[b].metric(LAST_REVISION) >= rev as f64, sidecars);
    let old_runs = sidecars[a].logged("scheduled verification");
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(sidecars[a].logged("scheduled verification"), old_runs, "the old leader's sidecar still verifies");
    let c = (a + 2) % 3;
    assert_eq!(sidecars[c].metric(LAST_SUCCESS), 0.0, "the member that never led verified");
    assert_eq!(sidecars[b].metric(FAILURES), 0.0, "{}", sidecars[b].log_tail());
}
