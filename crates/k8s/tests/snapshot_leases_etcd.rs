//! The snapshot Leases beside a real snapshotter of a real etcd, through the Kubernetes API
//! stand-in: they carry the revisions of the newest full snapshot and delta in the store, and
//! an API that goes away, hangs or refuses costs no snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use brcore::chain::{Target, list_chain};
use brcore::etcd::{EtcdClient, EtcdConfig, EtcdSource};
use brcore::metrics::Metrics;
use brcore::snapshotter::{ProgressSender, Schedule, Snapshotter, SnapshotterConfig};
use k8s::{LeaseClient, SnapshotLeases};
use testsupport::kube::{DEFAULT_TOKEN, KubeApi};
use testsupport::{Etcd, EtcdVersion};

const NS: &str = "shoot--dev--b";
const PREFIX: &str = "etcd-main";

fn put(etcd: &Etcd, n: usize, tag: &str) {
    tokio::task::block_in_place(|| {
        for i in 0..n {
            etcd.etcdctl(&["put", &format!("/{tag}/{i}"), "value"]);
        }
    })
}

fn holder(api: &KubeApi, name: &str) -> Option<String> {
    api.lease(NS, name).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest full snapshot's and the newest delta's last revisions in the store.
async fn store_revisions(store: &dyn brcore::Snapstore) -> (u64, Option<u64>) {
    let chain = list_chain(store, PREFIX, Target::Latest).await.expect("a chain in the store");
    (chain.full.name.last_revision, chain.deltas.last().map(|d| d.name.last_revision))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_carry_the_stored_revisions_and_an_outage_loses_no_snapshot() {
    let etcd = Etcd::start(EtcdVersion::V3_5);
    put(&etcd, 10, "a");
    let dir = tempfile::tempdir().unwrap();
    let store = snapstore::open(&snapstore::StoreConfig::local(dir.path()).with_prefix(PREFIX)).unwrap();
    let mut api = KubeApi::start();
    api.create_lease(NS, "full-snapshot-revisions");
    api.create_lease(NS, "delta-snapshot-revisions");

    let mut cfg = SnapshotterConfig::new(PREFIX);
    cfg.full_schedule = Schedule::parse("0 0 1 1 *").unwrap();
    cfg.delta_period = Some(Duration::from_secs(1));
    cfg.gc_period = None;
    let source: Arc<dyn EtcdSource> = {
        let mut config = EtcdConfig::new([etcd.endpoint()]);
        config.connection_timeout = Duration::from_secs(5);
        Arc::new(EtcdClient::new(config))
    };
    let progress = ProgressSender::new();
    let snapshotter = Snapshotter::new(source, store.clone(), cfg, Metrics::new()).report_progress_to(progress.clone());
    let handle = snapshotter.handle();
    let (stop_snap, snap_stopped) = tokio::sync::oneshot::channel::<()>();
    let snap_task = tokio::spawn(snapshotter.run(async {
        let _ = snap_stopped.await;
    }));
    let client = LeaseClient::from_kubeconfig(&api.kubeconfig(NS, DEFAULT_TOKEN), NS)
        .await
        .unwrap()
        .with_timeout(Duration::from_secs(2));
    let leases = SnapshotLeases::new(client, "full-snapshot-revisions", "delta-snapshot-revisions")
        .with_retry_interval(Duration::from_millis(500));
    let (stop_leases, leases_stopped) = tokio::sync::oneshot::channel::<()>();
    let lease_task = tokio::spawn(leases.run(progress.subscribe(), async {
        let _ = leases_stopped.await;
    }));

    // The first full snapshot, then idle rounds: the delta Lease says 0.
    let first = etcd.revision() as u64;
    eventually("the full snapshot lease", Duration::from_secs(60), || {
        holder(&api, "full-snapshot-revisions") == Some(first.to_string())
    })
    .await;
    eventually("the delta snapshot lease at 0", Duration::from_secs(30), || {
        holder(&api, "delta-snapshot-revisions").as_deref() == Some("0")
    })
    .await;
    let (full, delta) = store_revisions(&*store).await;
    assert_eq!((full, delta), (first, None));
    let renew = api.lease(NS, "full-snapshot-revisions").unwrap()["spec"]["renewTime"].clone();
    let stored_full = progress.current().full.unwrap();
    assert_eq!(
        renew.as_str(),
        Some(k8s::micro_time(std::time::UNIX_EPOCH + Duration::from_secs(stored_full.name.created_on as u64)).as_str()),
        "the full snapshot lease's renewTime is the snapshot's creation time"
    );

    // Writes: deltas, and the delta Lease follows the newest one in the store.
    put(&etcd, 20, "b");
    let target = etcd.revision() as u64;
    eventually("the delta snapshot lease at the newest delta", Duration::from_secs(60), || {
        holder(&api, "delta-snapshot-revisions") == Some(target.to_string())
    })
    .await;
    assert_eq!(store_revisions(&*store).await, (first, Some(target)));

    // The API goes away: snapshots go on, on-demand ones answer at once.
    api.stop();
    put(&etcd, 15, "c");
    let during = etcd.revision() as u64;
    let t = Instant::now();
    let full_during = handle.full_snapshot(false).await.expect("a full snapshot while the API is down");
    let took_down = t.elapsed();
    assert_eq!(full_during.name.last_revision, during);
    put(&etcd, 15, "d");
    let after_full = etcd.revision() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_revisions(&*store).await.1 != Some(after_full) {
        assert!(Instant::now() < deadline, "no delta reached {after_full} while the API was down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(holder(&api, "full-snapshot-revisions"), Some(first.to_string()), "nothing reached the API meanwhile");

    // It comes back: the Leases catch up with the newest snapshots.
    api.start_again();
    eventually("the full snapshot lease after the outage", Duration::from_secs(60), || {
        holder(&api, "full-snapshot-revisions") == Some(during.to_string())
    })
    .await;
    eventually("the delta snapshot lease after the outage", Duration::from_secs(60), || {
        holder(&api, "delta-snapshot-revisions") == Some(after_full.to_string())
    })
    .await;

    // An API that hangs: snapshots are not held up either.
    api.stall(true);
    put(&etcd, 5, "e");
    let t = Instant::now();
    let full_stalled = handle.full_snapshot(false).await.expect("a full snapshot while the API hangs");
    let took_stalled = t.elapsed();
    put(&etcd, 5, "f");
    let last = etcd.revision() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_revisions(&*store).await.1 != Some(last) {
        assert!(Instant::now() < deadline, "no delta reached {last} while the API hung");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.stall(false);
    eventually("the leases after the hang", Duration::from_secs(60), || {
        holder(&api, "full-snapshot-revisions") == Some(full_stalled.name.last_revision.to_string())
            && holder(&api, "delta-snapshot-revisions") == Some(last.to_string())
    })
    .await;
    // A refusing API (RBAC taken away) is retried the same way.
    api.forbid("patch");
    put(&etcd, 3, "g");
    let refused = etcd.revision() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while store_revisions(&*store).await.1 != Some(refused) {
        assert!(Instant::now() < deadline, "no delta reached {refused} while the API refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(api.requests().iter().any(|r| r.status == 403), "the refusal was met");
    api.permit_all();
    eventually("the delta lease after the refusal", Duration::from_secs(60), || {
        holder(&api, "delta-snapshot-revisions") == Some(refused.to_string())
    })
    .await;

    let _ = stop_snap.send(());
    let report = snap_task.await.unwrap().unwrap();
    let _ = stop_leases.send(());
    lease_task.await.unwrap();
    // No snapshot lost: the newest chain is continuous from the last full snapshot to etcd's
    // revision (list_chain refuses gaps), and every full snapshot taken is in the store.
    let chain = list_chain(&*store, PREFIX, Target::Latest).await.unwrap();
    assert_eq!(chain.full.name.last_revision, full_stalled.name.last_revision);
    assert_eq!(chain.last_revision(), etcd.revision() as u64);
    assert_eq!(report.full_snapshots, 3, "{report:?}");
    let keys: Vec<String> = store.list(&format!("{PREFIX}/v2/")).await.unwrap().into_iter().map(|o| o.key).collect();
    for f in [first, during, full_stalled.name.last_revision] {
        assert!(keys.iter().any(|k| k.contains(&format!("Full-00000000-{f:08}-"))), "full snapshot at {f}: {keys:?}");
    }
    // Informational: on-demand full snapshots while the API was down or hanging.
    eprintln!("full snapshot took {took_down:?} with the API down, {took_stalled:?} with it hanging");
}
