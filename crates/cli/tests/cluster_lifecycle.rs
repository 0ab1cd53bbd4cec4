//! Multi-member clusters as etcd-druid runs them: three real etcd members (3.4 and 3.5), each
//! with `etcdbrctl server` beside it, all sharing one Local store, each member described by
//! druid's etcd config file (`$ETCD_CONF`: `initial-cluster` and the advertise URLs as maps from
//! member name to URLs) and named by `POD_NAME`, with the flags druid passes (no
//! `--initial-cluster`). Each etcd is started the way etcd-wrapper starts it: poll
//! `/initialization/status`, `GET /initialization/start?mode=full` while it says `New`, then
//! `GET /config` and run `etcd --config-file` with what it served.
//!
//! - a member (a follower, then the leader) loses its data dir and comes back: it rejoins as a
//!   learner, is promoted, every member reports the same hashkv and cluster id, and the store
//!   is only read;
//! - defragmentation shrinks every member's db, and skips a round while a member is down;
//! - all members lose their data: the cluster is restored from the backup and serves the
//!   source's hashkv;
//! - scale-up 1 → 3: the new members join the existing cluster and nothing is lost;
//! - with HTTPS sidecars and a private CA, `/snapshot/full` sent to a follower is served by the
//!   leader's sidecar;
//! - a member whose configured peer URL changed (a new port, as a switch to peer TLS) gets it in
//!   the membership from its sidecar, which then asks etcd-wrapper to restart etcd. etcd-wrapper
//!   (gardener's Go binary) is on no package registry: a stand-in in the test answers its
//!   `POST /stop` on port 9095 and restarts etcd the way the wrapper's container restart does.
//!
//! Heavy (three etcds and three sidecars on a shared machine): few keys, generous timeouts,
//! no timing assertions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use testsupport::{EtcdVersion, free_port};

/// How long any one step may take before the test fails with the logs.
const STEP: Duration = Duration::from_secs(240);

/// TLS files: a private CA and one leaf (IP 127.0.0.1, DNS localhost) for etcd's client port,
/// the sidecars' HTTPS and the clients.
#[derive(Debug, Clone)]
struct Tls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Tls {
    fn make(dir: &Path) -> Tls {
        let ca = testsupport::PrivateCa::new(dir, "etcd-ca");
        let leaf = ca.leaf("tls", "etcd", "IP:127.0.0.1,DNS:localhost", None);
        Tls { ca: ca.cert(), cert: leaf.cert, key: leaf.key }
    }
}

/// What `etcdctl endpoint status` says of one member.
#[derive(Debug, Clone, Copy)]
struct Status {
    member_id: u64,
    leader: u64,
    cluster_id: u64,
    revision: i64,
}

/// One member: its etcd, its sidecar, their files.
struct Member {
    name: String,
    dir: PathBuf,
    data_dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// A second peer port etcd listens on when [`Cluster::second_peer_port`] is set, advertised
    /// instead of the first when [`Cluster::advertise_second_peer_port`] is.
    peer_port_2: u16,
    sidecar_port: u16,
    sidecar: Option<Child>,
    /// Started while other members' wrappers still wait, hence behind a lock.
    etcd: std::sync::Mutex<Option<Child>>,
    /// How many sidecars were started, for log file names.
    starts: usize,
}

impl Member {
    fn etcd_conf(&self) -> PathBuf {
        self.dir.join("etcd.conf.yaml")
    }

    fn sidecar_log(&self) -> PathBuf {
        self.dir.join(format!("sidecar-{}.log", self.starts))
    }

    fn etcd_log(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn kill_etcd(&self) {
        if let Some(mut c) = self.etcd.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kill_sidecar(&mut self) {
        if let Some(mut c) = self.sidecar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn db_size(&self) -> u64 {
        std::fs::metadata(self.data_dir.join("member/snap/db")).map(|m| m.len()).unwrap_or(0)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill_sidecar();
        self.kill_etcd();
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Three members, a store, and the way to reach them.
struct Cluster {
    // Holds every file of the test; removed last.
    _tmp: tempfile::TempDir,
    version: EtcdVersion,
    store: PathBuf,
    members: Vec<Member>,
    tls: Option<Tls>,
    http: reqwest::Client,
    /// The loopback address etcd listens on (127.0.0.1 unless a test needs one of its own).
    host: String,
    /// etcd also listens on each member's second peer port.
    second_peer_port: bool,
    /// The config advertises the second peer port.
    advertise_second_peer_port: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Sidecars first, so none logs a lost etcd at the end.
        for m in &mut self.members {
            m.kill_sidecar();
        }
        for m in &mut self.members {
            m.kill_etcd();
        }
    }
}

impl Cluster {
    fn new(version: EtcdVersion, tls: bool) -> Cluster {
        let tmp = tempfile::Builder::new().prefix("etcdbr-cluster-").tempdir().unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir_all(&store).unwrap();
        let tls = tls.then(|| Tls::make(tmp.path()));
        let members = (0..3)
            .map(|i| {
                let name = format!("etcd-main-{i}");
                let dir = tmp.path().join(&name);
                std::fs::create_dir_all(dir.join("home")).unwrap();
                Member {
                    data_dir: dir.join("data/new.etcd"),
                    dir,
                    name,
                    client_port: free_port(),
                    peer_port: free_port(),
                    peer_port_2: free_port(),
                    sidecar_port: free_port(),
                    sidecar: None,
                    etcd: std::sync::Mutex::new(None),
                    starts: 0,
                }
            })
            .collect();
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(t) = &tls {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&t.ca).unwrap()).unwrap());
        }
        Cluster {
            _tmp: tmp,
            version,
            store,
            members,
            tls,
            http: http.build().unwrap(),
            host: "127.0.0.1".into(),
            second_peer_port: false,
            advertise_second_peer_port: false,
        }
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn client_url(&self, i: usize) -> String {
        format!("{}://{}:{}", self.scheme(), self.host, self.members[i].client_port)
    }

    fn sidecar_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.members[i].sidecar_port)
    }

    /// Writes druid's etcd config for every member, naming the members in `cluster` (indexes)
    /// as the cluster (a scale-up rewrites it with more).
    fn write_configs(&self, cluster: &[usize]) {
        let peer = |i: usize| {
            let m = &self.members[i];
            let port = if self.advertise_second_peer_port { m.peer_port_2 } else { m.peer_port };
            format!("http://{}:{port}", self.host)
        };
        let initial: Vec<String> = cluster.iter().map(|&i| format!("{}={}", self.members[i].name, peer(i))).collect();
        let mut adv_client = String::from("advertise-client-urls:\n");
        let mut adv_peer = String::from("initial-advertise-peer-urls:\n");
        for &i in cluster {
            adv_client.push_str(&format!("  {}:\n  - {}\n", self.members[i].name, self.client_url(i)));
            adv_peer.push_str(&format!("  {}:\n  - {}\n", self.members[i].name, peer(i)));
        }
        for m in &self.members {
            let security = match &self.tls {
                None => String::new(),
                Some(t) => format!(
                    "client-transport-security:\n  auto-tls: false\n  cert-file: {}\n  client-cert-auth: true\n  \
                     key-file: {}\n  trusted-ca-file: {}\n",
                    t.cert.display(),
                    t.key.display(),
                    t.ca.display()
                ),
            };
            let mut listen_peer = format!("http://{}:{}", self.host, m.peer_port);
            if self.second_peer_port {
                listen_peer.push_str(&format!(",http://{}:{}", self.host, m.peer_port_2));
            }
            // sigs.k8s.io/yaml's output: keys sorted; per member only the listen URLs and data
            // dir differ here (druid's pods share one config and differ by host).
            let text = format!(
                "{adv_client}auto-compaction-mode: periodic\nauto-compaction-retention: 30m\n{security}\
                 data-dir: {}\nenable-grpc-gateway: false\n{adv_peer}initial-cluster: {}\n\
                 initial-cluster-state: new\ninitial-cluster-token: etcd-cluster\n\
                 listen-client-urls: {}://{}:{}\nlisten-peer-urls: {listen_peer}\nmetrics: basic\n\
                 name: etcd-config\nquota-backend-bytes: 8589934592\nsnapshot-count: 10000\n",
                m.data_dir.display(),
                initial.join(","),
                self.scheme(),
                self.host,
                m.client_port,
            );
            std::fs::write(m.etcd_conf(), text).unwrap();
        }
    }

    /// Starts member `i`'s sidecar with the flags etcd-druid passes.
    fn start_sidecar(&mut self, i: usize) {
        let endpoints: Vec<String> = (0..self.members.len()).map(|j| self.client_url(j)).collect();
        let own_endpoint = self.client_url(i);
        let sidecars: Vec<String> =
            (0..self.members.len()).map(|j| format!("{}={}", self.members[j].name, self.sidecar_url(j))).collect();
        let tls = self.tls.clone();
        let store = self.store.clone();
        let m = &mut self.members[i];
        m.kill_sidecar();
        m.starts += 1;
        let log = std::fs::File::create(m.sidecar_log()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
        cmd.arg("server")
            .arg(format!("--server-port={}", m.sidecar_port))
            .args(["--storage-provider=Local", &format!("--store-container={}", store.display())])
            .arg("--store-prefix=etcd-main")
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .arg(format!("--snapstore-temp-directory={}", m.dir.join("data/temp").display()))
            .arg(format!("--endpoints={own_endpoint}"))
            .arg(format!("--service-endpoints={}", endpoints.join(",")))
            .arg("--etcd-connection-timeout=30s")
            .arg("--use-etcd-wrapper=true")
            .args(["--delta-snapshot-period=1s", "--reelection-period=1s", "--garbage-collection-period=0s"])
            .arg("--defragmentation-schedule=* * * * *")
            .arg(format!("--sidecar-endpoints={}", sidecars.join(",")))
            .env("ETCD_CONF", m.etcd_conf())
            .env("POD_NAME", &m.name)
            .env("POD_NAMESPACE", "shoot--test")
            .env("HOME", m.dir.join("home"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match &tls {
            Some(t) => {
                cmd.arg(format!("--cacert={}", t.ca.display()))
                    .arg(format!("--cert={}", t.cert.display()))
                    .arg(format!("--key={}", t.key.display()))
                    .args(["--insecure-transport=false", "--insecure-skip-tls-verify=false"])
                    .arg(format!("--server-cert={}", t.cert.display()))
                    .arg(format!("--server-key={}", t.key.display()));
            }
            None => {
                cmd.args(["--insecure-transport=true", "--insecure-skip-tls-verify=true"]);
            }
        }
        m.sidecar = Some(cmd.spawn().expect("start etcdbrctl server"));
    }

    /// `GET` on member `i`'s sidecar: (status, body), `None` when it does not answer.
    async fn get(&self, i: usize, path: &str) -> Option<(u16, String)> {
        let r = self.http.get(format!("{}{path}", self.sidecar_url(i))).send().await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    /// What etcd-wrapper does before it starts etcd: initialization, then `/config`. Returns
    /// the config served (also written where etcd reads it).
    async fn wrap(&self, i: usize) -> String {
        let deadline = Instant::now() + STEP;
        let mut seen = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "member {i}: initialization did not succeed ({seen:?})\n{}",
                self.logs()
            );
            match self.get(i, "/initialization/status").await {
                Some((200, status)) => {
                    if seen.last() != Some(&status) {
                        seen.push(status.clone());
                    }
                    match status.as_str() {
                        "New" => {
                            let r = self.get(i, "/initialization/start?mode=full").await;
                            assert!(matches!(r, Some((200, _))), "start: {r:?}");
                        }
                        "Successful" => break,
                        _ => {}
                    }
                }
                other => {
                    if let Some(o) = other {
                        seen.push(format!("{o:?}"));
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let (code, config) = self.get(i, "/config").await.expect("/config answers");
        assert_eq!(code, 200, "/config: {config}\n{}", self.logs());
        std::fs::write(self.members[i].dir.join("etcd.run.yaml"), &config).unwrap();
        config
    }

    /// Starts member `i`'s etcd on the config its sidecar served last.
    fn start_etcd(&self, i: usize) {
        let bin = self.version.etcd_bin();
        let m = &self.members[i];
        m.kill_etcd();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(m.etcd_log()).unwrap();
        *m.etcd.lock().unwrap() = Some(
            Command::new(bin)
                .arg("--config-file")
                .arg(m.dir.join("etcd.run.yaml"))
                .env_remove("ETCDCTL_API")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start etcd"),
        );
    }

    /// Drives the wrappers of the members in `which` at once, each starting its etcd as soon
    /// as its sidecar served the config (as each pod's etcd-wrapper does on its own).
    async fn bring_up(&self, which: &[usize]) -> Vec<String> {
        let futures: Vec<_> = which
            .iter()
            .map(|&i| async move {
                let config = self.wrap(i).await;
                self.start_etcd(i);
                config
            })
            .collect();
        join_all(futures).await
    }

    fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> Result<String, String> {
        let mut cmd = Command::new(self.version.etcdctl_bin());
        cmd.arg(format!("--endpoints={}", endpoints.join(","))).args(["--command-timeout=20s"]).args(args);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.cert.display()))
                .arg(format!("--key={}", t.key.display()));
        }
        let out = cmd.env("ETCDCTL_API", "3").output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn ctl(&self, i: usize, args: &[&str]) -> String {
        self.etcdctl(&[self.client_url(i)], args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?} on {i}: {e}\n{}", self.logs()))
    }

    /// `endpoint status` of member `i`, `None` when it does not answer.
    fn status(&self, i: usize) -> Option<Status> {
        let out = self.etcdctl(&[self.client_url(i)], &["endpoint", "status", "-w", "json"]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let s = &v[0]["Status"];
        Some(Status {
            member_id: s["header"]["member_id"].as_u64()?,
            leader: s["leader"].as_u64().unwrap_or(0),
            cluster_id: s["header"]["cluster_id"].as_u64()?,
            revision: s["header"]["revision"].as_i64()?,
        })
    }

    /// The member list as member 0..n sees it: name → (id, is learner).
    fn member_list(&self, via: usize) -> BTreeMap<String, (u64, bool)> {
        let out = self.ctl(via, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    (m["ID"].as_u64().unwrap(), m["isLearner"].as_bool().unwrap_or(false)),
                )
            })
            .collect()
    }

    /// Member `name`'s peer URLs in the member list, as member `via` sees it.
    fn peer_urls(&self, via: usize, name: &str) -> Vec<String> {
        let out = self.ctl(via, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let member = v["members"].as_array().unwrap().iter().find(|m| m["name"] == name);
        let member = member.unwrap_or_else(|| panic!("{name} not in the member list: {out}"));
        member["peerURLs"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_string()).collect()
    }

    fn leader(&self) -> Option<usize> {
        let ids: Vec<Option<Status>> = (0..self.members.len()).map(|i| self.status(i)).collect();
        let leader = ids.iter().flatten().map(|s| s.leader).find(|l| *l != 0)?;
        ids.iter().position(|s| s.is_some_and(|s| s.member_id == leader))
    }

    fn hashkv(&self, i: usize, rev: i64) -> u32 {
        let out = self.ctl(i, &["endpoint", "hashkv", "--rev", &rev.to_string(), "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["HashKV"]["hash"].as_u64().unwrap() as u32
    }

    fn put_keys(&self, via: usize, tag: &str, n: usize) {
        for k in 0..n {
            self.ctl(via, &["put", &format!("/{tag}/{k:03}"), &format!("value {tag} {k}")]);
        }
    }

    /// Every stored snapshot object: name → bytes.
    fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.store.join("etcd-main/v2");
        std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().to_string_lossy().to_string();
                    (name.starts_with("Full-") || name.starts_with("Incr-"))
                        .then(|| (name, std::fs::read(e.path()).unwrap_or_default()))
                })
                .collect()
            })
            .unwrap_or_default()
    }

    /// The highest revision a stored delta or full snapshot reaches.
    fn backed_up(&self) -> i64 {
        self.objects().keys().filter_map(|n| n.split('-').nth(2)?.parse::<i64>().ok()).max().unwrap_or(0)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            out.push_str(&format!("--- {} sidecar\n{}\n", m.name, tail(&m.sidecar_log(), 30)));
            out.push_str(&format!("--- {} etcd\n{}\n", m.name, tail(&m.etcd_log(), 12)));
        }
        out
    }

    /// A metric's value summed over its label sets, from member `i`'s sidecar.
    async fn metric(&self, i: usize, name: &str) -> f64 {
        let Some((200, text)) = self.get(i, "/metrics").await else {
            return -1.0;
        };
        // A name alone sums its label sets; `name{labels}` picks one.
        text.lines()
            .filter(|l| l.starts_with(name) && (name.ends_with('}') || l[name.len()..].starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Runs the futures at once and returns their results in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Waits until `cond` holds, polling every 500 ms; fails with the logs after [`STEP`].
macro_rules! wait_for {
    ($cluster:expr, $what:expr, $cond:expr) => {{
        let deadline = Instant::now() + STEP;
        loop {
            if $cond {
                break;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {}\n{}", $what, $cluster.logs());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }};
}

fn value<'a>(config: &'a str, key: &str) -> &'a str {
    config
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{key} missing from the served config:\n{config}"))
}

/// Bootstraps all three members from empty data dirs and an empty store, and waits until the
/// leader's sidecar stored a full snapshot.
async fn bootstrap(version: EtcdVersion, tls: bool) -> Cluster {
    let mut c = Cluster::new(version, tls);
    c.write_configs(&[0, 1, 2]);
    for i in 0..3 {
        c.start_sidecar(i);
    }
    let configs = c.bring_up(&[0, 1, 2]).await;
    for (i, config) in configs.iter().enumerate() {
        assert_eq!(value(config, "name"), c.members[i].name);
        assert_eq!(value(config, "initial-cluster-state"), "new", "a bootstrap");
        assert_eq!(value(config, "initial-cluster").matches('=').count(), 3);
        assert_eq!(value(config, "advertise-client-urls"), c.client_url(i), "this member's entry of the map");
    }
    wait_for!(c, "a leader", c.leader().is_some());
    c.put_keys(0, "start", 3);
    wait_for!(c, "a full snapshot", c.objects().keys().any(|n| n.starts_with("Full-")));
    c
}

/// Member `i` loses its data dir and comes back: it must rejoin as a learner and be promoted,
/// with the cluster id unchanged everywhere and the store only read.
async fn lose_and_rejoin(c: &mut Cluster, i: usize, cluster_id: u64) {
    let name = c.members[i].name.clone();
    let old_id = c.member_list((i + 1) % 3)[&name].0;
    c.members[i].kill_sidecar();
    c.members[i].kill_etcd();
    std::fs::remove_dir_all(&c.members[i].data_dir).unwrap();
    let others: Vec<usize> = (0..3).filter(|j| *j != i).collect();
    wait_for!(c, "the two others to elect a leader", c.leader().is_some_and(|l| l != i));
    // Writes the lost member never saw.
    c.put_keys(others[0], &format!("while-{name}-away"), 5);
    let before = c.objects();

    c.start_sidecar(i);
    let config = c.wrap(i).await;
    assert_eq!(value(&config, "initial-cluster-state"), "existing", "a learner joins an existing cluster");
    assert_eq!(value(&config, "initial-cluster").matches('=').count(), 3);
    c.start_etcd(i);
    wait_for!(c, format!("{name} to be promoted"), {
        let list = c.member_list(others[0]);
        list.get(&name).is_some_and(|(id, learner)| *id != old_id && !learner) && list.len() == 3
    });
    let rev = c.status(others[0]).unwrap().revision;
    wait_for!(c, format!("{name} to catch up"), c.status(i).is_some_and(|s| s.revision >= rev));
    let hashes: Vec<u32> = (0..3).map(|j| c.hashkv(j, rev)).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "hashkv at {rev}: {hashes:?}");
    for j in 0..3 {
        assert_eq!(c.status(j).unwrap().cluster_id, cluster_id, "member {j} is in the same cluster");
    }
    // Nothing was restored: the rejoining sidecar never read a backup into the data dir, and
    // every object stored before is still there, unchanged.
    assert_eq!(c.metric(i, "etcdbr_restoration_duration_seconds_count").await, 0.0);
    assert_eq!(c.metric(i, "etcdbr_add_learner_duration_seconds_count{succeeded=\"true\"}").await, 1.0);
    let after = c.objects();
    for (object, bytes) in &before {
        assert_eq!(after.get(object), Some(bytes), "{object} changed or vanished");
    }
    let log = std::fs::read_to_string(c.members[i].sidecar_log()).unwrap();
    assert!(log.contains("removing this member from the cluster and adding it back as a learner"), "{log}");
}

async fn lifecycle(version: EtcdVersion) {
    let mut c = bootstrap(version, false).await;
    let cluster_id = c.status(0).unwrap().cluster_id;
    c.put_keys(0, "first", 10);

    // A follower, then the leader, lose their data dirs.
    let leader = c.leader().unwrap();
    lose_and_rejoin(&mut c, (leader + 1) % 3, cluster_id).await;
    let leader = c.leader().unwrap();
    lose_and_rejoin(&mut c, leader, cluster_id).await;

    // Defragmentation: garbage on every member (written, deleted, compacted), then a round
    // defragments them all.
    let garbage = |c: &Cluster, tag: &str| {
        let via = c.leader().unwrap();
        let value = "x".repeat(8 * 1024);
        for k in 0..150 {
            c.ctl(via, &["put", &format!("/{tag}/{k:03}"), &value]);
        }
        c.ctl(via, &["del", &format!("/{tag}/"), "--prefix"]);
        let rev = c.status(via).unwrap().revision;
        c.ctl(via, &["compact", &rev.to_string(), "--physical"]);
    };
    garbage(&c, "garbage-1");
    let sizes: Vec<u64> = c.members.iter().map(Member::db_size).collect();
    assert!(sizes.iter().all(|s| *s > 1_000_000), "{sizes:?}");
    wait_for!(
        c,
        format!("every member's db to shrink below {sizes:?}"),
        c.members.iter().zip(&sizes).all(|(m, before)| m.db_size() < before / 2)
    );

    // With one member down a round leaves every member alone and says why.
    let leader = c.leader().unwrap();
    let down = (leader + 1) % 3;
    c.members[down].kill_etcd();
    garbage(&c, "garbage-2");
    let sizes: Vec<u64> = c.members.iter().map(Member::db_size).collect();
    let skipped = c.metric(leader, "etcdbr_defragmentation_skipped_total").await;
    wait_for!(
        c,
        "a skipped defragmentation round",
        c.metric(leader, "etcdbr_defragmentation_skipped_total").await > skipped
    );
    for (j, m) in c.members.iter().enumerate() {
        if j != down {
            assert!(m.db_size() >= sizes[j], "member {j} was defragmented while {down} was down");
        }
    }
    let log = std::fs::read_to_string(c.members[leader].sidecar_log()).unwrap();
    assert!(
        log.contains("defragmentation skipped this round") && log.contains(&c.members[down].name),
        "the leader's sidecar says why"
    );
    c.start_etcd(down);
    wait_for!(c, "the stopped member back", c.status(down).is_some());

    // Every member loses its data: restored from the backup, all from the same chain. A full
    // snapshot first, so the backup holds the compaction above (deltas cannot carry one).
    let leader = c.leader().unwrap();
    wait_for!(c, "a full snapshot on demand", matches!(c.get(leader, "/snapshot/full").await, Some((200, _))));
    c.put_keys(leader, "last", 5);
    let rev = c.status(leader).unwrap().revision;
    wait_for!(c, format!("a backup of revision {rev}"), c.backed_up() >= rev);
    let source = c.hashkv(leader, rev);
    for m in &mut c.members {
        m.kill_sidecar();
    }
    for m in &mut c.members {
        m.kill_etcd();
        std::fs::remove_dir_all(&m.data_dir).unwrap();
    }
    for i in 0..3 {
        c.start_sidecar(i);
    }
    c.bring_up(&[0, 1, 2]).await;
    wait_for!(c, "a leader of the restored cluster", c.leader().is_some());
    for i in 0..3 {
        let s = c.status(i).unwrap();
        assert_eq!(s.revision, rev, "member {i} serves the backup's revision");
        assert_eq!(c.hashkv(i, rev), source, "member {i} serves the source's data");
        let log = std::fs::read_to_string(c.members[i].sidecar_log()).unwrap();
        assert!(log.contains("every member lost its data"), "member {i} restored because all lost their data");
    }
    c.put_keys(1, "restored", 2);
    assert_eq!(c.member_list(2).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_members_rejoin_from_their_peers_etcd_3_5() {
    lifecycle(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_members_rejoin_from_their_peers_etcd_3_4() {
    lifecycle(EtcdVersion::V3_4).await;
}

async fn scale_up(version: EtcdVersion) {
    let mut c = Cluster::new(version, false);
    c.write_configs(&[0]);
    c.start_sidecar(0);
    let config = c.bring_up(&[0]).await.remove(0);
    assert_eq!(value(&config, "initial-cluster").matches('=').count(), 1);
    wait_for!(c, "the single member to serve", c.status(0).is_some_and(|s| s.leader != 0));
    let cluster_id = c.status(0).unwrap().cluster_id;
    c.put_keys(0, "single", 20);
    let rev = c.status(0).unwrap().revision;
    wait_for!(c, "a backup of the single member", c.backed_up() >= rev);
    let single_keys = |c: &Cluster, i: usize| -> Vec<serde_json::Value> {
        let out = c.ctl(i, &["get", "/single/", "--prefix", "-w", "json", "--consistency=s"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["kvs"].as_array().cloned().unwrap_or_default()
    };
    let keys_before = single_keys(&c, 0);
    assert_eq!(keys_before.len(), 20);

    // etcd-druid scales to three: the config names three members, two new pods start at once.
    c.write_configs(&[0, 1, 2]);
    c.start_sidecar(1);
    c.start_sidecar(2);
    let configs = c.bring_up(&[1, 2]).await;
    for config in &configs {
        assert_eq!(value(config, "initial-cluster-state"), "existing");
    }
    wait_for!(c, "three voting members", {
        let list = c.member_list(0);
        list.len() == 3 && list.values().all(|(_, learner)| !learner)
    });
    // The first member's pod restarts with the new config (a rolling update) and keeps its data.
    c.members[0].kill_etcd();
    c.start_sidecar(0);
    c.bring_up(&[0]).await;
    wait_for!(c, "the first member back", c.status(0).is_some_and(|s| s.leader != 0));
    let rev = c.status(1).unwrap().revision;
    wait_for!(c, "every member at the same revision", (0..3).all(|i| c.status(i).is_some_and(|s| s.revision >= rev)));
    let hashes: Vec<u32> = (0..3).map(|i| c.hashkv(i, rev)).collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    for i in 0..3 {
        assert_eq!(c.status(i).unwrap().cluster_id, cluster_id, "member {i} joined the existing cluster");
        assert_eq!(single_keys(&c, i), keys_before, "member {i} has every key of the single member");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_from_one_to_three_members_etcd_3_5() {
    scale_up(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_from_one_to_three_members_etcd_3_4() {
    scale_up(EtcdVersion::V3_4).await;
}

async fn https_forwarding(version: EtcdVersion) {
    let c = bootstrap(version, true).await;
    let leader = c.leader().unwrap();
    let follower = (leader + 1) % 3;
    wait_for!(c, "the leader's sidecar to be healthy", matches!(c.get(leader, "/healthz").await, Some((200, _))));
    let before = c.metric(leader, "etcdbr_snapshot_duration_seconds_count").await;
    // 503 until the follower's elector has seen who leads.
    let deadline = Instant::now() + STEP;
    let (code, body) = loop {
        match c.get(follower, "/snapshot/full").await {
            Some((503, _)) | None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            Some(answer) => break answer,
            None => panic!("the follower does not answer\n{}", c.logs()),
        }
    };
    assert_eq!(code, 200, "{body}\n{}", c.logs());
    assert!(body.contains("\"kind\":\"Full\""), "{body}");
    assert!(c.metric(leader, "etcdbr_snapshot_duration_seconds_count").await > before, "the leader took it");
    assert_eq!(c.metric(follower, "etcdbr_snapshot_duration_seconds_count").await, 0.0, "the follower only forwarded");
    let log = std::fs::read_to_string(c.members[follower].sidecar_log()).unwrap();
    assert!(log.contains("forwarded to the leader's sidecar"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sidecars_forward_to_the_leader_with_a_private_ca_etcd_3_5() {
    https_forwarding(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sidecars_forward_to_the_leader_with_a_private_ca_etcd_3_4() {
    https_forwarding(EtcdVersion::V3_4).await;
}

/// The part of etcd-wrapper the sidecar talks to: `POST /stop` on port 9095 of etcd's host.
/// Records each request line; the test restarts etcd as the wrapper's container restart does.
struct WrapperStandIn {
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WrapperStandIn {
    async fn start(host: &str) -> WrapperStandIn {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind((host, 9095))
            .await
            .unwrap_or_else(|e| panic!("the etcd-wrapper stand-in cannot listen on {host}:9095: {e}"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                seen.lock().unwrap().push(text.lines().next().unwrap_or_default().to_string());
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            }
        });
        WrapperStandIn { requests, task }
    }

    fn stops(&self) -> usize {
        self.requests.lock().unwrap().iter().filter(|r| r.starts_with("POST /stop ")).count()
    }
}

impl Drop for WrapperStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback address of this test's own (127.x.y.z), so that the stand-in's fixed port 9095
/// meets no other test's.
fn own_loopback() -> String {
    let n =
        std::process::id() ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("127.{}.{}.{}", 1 + n % 250, (n >> 8) % 250 + 1, (n >> 16) % 250 + 1)
}

async fn peer_url_switch(version: EtcdVersion) {
    let mut c = Cluster::new(version, false);
    c.host = own_loopback();
    c.second_peer_port = true;
    let wrapper = WrapperStandIn::start(&c.host).await;
    let name = c.members[0].name.clone();
    c.write_configs(&[0]);
    c.start_sidecar(0);
    c.bring_up(&[0]).await;
    wait_for!(c, "the single member to serve", c.status(0).is_some_and(|s| s.leader != 0));
    let cluster_id = c.status(0).unwrap().cluster_id;
    let first = format!("http://{}:{}", c.host, c.members[0].peer_port);
    assert_eq!(c.peer_urls(0, &name), vec![first.clone()]);
    c.put_keys(0, "kept", 5);
    let rev = c.status(0).unwrap().revision;
    let hash = c.hashkv(0, rev);
    assert_eq!(wrapper.stops(), 0, "the peer URL was as configured: no restart");

    // The configuration moves the member to its second peer port; the pod restarts (sidecar
    // and etcd, which keeps its data dir and so the old peer URL in the membership).
    c.advertise_second_peer_port = true;
    c.write_configs(&[0]);
    c.members[0].kill_etcd();
    c.start_sidecar(0);
    let config = c.bring_up(&[0]).await.remove(0);
    let second = format!("http://{}:{}", c.host, c.members[0].peer_port_2);
    assert!(config.contains(&second), "the served config advertises {second}:\n{config}");
    wait_for!(c, format!("{name}'s peer URL to become {second}"), {
        c.status(0).is_some() && c.peer_urls(0, &name) == vec![second.clone()]
    });
    wait_for!(c, "the sidecar to ask etcd-wrapper to restart etcd", wrapper.stops() == 1);
    // What etcd-wrapper's restart does: etcd stops, the wrapper asks the sidecar again and
    // starts etcd on the config it serves.
    c.members[0].kill_etcd();
    c.bring_up(&[0]).await;
    wait_for!(c, "etcd back after the restart", c.status(0).is_some_and(|s| s.leader != 0));
    assert_eq!(c.peer_urls(0, &name), vec![second.clone()]);
    let s = c.status(0).unwrap();
    assert_eq!(s.cluster_id, cluster_id, "the same cluster");
    assert_eq!(c.hashkv(0, rev), hash, "the same data");
    // Once as configured, no further restart (give the reconciler a few polls to misbehave).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(wrapper.stops(), 1, "one restart for one change");
    let log = std::fs::read_to_string(c.members[0].sidecar_log()).unwrap();
    assert!(log.contains("updated this member's peer URLs to the configured ones"), "{log}");
    assert!(log.contains("asked etcd-wrapper to restart etcd"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_peer_url_is_set_in_the_membership_and_etcd_restarted_etcd_3_5() {
    peer_url_switch(EtcdVersion::V3_5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_peer_url_is_set_in_the_membership_and_etcd_restarted_etcd_3_4() {
    peer_url_switch(EtcdVersion::V3_4).await;
}
