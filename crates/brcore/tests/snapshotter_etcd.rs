//! The snapshotter against real etcd 3.4 and 3.5: while a workload runs (puts, txns, range
//! deletes, leases granted and revoked, a compaction), the store it writes follows the
//! reference's names and formats, and the lead's offline restore of it boots into an etcd whose
//! `hashkv` at the last delta's revision equals the source's. Faults: etcd killed and restarted
//! mid-watch, a watch whose start was compacted, SIGTERM.

#[path = "snapshotter_support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use brcore::etcd::{EtcdClient, EtcdConfig, EtcdSource};
use brcore::metrics::Metrics;
use brcore::restore::{NoProgress, OfflineRestorer, RestorePlan, Restorer};
use brcore::snapshotter::dbrev::RevisionScanner;
use brcore::snapshotter::full::{FullOptions, take_full_snapshot};
use brcore::snapshotter::{RunReport, Schedule, Snapshotter, SnapshotterConfig};
use brcore::{Snapstore, WriteOptions};
use etcd_client::{Client, CompactionOptions, DeleteOptions, PutOptions, Txn, TxnOp};
use sha2::{Digest, Sha256};
use support::*;
use testsupport::{Etcd, EtcdVersion, free_port, go_testdata};
use tokio::sync::oneshot;

const PREFIX: &str = "etcd-main";

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn source(endpoint: &str) -> Arc<dyn EtcdSource> {
    let mut config = EtcdConfig::new([endpoint]);
    config.connection_timeout = Duration::from_secs(2);
    Arc::new(EtcdClient::new(config))
}

fn config(delta_period: Duration) -> SnapshotterConfig {
    let mut c = SnapshotterConfig::new(PREFIX);
    c.full_schedule = Schedule::parse("0 0 1 1 *").unwrap();
    c.delta_period = Some(delta_period);
    c.gc_period = None;
    c
}

fn start(
    source: Arc<dyn EtcdSource>,
    store: Arc<dyn Snapstore>,
    cfg: SnapshotterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<RunReport, brcore::error::Error>> {
    tokio::spawn(Snapshotter::new(source, store, cfg, Metrics::new()).run(shutdown))
}

async fn client(endpoint: &str) -> Client {
    Client::connect([endpoint], None).await.expect("connect etcd")
}

/// Writes a bit of everything; returns the revision it compacted at.
async fn workload(c: &mut Client, tag: &str) -> i64 {
    for i in 0..30 {
        c.put(format!("/{tag}/k{i}"), format!("value {i}"), None).await.unwrap();
    }
    c.txn(Txn::new().and_then([
        TxnOp::put(format!("/{tag}/t/a"), "1", None),
        TxnOp::put(format!("/{tag}/t/b"), "2", None),
        TxnOp::delete(format!("/{tag}/k0"), None),
    ]))
    .await
    .unwrap();
    // Range delete: k1 and k10..k19.
    c.delete(format!("/{tag}/k1"), Some(DeleteOptions::new().with_prefix())).await.unwrap();
    let kept = c.lease_grant(300, None).await.unwrap().id();
    c.put(format!("/{tag}/lease/kept"), "x", Some(PutOptions::new().with_lease(kept))).await.unwrap();
    let revoked = c.lease_grant(300, None).await.unwrap().id();
    c.put(format!("/{tag}/lease/revoked"), "y", Some(PutOptions::new().with_lease(revoked))).await.unwrap();
    c.lease_revoke(revoked).await.unwrap();
    let rev = c.get("nothing", None).await.unwrap().header().unwrap().revision();
    c.compact(rev - 2, Some(CompactionOptions::new().with_physical())).await.unwrap();
    for i in 20..30 {
        c.put(format!("/{tag}/k{i}"), format!("updated {i}"), None).await.unwrap();
    }
    rev - 2
}

async fn wait_full(store: &dyn Snapstore, min_last: u64) -> Name {
    wait_for(Duration::from_secs(20), "a full snapshot", || async {
        let (names, _) = list(store, PREFIX).await;
        names.into_iter().rfind(|n| n.kind == "Full" && n.last >= min_last)
    })
    .await
}

/// Checks every object's format with the independent reader; returns the latest chain and the
/// decoded events of its deltas.
async fn check_store(store: &dyn Snapstore) -> (Name, Vec<Name>, Vec<Ev>) {
    let (names, _) = list(store, PREFIX).await;
    for n in &names {
        assert!(n.key.starts_with(&format!("{PREFIX}/v2/")), "{}", n.key);
        assert_eq!(n.suffix, ".gz");
        let content = decompress(&n.suffix, &read_object(store, &n.key).await);
        if n.kind == "Full" {
            assert_eq!(n.start, 0);
            assert_eq!(content.len() % 512, 32, "a full snapshot keeps etcd's sha256 trailer");
            let (db, hash) = content.split_at(content.len() - 32);
            assert_eq!(Sha256::digest(db).as_slice(), hash);
            let mut scan = RevisionScanner::new();
            scan.feed(db);
            assert_eq!(scan.finish().unwrap().revision, n.last, "{} is named after its db's revision", n.key);
        }
    }
    let (full, deltas) = latest_chain(&names);
    let mut events = Vec::new();
    let mut covered = full.last as i64;
    for d in &deltas {
        let evs = decode_delta(&decompress(&d.suffix, &read_object(store, &d.key).await));
        assert_eq!(evs.last().unwrap().mod_revision as u64, d.last);
        for e in &evs {
            assert!(e.mod_revision >= covered, "events in revision order");
            covered = e.mod_revision;
        }
        events.extend(evs);
    }
    (full, deltas, events)
}

/// Restores the store into a fresh dir, boots it and compares hashkv and keys at `rev` with the
/// source (compacting the restored etcd at `compacted` first when its full snapshot predates
/// that compaction: compactions are not part of the delta stream).
async fn judge_restore(store: Arc<dyn Snapstore>, source: &Etcd, version: EtcdVersion, rev: i64, compacted: i64) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("restored.etcd");
    let peer = free_port();
    let plan = RestorePlan::new(
        PREFIX,
        data_dir.clone(),
        etcd_format::membership::Cluster::from_initial_cluster(&format!("n1=http://127.0.0.1:{peer}"), "etcd-cluster")
            .unwrap(),
        "n1",
    )
    .with_max_fetchers(4);
    let report = OfflineRestorer::new(store).restore(&plan, Arc::new(NoProgress)).await.expect("offline restore");
    assert_eq!(report.stats.revision, rev, "restored up to the last delta's revision");
    let restored = blocking(|| Etcd::start_on(version, &data_dir, "n1", peer, free_port()));
    let (_, restored_compact, _) = blocking(|| restored.hashkv(rev));
    if restored_compact < compacted {
        blocking(|| restored.etcdctl(&["compact", &compacted.to_string()]));
    }
    let want = blocking(|| source.hashkv(rev));
    let got = blocking(|| restored.hashkv(rev));
    assert_eq!(got.0, want.0, "{version:?}: hashkv at {rev}");
    // etcd reports -1 for a db never compacted, and the restored db records compaction 0.
    assert_eq!(got.1.max(0), want.1.max(0), "{version:?}: compact revision");
    let (want_kvs, _) = blocking(|| source.get_all(rev));
    let (got_kvs, _) = blocking(|| restored.get_all(rev));
    assert_eq!(got_kvs, want_kvs, "{version:?}: keys at {rev}");
}

fn ports_of(etcd: &Etcd) -> (u16, u16) {
    let port = |url: String| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    (port(etcd.peer_url()), port(etcd.endpoint()))
}

async fn workload_is_backed_up_and_restored(version: EtcdVersion) {
    let etcd = blocking(|| Etcd::start(version));
    let mut c = client(&etcd.endpoint()).await;
    for i in 0..20 {
        c.put(format!("/pre/{i}"), "before the full snapshot", None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = start(source(&etcd.endpoint()), store.clone(), config(Duration::from_secs(1)), async move {
        let _ = stopped.await;
    });
    let full = wait_full(&*store, 21).await;
    let compacted = workload(&mut c, "w").await;
    assert!(compacted as u64 > full.last, "the compaction happens after the full snapshot");
    wait_for(Duration::from_secs(20), "a periodic delta", || async {
        let (names, _) = list(&*store, PREFIX).await;
        names.iter().any(|n| n.kind == "Incr").then_some(())
    })
    .await;
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let _ = stop.send(());
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.last_revision, Some(rev as u64), "{report:?}");
    let (_, deltas, events) = check_store(&*store).await;
    assert_eq!(deltas.last().unwrap().last, rev as u64);
    assert!(events.iter().any(|e| e.delete), "range delete and revoke appear as deletes");
    assert!(events.iter().any(|e| e.lease != 0), "lease ids are kept in the deltas");
    // Leases granted after the full snapshot have their TTL beside the deltas.
    let (_, others) = list(&*store, PREFIX).await;
    let mut ttls = Vec::new();
    for key in &others {
        let body: serde_json::Value = serde_json::from_slice(&read_object(&*store, key).await).unwrap();
        for l in body["leases"].as_array().unwrap() {
            ttls.push((l["id"].as_i64().unwrap(), l["granted_ttl"].as_i64()));
        }
    }
    let leased: Vec<i64> = events.iter().filter(|e| e.lease != 0).map(|e| e.lease).collect();
    for id in &leased {
        let ttl = ttls.iter().find(|(i, _)| i == id).unwrap_or_else(|| panic!("lease {id} has no sidecar record"));
        assert!(ttl.1 == Some(300) || ttl.1.is_none(), "{ttl:?}");
    }
    assert!(ttls.iter().any(|(_, t)| *t == Some(300)), "the kept lease's TTL was recorded: {ttls:?}");
    judge_restore(store, &etcd, version, rev, compacted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_on_etcd_3_4_is_backed_up_and_restored() {
    workload_is_backed_up_and_restored(EtcdVersion::V3_4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_on_etcd_3_5_is_backed_up_and_restored() {
    workload_is_backed_up_and_restored(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_mid_watch_loses_no_revision() {
    let version = EtcdVersion::V3_5;
    let mut etcd = blocking(|| Etcd::start(version));
    let mut c = client(&etcd.endpoint()).await;
    c.put("/a", "1", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let (stop, stopped) = oneshot::channel::<()>();
    // Deltas every 10 s: what arrives before the crash is still in memory when etcd dies.
    let task = start(source(&etcd.endpoint()), store.clone(), config(Duration::from_secs(10)), async move {
        let _ = stopped.await;
    });
    wait_full(&*store, 1).await;
    for i in 0..20 {
        c.put(format!("/before/{i}"), "x", None).await.unwrap();
    }
    let (peer, port) = ports_of(&etcd);
    let data_dir = etcd.data_dir().to_path_buf();
    blocking(|| etcd.kill());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = blocking(|| Etcd::start_on(version, &data_dir, etcd.name(), peer, port));
    let mut c = client(&restarted.endpoint()).await;
    for i in 0..20 {
        c.put(format!("/after/{i}"), "y", None).await.unwrap();
    }
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let _ = stop.send(());
    let report = task.await.unwrap().unwrap();
    assert!(report.watch_reconnects >= 1, "{report:?}");
    assert_eq!(report.last_revision, Some(rev as u64));
    let (full, _, events) = check_store(&*store).await;
    let revs: Vec<i64> = events.iter().map(|e| e.mod_revision).collect();
    let want: Vec<i64> = (full.last as i64 + 1..=rev).collect();
    assert_eq!(revs, want, "every revision after the full snapshot, once");
    judge_restore(store, &restarted, version, rev, 0).await;
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_behind_a_compaction_takes_a_new_full_snapshot() {
    let version = EtcdVersion::V3_4;
    let etcd = blocking(|| Etcd::start(version));
    let mut c = client(&etcd.endpoint()).await;
    c.put("/a", "1", None).await.unwrap();
    let proxy = Proxy::start(etcd.endpoint().trim_start_matches("http://").to_string()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = start(source(&proxy.endpoint()), store.clone(), config(Duration::from_secs(1)), async move {
        let _ = stopped.await;
    });
    let first = wait_full(&*store, 1).await;
    // The snapshotter loses etcd; etcd moves on and compacts what the snapshotter missed.
    proxy.cut();
    for i in 0..10 {
        c.put(format!("/missed/{i}"), "z", None).await.unwrap();
    }
    let compacted = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(compacted, Some(CompactionOptions::new().with_physical())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let second = wait_full(&*store, compacted as u64).await;
    assert!(second.last > first.last);
    for i in 0..10 {
        c.put(format!("/later/{i}"), "q", None).await.unwrap();
    }
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let _ = stop.send(());
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.compactions_seen, 1, "{report:?}");
    assert_eq!(report.last_revision, Some(rev as u64));
    let (full, _, events) = check_store(&*store).await;
    assert_eq!(full.key, second.key);
    let revs: Vec<i64> = events.iter().map(|e| e.mod_revision).collect();
    assert_eq!(revs, (full.last as i64 + 1..=rev).collect::<Vec<_>>());
    judge_restore(store, &etcd, version, rev, compacted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_the_buffered_events_as_a_last_delta() {
    use tokio::signal::unix::{SignalKind, signal};
    let etcd = blocking(|| Etcd::start(EtcdVersion::V3_4));
    let mut c = client(&etcd.endpoint()).await;
    c.put("/a", "1", None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    // No periodic delta within the test: only the shutdown writes one.
    let task = start(source(&etcd.endpoint()), store.clone(), config(Duration::from_secs(600)), async move {
        term.recv().await;
    });
    wait_full(&*store, 1).await;
    for i in 0..25 {
        c.put(format!("/buffered/{i}"), "b", None).await.unwrap();
    }
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    let status = std::process::Command::new("kill").args(["-TERM", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    let report = task.await.unwrap().expect("a clean stop after SIGTERM");
    let last = report.final_delta.expect("the buffered events were stored");
    assert_eq!(last.name.last_revision, rev as u64);
    let (_, deltas, events) = check_store(&*store).await;
    assert_eq!(deltas.len(), 1);
    assert_eq!(events.len(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_snapshots_are_named_after_the_db_revision_on_both_versions() {
    for version in EtcdVersion::ALL {
        let etcd = blocking(|| Etcd::start(version));
        let mut c = client(&etcd.endpoint()).await;
        // Enough keys for a multi-level key bucket, values spilling into overflow pages, and a
        // last operation that is a delete compacted away.
        let big = "v".repeat(300);
        for i in 0..1500 {
            c.put(format!("/many/{i:05}"), big.clone(), None).await.unwrap();
        }
        c.put("/huge", "h".repeat(20_000), None).await.unwrap();
        c.delete("/many/00001", None).await.unwrap();
        let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
        c.compact(rev, Some(CompactionOptions::new().with_physical())).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = local_store(dir.path());
        let mut opts = FullOptions::new(PREFIX);
        // Small parts: the upload of the staging object holds many of them.
        opts.write = WriteOptions::new(1, 64 * 1024);
        opts.timeout = Duration::from_secs(60);
        let full = take_full_snapshot(&*source(&etcd.endpoint()), &*store, &opts).await.expect("full snapshot");
        assert_eq!(full.snapshot.name.last_revision, rev as u64, "{version:?}");
        assert!(
            matches!(full.revision_source, brcore::snapshotter::full::RevisionSource::Db(d) if d.compact_revision == Some(rev as u64))
        );
        check_store(&*store).await;
        // etcd's own tool reads the same revision from the object.
        let content = decompress(".gz", &read_object(&*store, &full.snapshot.key).await);
        let file = dir.path().join("snap.db");
        std::fs::write(&file, &content).unwrap();
        let status = std::process::Command::new(version.etcdctl_bin())
            .args(["snapshot", "status", "-w", "json"])
            .arg(&file)
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("snapshot status json");
        assert!(v["revision"].as_i64().unwrap() <= rev, "{version:?}: {v}");
    }
}

#[test]
fn the_reference_full_snapshots_scan_to_their_names() {
    for store in ["etcdbrctl-0.28.4-etcd-3.4.23", "etcdbrctl-0.43.0-etcd-3.5.30"] {
        let dir = go_testdata().join(store).join("store/v2");
        let full = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("Full-"))
            .unwrap();
        let content = decompress(".gz", &std::fs::read(&full).unwrap());
        let (db, _) = content.split_at(content.len() - 32);
        for chunk in [1000, 32 * 1024] {
            let mut scan = RevisionScanner::new();
            for c in db.chunks(chunk) {
                scan.feed(c);
            }
            let r = scan.finish().unwrap();
            assert_eq!(r.revision, 166, "{}", full.display());
        }
        let _ = Path::new(&full);
    }
}
