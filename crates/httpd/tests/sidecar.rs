//! `httpd::sidecar::run` as an embedder drives it, without etcdbrctl: a real etcd, a real Local
//! store, the leader elector, and the supervision that starts the snapshotter, keeps `/healthz`
//! in step and reports progress, until stopped.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use brcore::etcd::{EtcdClient, EtcdConfig};
use brcore::restore::RestorePlan;
use brcore::snapshotter::{ProgressSender, SnapshotterConfig};
use common::local_store;
use etcd_format::membership::Cluster;
use httpd::leader::EtcdClusterView;
use httpd::sidecar::{self, SidecarConfig, SidecarSnapshots};
use httpd::{
    ClusterSettings, FlagCluster, Initialization, LeaderElector, LiveSnapshots, Server, ServerConfig, SidecarCluster,
    SidecarLocator, SnapshotControl, StoreSnapshots,
};
use testsupport::{Etcd, EtcdVersion};
use validator::{InitOptions, Initializer, Mode};

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(30)).send().await.ok()?;
    Some((r.status().as_u16(), r.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_sidecar_snapshots_its_etcd_until_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    etcd.etcdctl(&["put", "k", "v"]);
    let store = local_store(tmp.path());
    let etcd_config = EtcdConfig::new(vec![etcd.endpoint()]);
    let client = httpd::leader::sidecar_client(None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");

    // The etcd config as etcd-druid writes it, naming the member as it runs (so the peer URL
    // reconciler finds nothing to change): `id, started, name, peer URL, client URL, learner`.
    let list = etcd.etcdctl(&["member", "list"]);
    let peer = list.split(", ").nth(3).expect("a peer URL in etcdctl member list").to_string();
    let conf = tmp.path().join("etcd.conf.yaml");
    std::fs::write(
        &conf,
        format!("name: default\ninitial-cluster: default={peer}\nadvertise-client-urls: {}\n", etcd.endpoint()),
    )
    .unwrap();
    let cluster = Arc::new(SidecarCluster::new(ClusterSettings {
        etcd_conf: Some(conf),
        pod_name: None,
        flags: FlagCluster { initial_cluster: String::new(), name: "default".into(), token: "etcd-cluster".into() },
        etcd: etcd_config.clone(),
        service_endpoints: Vec::new(),
        timeout: Duration::from_secs(5),
        locator: SidecarLocator::new(Default::default(), port, false),
        client: client.clone(),
    }));
    let view = Arc::new(EtcdClusterView::new(etcd_config.clone(), Duration::from_secs(5)));
    let elector =
        LeaderElector::new(view, SidecarLocator::new(Default::default(), port, false), Duration::from_secs(1));
    let etcd_client = Arc::new(EtcdClient::new(etcd_config));
    let metrics = brcore::metrics::Metrics::new();
    let mut snapshotter = SnapshotterConfig::new("");
    snapshotter.delta_period = Some(Duration::from_secs(1));
    let direct = StoreSnapshots::new(etcd_client.clone(), store.clone(), snapshotter.full_options(), metrics.clone());
    let live = Arc::new(LiveSnapshots::new(direct));
    let control: Arc<dyn SnapshotControl> = live.clone();
    let mut server_config = ServerConfig::default();
    server_config.leadership = Some(elector.subscribe());
    let init = Initialization {
        initializer: Initializer::new(store.clone()).with_cluster(cluster.clone()),
        options: InitOptions::new(
            Mode::Sanity,
            RestorePlan::new(
                String::new(),
                tmp.path().join("unused"),
                Cluster::from_initial_cluster("default=http://127.0.0.1:2380", "etcd-cluster").unwrap(),
                "default",
            ),
        ),
    };
    let server = Server::new(server_config, init, Some(control), metrics);
    let progress = ProgressSender::new();
    let mut config = SidecarConfig::new(server, etcd_client, cluster);
    config.snapshots = Some(SidecarSnapshots::new(
        store.clone(),
        snapshotter,
        live,
        elector.subscribe(),
        Duration::from_secs(1),
        client,
    ));
    config.elector = Some(elector);
    config.progress = Some(progress.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(sidecar::run(config, listener, async {
        let _ = rx.await;
    }));

    // The single member leads: the supervisor starts the snapshotter, whose first full snapshot
    // is listed and reported, and /healthz turns 200.
    let revision = etcd.revision();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let latest = get(&format!("{base}/snapshot/latest")).await;
        let health = get(&format!("{base}/healthz")).await;
        if let (Some((200, body)), Some((200, _))) = (&latest, &health)
            && body.contains(&format!("Full-00000000-{revision:08}-"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no full snapshot within 60 s: {latest:?}, {health:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reported = progress.current().full.expect("the full snapshot is reported to the progress sender");
    assert_eq!(reported.name.last_revision as i64, revision);

    // On-demand deltas reach the running snapshotter (attached by the supervisor).
    etcd.etcdctl(&["put", "k2", "v2"]);
    let target = etcd.revision();
    loop {
        let got = get(&format!("{base}/snapshot/delta")).await;
        if let Some((200, body)) = &got
            && body.contains(&format!("\"lastRevision\":{target},"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no on-demand delta reached revision {target}: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tx.send(()).unwrap();
    run.await.unwrap().expect("the sidecar stops cleanly");
    assert!(get(&format!("{base}/healthz")).await.is_none(), "the port is closed after stopping");
}
