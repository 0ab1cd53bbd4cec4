//! Swift with Keystone credentials, as the reference's gophercloud client: a token from
//! Keystone v3 for a credentials file or the `OS_*` variables, the object-store URL from the
//! token's catalog, the token sent as `X-Auth-Token`, and a new token before the old expires.
//!
//! No Keystone or Swift server can be installed from the registries this project uses, so the
//! test stands in for both, with the protocol's semantics for what the store uses: `POST
//! /v3/auth/tokens` checks the credentials and the project scope and answers 201 with
//! `X-Subject-Token` and a catalog (401 for wrong credentials); the object API (`PUT`, `GET`,
//! `HEAD`, `DELETE` of objects, `GET` of the container with `prefix`, `delimiter` and
//! `format=json`) keeps objects in memory and answers 401 to a token it did not issue or that
//! expired.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use brcore::{ByteStream, Snapstore, StoreError, WriteOptions};
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::{Value, json};
use snapstore::{OpendalStore, Provider, StoreConfig};

const USER: &str = "etcd-backup";
const PASSWORD: &str = "keystone-password-5b1e";
const PROJECT: &str = "shoot--dev--main";
const DOMAIN: &str = "gardener";

#[derive(Default)]
struct State {
    /// Issued tokens and their expiry.
    tokens: BTreeMap<String, SystemTime>,
    /// Logins seen (the request bodies).
    logins: Vec<Value>,
    objects: BTreeMap<String, Vec<u8>>,
    /// How long the next tokens live.
    lifetime: Duration,
    /// Swift requests: (method, path, token).
    requests: Vec<(String, String, String)>,
}

struct Cloud {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl Cloud {
    fn start(lifetime: Duration) -> Cloud {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State { lifetime, ..State::default() }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, port, &st));
            }
        });
        Cloud { port, state }
    }

    fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.port)
    }
}

fn serve(conn: TcpStream, port: u16, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let body = if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            read_chunked(&mut reader)
        } else {
            let len: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            body
        };
        let (status, extra, out) = answer(&method, &target, &headers, body, port, state);
        let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n", out.len());
        let _ = conn.write_all(&out);
    }
}

fn read_chunked(reader: &mut impl BufRead) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).unwrap();
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        let mut chunk = vec![0; n + 2];
        reader.read_exact(&mut chunk).unwrap();
        if n == 0 {
            return body;
        }
        body.extend_from_slice(&chunk[..n]);
    }
}

fn answer(
    method: &str,
    target: &str,
    headers: &BTreeMap<String, String>,
    body: Vec<u8>,
    port: u16,
    state: &Mutex<State>,
) -> (&'static str, String, Vec<u8>) {
    let mut st = state.lock().unwrap();
    if method == "POST" && target == "/v3/auth/tokens" {
        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        st.logins.push(req.clone());
        let user = &req["auth"]["identity"]["password"]["user"];
        let scope = &req["auth"]["scope"]["project"];
        let ok = user["name"] == USER
            && user["password"] == PASSWORD
            && user["domain"]["name"] == DOMAIN
            && scope["name"] == PROJECT
            && scope["domain"]["name"] == DOMAIN;
        if !ok {
            let e = json!({"error": {"code": 401, "title": "Unauthorized", "message": "The request you have made requires authentication."}});
            return ("401 Unauthorized", "Content-Type: application/json\r\n".into(), e.to_string().into_bytes());
        }
        let token = format!("gAAAA-token-{}", st.tokens.len() + 1);
        let expires = SystemTime::now() + st.lifetime;
        st.tokens.insert(token.clone(), expires);
        let body = json!({"token": {
        "expires_at": humantime::format_rfc3339_micros(expires).to_string(),
        "methods": ["password"],
        "project": {"name": PROJECT, "domain": {"name": DOMAIN}},
        "catalog": [
            {"type": "identity", "name": "keystone", "endpoints": [{"interface": "public", "region": "RegionOne", "url": format!("http://127.0.0.1:{port}/v3")}]},
            {"type": "object-store", "name": "swift", "endpoints": [
                {"interface": "internal", "region": "RegionOne", "url": "http://swift.internal.invalid/v1/AUTH_p"},
                {"interface": "public", "region": "RegionOne", "url": format!("http://127.0.0.1:{port}/v1/AUTH_p")}
            ]}
        ]}});
        return (
            "201 Created",
            format!("X-Subject-Token: {token}\r\nContent-Type: application/json\r\n"),
            body.to_string().into_bytes(),
        );
    }
    let token = headers.get("x-auth-token").cloned().unwrap_or_default();
    st.requests.push((method.to_string(), target.to_string(), token.clone()));
    if st.tokens.get(&token).is_none_or(|e| *e < SystemTime::now()) {
        return ("401 Unauthorized", String::new(), b"Unauthorized".to_vec());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let Some(rest) = path.strip_prefix("/v1/AUTH_p/container") else {
        return ("404 Not Found", String::new(), Vec::new());
    };
    let key = percent_decode(rest.trim_start_matches('/'));
    match method {
        "GET" if key.is_empty() => {
            let q: BTreeMap<String, String> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect();
            let prefix = q.get("prefix").cloned().unwrap_or_default();
            let delimiter = q.get("delimiter").cloned().unwrap_or_default();
            // Swift lists names after `marker`, at most `limit` of them (10000 by default).
            let marker = q.get("marker").cloned().unwrap_or_default();
            let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10000);
            let mut out = Vec::new();
            let mut dirs = std::collections::BTreeSet::new();
            for (k, v) in st.objects.range(prefix.clone()..) {
                if !k.starts_with(&prefix) || out.len() + dirs.len() >= limit {
                    break;
                }
                if !marker.is_empty() && k.as_str() <= marker.as_str() {
                    continue;
                }
                let tail = &k[prefix.len()..];
                match tail.find(delimiter.as_str()).filter(|_| !delimiter.is_empty()) {
                    Some(i) => {
                        dirs.insert(format!("{prefix}{}", &tail[..i + delimiter.len()]));
                    }
                    None => out.push(json!({"name": k, "bytes": v.len(), "hash": "0", "last_modified": "2026-12-03T10:00:00.000000", "content_type": "application/octet-stream"})),
                }
            }
            out.extend(dirs.into_iter().map(|d| json!({"subdir": d})));
            ("200 OK", "Content-Type: application/json\r\n".into(), Value::Array(out).to_string().into_bytes())
        }
        "PUT" => {
            st.objects.insert(key, body);
            ("201 Created", "Etag: 0\r\n".into(), Vec::new())
        }
        "GET" | "HEAD" => match st.objects.get(&key) {
            Some(v) => {
                let extra = format!(
                    "Content-Type: application/octet-stream\r\nEtag: 0\r\nLast-Modified: Thu, 03 Dec 2026 10:00:00 GMT\r\nX-Object-Meta-Len: {}\r\n",
                    v.len()
                );
                ("200 OK", extra, if method == "GET" { v.clone() } else { Vec::new() })
            }
            None => ("404 Not Found", String::new(), Vec::new()),
        },
        "DELETE" => {
            st.objects.remove(&key);
            ("204 No Content", String::new(), Vec::new())
        }
        _ => ("405 Method Not Allowed", String::new(), Vec::new()),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn config() -> StoreConfig {
    StoreConfig::new(Provider::Swift, "container")
}

fn os_env(cloud: &Cloud, password: &str) -> impl Fn(&str) -> Option<String> + use<> {
    let vars: BTreeMap<&str, String> = [
        ("OS_AUTH_URL", cloud.auth_url()),
        ("OS_USERNAME", USER.to_string()),
        ("OS_PASSWORD", password.to_string()),
        ("OS_PROJECT_NAME", PROJECT.to_string()),
        ("OS_DOMAIN_NAME", DOMAIN.to_string()),
        ("OS_REGION_NAME", "RegionOne".to_string()),
    ]
    .into_iter()
    .collect();
    move |k: &str| vars.get(k).cloned()
}

fn chunk(b: &'static [u8]) -> ByteStream {
    Box::pin(futures::stream::iter([Ok(Bytes::from_static(b))]))
}

async fn read_all(store: &dyn Snapstore, key: &str) -> Vec<u8> {
    let s = store.read(key, None).await.unwrap();
    let parts: Vec<Bytes> = s.try_collect().await.unwrap();
    parts.concat()
}

/// The `OS_*` variables alone: Keystone issues the token, the catalog names the store, and
/// objects go there and back with the token.
#[tokio::test]
async fn swift_authenticates_with_keystone_from_the_os_variables() {
    let cloud = Cloud::start(Duration::from_secs(3600));
    let store = OpendalStore::open_with_env(&config(), &os_env(&cloud, PASSWORD)).unwrap();
    let n = store
        .write("etcd-main/v2/Full-00000000-00000005-1795611436", chunk(b"full snapshot"), &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 13);
    store
        .write("etcd-main/v2/Incr-00000006-00000009-1795611437", chunk(b"delta"), &WriteOptions::default())
        .await
        .unwrap();
    let listed: Vec<String> = store.list("etcd-main/v2/").await.unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(
        listed,
        ["etcd-main/v2/Full-00000000-00000005-1795611436", "etcd-main/v2/Incr-00000006-00000009-1795611437"]
    );
    assert_eq!(read_all(&store, "etcd-main/v2/Full-00000000-00000005-1795611436").await, b"full snapshot");
    store.delete("etcd-main/v2/Incr-00000006-00000009-1795611437").await.unwrap();
    let st = cloud.state.lock().unwrap();
    assert_eq!(st.logins.len(), 1, "one token for all operations");
    assert!(
        st.requests.iter().all(|(_, _, t)| t == "gAAAA-token-1"),
        "every request carries the token: {:?}",
        st.requests
    );
    assert!(
        st.requests.iter().any(|(m, p, _)| m == "PUT" && p.starts_with("/v1/AUTH_p/container/")),
        "the catalog's public URL is used"
    );
}

/// A credentials file (the reference's keys), a wrong password (refused, and the password stays
/// out of the message), and a token renewed before it expires.
#[tokio::test]
async fn swift_with_a_credentials_file_renews_the_token_and_reports_refusals() {
    // Tokens that live less than the renewal margin: each operation logs in again.
    let cloud = Cloud::start(Duration::from_secs(120));
    let dir = tempfile::tempdir().unwrap();
    let creds = json!({"authURL": cloud.auth_url(), "username": USER, "password": PASSWORD, "domainName": DOMAIN, "tenantName": PROJECT, "region": "RegionOne"});
    std::fs::write(dir.path().join("swift.json"), creds.to_string()).unwrap();
    let file = dir.path().join("swift.json").display().to_string();
    let env = move |k: &str| (k == "OPENSTACK_APPLICATION_CREDENTIALS_JSON").then(|| file.clone());
    let store = OpendalStore::open_with_env(&config(), &env).unwrap();
    store.list("v2/").await.unwrap();
    store.list("v2/").await.unwrap();
    {
        let st = cloud.state.lock().unwrap();
        assert_eq!(st.logins.len(), 2, "a token about to expire is replaced");
        assert_eq!(st.requests.last().unwrap().2, "gAAAA-token-2");
    }

    let wrong = OpendalStore::open_with_env(&config(), &os_env(&cloud, "not-the-password-9d2")).unwrap();
    let err = wrong.list("v2/").await.unwrap_err();
    assert!(matches!(err, StoreError::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("401") && !err.to_string().contains("not-the-password-9d2"), "{err}");
}
