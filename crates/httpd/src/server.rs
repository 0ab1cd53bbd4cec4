//! The HTTP server: [`Server`], its routes, the initialization state machine and HTTPS.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use brcore::cluster::{ClusterAccess, LiveCluster};
use brcore::metrics::Metrics;
use brcore::verify::Verification;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};
use validator::{Action, InitOptions, Initializer, Mode, Outcome};

use crate::error::Error;
use crate::etcdconf;
use crate::leader::{FORWARDED_HEADER, Role};
use crate::page::{self, PageData, VerificationState};
use crate::snapshots::{LatestJson, SnapshotControl, SnapshotJson};

/// Where `/config` reads the etcd config when `ETCD_CONF` is not set (the reference's default).
pub const DEFAULT_ETCD_CONF: &str = "/var/etcd/config/etcd.conf.yaml";

/// How many server-side failures the status page remembers.
const KEPT_ERRORS: usize = 20;

/// The initialization state machine of `/initialization/*`, as the reference's.
///
/// `New` → (`/initialization/start`) → `Progress` → `Successful` | `Failed`; reading a final
/// state through `/initialization/status` returns it once and resets the machine to `New`, so
/// the etcd side can start another initialization after its next restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitStatus {
    /// Nothing running; `/initialization/start` starts one.
    New,
    /// Validation (and maybe a restore) is running.
    Progress,
    /// The last initialization finished; etcd may start.
    Successful,
    /// The last initialization failed; see the log or the status page.
    Failed,
}

impl InitStatus {
    /// The body of `/initialization/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            InitStatus::New => "New",
            InitStatus::Progress => "Progress",
            InitStatus::Successful => "Successful",
            InitStatus::Failed => "Failed",
        }
    }
}

/// Certificate and key files for HTTPS (`--server-cert`, `--server-key`), PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How the server behaves (the `server` sub-command's flags and environment, checked):
/// [`ServerConfig::default`], then set what differs.
/// Fields may be added in any release (the struct is `#[non_exhaustive]`).
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Serve HTTPS with these files instead of HTTP.
    pub tls: Option<TlsFiles>,
    /// When set, `/initialization/start` and `/snapshot/*` triggers need
    /// `Authorization: Bearer <token>`; reads stay open.
    pub auth_token: Option<String>,
    /// The etcd config `/config` reads (`$ETCD_CONF`; [`DEFAULT_ETCD_CONF`] when `None`).
    pub etcd_conf: Option<PathBuf>,
    /// Where `/config` also writes what it serves (the reference writes `$HOME/etcd.conf.yaml`).
    pub config_output: Option<PathBuf>,
    /// This member's name from the environment (`POD_NAME`), used by `/config`.
    pub pod_name: Option<String>,
    /// Validation mode when `/initialization/start` has no `mode` (`--validation-mode`).
    pub default_mode: Mode,
    /// This sidecar's role in a multi-member cluster (from a [`crate::LeaderElector`]): while
    /// it is a follower, `/snapshot/full` and `/snapshot/delta` are forwarded to the leader's
    /// sidecar; while the role is unknown they answer 503. `None`: always served here.
    pub leadership: Option<watch::Receiver<Role>>,
    /// The cluster this member belongs to: `/config` trims `initial-cluster` to the running
    /// members and sets `initial-cluster-state` from it, and `/member/data` names this member
    /// after it. `None`: the config file alone.
    pub cluster: Option<Arc<dyn ClusterAccess>>,
    /// The CA bundle other sidecars' HTTPS certificates are checked against when requests are
    /// forwarded to the leader's sidecar (`--cacert`, as the reference).
    pub peer_cacert: Option<PathBuf>,
    /// Scheduled backup verification (`--verification-period`), when it is on: its results for
    /// `/snapshot/verify/latest` and the status page. `None`: off.
    pub verification: Option<VerificationFeed>,
}

/// What the server shows of the scheduled verification that runs beside it (on the leader's
/// sidecar only; followers forward `/snapshot/verify/latest` to the leader's).
#[derive(Debug, Clone)]
pub struct VerificationFeed {
    /// How often it runs.
    pub period: std::time::Duration,
    /// The newest result (`None` until the first run finishes).
    pub results: watch::Receiver<Option<Arc<Verification>>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log.
        f.debug_struct("ServerConfig")
            .field("tls", &self.tls)
            .field("auth_token", &self.auth_token.as_ref().map(|_| "<redacted>"))
            .field("etcd_conf", &self.etcd_conf)
            .field("config_output", &self.config_output)
            .field("pod_name", &self.pod_name)
            .field("default_mode", &self.default_mode)
            .field("leadership", &self.leadership.as_ref().map(|r| r.borrow().clone()))
            .field("verification", &self.verification.as_ref().map(|v| v.period))
            .field("cluster", &self.cluster)
            .field("peer_cacert", &self.peer_cacert)
            .finish()
    }
}

/// What `/initialization/start` runs: the initializer and the options of every run (their
/// `mode` is replaced by the request's).
#[derive(Debug, Clone)]
pub struct Initialization {
    /// Validates and restores.
    pub initializer: Initializer,
    /// The data dir, restore plan and namespace.
    pub options: InitOptions,
}

#[derive(Debug, Default)]
struct Events {
    errors: VecDeque<(i64, String)>,
    last_initialization: Option<String>,
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    init: Initialization,
    snapshots: Option<Arc<dyn SnapshotControl>>,
    metrics: Metrics,
    status: watch::Sender<InitStatus>,
    /// Counts initializations started; unlike `status`, no start can be missed by a receiver.
    starts: watch::Sender<u64>,
    healthy: AtomicBool,
    events: Mutex<Events>,
    /// The client that forwards snapshot requests to the leader's sidecar, made on first use.
    upstream: std::sync::OnceLock<reqwest::Client>,
}

/// Where a snapshot request is served.
enum Route {
    /// By this sidecar's snapshotter.
    Here,
    /// By the leader's sidecar at this base URL.
    Forward(String),
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Shared {
    /// Remembers a server-side failure for the status page (4xx are the client's and are not kept).
    fn record(&self, what: &str, e: &Error) {
        if e.status().is_server_error() {
            self.remember(format!("{what}: {e}"));
        }
    }

    fn remember(&self, line: String) {
        if let Ok(mut ev) = self.events.lock() {
            if ev.errors.len() == KEPT_ERRORS {
                ev.errors.pop_front();
            }
            ev.errors.push_back((unix_now(), line));
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), Error> {
        let Some(token) = self.config.auth_token.as_deref() else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(Error::Unauthorized),
        }
    }

    fn snapshots(&self) -> Result<&Arc<dyn SnapshotControl>, Error> {
        self.snapshots.as_ref().ok_or_else(|| {
            Error::NotConfigured("snapshots are not configured on this server (no --storage-provider)".into())
        })
    }

    /// Decides who serves a snapshot request: here, or the leader's sidecar.
    fn route(&self, headers: &HeaderMap) -> Result<Route, Error> {
        let Some(role) = &self.config.leadership else {
            return Ok(Route::Here);
        };
        let role = role.borrow().clone();
        match role {
            Role::Leader => Ok(Route::Here),
            Role::Unknown => Err(Error::Unavailable(
                "this sidecar does not know which etcd member leads (etcd unreachable, or no quorum); try again later"
                    .into(),
            )),
            Role::Follower { .. } if headers.contains_key(FORWARDED_HEADER) => Err(Error::Unavailable(
                "forwarded here as to the leader's sidecar, but this etcd member no longer leads; try again".into(),
            )),
            Role::Follower { sidecar: Some(url), .. } => Ok(Route::Forward(url)),
            Role::Follower { sidecar: None, leader_name, leader_id } => Err(Error::Unavailable(format!(
                "etcd member {leader_name:?} ({leader_id:x}) leads, but where its sidecar listens is unknown; \
                 name it in --sidecar-endpoints"
            ))),
        }
    }

    fn upstream(&self) -> Result<&reqwest::Client, Error> {
        if let Some(c) = self.upstream.get() {
            return Ok(c);
        }
        let client = crate::leader::sidecar_client(self.config.peer_cacert.as_deref()).map_err(Error::Internal)?;
        Ok(self.upstream.get_or_init(|| client))
    }

    /// Forwards a snapshot request to the leader's sidecar at `base` after checking its
    /// `/healthz` (as the reference's reverse proxy does), passing the bearer token on, and
    /// returns its answer unchanged.
    async fn forward(&self, base: &str, method: Method, uri: &Uri, headers: &HeaderMap) -> Result<Response, Error> {
        let client = self.upstream()?;
        let health = client
            .get(format!("{base}/healthz"))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("{base} does not answer: {e}")))?;
        if !health.status().is_success() {
            return Err(Error::Unavailable(format!(
                "the leader's sidecar at {base} is not ready (its /healthz answered {}); try again later",
                health.status().as_u16()
            )));
        }
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let mut request = client.request(method, format!("{base}{path}")).header(FORWARDED_HEADER, "1");
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let answer = request.send().await.map_err(|e| Error::Upstream(format!("{base}{path}: {e}")))?;
        let status = answer.status();
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let body =
            answer.bytes().await.map_err(|e| Error::Upstream(format!("{base}{path}: reading the answer: {e}")))?;
        info!(leader = base, path, status = status.as_u16(), "snapshot request forwarded to the leader's sidecar");
        let mut response = (status, body).into_response();
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        Ok(response)
    }

    fn refuse_while_initializing(&self) -> Result<(), Error> {
        if *self.status.borrow() == InitStatus::Progress {
            return Err(Error::Busy(
                "initialization is running and replaces the data dir; snapshots resume once etcd is back".into(),
            ));
        }
        Ok(())
    }
}

/// The methods `path` answers, or `None` for a path that is not served (404).
///
/// An endpoint that acts (starts an initialization, takes a snapshot) or whose `GET` changes
/// state (reading a final initialization status resets it; `/config` writes the rendered file)
/// answers `GET` (what etcd-wrapper sends), and `POST` where a client sends it (etcd-druid's
/// on-demand snapshot task). `HEAD` there is refused without acting, as is every other method:
/// a probe or a stray `DELETE`/`TRACE` must not stop the snapshotter or take a snapshot. The
/// read-only endpoints answer `GET` and `HEAD`.
pub fn allowed_methods(path: &str) -> Option<&'static [Method]> {
    const READ: &[Method] = &[Method::GET, Method::HEAD];
    const ACT: &[Method] = &[Method::GET, Method::POST];
    const GET_ONLY: &[Method] = &[Method::GET];
    match path {
        "/" | "/healthz" | "/metrics" | "/snapshot/latest" | "/snapshot/verify/latest" | "/member/data" => Some(READ),
        "/initialization/start" | "/snapshot/full" | "/snapshot/delta" => Some(ACT),
        "/initialization/status" | "/config" => Some(GET_ONLY),
        _ => None,
    }
}

/// Answers `405 Method Not Allowed` (with `Allow`) to a method the path does not take (see
/// [`allowed_methods`]), before routing, so no handler runs for it.
async fn only_allowed_methods(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(allowed) = allowed_methods(request.uri().path()) else {
        return next.run(request).await;
    };
    if allowed.contains(request.method()) {
        return next.run(request).await;
    }
    let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
    let body = if request.method() == Method::HEAD {
        String::new()
    } else {
        format!("{} is not allowed on {}; use {allow}\n", request.method(), request.uri().path())
    };
    let mut response = (StatusCode::METHOD_NOT_ALLOWED, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, v);
    }
    response
}

/// Compares two secrets without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Go's `strconv.ParseBool`, which the reference uses for `?final=`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The etcdbrctl HTTP server (see the crate docs for the endpoints).
#[derive(Debug, Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

/// A handle on a running [`Server`] for the code around it: report health, follow
/// initializations (to pause the snapshotter while the data dir is replaced).
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Sets what `/healthz` answers: 200 when `true` (etcd reachable and snapshots running), 503
    /// otherwise. Starting an initialization sets it to `false`.
    pub fn set_healthy(&self, healthy: bool) {
        if self.shared.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            info!(healthy, "health changed");
        }
    }

    /// The initialization status, without resetting a final one.
    pub fn init_status(&self) -> InitStatus {
        *self.shared.status.borrow()
    }

    /// A receiver of the status. A fast initialization can pass from `Progress` to its final
    /// state between two looks; [`ServerHandle::initialization_starts`] never misses one.
    pub fn subscribe(&self) -> watch::Receiver<InitStatus> {
        self.shared.status.subscribe()
    }

    /// A receiver whose `changed()` completes when an initialization starts after this call
    /// (the value counts the starts): the cue to stop the snapshotter, whose view of etcd's
    /// history a restore invalidates.
    pub fn initialization_starts(&self) -> watch::Receiver<u64> {
        self.shared.starts.subscribe()
    }
}

impl Server {
    /// A server that initializes with `init`, takes snapshots through `snapshots` (`None`: no
    /// store, the snapshot endpoints answer 405 as the reference's) and exports `metrics`.
    pub fn new(
        config: ServerConfig,
        init: Initialization,
        snapshots: Option<Arc<dyn SnapshotControl>>,
        metrics: Metrics,
    ) -> Server {
        let (status, _) = watch::channel(InitStatus::New);
        let (starts, _) = watch::channel(0);
        Server {
            shared: Arc::new(Shared {
                config,
                init,
                snapshots,
                metrics,
                status,
                starts,
                healthy: AtomicBool::new(false),
                events: Mutex::new(Events::default()),
                upstream: std::sync::OnceLock::new(),
            }),
        }
    }

    /// A handle for health and status.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { shared: self.shared.clone() }
    }

    /// The routes, for embedding in another axum app or serving by hand. Each path answers only
    /// the methods of [`allowed_methods`]; any other is `405` with an `Allow` header, before
    /// any handler runs.
    pub fn router(&self) -> Router {
        let tls = self.shared.config.tls.is_some();
        Router::new()
            .route("/", get(page_handler))
            .route("/initialization/start", get(init_start).post(init_start))
            .route("/initialization/status", get(init_status))
            .route("/snapshot/full", get(snapshot_full).post(snapshot_full))
            .route("/snapshot/delta", get(snapshot_delta).post(snapshot_delta))
            .route("/snapshot/latest", get(snapshot_latest))
            .route("/snapshot/verify/latest", get(verify_latest))
            .route("/config", get(config))
            .route("/member/data", get(member_data))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found; see / for the endpoints\n") })
            .layer(axum::middleware::from_fn(only_allowed_methods))
            .layer(axum::middleware::map_response(move |mut r: Response| async move {
                let h = r.headers_mut();
                h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
                // The status page has inline CSS and nothing else.
                h.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
                );
                if tls {
                    h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
                }
                r
            }))
            .with_state(self.shared.clone())
    }

    /// Serves on `listener` (HTTP, or HTTPS when the config has [`TlsFiles`]) until `shutdown`
    /// completes. Fails only when the certificate or key cannot be loaded, or the listener
    /// fails; a failing request or connection never stops the server.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let addr = listener.local_addr().map_err(|e| Error::Internal(format!("listener address: {e}")))?;
        let router = self.router();
        match self.shared.config.tls.clone() {
            None => {
                info!(%addr, "serving HTTP");
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(|e| Error::Internal(format!("HTTP server on {addr}: {e}")))
            }
            Some(files) => {
                let acceptor = crate::tls::acceptor(&files)?;
                info!(%addr, cert = %files.cert.display(), "serving HTTPS");
                crate::tls::serve(listener, acceptor, router, shutdown).await
            }
        }
    }
}

async fn page_handler(State(s): State<Arc<Shared>>) -> Response {
    let status = s.status.borrow().as_str();
    let latest = match &s.snapshots {
        None => None,
        Some(c) => Some(c.latest().await.map_err(|e| e.to_string())),
    };
    let (errors, last) = match s.events.lock() {
        Ok(ev) => (ev.errors.iter().cloned().collect(), ev.last_initialization.clone()),
        Err(_) => (Vec::new(), None),
    };
    let member = s.config.pod_name.clone().or_else(|| Some(s.init.options.plan.name.clone()));
    let role = s.config.leadership.as_ref().map(|r| r.borrow().clone());
    let run = s.config.verification.as_ref().and_then(|v| v.results.borrow().clone());
    let verification = match (&s.config.verification, &role) {
        (None, _) => VerificationState::Off,
        (Some(_), Some(Role::Follower { leader_name, .. })) => VerificationState::Elsewhere(leader_name.clone()),
        (Some(v), _) => match &run {
            None => VerificationState::Pending { period: v.period },
            Some(run) => VerificationState::Done { period: v.period, run },
        },
    };
    let html = page::render(&PageData {
        init_status: status,
        last_initialization: last.as_deref(),
        healthy: s.healthy.load(Ordering::SeqCst),
        latest,
        errors,
        member: member.as_deref(),
        role: role.map(|r| r.to_string()),
        verification,
    });
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

async fn init_start(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<StatusCode, Error> {
    s.authorize(&headers)?;
    let mode = match q.get("mode").map(String::as_str) {
        None | Some("") => s.config.default_mode,
        Some("full") => Mode::Full,
        Some("sanity") => Mode::Sanity,
        Some(other) => return Err(Error::BadRequest(format!("unknown mode {other:?}: use full or sanity"))),
    };
    let started = s.status.send_if_modified(|st| {
        if *st == InitStatus::New {
            *st = InitStatus::Progress;
            true
        } else {
            false
        }
    });
    if !started {
        // As the reference: a second start while one runs (or before its result was read) is a
        // no-op that still answers 200.
        info!(status = s.status.borrow().as_str(), "initialization already started; nothing to do");
        return Ok(StatusCode::OK);
    }
    s.healthy.store(false, Ordering::SeqCst);
    s.starts.send_modify(|n| *n += 1);
    info!(mode = %mode, "initialization started");
    let shared = s.clone();
    tokio::spawn(async move {
        let mut opts = shared.init.options.clone();
        opts.mode = mode;
        let initializer = shared.init.initializer.clone();
        // A separate task, so even a panic inside becomes `Failed` instead of a stuck `Progress`.
        let run = tokio::spawn(async move { initializer.initialize(&opts).await });
        let (status, line) = match run.await {
            Ok(Ok(outcome)) => {
                let line = summarize(&outcome);
                info!("initialization succeeded: {line}");
                (InitStatus::Successful, line)
            }
            Ok(Err(e)) => {
                error!(error = %e, "initialization failed");
                shared.remember(format!("initialization: {e}"));
                (InitStatus::Failed, format!("failed: {e}"))
            }
            Err(e) => {
                error!(error = %e, "initialization task died");
                shared.remember(format!("initialization: {e}"));
                (InitStatus::Failed, format!("failed: the initialization task died ({e})"))
            }
        };
        if let Ok(mut ev) = shared.events.lock() {
            ev.last_initialization = Some(format!("{} ({line})", humantime::format_rfc3339_seconds(SystemTime::now())));
        }
        shared.status.send_replace(status);
    });
    Ok(StatusCode::OK)
}

fn summarize(o: &Outcome) -> String {
    let v = &o.validation;
    let action = match &o.action {
        Action::Nothing => "data dir kept".to_string(),
        Action::Restored(r) => {
            format!("restored revision {} from {} + {} delta(s)", r.stats.revision, r.full, r.deltas.len())
        }
        Action::FreshStart => "no backups to restore from: etcd starts empty".to_string(),
        Action::JoinedAsLearner { member_id, removed: None } => {
            format!("joined the running cluster as learner {member_id:x}; etcd syncs from the leader")
        }
        Action::JoinedAsLearner { member_id, removed: Some(old) } => {
            format!("removed member {old:x} and added it back as learner {member_id:x}; etcd syncs from the leader")
        }
    };
    format!("{} validation: {}; {action}", v.mode, v.verdict)
}

async fn init_status(State(s): State<Arc<Shared>>) -> String {
    let mut seen = InitStatus::New;
    s.status.send_if_modified(|st| {
        seen = *st;
        if matches!(st, InitStatus::Successful | InitStatus::Failed) {
            *st = InitStatus::New;
            true
        } else {
            false
        }
    });
    seen.as_str().to_string()
}

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Response, Error> {
    serde_json::to_string(v).map(json).map_err(|e| Error::Internal(format!("cannot encode JSON: {e}")))
}

async fn snapshot_full(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Error> {
    s.authorize(&headers)?;
    let is_final = match q.get("final").map(String::as_str) {
        None | Some("") => false,
        Some(v) => parse_go_bool(v)
            .ok_or_else(|| Error::BadRequest(format!("final={v:?} is not a boolean (true or false)")))?,
    };
    let ctl = s.snapshots()?;
    s.refuse_while_initializing()?;
    if let Route::Forward(base) = s.route(&headers)? {
        return s.forward(&base, method, &uri, &headers).await.inspect_err(|e| s.record("full snapshot", e));
    }
    match ctl.full(is_final).await {
        Ok(snap) => to_json(&SnapshotJson::from(&snap)),
        Err(e) => {
            s.record("full snapshot", &e);
            Err(e)
        }
    }
}

async fn snapshot_delta(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    s.authorize(&headers)?;
    let ctl = s.snapshots()?;
    s.refuse_while_initializing()?;
    if let Route::Forward(base) = s.route(&headers)? {
        return s.forward(&base, method, &uri, &headers).await.inspect_err(|e| s.record("delta snapshot", e));
    }
    match ctl.delta().await {
        Ok(snap) => to_json(&snap.as_ref().map(SnapshotJson::from)),
        Err(e) => {
            s.record("delta snapshot", &e);
            Err(e)
        }
    }
}

async fn snapshot_latest(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let ctl = s.snapshots()?;
    match ctl.latest().await {
        Ok(latest) => to_json(&LatestJson::from(&latest)),
        Err(e) => {
            s.record("latest snapshots", &e);
            Err(e)
        }
    }
}

/// `/snapshot/verify/latest`: the newest scheduled verification as JSON (`null` before the
/// first finishes); on a follower, the leader's sidecar's answer.
async fn verify_latest(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let Some(feed) = &s.config.verification else {
        return Err(Error::NotFound(
            "scheduled verification is off on this server (--verification-period); `etcdbrctl verify` runs one".into(),
        ));
    };
    if let Route::Forward(base) = s.route(&headers)? {
        return s.forward(&base, method, &uri, &headers).await.inspect_err(|e| s.record("verification", e));
    }
    let latest = feed.results.borrow().clone();
    to_json(&latest.as_deref())
}

/// How long `/config` waits for a quorum to list the running members (the reference tries
/// twice, 2 s apart); without one, the config's own cluster is served (a bootstrap).
const CONFIG_LIVE_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

async fn config(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let path = s.config.etcd_conf.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ETCD_CONF));
    let live = match &s.config.cluster {
        Some(cluster) => match cluster.spec() {
            Ok(spec) if spec.is_multi_member() => cluster.members(&spec).live_within(CONFIG_LIVE_WAIT).await,
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot read the cluster for /config; serving the config's own cluster");
                None
            }
        },
        None => None,
    };
    let result =
        render_config(&path, s.config.pod_name.as_deref(), s.config.config_output.as_deref(), live.as_ref()).await;
    match result {
        Ok(text) => Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response()),
        Err(e) => {
            s.record("config", &e);
            Err(e)
        }
    }
}

async fn render_config(
    path: &Path,
    pod_name: Option<&str>,
    output: Option<&Path>,
    live: Option<&LiveCluster>,
) -> Result<String, Error> {
    let shown = path.display().to_string();
    let text = tokio::fs::read_to_string(path).await.map_err(|e| Error::EtcdConfig {
        path: shown.clone(),
        why: format!("cannot read it ({e}); set ETCD_CONF to the etcd config file"),
    })?;
    let rendered =
        etcdconf::render_for_member(&text, pod_name, live).map_err(|why| Error::EtcdConfig { path: shown, why })?;
    if let Some(out) = output {
        write_atomically(out, rendered.as_bytes())
            .await
            .map_err(|e| Error::Backup(brcore::error::Error::io(out, e)))?;
    }
    Ok(rendered)
}

/// Writes `bytes` to a temp file beside `path` and renames it over `path`, so a reader never
/// sees half a config.
async fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    tokio::fs::write(&tmp, bytes).await?;
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(())
}

/// `/member/data`: what this member's data dir holds, for the other members' sidecars (see
/// `validator::member_data`); read-only.
async fn member_data(State(s): State<Arc<Shared>>) -> Result<Response, Error> {
    let member = match &s.config.cluster {
        Some(c) => c.spec().map(|spec| spec.this).unwrap_or_else(|_| s.init.options.plan.name.clone()),
        None => s.init.options.plan.name.clone(),
    };
    let data_dir = s.init.options.plan.data_dir.clone();
    let report = tokio::task::spawn_blocking(move || validator::data_report(&data_dir, &member))
        .await
        .map_err(|e| Error::Internal(format!("the data dir check died: {e}")))?;
    to_json(&report)
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let healthy = s.healthy.load(Ordering::SeqCst);
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, [(header::CONTENT_TYPE, "application/json")], format!("{{\"health\":{healthy}}}")).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let text = s.metrics.encode_text();
    if text.is_empty() {
        warn!("the metrics registry encoded to nothing");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools_and_token_comparison() {
        assert_eq!(parse_go_bool("True"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn the_token_stays_out_of_debug_output() {
        let c = ServerConfig { auth_token: Some("s3cret".into()), ..Default::default() };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
