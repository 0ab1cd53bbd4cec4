//! The HTTP server over real sockets on 127.0.0.1, with real etcd processes and a real Local
//! store in a temp dir.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use brcore::error::Error as CoreError;
use brcore::etcd::{EtcdClient, EtcdConfig};
use brcore::metrics::Metrics;
use brcore::restore::{OfflineRestorer, Progress, RestorePlan, RestoreReport, Restorer};
use brcore::snapshotter::full::FullOptions;
use common::local_store;
use etcd_format::membership::Cluster;
use httpd::{
    InitStatus, Initialization, Server, ServerConfig, ServerHandle, SnapshotControl, StoreSnapshots, TlsFiles,
};
use testsupport::{Etcd, EtcdVersion};
use tokio::sync::{Semaphore, oneshot};
use validator::{InitOptions, Initializer, Mode};

/// A server running on a free loopback port until dropped.
struct Running {
    base: String,
    handle: ServerHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), httpd::Error>>>,
}

impl Running {
    async fn start(server: Server, scheme: &str) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = rx.await;
        }));
        Running { base: format!("{scheme}://localhost:{port}"), handle, stop: Some(tx), task: Some(task) }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ends cleanly");
        }
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

fn plan(data_dir: &Path, initial_cluster: &str, name: &str) -> RestorePlan {
    RestorePlan::new(
        String::new(),
        data_dir.to_path_buf(),
        Cluster::from_initial_cluster(initial_cluster, "etcd-cluster").expect("cluster"),
        name.to_string(),
    )
    .with_max_fetchers(4)
}

fn full_options() -> FullOptions {
    let mut options = FullOptions::new("");
    options.timeout = Duration::from_secs(120);
    options
}

/// The offline restorer behind a gate the test opens, so `Progress` can be observed.
#[derive(Debug)]
struct GatedRestorer {
    inner: OfflineRestorer,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl Restorer for GatedRestorer {
    async fn restore(&self, plan: &RestorePlan, progress: Arc<dyn Progress>) -> Result<RestoreReport, CoreError> {
        let _permit = self.gate.acquire().await.map_err(|e| CoreError::internal(e.to_string()))?;
        self.inner.restore(plan, progress).await
    }
}

/// Reads `/initialization/status` until it leaves `Progress`; returns the final state read.
async fn wait_for_result(client: &reqwest::Client, s: &Running) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, body) = get(client, &s.url("/initialization/status")).await;
        assert_eq!(code, 200);
        if body != "Progress" {
            return body;
        }
        assert!(Instant::now() < deadline, "initialization still in progress after 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The seed's manual-restoration runbook, through the HTTP API: back up, lose the member dir
/// with etcd down, initialize, boot etcd on the restored dir.
async fn runbook(version: EtcdVersion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(version);
    for i in 0..20 {
        etcd.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &format!("spec-{i}")]);
    }
    etcd.etcdctl(&["del", "/registry/pods/p07"]);
    let store = local_store(tmp.path());
    let metrics = Metrics::new();
    let source = Arc::new(EtcdClient::new(EtcdConfig::new(vec![etcd.endpoint()])));
    let snapshots: Arc<dyn SnapshotControl> =
        Arc::new(StoreSnapshots::new(source, store.clone(), full_options(), metrics.clone()));
    let gate = Arc::new(Semaphore::new(0));
    let restorer = Arc::new(GatedRestorer { inner: OfflineRestorer::new(store.clone()), gate: gate.clone() });
    let peer_url = etcd.peer_url();
    let init = Initialization {
        initializer: Initializer::with_restorer(store.clone(), restorer),
        options: InitOptions::new(Mode::Full, plan(etcd.data_dir(), &format!("default={peer_url}"), "default")),
    };
    let server = Server::new(ServerConfig::default(), init, Some(snapshots), metrics);
    let s = Running::start(server, "http").await;
    let client = reqwest::Client::new();

    // A full snapshot on demand, at etcd's current revision.
    let revision = etcd.revision() as u64;
    let (code, body) = get(&client, &s.url("/snapshot/full")).await;
    assert_eq!(code, 200, "{body}");
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(full["kind"], "Full");
    assert_eq!(full["lastRevision"].as_u64(), Some(revision), "{body}");
    assert_eq!(full["isFinal"], false);
    let name = full["snapName"].as_str().unwrap().to_string();
    assert!(name.starts_with(&format!("Full-00000000-{revision:08}-")) && name.ends_with(".gz"), "{name}");

    let (code, body) = get(&client, &s.url("/snapshot/latest")).await;
    assert_eq!(code, 200);
    let latest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(latest["fullSnapshot"]["snapName"], name.as_str());
    assert!(latest["deltaSnapshots"].is_null(), "{body}");

    // The status page names the latest full snapshot; the metrics record it.
    let (code, page) = get(&client, &s.url("/")).await;
    assert_eq!(code, 200);
    assert!(page.contains(&name) && page.contains("<b id=\"init-status\">New</b>"), "{page}");
    let (_, text) = get(&client, &s.url("/metrics")).await;
    assert!(text.contains(&format!("etcdbr_snapshot_latest_revision{{kind=\"Full\"}} {revision}")), "{text}");
    assert!(text.contains("etcdbr_snapshot_duration_seconds_count{kind=\"Full\",succeeded=\"true\"} 1"));

    // Deltas need the snapshotter's watch.
    let (code, body) = get(&client, &s.url("/snapshot/delta")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("own schedule"), "{body}");

    // A write after the backup, then disaster: etcd dies and its member dir is gone.
    etcd.etcdctl(&["put", "/after-backup", "lost"]);
    etcd.kill();
    std::fs::remove_dir_all(etcd.data_dir().join("member")).unwrap();

    let (code, body) = get(&client, &s.url("/initialization/status")).await;
    assert_eq!((code, body.as_str()), (200, "New"));
    s.handle.set_healthy(true);
    let mut starts = s.handle.initialization_starts();
    let (code, _) = get(&client, &s.url("/initialization/start?mode=full")).await;
    assert_eq!(code, 200);
    assert_eq!(s.handle.init_status(), InitStatus::Progress);
    assert!(starts.has_changed().unwrap(), "the snapshotter's cue to stop");
    assert_eq!(*starts.borrow_and_update(), 1);
    // While the restore waits at the gate: health is down, snapshots are refused, a second
    // start is a no-op, and the status stays `Progress` however often it is read.
    let (code, body) = get(&client, &s.url("/healthz")).await;
    assert_eq!((code, body.as_str()), (503, "{\"health\":false}"));
    let (code, body) = get(&client, &s.url("/snapshot/full")).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("initialization is running"), "{body}");
    let (code, _) = get(&client, &s.url("/snapshot/delta")).await;
    assert_eq!(code, 409);
    let (code, body) = get(&client, &s.url("/initialization/start")).await;
    assert_eq!((code, body.as_str()), (200, ""));
    for _ in 0..3 {
        assert_eq!(get(&client, &s.url("/initialization/status")).await.1, "Progress");
    }
    assert!(!starts.has_changed().unwrap(), "a second start while one runs starts nothing");
    gate.add_permits(1);
    assert_eq!(wait_for_result(&client, &s).await, "Successful");
    assert_eq!(get(&client, &s.url("/initialization/status")).await.1, "New", "a final state is read once");
    let (_, page) = get(&client, &s.url("/")).await;
    assert!(page.contains(&format!("restored revision {revision}")), "{page}");

    // etcd boots on the restored data dir as the same member and serves the backed-up data.
    let peer_port: u16 = peer_url.rsplit(':').next().unwrap().parse().unwrap();
    let data_dir = etcd.data_dir().to_path_buf();
    let restored = Etcd::start_on(version, &data_dir, "default", peer_port, testsupport::free_port());
    assert_eq!(restored.revision() as u64, revision);
    assert_eq!(restored.etcdctl(&["get", "/registry/pods/p03", "--print-value-only"]).trim(), "spec-3");
    assert_eq!(restored.etcdctl(&["get", "/registry/pods/p07", "--print-value-only"]).trim(), "");
    assert_eq!(restored.etcdctl(&["get", "/after-backup", "--print-value-only"]).trim(), "");
    let keys = restored.etcdctl(&["get", "/registry/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.trim().is_empty()).count(), 19, "{keys}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_restoration_runbook_over_http_etcd_3_5() {
    runbook(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_restoration_runbook_over_http_etcd_3_4() {
    runbook(EtcdVersion::V3_4).await;
}

const ETCD_CONF: &str = "\
name: etcd-main
data-dir: /var/etcd/data/new.etcd
advertise-client-urls:
  etcd-main-0:
  - http://etcd-main-0.etcd-main-peer.shoot.svc:2379
initial-advertise-peer-urls:
  etcd-main-0:
  - http://etcd-main-0.etcd-main-peer.shoot.svc:2380
initial-cluster: etcd-main-0=http://etcd-main-0.etcd-main-peer.shoot.svc:2380
initial-cluster-state: existing
";

/// A server with an empty store, a token, an etcd config, and a two-member cluster whose
/// missing data dir cannot be restored (so initialization fails).
fn guarded_server(dir: &Path, tls: Option<TlsFiles>) -> (Server, PathBuf) {
    let store = local_store(dir);
    let conf = dir.join("etcd.conf.yaml");
    std::fs::write(&conf, ETCD_CONF).unwrap();
    let out = dir.join("served.conf.yaml");
    let mut unreachable = EtcdConfig::new([format!("http://127.0.0.1:{}", testsupport::free_port())]);
    unreachable.connection_timeout = Duration::from_secs(2);
    let unreachable = Arc::new(EtcdClient::new(unreachable));
    let metrics = Metrics::new();
    let snapshots: Arc<dyn SnapshotControl> =
        Arc::new(StoreSnapshots::new(unreachable, store.clone(), full_options(), metrics.clone()));
    let init = Initialization {
        initializer: Initializer::new(store),
        options: InitOptions::new(
            Mode::Sanity,
            plan(&dir.join("data"), "a=http://127.0.0.1:2380,b=http://127.0.0.1:2381", "a"),
        ),
    };
    let mut config = ServerConfig::default();
    config.tls = tls;
    config.auth_token = Some("t0ken".into());
    config.etcd_conf = Some(conf);
    config.config_output = Some(out.clone());
    config.pod_name = Some("etcd-main-0".into());
    config.default_mode = Mode::Sanity;
    (Server::new(config, init, Some(snapshots), metrics), out)
}

#[tokio::test]
async fn bad_requests_get_clear_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, out) = guarded_server(tmp.path(), None);
    let s = Running::start(server, "http").await;
    let client = reqwest::Client::new();
    let auth = |url: String| client.get(url).bearer_auth("t0ken");

    // State-changing endpoints need the token; reads do not.
    for path in ["/initialization/start", "/snapshot/full", "/snapshot/delta"] {
        let r = client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = client.get(s.url(path)).bearer_auth("wrong").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    assert_eq!(get(&client, &s.url("/initialization/status")).await, (200, "New".into()));

    let r = auth(s.url("/initialization/start?mode=deep")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("unknown mode \"deep\""));
    let r = auth(s.url("/snapshot/full?final=maybe")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(get(&client, &s.url("/initialization/status")).await.1, "New", "a refused start changes nothing");

    // etcd is unreachable: the snapshot fails with a 500 that says why, and the server goes on.
    let r = auth(s.url("/snapshot/full?final=true")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    assert!(r.text().await.unwrap().contains("etcd"));
    let (code, body) = get(&client, &s.url("/snapshot/latest")).await;
    assert_eq!((code, body.as_str()), (200, "{\"fullSnapshot\":null,\"deltaSnapshots\":null}"));

    // Initialization that cannot succeed ends as `Failed`, read once.
    let r = auth(s.url("/initialization/start")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(wait_for_result(&client, &s).await, "Failed");
    assert_eq!(get(&client, &s.url("/initialization/status")).await.1, "New");
    let (_, page) = get(&client, &s.url("/")).await;
    assert!(page.contains("2-member cluster") && page.contains("full snapshot: "), "{page}");

    // Health, metrics, config, unknown paths.
    assert_eq!(get(&client, &s.url("/healthz")).await, (503, "{\"health\":false}".into()));
    s.handle.set_healthy(true);
    assert_eq!(get(&client, &s.url("/healthz")).await, (200, "{\"health\":true}".into()));
    let (code, text) = get(&client, &s.url("/metrics")).await;
    assert_eq!(code, 200);
    assert!(text.contains("etcdbr_snapshot_duration_seconds_count{kind=\"Full\",succeeded=\"false\"} 1"), "{text}");
    let (code, conf) = get(&client, &s.url("/config")).await;
    assert_eq!(code, 200, "{conf}");
    assert!(conf.contains("name: etcd-main-0\n"), "{conf}");
    assert!(conf.contains("advertise-client-urls: http://etcd-main-0.etcd-main-peer.shoot.svc:2379\n"), "{conf}");
    assert!(conf.contains("initial-cluster-state: new\n"), "one member: new, whatever the file says\n{conf}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), conf, "the served config is also written");
    assert_eq!(get(&client, &s.url("/nope")).await.0, 404);
    // Scheduled verification is off: nothing to show, and the answer says how to turn it on.
    let (code, body) = get(&client, &s.url("/snapshot/verify/latest")).await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("--verification-period"), "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn config_errors_are_500_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, _) = guarded_server(tmp.path(), None);
    std::fs::write(
        tmp.path().join("etcd.conf.yaml"),
        "name: x\nadvertise-client-urls:\n  other-0:\n  - http://o:2379\n",
    )
    .unwrap();
    let s = Running::start(server, "http").await;
    let client = reqwest::Client::new();
    let (code, body) = get(&client, &s.url("/config")).await;
    assert_eq!(code, 500);
    assert!(body.contains("no URLs for member \"etcd-main-0\""), "{body}");
    std::fs::remove_file(tmp.path().join("etcd.conf.yaml")).unwrap();
    let (code, body) = get(&client, &s.url("/config")).await;
    assert_eq!(code, 500);
    assert!(body.contains("ETCD_CONF"), "{body}");
    let (_, page) = get(&client, &s.url("/")).await;
    assert!(page.contains("config: etcd config"), "the page lists the failures\n{page}");
    s.shutdown().await;
}

#[tokio::test]
async fn https_with_a_certificate_from_a_private_ca() {
    let tmp = tempfile::tempdir().unwrap();
    // A CA and a leaf for localhost signed by it, as a cluster's cert-manager would issue.
    let private_ca = testsupport::PrivateCa::new(tmp.path(), "test-ca");
    let testsupport::tls::Leaf { cert, key } = private_ca.leaf("tls", "localhost", "DNS:localhost", None);
    let ca = private_ca.cert();
    let (server, _) = guarded_server(tmp.path(), Some(TlsFiles { cert: cert.clone(), key }));
    let s = Running::start(server, "https").await;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let r = client.get(s.url("/initialization/status")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    assert_eq!(r.text().await.unwrap(), "New");
    let r = client.get(s.url("/snapshot/full")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "the token is checked over HTTPS too");
    // A plain-HTTP client gets no answer, and the server keeps serving TLS clients.
    let plain = reqwest::Client::new().get(s.url("/healthz").replacen("https", "http", 1)).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert_eq!(client.get(s.url("/healthz")).send().await.unwrap().status().as_u16(), 503);
    s.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_is_an_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("c.pem"), "not a certificate").unwrap();
    let files = TlsFiles { cert: tmp.path().join("c.pem"), key: tmp.path().join("missing.pem") };
    let (server, _) = guarded_server(tmp.path(), Some(files));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = server.serve(listener, async {}).await.unwrap_err();
    assert!(e.to_string().contains("c.pem"), "{e}");
}

/// `/snapshot/full` and `/snapshot/delta` through a running snapshotter's handle, and the
/// fallbacks once it is detached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_on_demand_from_a_running_snapshotter() {
    use brcore::snapshotter::{Snapshotter, SnapshotterConfig};
    use httpd::LiveSnapshots;

    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    etcd.etcdctl(&["put", "before", "1"]);
    let store = local_store(tmp.path());
    let metrics = Metrics::new();
    let source = Arc::new(EtcdClient::new(EtcdConfig::new(vec![etcd.endpoint()])));
    let mut config = SnapshotterConfig::new("");
    // Scheduled deltas far apart: the deltas seen here are the ones asked for.
    config.delta_period = Some(Duration::from_secs(3600));
    config.gc_period = None;
    let snapshotter = Snapshotter::new(source.clone(), store.clone(), config, metrics.clone());
    let live =
        Arc::new(LiveSnapshots::new(StoreSnapshots::new(source, store.clone(), full_options(), metrics.clone())));
    live.attach(snapshotter.handle());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(snapshotter.run(async {
        let _ = stop_rx.await;
    }));
    let init = Initialization {
        initializer: Initializer::new(store.clone()),
        options: InitOptions::new(
            Mode::Sanity,
            plan(&tmp.path().join("unused"), "default=http://127.0.0.1:2380", "default"),
        ),
    };
    let control: Arc<dyn SnapshotControl> = live.clone();
    let s = Running::start(Server::new(ServerConfig::default(), init, Some(control), metrics), "http").await;
    let client = reqwest::Client::new();

    // The snapshotter starts with a full snapshot; then writes arrive through its watch.
    let first = etcd.revision() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(&client, &s.url("/snapshot/latest")).await.1.contains(&format!("Full-00000000-{first:08}-")) {
        assert!(Instant::now() < deadline, "the snapshotter's first full snapshot never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        etcd.etcdctl(&["put", &format!("after{i}"), "x"]);
    }
    let target = etcd.revision() as u64;
    // A delta holds what the watch delivered so far; ask until it reaches the last write.
    let mut covered = first;
    while covered < target {
        let (code, body) = get(&client, &s.url("/snapshot/delta")).await;
        assert_eq!(code, 200, "{body}");
        if body != "null" {
            let d: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(d["kind"], "Incr");
            assert_eq!(d["startRevision"].as_u64(), Some(covered + 1), "deltas continue the chain: {body}");
            covered = d["lastRevision"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "the watch never delivered revision {target}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(covered, target);
    let (code, body) = get(&client, &s.url("/snapshot/full?final=true")).await;
    assert_eq!(code, 200, "{body}");
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((full["isFinal"].as_bool(), full["lastRevision"].as_u64()), (Some(true), Some(target)), "{body}");
    assert!(full["snapName"].as_str().unwrap().ends_with(".gz.final"), "{body}");

    // Without a snapshotter: deltas are refused, full snapshots are taken directly.
    live.detach();
    stop_tx.send(()).unwrap();
    run.await.unwrap().expect("the snapshotter stops cleanly");
    let (code, body) = get(&client, &s.url("/snapshot/delta")).await;
    assert_eq!(code, 503, "{body}");
    let (code, body) = get(&client, &s.url("/snapshot/full")).await;
    assert_eq!(code, 200, "{body}");
    s.shutdown().await;
}

/// The objects in a Local store (relative keys), for "nothing happened" checks.
fn stored_objects(dir: &Path) -> Vec<String> {
    let root = dir.join("store");
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_and_post_act_and_head_delete_trace_do_nothing() {
    use reqwest::Method;
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    etcd.etcdctl(&["put", "/k", "v"]);
    let store = local_store(tmp.path());
    let metrics = Metrics::new();
    let source = Arc::new(EtcdClient::new(EtcdConfig::new(vec![etcd.endpoint()])));
    let snapshots: Arc<dyn SnapshotControl> =
        Arc::new(StoreSnapshots::new(source, store.clone(), full_options(), metrics.clone()));
    let conf = tmp.path().join("etcd.conf.yaml");
    std::fs::write(&conf, ETCD_CONF).unwrap();
    let out = tmp.path().join("served.conf.yaml");
    let init = Initialization {
        initializer: Initializer::new(store.clone()),
        // A missing data dir and a store without backups: a run ends `Successful` at once.
        options: InitOptions::new(
            Mode::Sanity,
            plan(&tmp.path().join("data"), "default=http://127.0.0.1:2380", "default"),
        ),
    };
    // No token, the Go tool's default: the method is the only guard.
    let mut config = ServerConfig::default();
    config.etcd_conf = Some(conf);
    config.config_output = Some(out.clone());
    config.pod_name = Some("etcd-main-0".into());
    let s = Running::start(Server::new(config, init, Some(snapshots), metrics), "http").await;
    let client = reqwest::Client::new();
    let starts = s.handle.initialization_starts();

    let action_routes =
        ["/initialization/start", "/snapshot/full", "/snapshot/delta", "/initialization/status", "/config"];
    let refused = [Method::HEAD, Method::DELETE, Method::TRACE, Method::PUT, Method::PATCH, Method::OPTIONS];
    let check_refused = async |path: &str, method: Method| {
        let r = client.request(method.clone(), s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        let bare = path.split('?').next().unwrap();
        let expected = if matches!(bare, "/initialization/status" | "/config") { "GET" } else { "GET, POST" };
        assert_eq!(allow.as_deref(), Some(expected), "{method} {path}");
        let body = r.text().await.unwrap();
        if method == Method::HEAD {
            assert!(body.is_empty(), "{body}");
        } else {
            assert!(body.contains(&format!("{method} is not allowed on {bare}")), "{body}");
        }
    };
    for path in action_routes {
        for method in refused.clone() {
            check_refused(path, method).await;
        }
        // A query string changes nothing.
        check_refused(&format!("{path}?mode=full&final=true"), Method::HEAD).await;
    }
    // Nothing happened: no initialization started, no snapshot stored, no config written.
    assert!(!starts.has_changed().unwrap(), "an initialization was started");
    assert_eq!(s.handle.init_status(), InitStatus::New);
    assert_eq!(stored_objects(tmp.path()), Vec::<String>::new(), "a snapshot was taken");
    assert!(!out.exists(), "/config wrote its file");
    let (_, text) = get(&client, &s.url("/metrics")).await;
    let taken = text
        .lines()
        .filter(|l| l.starts_with("etcdbr_snapshot_duration_seconds_count{"))
        .filter(|l| !l.ends_with(" 0"))
        .collect::<Vec<_>>();
    assert!(taken.is_empty(), "a snapshot was attempted: {taken:?}");

    // The read-only endpoints answer HEAD like GET, without a body.
    for path in ["/", "/healthz", "/metrics", "/snapshot/latest"] {
        let r = client.head(s.url(path)).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 200 | 503), "HEAD {path}: {}", r.status());
        assert!(r.text().await.unwrap().is_empty());
        let r = client.delete(s.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405, "DELETE {path}");
        assert_eq!(r.headers()["allow"], "GET, HEAD");
    }
    assert_eq!(stored_objects(tmp.path()), Vec::<String>::new());

    // GET (etcd-wrapper, druid's compaction) and POST (druid's on-demand task) do act.
    let r = client.post(s.url("/snapshot/full")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    assert_eq!(stored_objects(tmp.path()).len(), 1);
    etcd.etcdctl(&["put", "/k", "v2"]); // a new revision, so a new name
    let (code, body) = get(&client, &s.url("/snapshot/full")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(stored_objects(tmp.path()).len(), 2);
    let (code, _) = get(&client, &s.url("/config")).await;
    assert_eq!(code, 200);
    assert!(out.exists());

    // A final initialization status survives HEAD, DELETE and TRACE; only a GET reads (and
    // resets) it.
    let r = client.post(s.url("/initialization/start?mode=sanity")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(starts.has_changed().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.handle.init_status() == InitStatus::Progress {
        assert!(Instant::now() < deadline, "initialization still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = s.handle.init_status();
    assert_ne!(done, InitStatus::New);
    for method in [Method::HEAD, Method::DELETE, Method::TRACE] {
        check_refused("/initialization/status", method).await;
        assert_eq!(s.handle.init_status(), done, "a refused method reset the status");
    }
    assert_eq!(get(&client, &s.url("/initialization/status")).await.1, done.as_str());
    assert_eq!(get(&client, &s.url("/initialization/status")).await.1, "New");
    s.shutdown().await;
}
