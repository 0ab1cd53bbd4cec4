//! A Kubernetes API stand-in for the Lease tests: `coordination.k8s.io/v1` Leases over HTTPS,
//! reached through a kubeconfig it writes.
//!
//! **Why a stand-in.** No kube-apiserver binary can be installed from the package registries
//! this project uses (Debian ships none, and neither PyPI nor crates.io carries one), and the Go
//! etcdbrctl's own tests use controller-runtime's fake client. So [`KubeApi`] is written for the
//! tests. It serves the part of the API the sidecar uses with the real server's semantics, over
//! real HTTPS (a private CA made with `openssl`), so the client under test runs unchanged:
//!
//! | request | answer |
//! |---|---|
//! | no or wrong `Authorization: Bearer` token | `401 Unauthorized` |
//! | a verb [`KubeApi::forbid`] denies | `403 Forbidden`, the RBAC message |
//! | `GET …/namespaces/{ns}/leases/{name}` | `200` and the Lease, `404 NotFound` |
//! | `POST …/namespaces/{ns}/leases` | `201`, `409 AlreadyExists` |
//! | `PUT …/leases/{name}` | `200`; `409 Conflict` when `metadata.resourceVersion` is set and stale; `404` (Leases are not created by an update) |
//! | `PATCH …/leases/{name}`, `application/merge-patch+json` or `application/strategic-merge-patch+json` | RFC 7386 merge (for a Lease's fields the strategic merge is the same); `409 Conflict` when the patch carries a stale `metadata.resourceVersion`; a patch that changes nothing leaves the `resourceVersion` alone |
//! | `PATCH` with JSON patch or server-side apply | `415` (not served by the stand-in) |
//! | `DELETE …/leases/{name}` | `200` and the Lease, `404` |
//!
//! Every write is validated as the API server decodes a Lease: `spec.renewTime` and
//! `spec.acquireTime` must be `metav1.MicroTime` (RFC 3339 with exactly six fractional digits,
//! as Go parses `2006-01-02T15:04:05.000000Z07:00`), other spec fields must have their types,
//! labels and annotations must map strings to strings; a violation is `400 BadRequest`.
//! Unknown spec fields are dropped with a `Warning` header (the server's default field
//! validation). Each write that changes the object takes the next `resourceVersion`.
//!
//! Faults a test can cause: [`KubeApi::stop`] closes the port and every open connection (the
//! API went away; [`KubeApi::start_again`] brings it back on the same port with the same
//! Leases), [`KubeApi::stall`] reads requests but never answers, [`KubeApi::accept_tokens`]
//! rotates the credentials, [`KubeApi::forbid`] takes a permission away and
//! [`KubeApi::interfere_after_get`] makes another writer change a Lease right after a client
//! read it (the next conditional write of that client meets a real conflict).
//!
//! Not served: discovery, watches, lists, other resources (`404`), in-cluster service-account
//! files (their paths are fixed under `/var/run/secrets`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};

use crate::free_port;

mod api;
mod wire;

pub use api::micro_time_utc;
use api::{create, store};
use wire::accept_loop;

/// The bearer token the stand-in accepts until told otherwise.
pub const DEFAULT_TOKEN: &str = "etcdbr-test-token";

const GROUP: &str = "coordination.k8s.io";
const API_VERSION: &str = "coordination.k8s.io/v1";

/// One request the stand-in answered, for tests to inspect what a client sent.
#[derive(Debug, Clone)]
pub struct Request {
    /// When it arrived.
    pub at: SystemTime,
    /// `GET`, `PATCH`, …
    pub method: String,
    /// The path with its query.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, as text.
    pub body: String,
    /// The status code answered.
    pub status: u16,
}

impl Request {
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// The API's state: what survives [`KubeApi::stop`].
#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<(String, String), Value>,
    last_rv: u64,
    next_uid: u64,
    tokens: Vec<String>,
    forbidden: HashSet<String>,
    interfere: HashMap<(String, String), u32>,
    log: Vec<Request>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    tls: Arc<rustls::ServerConfig>,
    /// Cleared to stop the accept loop and the connection threads.
    running: AtomicBool,
    stalled: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running Kubernetes API stand-in on a free loopback port (see the module docs); stopped on
/// drop.
#[derive(Debug)]
pub struct KubeApi {
    inner: Arc<Inner>,
    port: u16,
    accept: Option<JoinHandle<()>>,
    // Holds the CA, the server's key and certificate and the kubeconfigs.
    tmp: tempfile::TempDir,
}

impl KubeApi {
    /// Starts the stand-in with a fresh private CA; it accepts [`DEFAULT_TOKEN`].
    pub fn start() -> KubeApi {
        let tmp = tempfile::Builder::new().prefix("etcdbr-kube-").tempdir().expect("temp dir");
        make_certificates(tmp.path());
        let tls = server_tls(&tmp.path().join("tls.crt"), &tmp.path().join("tls.key"));
        let inner = Arc::new(Inner {
            state: Mutex::new(State { tokens: vec![DEFAULT_TOKEN.to_string()], ..State::default() }),
            tls: Arc::new(tls),
            running: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let mut api = KubeApi { inner, port: 0, accept: None, tmp };
        let mut attempts = 0;
        loop {
            let port = free_port();
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    api.port = port;
                    api.listen(l);
                    return api;
                }
                Err(e) if attempts < 20 => {
                    attempts += 1;
                    let _ = e;
                }
                Err(e) => panic!("cannot bind the Kubernetes API stand-in: {e}"),
            }
        }
    }

    fn listen(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("non-blocking listener");
        self.inner.running.store(true, Ordering::SeqCst);
        let inner = self.inner.clone();
        self.accept = Some(std::thread::spawn(move || accept_loop(inner, listener)));
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tmp.path().join("ca.crt")
    }

    /// Writes a kubeconfig whose current context reaches this API as a user with the bearer
    /// token `token`, in `namespace`, and returns its path.
    pub fn kubeconfig(&self, namespace: &str, token: &str) -> PathBuf {
        self.write_kubeconfig(namespace, &format!("token: {token}"))
    }

    /// Like [`KubeApi::kubeconfig`], with the token read from the file `token_file` (as a
    /// projected service-account token: the client must re-read it as it rotates).
    pub fn kubeconfig_with_token_file(&self, namespace: &str, token_file: &Path) -> PathBuf {
        self.write_kubeconfig(namespace, &format!("tokenFile: {}", token_file.display()))
    }

    fn write_kubeconfig(&self, namespace: &str, user: &str) -> PathBuf {
        let ca = std::fs::read(self.ca_file()).expect("read the CA");
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: stand-in\n  \
               cluster:\n    \
                 server: {url}\n    \
                 certificate-authority-data: {ca}\n\
             users:\n\
             - name: etcdbr\n  \
               user:\n    \
                 {user}\n\
             contexts:\n\
             - name: stand-in\n  \
               context:\n    \
                 cluster: stand-in\n    \
                 user: etcdbr\n    \
                 namespace: {namespace}\n\
             current-context: stand-in\n",
            url = self.url(),
        );
        let n = std::fs::read_dir(self.tmp.path()).map(|d| d.count()).unwrap_or(0);
        let path = self.tmp.path().join(format!("kubeconfig-{n}"));
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Creates a Lease as etcd-druid does (labels, no spec values) and returns it.
    pub fn create_lease(&self, namespace: &str, name: &str) -> Value {
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/managed-by": "etcd-druid", "app.kubernetes.io/name": name},
            },
            "spec": {},
        });
        let mut st = self.inner.state();
        match create(&mut st, namespace, body) {
            Ok((_, lease)) => lease,
            Err(e) => panic!("create lease {namespace}/{name}: {}", e.1),
        }
    }

    /// The Lease, as a GET would return it.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        self.inner.state().leases.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Another writer replaces the Lease's spec (a new `resourceVersion`).
    pub fn set_lease_spec(&self, namespace: &str, name: &str, spec: Value) {
        let mut st = self.inner.state();
        let key = (namespace.to_string(), name.to_string());
        let mut lease = st.leases.get(&key).cloned().unwrap_or_else(|| panic!("no lease {namespace}/{name}"));
        lease["spec"] = spec;
        store(&mut st, key, lease).unwrap_or_else(|e| panic!("set lease spec: {}", e.1));
    }

    /// Deletes the Lease (as if druid had not created it yet).
    pub fn delete_lease(&self, namespace: &str, name: &str) {
        self.inner.state().leases.remove(&(namespace.to_string(), name.to_string()));
    }

    /// From now on only these bearer tokens are accepted.
    pub fn accept_tokens(&self, tokens: &[&str]) {
        self.inner.state().tokens = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// Denies a verb (`get`, `patch`, `update`, `create`, `delete`, `list`) with `403`.
    pub fn forbid(&self, verb: &str) {
        self.inner.state().forbidden.insert(verb.to_string());
    }

    /// Allows every verb again.
    pub fn permit_all(&self) {
        self.inner.state().forbidden.clear();
    }

    /// After each of the next `times` GETs of this Lease, another writer changes it (an
    /// annotation), so a conditional write based on that GET meets `409 Conflict`.
    pub fn interfere_after_get(&self, namespace: &str, name: &str, times: u32) {
        self.inner.state().interfere.insert((namespace.to_string(), name.to_string()), times);
    }

    /// While `true`, requests are read but never answered (an API server that hangs).
    pub fn stall(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::SeqCst);
    }

    /// The API goes away: the port is closed and every open connection is cut.
    pub fn stop(&mut self) {
        self.inner.running.store(false, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for c in self.inner.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// The API comes back on the same port, with the Leases it had.
    pub fn start_again(&mut self) {
        if self.accept.is_some() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind port {} again: {e}", self.port),
            }
        };
        self.listen(listener);
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.state().log.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stall(false);
        self.stop();
    }
}

/// Makes a private CA and a server certificate for 127.0.0.1 and localhost signed by it.
fn make_certificates(dir: &Path) {
    crate::PrivateCa::new(dir, "stand-in-ca").leaf("tls", "kube-apiserver", "IP:127.0.0.1,DNS:localhost", None);
}

fn server_tls(cert: &Path, key: &Path) -> rustls::ServerConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("read tls.crt").map(|c| c.expect("a PEM certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("read tls.key");
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the stand-in's certificate and key")
}
