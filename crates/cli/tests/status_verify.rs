//! `etcdbrctl status` and `etcdbrctl verify` against real etcd (3.4 and 3.5) with
//! `etcdbrctl snapshot` running into a Local store: the lag behind etcd, the exit codes that
//! monitoring reads, and backups proven bit-exact against the live cluster without a restore.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::etcdbrctl;
use testsupport::{Etcd, EtcdVersion};

const PREFIX: &str = "etcd-main";

/// `etcdbrctl snapshot` with deltas every second; killed on drop.
struct Snapshotter {
    child: Option<Child>,
    log: PathBuf,
}

impl Snapshotter {
    fn start(etcd: &Etcd, store: &Path, work: &Path) -> Snapshotter {
        let log = work.join("snapshotter.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = etcdbrctl()
            .args(["snapshot", "--endpoints", &etcd.endpoint(), "--schedule", "0 0 1 1 *"])
            .args(["--delta-snapshot-period", "1s", "--garbage-collection-period", "0s"])
            .args(["--storage-provider", "Local", "--store-prefix", PREFIX, "--store-container"])
            .arg(store)
            .arg("--snapstore-temp-directory")
            .arg(work.join("snap-tmp"))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start etcdbrctl snapshot");
        Snapshotter { child: Some(child), log }
    }

    /// SIGTERM, then wait: the snapshotter stores its buffered events as a last delta.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                assert!(
                    s.success(),
                    "snapshotter exit {s}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return;
            }
            assert!(Instant::now() < deadline, "the snapshotter did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn store_flags(store: &Path) -> Vec<String> {
    vec![
        "--storage-provider".into(),
        "Local".into(),
        "--store-container".into(),
        store.display().to_string(),
        "--store-prefix".into(),
        PREFIX.into(),
    ]
}

fn run(args: &[String]) -> Output {
    etcdbrctl().args(args).output().expect("run etcdbrctl")
}

fn text(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `status -w json` with `extra` flags: (exit code, the JSON).
fn status(store: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["status".to_string(), "-w".into(), "json".into()];
    args.extend(store_flags(store));
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}\n{}", text(&out)));
    (out.status.code().expect("exit code"), json)
}

fn put_keys(etcd: &Etcd, tag: &str, n: usize) {
    for i in 0..n {
        etcd.etcdctl(&["put", &format!("/{tag}/{i:03}"), &format!("value of {tag} {i}")]);
    }
}

/// Waits until the store's chain reaches etcd's current revision.
fn wait_backed_up(etcd: &Etcd, store: &Path, snapshotter: &Snapshotter) -> serde_json::Value {
    let endpoint = etcd.endpoint();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, json) = status(store, &["--endpoints", &endpoint]);
        if code == 0 && json["lag"]["revisions"] == 0 {
            return json;
        }
        assert!(
            Instant::now() < deadline,
            "the backups never caught up: {json:#}\n{}",
            std::fs::read_to_string(&snapshotter.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn delta_files(store: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(store.join(PREFIX).join("v2"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("Incr-"))
        .collect();
    v.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        name.split('-').nth(2).and_then(|r| r.parse::<u64>().ok()).unwrap_or(0)
    });
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn status_reports_lag_and_exit_codes_etcd_3_4() {
    status_reports_lag_and_exit_codes(EtcdVersion::V3_4);
}

#[test]
fn status_reports_lag_and_exit_codes_etcd_3_5() {
    status_reports_lag_and_exit_codes(EtcdVersion::V3_5);
}

fn status_reports_lag_and_exit_codes(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let etcd = Etcd::start(version);
    let endpoint = etcd.endpoint();
    put_keys(&etcd, "a", 20);

    // Nothing stored yet: exit 5.
    let (code, json) = status(&store, &[]);
    assert_eq!((code, json["verdict"].as_str()), (5, Some("no-backup")), "{json:#}");

    let mut snapshotter = Snapshotter::start(&etcd, &store, tmp.path());
    wait_backed_up(&etcd, &store, &snapshotter);
    // Three more rounds, more than a delta period apart: a chain of several deltas.
    for round in 0..3 {
        put_keys(&etcd, &format!("b{round}"), 5);
        wait_backed_up(&etcd, &store, &snapshotter);
    }
    let (code, json) = status(&store, &["--endpoints", &endpoint, "--max-lag", "0"]);
    assert_eq!((code, json["verdict"].as_str()), (0, Some("healthy")), "{json:#}");
    assert!(json["deltaSnapshots"].as_array().unwrap().len() >= 3, "{json:#}");
    assert_eq!(json["lastRevision"].as_i64(), Some(etcd.revision()));
    assert_eq!(json["etcd"]["revision"].as_i64(), Some(etcd.revision()));
    assert_eq!(json["etcd"]["leader"], json["etcd"]["memberId"], "a one-member cluster leads itself");
    assert!(json["etcd"]["dbSize"].as_i64().unwrap() > 0);

    // The snapshotter stops (after its last delta): the lag grows with every write, in
    // revisions and in seconds, and --max-lag turns it into exit 7.
    snapshotter.stop();
    let backed_up = etcd.revision();
    let (code, json) = status(&store, &["--endpoints", &endpoint]);
    assert_eq!((code, json["lag"]["revisions"].as_i64()), (0, Some(0)), "the last delta is stored: {json:#}");
    put_keys(&etcd, "c", 10);
    let (code, first) = status(&store, &["--endpoints", &endpoint]);
    assert_eq!(code, 0, "no --max-lag, no limit: {first:#}");
    assert_eq!(first["lag"]["revisions"].as_i64(), Some(10), "{first:#}");
    assert_eq!(first["lastRevision"].as_i64(), Some(backed_up));
    std::thread::sleep(Duration::from_millis(2100));
    put_keys(&etcd, "d", 5);
    let (code, second) = status(&store, &["--endpoints", &endpoint, "--max-lag", "14"]);
    assert_eq!((code, second["verdict"].as_str()), (7, Some("lag-above-limit")), "{second:#}");
    assert_eq!(second["lag"]["revisions"].as_i64(), Some(15));
    assert!(
        second["lag"]["seconds"].as_i64().unwrap() >= first["lag"]["seconds"].as_i64().unwrap() + 2,
        "the lag in seconds grows: {first:#} then {second:#}"
    );
    let (code, _) = status(&store, &["--endpoints", &endpoint, "--max-lag", "15"]);
    assert_eq!(code, 0, "at the limit is within it");
    let (code, json) = status(&store, &["--endpoints", &endpoint, "--max-lag", "1s"]);
    assert_eq!((code, json["verdict"].as_str()), (7, Some("lag-above-limit")), "{json:#}");
    let (code, json) = status(&store, &["--endpoints", &endpoint, "--max-lag", "1h"]);
    assert_eq!(code, 0, "{json:#}");
    // The human form says the same.
    let mut args = vec!["status".to_string()];
    args.extend(store_flags(&store));
    args.extend(["--endpoints".into(), endpoint.clone(), "--max-lag".into(), "14".into()]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("lag:           15 revisions"), "{stdout}");
    assert!(stdout.contains(&format!("a restore now reaches revision {backed_up}")), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lag etcd by 15 revisions") && stderr.contains("--max-lag 14 revisions"), "{stderr}");

    // etcd that does not answer: exit 6, the store's part still reported.
    let dead = format!("http://127.0.0.1:{}", testsupport::free_port());
    let (code, json) = status(&store, &["--endpoints", &dead, "--etcd-connection-timeout", "2s"]);
    assert_eq!((code, json["verdict"].as_str()), (6, Some("etcd-unreachable")), "{json:#}");
    assert_eq!(json["lastRevision"].as_i64(), Some(backed_up));
    assert!(json["etcdError"].as_str().unwrap().contains(&dead), "{json:#}");

    // A missing delta in the middle: exit 3, the gap named, the part before it shown.
    let broken = tmp.path().join("broken");
    copy_dir(&store, &broken);
    let deltas = delta_files(&broken);
    let middle = &deltas[deltas.len() / 2];
    let gone = middle.file_name().unwrap().to_string_lossy().to_string();
    std::fs::remove_file(middle).unwrap();
    let (code, json) = status(&broken, &["--endpoints", &endpoint]);
    assert_eq!((code, json["verdict"].as_str()), (3, Some("chain-broken")), "{json:#}");
    let from: i64 = gone.split('-').nth(1).unwrap().parse().unwrap();
    assert_eq!(json["gap"]["from"].as_i64(), Some(from), "{json:#}");
    assert_eq!(json["lastRevision"].as_i64(), Some(from - 1), "{json:#}");

    // --max-lag in revisions without etcd cannot be judged: a usage error.
    let mut args = vec!["status".to_string()];
    args.extend(store_flags(&store));
    args.extend(["--max-lag".into(), "5".into()]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// `verify -w json` with `extra` flags: (exit code, the JSON or null, stderr).
fn verify(store: &Path, temp: &Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let mut args =
        vec!["verify".to_string(), "-w".into(), "json".into(), "--temp-dir".into(), temp.display().to_string()];
    args.extend(store_flags(store));
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run(&args);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    // Whatever the result, the rebuilt db is gone.
    let left: Vec<_> = std::fs::read_dir(temp).map(|d| d.map(|e| e.unwrap().path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "verify left {left:?} behind\n{}", text(&out));
    (out.status.code().expect("exit code"), json, String::from_utf8_lossy(&out.stderr).to_string())
}

/// Rewrites the gzipped delta at `path` with `change` applied to its events, as a valid object
/// (its sha256 trailer recomputed): a backup that decodes but does not hold what etcd held.
fn forge_delta(path: &Path, change: impl FnOnce(&mut Vec<brcore::delta::Event>)) {
    use std::io::{Read, Write};
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut raw).unwrap();
    let mut events = brcore::delta::read_events(&raw[..], "forged").unwrap();
    change(&mut events);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&brcore::delta::encode_events(&events)).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

#[test]
fn verify_proves_the_backups_bit_exact_and_finds_what_differs_etcd_3_4() {
    verify_against_live_etcd(EtcdVersion::V3_4);
}

#[test]
fn verify_proves_the_backups_bit_exact_and_finds_what_differs_etcd_3_5() {
    verify_against_live_etcd(EtcdVersion::V3_5);
}

fn verify_against_live_etcd(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let temp = tmp.path().join("verify-tmp");
    std::fs::create_dir_all(&temp).unwrap();
    let etcd = Etcd::start(version);
    let endpoint = etcd.endpoint();
    put_keys(&etcd, "a", 30);
    // Some history inside the deltas: overwrites and deletes.
    let snapshotter = Snapshotter::start(&etcd, &store, tmp.path());
    wait_backed_up(&etcd, &store, &snapshotter);
    for round in 0..4 {
        put_keys(&etcd, &format!("b{round}"), 8);
        put_keys(&etcd, "a", 3);
        etcd.etcdctl(&["del", &format!("/b{round}/000")]);
        wait_backed_up(&etcd, &store, &snapshotter);
    }
    let end = etcd.revision();

    // With the snapshotter running: bit-exact at the chain's end and at the samples.
    let (code, json, stderr) = verify(&store, &temp, &["--endpoints", &endpoint, "--samples", "4"]);
    assert_eq!((code, json["outcome"].as_str()), (0, Some("bit-exact")), "{json:#}\n{stderr}");
    assert_eq!(json["revision"].as_i64(), Some(end));
    let checks = json["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 4, "{json:#}");
    for c in checks {
        assert_eq!(c["result"], "bit-exact", "{json:#}");
        let rev = c["revision"].as_i64().unwrap();
        assert_eq!(c["liveHash"].as_u64(), Some(etcd.hashkv(rev).0 as u64), "etcdctl endpoint hashkv --rev {rev}");
    }
    let end_hash = checks.last().unwrap()["hash"].as_u64().unwrap();
    assert!(json["deltas"].as_array().unwrap().len() >= 4, "{json:#}");
    // The human form.
    let mut args = vec!["verify".to_string(), "--temp-dir".into(), temp.display().to_string()];
    args.extend(store_flags(&store));
    args.extend(["--endpoints".into(), endpoint.clone()]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("result:    BIT-EXACT with etcd at revision {end}")), "{stdout}");
    assert!(stdout.contains("bbolt check clean"), "{stdout}");
    // Without etcd: the offline hash, nothing compared.
    let (code, json, _) = verify(&store, &temp, &[]);
    assert_eq!((code, json["outcome"].as_str()), (0, Some("not-compared")), "{json:#}");
    assert_eq!(json["checks"][0]["hash"].as_u64(), Some(end_hash));
    // A point in time inside the chain.
    let mid = checks[1]["revision"].as_i64().unwrap();
    let (code, json, _) = verify(&store, &temp, &["--endpoints", &endpoint, "--to-revision", &mid.to_string()]);
    assert_eq!(
        (code, json["outcome"].as_str(), json["revision"].as_i64()),
        (0, Some("bit-exact"), Some(mid)),
        "{json:#}"
    );

    // One byte of a delta flipped: exit 3 naming the object.
    let deltas = delta_files(&store);
    let victim = deltas[deltas.len() / 2].clone();
    let victim_key = format!("{PREFIX}/v2/{}", victim.file_name().unwrap().to_string_lossy());
    let flipped = tmp.path().join("flipped");
    copy_dir(&store, &flipped);
    let target = flipped.join(PREFIX).join("v2").join(victim.file_name().unwrap());
    let mut bytes = std::fs::read(&target).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&target, bytes).unwrap();
    let (code, _, stderr) = verify(&flipped, &temp, &["--endpoints", &endpoint]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains(&victim_key) && stderr.contains("corrupt"), "{stderr}");

    // A delta rewritten with one different value and a valid hash: it decodes, the rebuild is
    // clean, and only etcd's HashKV tells: exit 3 naming the revision and the object.
    let forged = tmp.path().join("forged");
    copy_dir(&store, &forged);
    let mut changed = 0;
    forge_delta(&forged.join(PREFIX).join("v2").join(victim.file_name().unwrap()), |events| {
        let e = events.iter_mut().rev().find(|e| e.kind == brcore::delta::EventKind::Put).expect("a put");
        e.value = b"not what etcd holds".to_vec();
        changed = e.mod_revision;
    });
    let (code, json, stderr) = verify(&forged, &temp, &["--endpoints", &endpoint]);
    assert_eq!((code, json["outcome"].as_str()), (3, Some("differs")), "{json:#}\n{stderr}");
    assert_eq!(json["difference"]["revision"].as_i64(), Some(changed), "{json:#}");
    assert_eq!(json["difference"]["object"].as_str(), Some(victim_key.as_str()), "{json:#}");
    assert_eq!(json["difference"]["exact"], true, "{json:#}");
    assert!(
        stderr.contains(&format!("differs from etcd at revision {changed}")) && stderr.contains(&victim_key),
        "{stderr}"
    );
    // Without etcd the forged backup looks fine: only the comparison can tell.
    let (code, _, stderr) = verify(&forged, &temp, &[]);
    assert_eq!(code, 0, "{stderr}");

    // etcd compacts past the chain's end: nothing to compare, the offline hash to keep.
    etcd.etcdctl(&["compact", &end.to_string()]);
    let (code, json, stderr) = verify(&store, &temp, &["--endpoints", &endpoint]);
    assert_eq!((code, json["outcome"].as_str()), (0, Some("cannot-compare")), "{json:#}\n{stderr}");
    assert!(json["checks"][0]["reason"].as_str().unwrap().contains("compacted past"), "{json:#}");
    assert_eq!(json["checks"][0]["hash"].as_u64(), Some(end_hash), "the hash to keep is the restore's");
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cannot compare") && stdout.contains(&format!("keep the hash {end_hash}")), "{stdout}");
    // The kept hash is what a member restored from the chain reports.
    assert_eq!(restored_hashkv(version, &store, tmp.path(), end), end_hash as u32);

    // Writes after the compaction, backed up: compared again, hashed as compacted where etcd is.
    put_keys(&etcd, "e", 5);
    wait_backed_up(&etcd, &store, &snapshotter);
    let (code, json, stderr) = verify(&store, &temp, &["--endpoints", &endpoint]);
    assert_eq!((code, json["outcome"].as_str()), (0, Some("bit-exact")), "{json:#}\n{stderr}");
    assert_eq!(json["checks"][0]["liveCompactRevision"].as_i64(), Some(end), "{json:#}");
}

/// Restores `store` into a fresh data dir, boots etcd on it and returns its hashkv at `revision`.
fn restored_hashkv(version: EtcdVersion, store: &Path, work: &Path, revision: i64) -> u32 {
    // Ports picked here can be taken by someone else before etcd binds them: try again on others.
    for attempt in 1..=3 {
        let data = work.join(format!("restored-{attempt}"));
        let (peer, client) = (testsupport::free_port(), testsupport::free_port());
        let mut args = vec!["restore".to_string(), "--data-dir".into(), data.display().to_string()];
        args.extend(store_flags(store));
        args.extend(["--name".into(), "r".into(), "--initial-cluster".into(), format!("r=http://127.0.0.1:{peer}")]);
        args.extend(["--initial-advertise-peer-urls".into(), format!("http://127.0.0.1:{peer}")]);
        let out = run(&args);
        assert!(out.status.success(), "restore: {}", text(&out));
        match Etcd::try_start_on(version, &data, "r", peer, client, Duration::from_secs(30)) {
            Ok(etcd) => {
                assert_eq!(etcd.revision(), revision, "the restored member's revision");
                return etcd.hashkv(revision).0;
            }
            Err(log) if attempt < 3 && log.contains("address already in use") => continue,
            Err(log) => panic!("the restored data dir does not boot: {log}"),
        }
    }
    unreachable!("three attempts")
}
