//! Leader election and forwarding against a real three-member etcd cluster on loopback: the
//! electors agree on one leader, followers forward snapshot requests to its sidecar (token,
//! status and body passed through), refuse loops and unknown leaders, and the election follows
//! `etcdctl move-leader`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use brcore::Snapstore;
use brcore::etcd::{EtcdClient, EtcdConfig};
use brcore::metrics::{KIND_FULL, Metrics};
use brcore::snapshotter::full::FullOptions;
use common::local_store;
use httpd::leader::{EtcdClusterView, wait_for_handoff};
use httpd::{LeaderElector, Role, Server, ServerConfig, ServerHandle, SidecarLocator, SnapshotControl, StoreSnapshots};
use testsupport::{Etcd, EtcdVersion, free_port};
use tokio::sync::{oneshot, watch};

const TOKEN: &str = "t0ken";

/// One sidecar: a server over its member with its own metrics, until `stop` is sent.
struct Sidecar {
    port: u16,
    handle: ServerHandle,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), httpd::Error>>,
}

impl Sidecar {
    async fn start(
        listener: tokio::net::TcpListener,
        etcd: &Etcd,
        store: Arc<dyn Snapstore>,
        dir: &Path,
        role: watch::Receiver<Role>,
    ) -> Sidecar {
        let port = listener.local_addr().unwrap().port();
        let metrics = Metrics::new();
        let source = Arc::new(EtcdClient::new(EtcdConfig::new(vec![etcd.endpoint()])));
        let mut options = FullOptions::new("");
        options.timeout = Duration::from_secs(60);
        let control: Arc<dyn SnapshotControl> =
            Arc::new(StoreSnapshots::new(source, store.clone(), options, metrics.clone()));
        let mut config = ServerConfig::default();
        config.auth_token = Some(TOKEN.into());
        config.leadership = Some(role);
        let server = Server::new(
            config,
            common::init(store, dir.join("unused"), "http://127.0.0.1:2380"),
            Some(control),
            metrics.clone(),
        );
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        Sidecar { port, handle, metrics, stop: Some(tx), task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn fulls(&self) -> u64 {
        self.metrics.snapshot_duration_seconds.with_label_values(&[KIND_FULL, "true"]).get_sample_count()
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

async fn get(path: &str, token: Option<&str>, extra: Option<(&str, &str)>) -> (u16, String) {
    let mut r = reqwest::Client::new().get(path);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    if let Some((k, v)) = extra {
        r = r.header(k, v);
    }
    let r = r.send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_to_the_leaders_sidecar() {
    let tmp = tempfile::tempdir().unwrap();
    let names = ["m0", "m1", "m2"];
    let dirs: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let ports: Vec<(u16, u16)> = names.iter().map(|_| (free_port(), free_port())).collect();
    let members: Vec<(&Path, &str, u16, u16)> =
        (0..3).map(|i| (dirs[i].as_path(), names[i], ports[i].0, ports[i].1)).collect();
    let cluster = Etcd::start_cluster(EtcdVersion::V3_5, &members);
    cluster[0].etcdctl(&["put", "k", "v"]);

    // Every member's sidecar listens before the electors run, so the map is complete.
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let map: HashMap<String, String> = (0..3)
        .map(|i| (names[i].to_string(), format!("http://127.0.0.1:{}", listeners[i].local_addr().unwrap().port())))
        .collect();
    let electors: Vec<LeaderElector> = cluster
        .iter()
        .map(|e| {
            let view = Arc::new(EtcdClusterView::new(EtcdConfig::new(vec![e.endpoint()]), Duration::from_secs(5)));
            LeaderElector::new(view, SidecarLocator::new(map.clone(), 1, false), Duration::from_secs(1))
        })
        .collect();
    let mut roles = Vec::new();
    for e in &electors {
        roles.push(e.check().await);
    }
    let leader = roles.iter().position(|r| *r == Role::Leader).expect("one member leads");
    assert_eq!(roles.iter().filter(|r| **r == Role::Leader).count(), 1, "{roles:?}");
    for (i, r) in roles.iter().enumerate().filter(|(i, _)| *i != leader) {
        match r {
            Role::Follower { leader_name, sidecar, .. } => {
                assert_eq!(leader_name, names[leader], "member {i}");
                assert_eq!(sidecar.as_ref(), map.get(names[leader]), "member {i}");
            }
            other => panic!("member {i} is {other:?}"),
        }
    }
    let follower = (leader + 1) % 3;

    let store = local_store(tmp.path());
    let mut sidecars = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        sidecars.push(Sidecar::start(l, &cluster[i], store.clone(), tmp.path(), electors[i].subscribe()).await);
    }
    let (lead, foll) = (&sidecars[leader], &sidecars[follower]);

    // The leader's sidecar is not ready: the follower says so instead of forwarding.
    let (code, body) = get(&foll.url("/snapshot/full"), Some(TOKEN), None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");
    lead.handle.set_healthy(true);

    // The token is checked by the follower and passed on to the leader.
    assert_eq!(get(&foll.url("/snapshot/full"), None, None).await.0, 401);
    let rev = cluster[0].revision();
    let (code, body) = get(&foll.url("/snapshot/full"), Some(TOKEN), None).await;
    assert_eq!(code, 200, "{body}");
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((full["kind"].as_str(), full["lastRevision"].as_i64()), (Some("Full"), Some(rev)), "{body}");
    assert_eq!((lead.fulls(), foll.fulls()), (1, 0), "the leader's sidecar took it");
    let listed = store.list("").await.unwrap();
    assert_eq!(listed.len(), 1, "one object stored: {listed:?}");

    // The leader's own answers come back unchanged: its delta refusal (no snapshotter) is a 503.
    let (code, body) = get(&foll.url("/snapshot/delta"), Some(TOKEN), None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no snapshotter"), "the leader's message: {body}");

    // A request forwarded to a member that does not lead is refused, not forwarded again.
    let (code, body) =
        get(&foll.url("/snapshot/full"), Some(TOKEN), Some((httpd::leader::FORWARDED_HEADER, "1"))).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(foll.fulls() + lead.fulls(), 1);

    // The latest set is answered from the shared store by every sidecar.
    let (code, body) = get(&foll.url("/snapshot/latest"), None, None).await;
    assert_eq!(code, 200);
    assert!(body.contains(full["snapName"].as_str().unwrap()), "{body}");

    // Hand-off: a healthy previous leader holds the new one back until the limit; an unhealthy
    // one lets it go at once.
    let base = format!("http://127.0.0.1:{}", lead.port);
    let client = httpd::leader::sidecar_client(None).unwrap();
    assert!(!wait_for_handoff(&client, &base, Duration::from_millis(500)).await);
    lead.handle.set_healthy(false);
    assert!(wait_for_handoff(&client, &base, Duration::from_secs(30)).await);

    // Leadership moves: the electors follow.
    let target = (leader + 2) % 3;
    let out = cluster[target].etcdctl(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let target_id = v[0]["Status"]["header"]["member_id"].as_u64().unwrap();
    cluster[leader].etcdctl(&["move-leader", &format!("{target_id:x}")]);
    assert_eq!(electors[target].check().await, Role::Leader);
    assert!(
        matches!(electors[leader].check().await, Role::Follower { leader_id, .. } if leader_id == target_id),
        "the old leader follows the new one"
    );

    // The old leader's sidecar gone: the follower reports a bad gateway.
    let mut sidecars = sidecars;
    let new_follower = sidecars.remove(leader);
    let target_pos = if target > leader { target - 1 } else { target };
    let gone = sidecars.remove(target_pos);
    gone.shutdown().await;
    let (code, body) = get(&new_follower.url("/snapshot/full"), Some(TOKEN), None).await;
    assert_eq!(code, 502, "{body}");

    // No leader known: 503.
    let (_tx, unknown) = watch::channel(Role::Unknown);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lost = Sidecar::start(l, &cluster[0], store.clone(), tmp.path(), unknown).await;
    let (code, body) = get(&lost.url("/snapshot/full"), Some(TOKEN), None).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("does not know"), "{body}");
    lost.shutdown().await;
    new_follower.shutdown().await;
    for s in sidecars {
        s.shutdown().await;
    }
}
