//! The HTTP server: [`Server`], its configuration, the state its handlers share, the routes and
//! their methods, HTTPS; the status page, `/healthz` and `/metrics`. The other handlers live
//! by concern: `init.rs` (the initialization state machine's endpoints), `snapshot.rs` (the
//! snapshot endpoints and forwarding to the leader's sidecar), `config.rs` (`/config`,
//! `/member/data`).

mod config;
mod init;
mod snapshot;

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use brcore::cluster::ClusterAccess;
use brcore::metrics::Metrics;
use brcore::verify::Verification;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};
use validator::{InitOptions, Initializer, Mode};

use crate::error::Error;
use crate::leader::Role;
use crate::page::{self, PageData, VerificationState};
use crate::snapshots::SnapshotControl;

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
            .route("/initialization/start", get(init::init_start).post(init::init_start))
            .route("/initialization/status", get(init::init_status))
            .route("/snapshot/full", get(snapshot::snapshot_full).post(snapshot::snapshot_full))
            .route("/snapshot/delta", get(snapshot::snapshot_delta).post(snapshot::snapshot_delta))
            .route("/snapshot/latest", get(snapshot::snapshot_latest))
            .route("/snapshot/verify/latest", get(snapshot::verify_latest))
            .route("/config", get(config::config))
            .route("/member/data", get(config::member_data))
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

fn json(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Response, Error> {
    serde_json::to_string(v).map(json).map_err(|e| Error::Internal(format!("cannot encode JSON: {e}")))
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
