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
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::free_port;

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
    let p = |name: &str| dir.join(name).display().to_string();
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        .expect("write the extension file");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let (ca, ca_key, csr, crt, key, ext) =
        (p("ca.crt"), p("ca.key"), p("tls.csr"), p("tls.crt"), p("tls.key"), p("ext"));
    let steps: Vec<Vec<&str>> = vec![
        [&["req", "-x509"][..], &ec, &["-days", "2", "-subj", "/CN=stand-in-ca", "-keyout", &ca_key, "-out", &ca]]
            .concat(),
        [&["req"][..], &ec, &["-subj", "/CN=kube-apiserver", "-keyout", &key, "-out", &csr]].concat(),
        vec!["x509", "-req", "-in", &csr, "-CA", &ca, "-CAkey", &ca_key, "-CAcreateserial", "-days", "2"]
            .into_iter()
            .chain(["-extfile", &ext, "-out", &crt])
            .collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .expect("openssl (apt-get install openssl) makes the stand-in's certificates");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
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

fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    while inner.running.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((tcp, _)) => {
                let _ = tcp.set_nonblocking(false);
                if let Ok(c) = tcp.try_clone() {
                    inner.conns.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                }
                let inner = inner.clone();
                std::thread::spawn(move || serve_connection(inner, tcp));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// One HTTP/1.1 request as read off the wire.
struct HttpRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn serve_connection(inner: Arc<Inner>, tcp: TcpStream) {
    let Ok(conn) = rustls::ServerConnection::new(inner.tls.clone()) else { return };
    let mut stream = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        let req = match read_request(&mut stream) {
            Ok(Some(r)) => r,
            _ => return,
        };
        while inner.stalled.load(Ordering::SeqCst) {
            if !inner.running.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !inner.running.load(Ordering::SeqCst) {
            return;
        }
        let (status, body, warnings) = handle(&inner, &req);
        let close = req.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            reason_phrase(status),
            body.len()
        );
        for w in warnings {
            head.push_str(&format!("Warning: 299 - \"{w}\"\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let w = stream.get_mut();
        if w.write_all(head.as_bytes()).and_then(|()| w.write_all(body.as_bytes())).and_then(|()| w.flush()).is_err()
            || close
        {
            return;
        }
    }
}

fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut req = HttpRequest { method, target, headers, body: Vec::new() };
    if req.header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            chunk.truncate(size);
            req.body.extend_from_slice(&chunk);
        }
    } else if let Some(n) = req.header("content-length").and_then(|n| n.parse::<usize>().ok()) {
        req.body = vec![0; n];
        r.read_exact(&mut req.body)?;
    }
    Ok(Some(req))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        _ => "Status",
    }
}

/// An error answer: status code and message (turned into a `Status` object).
type Failure = (u16, String, &'static str, Option<Value>);

fn status_body(code: u16, message: &str, reason: &str, details: Option<Value>) -> String {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s.to_string()
}

fn details(name: &str) -> Option<Value> {
    Some(json!({"name": name, "group": GROUP, "kind": "leases"}))
}

fn not_found(name: &str) -> Failure {
    (404, format!("leases.{GROUP} \"{name}\" not found"), "NotFound", details(name))
}

fn conflict(name: &str) -> Failure {
    (
        409,
        format!(
            "Operation cannot be fulfilled on leases.{GROUP} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        "Conflict",
        details(name),
    )
}

fn bad_request(message: String) -> Failure {
    (400, message, "BadRequest", None)
}

/// Answers one request: status, body and `Warning` texts; logs it.
fn handle(inner: &Inner, req: &HttpRequest) -> (u16, String, Vec<String>) {
    let mut st = inner.state();
    let mut warnings = Vec::new();
    let outcome = route(&mut st, req, &mut warnings);
    let (status, body) = match outcome {
        Ok((code, v)) => (code, v.to_string()),
        Err((code, msg, reason, det)) => (code, status_body(code, &msg, reason, det)),
    };
    st.log.push(Request {
        at: SystemTime::now(),
        method: req.method.clone(),
        path: req.target.clone(),
        content_type: req.header("content-type").map(str::to_string),
        body: String::from_utf8_lossy(&req.body).into_owned(),
        status,
    });
    (status, body, warnings)
}

fn route(st: &mut State, req: &HttpRequest, warnings: &mut Vec<String>) -> Result<(u16, Value), Failure> {
    let token = req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    if !token.is_some_and(|t| st.tokens.iter().any(|ok| ok == t)) {
        return Err((401, "Unauthorized".into(), "Unauthorized", None));
    }
    let path = req.target.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ns, name) = match segs.as_slice() {
        ["apis", g, "v1", "namespaces", ns, "leases"] if *g == GROUP => (ns.to_string(), None),
        ["apis", g, "v1", "namespaces", ns, "leases", name] if *g == GROUP => (ns.to_string(), Some(name.to_string())),
        _ => {
            return Err((404, "the server could not find the requested resource".into(), "NotFound", None));
        }
    };
    let verb = match (req.method.as_str(), name.is_some()) {
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        _ => return Err((405, format!("{} is not allowed here", req.method), "MethodNotAllowed", None)),
    };
    if st.forbidden.contains(verb) {
        let what = name
            .as_deref()
            .map(|n| format!("leases.{GROUP} \"{n}\" is forbidden"))
            .unwrap_or_else(|| format!("leases.{GROUP} is forbidden"));
        return Err((
            403,
            format!(
                "{what}: User \"system:serviceaccount:{ns}:etcd\" cannot {verb} resource \"leases\" in API group \"{GROUP}\" in the namespace \"{ns}\""
            ),
            "Forbidden",
            Some(json!({"name": name.clone().unwrap_or_default(), "group": GROUP, "kind": "leases"})),
        ));
    }
    let body = || -> Result<Value, Failure> {
        serde_json::from_slice(&req.body).map_err(|e| bad_request(format!("the body is not JSON: {e}")))
    };
    match (verb, name) {
        ("list", _) => {
            let items: Vec<Value> = st.leases.iter().filter(|((n, _), _)| *n == ns).map(|(_, v)| v.clone()).collect();
            Ok((
                200,
                json!({"apiVersion": API_VERSION, "kind": "LeaseList", "metadata": {"resourceVersion": st.last_rv.to_string()}, "items": items}),
            ))
        }
        ("create", _) => {
            let mut obj = body()?;
            warnings.extend(sanitize(&mut obj)?);
            create(st, &ns, obj)
        }
        ("get", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let lease = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let interfere = match st.interfere.get_mut(&key) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            };
            if interfere {
                let mut other = lease.clone();
                let n = other["metadata"]["annotations"]["stand-in/other-writer"]
                    .as_str()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0);
                other["metadata"]["annotations"]["stand-in/other-writer"] = json!((n + 1).to_string());
                store(st, key, other)?;
            }
            Ok((200, lease))
        }
        ("delete", Some(name)) => {
            let lease = st.leases.remove(&(ns, name.clone())).ok_or_else(|| not_found(&name))?;
            Ok((200, lease))
        }
        ("update", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let current = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let mut obj = body()?;
            if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                return Err(bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    obj["metadata"]["name"]
                )));
            }
            match obj["metadata"]["resourceVersion"].as_str() {
                Some(rv) if !rv.is_empty() && Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
                    return Err(conflict(&name));
                }
                _ => {}
            }
            warnings.extend(sanitize(&mut obj)?);
            for k in ["uid", "creationTimestamp", "namespace"] {
                obj["metadata"][k] = current["metadata"][k].clone();
            }
            if same_but_version(&obj, &current) {
                return Ok((200, current));
            }
            store(st, key, obj)
        }
        ("patch", Some(name)) => {
            let key = (ns.clone(), name.clone());
            let ct = req.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
            if ct != "application/merge-patch+json" && ct != "application/strategic-merge-patch+json" {
                return Err((
                    415,
                    format!("the stand-in serves merge patches only, not {ct:?}"),
                    "UnsupportedMediaType",
                    None,
                ));
            }
            let current = st.leases.get(&key).cloned().ok_or_else(|| not_found(&name))?;
            let patch = body()?;
            if !patch.is_object() {
                return Err(bad_request("a merge patch must be a JSON object".into()));
            }
            if let Some(rv) = patch["metadata"]["resourceVersion"].as_str()
                && Some(rv) != current["metadata"]["resourceVersion"].as_str()
            {
                return Err(conflict(&name));
            }
            let mut obj = current.clone();
            merge_patch(&mut obj, &patch);
            for k in ["name", "namespace", "uid", "creationTimestamp"] {
                if obj["metadata"][k] != current["metadata"][k] {
                    return Err((
                        422,
                        format!("Lease.{GROUP} \"{name}\" is invalid: metadata.{k}: Invalid value: field is immutable"),
                        "Invalid",
                        details(&name),
                    ));
                }
            }
            warnings.extend(sanitize(&mut obj)?);
            if same_but_version(&obj, &current) {
                return Ok((200, current));
            }
            store(st, key, obj)
        }
        _ => Err((405, "not allowed".into(), "MethodNotAllowed", None)),
    }
}

fn same_but_version(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn create(st: &mut State, ns: &str, mut obj: Value) -> Result<(u16, Value), Failure> {
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
        return Err((
            422,
            "Lease.coordination.k8s.io is invalid: metadata.name: Required value".into(),
            "Invalid",
            None,
        ));
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(n) if n != ns => {
            return Err(bad_request(format!(
                "the namespace of the object ({n}) does not match the namespace on the request ({ns})"
            )));
        }
        _ => {}
    }
    let key = (ns.to_string(), name.clone());
    if st.leases.contains_key(&key) {
        return Err((409, format!("leases.{GROUP} \"{name}\" already exists"), "AlreadyExists", details(&name)));
    }
    st.next_uid += 1;
    obj["metadata"]["namespace"] = json!(ns);
    obj["metadata"]["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", st.next_uid));
    obj["metadata"]["creationTimestamp"] = json!(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
    let (_, lease) = store(st, key, obj)?;
    Ok((201, lease))
}

/// Stores a Lease under the next resourceVersion and returns it.
fn store(st: &mut State, key: (String, String), mut obj: Value) -> Result<(u16, Value), Failure> {
    st.last_rv += 1;
    obj["apiVersion"] = json!(API_VERSION);
    obj["kind"] = json!("Lease");
    obj["metadata"]["resourceVersion"] = json!(st.last_rv.to_string());
    st.leases.insert(key, obj.clone());
    Ok((200, obj))
}

/// Checks and normalizes a Lease as the API server decodes it; returns the warnings.
fn sanitize(obj: &mut Value) -> Result<Vec<String>, Failure> {
    let mut warnings = Vec::new();
    let Some(o) = obj.as_object_mut() else {
        return Err(bad_request("a Lease must be a JSON object".into()));
    };
    let cannot = |what: String| bad_request(format!("Lease in version \"v1\" cannot be handled as a Lease: {what}"));
    if let Some(v) = o.get("apiVersion").and_then(Value::as_str)
        && v != API_VERSION
    {
        return Err(cannot(format!("apiVersion {v:?} is not {API_VERSION}")));
    }
    if let Some(k) = o.get("kind").and_then(Value::as_str)
        && k != "Lease"
    {
        return Err(cannot(format!("kind {k:?} is not Lease")));
    }
    let meta = o.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return Err(cannot("metadata must be an object".into()));
    };
    for field in ["labels", "annotations"] {
        match meta.get(field) {
            None | Some(Value::Null) => {
                meta.remove(field);
            }
            Some(Value::Object(m)) => {
                if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(cannot(format!("metadata.{field}.{k}: expected a string")));
                }
            }
            Some(_) => return Err(cannot(format!("metadata.{field}: expected a map of strings"))),
        }
    }
    let spec = o.entry("spec").or_insert_with(|| json!({}));
    if spec.is_null() {
        *spec = json!({});
    }
    let Some(spec) = spec.as_object_mut() else {
        return Err(cannot("spec must be an object".into()));
    };
    let keys: Vec<String> = spec.keys().cloned().collect();
    for k in keys {
        let v = spec[&k].clone();
        if v.is_null() {
            spec.remove(&k);
            continue;
        }
        let ok = match k.as_str() {
            "holderIdentity" | "strategy" | "preferredHolder" => v.is_string(),
            "leaseDurationSeconds" | "leaseTransitions" => v.is_i64(),
            "acquireTime" | "renewTime" => {
                let s = v.as_str().ok_or_else(|| cannot(format!("spec.{k}: expected a string")))?;
                let utc = micro_time_utc(s).ok_or_else(|| {
                    cannot(format!(
                        "parsing time {s:?} as \"2006-01-02T15:04:05.000000Z07:00\": not RFC 3339 with microseconds"
                    ))
                })?;
                spec.insert(k.clone(), json!(utc));
                true
            }
            _ => {
                warnings.push(format!("unknown field \"spec.{k}\""));
                spec.remove(&k);
                true
            }
        };
        if !ok {
            return Err(cannot(format!("spec.{k}: wrong type ({v})")));
        }
    }
    Ok(warnings)
}

/// Parses `metav1.MicroTime` text (`YYYY-MM-DDTHH:MM:SS.ffffff` then `Z` or `±HH:MM`, exactly
/// six fractional digits) and returns it in UTC as the API server re-encodes it; `None` when
/// Go's parser would refuse it.
pub fn micro_time_utc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if b.len() < 27 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' {
        return None;
    }
    let (y, mo, d, h, mi, sec, micros) = (
        digits(0..4)?,
        digits(5..7)?,
        digits(8..10)?,
        digits(11..13)?,
        digits(14..16)?,
        digits(17..19)?,
        digits(20..26)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let offset = match &s[26..] {
        "Z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            sign * (digits(27..29)? * 3600 + digits(30..32)? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let unix = days * 86400 + h * 3600 + mi * 60 + sec - offset;
    let t =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(unix).ok()?) + Duration::from_micros(micros as u64);
    Some(humantime::format_rfc3339_micros(t).to_string())
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_time_is_parsed_as_go_parses_it() {
        assert_eq!(micro_time_utc("2026-03-01T10:20:30.123456Z").as_deref(), Some("2026-03-01T10:20:30.123456Z"));
        assert_eq!(micro_time_utc("2026-03-01T00:20:30.000001+02:00").as_deref(), Some("2026-02-28T22:20:30.000001Z"));
        assert_eq!(micro_time_utc("1970-01-01T00:00:00.000000Z").as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        for bad in [
            "2026-03-01T10:20:30Z",
            "2026-03-01T10:20:30.123Z",
            "2026-03-01T10:20:30.123456789Z",
            "2026-03-01 10:20:30.123456Z",
            "2026-13-01T10:20:30.123456Z",
            "2026-03-01T10:20:30.123456",
        ] {
            assert_eq!(micro_time_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_merge_patch_merges_objects_and_removes_nulls() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "d": [1, 2], "e": "x"});
        merge_patch(&mut v, &json!({"a": {"b": null, "f": 3}, "d": [3], "e": null}));
        assert_eq!(v, json!({"a": {"c": 2, "f": 3}, "d": [3]}));
    }
}
