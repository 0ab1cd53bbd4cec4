//! Helpers shared by the snapshotter's integration tests: a Local store, an independent reader
//! of what the snapshotter stored (written from the reference's format description, not with
//! brcore's own decoder), and chain checks.

#![allow(dead_code)]

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use brcore::Snapstore;
use sha2::{Digest, Sha256};

/// A Local snapstore rooted at `dir`.
pub fn local_store(dir: &Path) -> Arc<dyn Snapstore> {
    let cfg = snapstore::StoreConfig::local(dir);
    snapstore::open(&cfg).expect("open the Local store")
}

/// One object name, parsed by hand from the reference's grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub key: String,
    pub kind: String,
    pub start: u64,
    pub last: u64,
    pub created: i64,
    pub suffix: String,
}

/// Parses `<prefix>/v2/<Kind>-<%08d>-<%08d>-<unix><suffix>`; `None` for other keys.
pub fn parse_name(key: &str) -> Option<Name> {
    let name = key.rsplit_once("/v2/").map(|(_, n)| n).or_else(|| key.strip_prefix("v2/"))?;
    let parts: Vec<&str> = name.split('-').collect();
    if parts.len() != 4 || !(parts[0] == "Full" || parts[0] == "Incr") {
        return None;
    }
    assert!(parts[1].len() >= 8 && parts[2].len() >= 8, "revisions are zero-padded to 8 digits: {key}");
    let digits = parts[3].find('.').unwrap_or(parts[3].len());
    Some(Name {
        key: key.to_string(),
        kind: parts[0].to_string(),
        start: parts[1].parse().ok()?,
        last: parts[2].parse().ok()?,
        created: parts[3][..digits].parse().ok()?,
        suffix: parts[3][digits..].to_string(),
    })
}

/// Reads a whole object.
pub async fn read_object(store: &dyn Snapstore, key: &str) -> Vec<u8> {
    use futures::TryStreamExt;
    let s = store.read(key, None).await.expect("read object");
    let chunks: Vec<bytes::Bytes> = s.try_collect().await.expect("read object stream");
    chunks.concat()
}

/// gunzips (or passes through) an object's content according to its suffix.
pub fn decompress(suffix: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match suffix.trim_end_matches(".final") {
        ".gz" => {
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("gunzip");
        }
        ".zlib" => {
            flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut out).expect("zlib");
        }
        "" => out = bytes.to_vec(),
        other => panic!("unexpected suffix {other}"),
    }
    out
}

/// One event of a delta, decoded independently from the reference's JSON description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub delete: bool,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

fn b64(v: &serde_json::Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 string")).expect("valid base64")
}

/// Checks a delta's decompressed content (JSON array + raw sha256) and decodes its events,
/// asserting the reference's shape: `type` only on deletes (1), zero fields omitted, base64.
pub fn decode_delta(content: &[u8]) -> Vec<Ev> {
    assert!(content.len() > 32, "delta without hash");
    let (json, hash) = content.split_at(content.len() - 32);
    assert_eq!(Sha256::digest(json).as_slice(), hash, "sha256 trailer of a delta");
    assert_eq!(json.first(), Some(&b'['));
    assert_eq!(json.last(), Some(&b']'));
    let v: serde_json::Value = serde_json::from_slice(json).expect("delta JSON");
    let text = std::str::from_utf8(json).unwrap();
    assert!(!text.contains("\"type\":0"), "PUT events carry no type field");
    assert!(!text.contains("prev_kv"), "no prev_kv in deltas");
    v.as_array()
        .expect("array")
        .iter()
        .map(|item| {
            let obj = item.as_object().expect("event object");
            let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
            assert_eq!(keys, ["etcdEvent", "time"], "element shape");
            let time = obj["time"].as_str().expect("time string");
            assert!(time.ends_with('Z') && time.contains('T'), "RFC 3339 time {time}");
            let e = &obj["etcdEvent"];
            let delete = match e.get("type") {
                None => false,
                Some(t) => {
                    assert_eq!(t.as_i64(), Some(1), "only DELETE has a type");
                    true
                }
            };
            let kv = &e["kv"];
            for (name, val) in kv.as_object().unwrap() {
                assert!(!(val.as_i64() == Some(0) || val.as_str() == Some("")), "zero field {name} must be omitted");
            }
            let num = |n: &str| kv.get(n).map_or(0, |v| v.as_i64().expect("integer"));
            let ev = Ev {
                delete,
                key: kv.get("key").map(b64).unwrap_or_default(),
                value: kv.get("value").map(b64).unwrap_or_default(),
                create_revision: num("create_revision"),
                mod_revision: num("mod_revision"),
                version: num("version"),
                lease: num("lease"),
            };
            if delete {
                assert_eq!(kv.as_object().unwrap().len(), 2, "a DELETE kv holds only key and mod_revision");
            }
            ev
        })
        .collect()
}

/// Lists the objects under `prefix`, parsed; other keys (lease sidecars) are returned apart.
pub async fn list(store: &dyn Snapstore, prefix: &str) -> (Vec<Name>, Vec<String>) {
    let mut names = Vec::new();
    let mut other = Vec::new();
    for o in store.list(prefix).await.expect("list") {
        match parse_name(&o.key) {
            Some(n) => names.push(n),
            None => other.push(o.key),
        }
    }
    names.sort_by_key(|n| (n.last, n.created, n.kind.clone()));
    (names, other)
}

/// The latest chain: the newest full snapshot and the deltas after it, checked for continuity
/// (each delta starts at most one past the previous object's last revision and ends above it).
/// Returns (full, deltas).
pub fn latest_chain(names: &[Name]) -> (Name, Vec<Name>) {
    let full =
        names.iter().filter(|n| n.kind == "Full").max_by_key(|n| (n.last, n.created)).expect("a full snapshot").clone();
    let deltas: Vec<Name> = names.iter().filter(|n| n.kind == "Incr" && n.last > full.last).cloned().collect();
    let mut covered = full.last;
    for d in &deltas {
        assert!(d.start <= covered + 1, "gap before {}: covered up to {covered}", d.key);
        assert!(d.last > covered, "redundant delta {}", d.key);
        covered = d.last;
    }
    (full, deltas)
}

/// Waits until `f` returns `Some`, polling every 50 ms, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of etcd that can cut every connection and refuse new ones, to take etcd
/// away from the snapshotter while the test keeps writing to etcd directly.
pub struct Proxy {
    pub port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c2, k2) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees a reset
                }
                let target = target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                k2.lock().unwrap().push(h);
            }
        });
        Proxy { port, cut, conns, accept }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones until [`Proxy::heal`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}
