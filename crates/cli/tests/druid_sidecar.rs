//! The backup-restore sidecar as etcd-druid runs it: `etcdbrctl server` with the argument list
//! druid's StatefulSet builder makes (internal/component/statefulset/builder.go,
//! `getBackupRestoreContainerCommandArgs`), without and with TLS, driven the way etcd-wrapper
//! drives it: `/initialization/start`, `/initialization/status` until `Successful`, `/config`,
//! then etcd started with that config. The sidecar must initialize, hand out a config etcd
//! boots with, and snapshot it (a full snapshot, then deltas) into the Local store; the store
//! restores to exactly what etcd serves.
//!
//! The druid paths (`/var/etcd/data`, `/var/etcd/ssl/...`, `/var/etcdbr/ssl/server`) live in a
//! temp dir and the Kubernetes DNS names (`etcd-main-local`, the pods' peer names) are
//! 127.0.0.1 with free ports; everything else is druid's. The Leases druid creates live in the
//! Kubernetes API stand-in (`testsupport::KubeApi`) the sidecar reaches through `KUBECONFIG`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use testsupport::kube::{DEFAULT_TOKEN, KubeApi};
use testsupport::{Etcd, EtcdVersion, free_port};

const ETCD: &str = "etcd-main";
const POD: &str = "etcd-main-0";
const NAMESPACE: &str = "shoot--dev--main";
const PREFIX: &str = "etcd-main";
const CONTAINER: &str = "backups";

/// Where druid's volumes are, inside one temp dir.
struct Pod {
    root: tempfile::TempDir,
    tls: bool,
    server_port: u16,
    client_port: u16,
    peer_port: u16,
}

impl Pod {
    fn new(tls: bool) -> Pod {
        let root = tempfile::tempdir().unwrap();
        for d in ["var/etcd/data", "var/etcd/config", "home", "ssl"] {
            fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let pod = Pod { root, tls, server_port: free_port(), client_port: free_port(), peer_port: free_port() };
        if tls {
            pod.make_certificates();
        }
        pod
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn data(&self) -> PathBuf {
        self.path("var/etcd/data")
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// A CA (druid's `ca.crt`), etcd's server certificate, the sidecar's etcd client
    /// certificate and the sidecar's own server certificate (`--server-cert`), all for
    /// 127.0.0.1 and signed by the CA.
    fn make_certificates(&self) {
        let ca = testsupport::PrivateCa::new(&self.path("ssl"), "etcd-ca");
        for (leaf, usage) in [("server", "serverAuth"), ("client", "clientAuth"), ("backup", "serverAuth")] {
            ca.leaf(leaf, &format!("etcd-{leaf}"), "IP:127.0.0.1,DNS:localhost", Some(usage));
        }
    }

    /// druid's etcd config (configmap/etcdconfig.go `createEtcdConfig`, as sigs.k8s.io/yaml
    /// writes it), for a one-replica Etcd; the URLs on loopback.
    fn etcd_config(&self) -> String {
        let s = self.scheme();
        let (c, p) = (self.client_port, self.peer_port);
        let mut conf = format!(
            "advertise-client-urls:\n  {POD}:\n  - {s}://127.0.0.1:{c}\n\
             auto-compaction-mode: periodic\n\
             auto-compaction-retention: 30m\n\
             backend-bbolt-freelist-type: array\n\
             data-dir: {data}/new.etcd\n\
             enable-grpc-gateway: false\n\
             initial-advertise-peer-urls:\n  {POD}:\n  - http://127.0.0.1:{p}\n\
             initial-cluster: {POD}=http://127.0.0.1:{p}\n\
             initial-cluster-state: new\n\
             initial-cluster-token: etcd-cluster\n\
             listen-client-urls: {s}://127.0.0.1:{c}\n\
             listen-peer-urls: http://127.0.0.1:{p}\n\
             metrics: basic\n\
             name: etcd-config\n\
             next-cluster-version-compatible: true\n\
             quota-backend-bytes: 8589934592\n\
             snapshot-count: 75000\n",
            data = self.data().display(),
        );
        if self.tls {
            let ssl = self.path("ssl");
            conf.push_str(&format!(
                "client-transport-security:\n  auto-tls: false\n  cert-file: {d}/server.crt\n  \
                 client-cert-auth: true\n  key-file: {d}/server.key\n  trusted-ca-file: {d}/ca.crt\n",
                d = ssl.display()
            ));
        }
        conf
    }

    /// `getBackupRestoreContainerCommandArgs` for an Etcd `etcd-main` (one replica, runtime
    /// components enabled, backup to a Local store with prefix `etcd-main`, delta snapshots
    /// every 2s, default everything else) with or without client and backup TLS.
    fn sidecar_args(&self) -> Vec<String> {
        let data = self.data().display().to_string();
        let ssl = self.path("ssl").display().to_string();
        let mut a = vec!["server".to_string(), format!("--server-port={}", self.server_port)];
        // getBackupStoreCommandArgs
        a.extend([
            "--enable-snapshot-lease-renewal=true".to_string(),
            format!("--full-snapshot-lease-name={ETCD}-full-snap"),
            format!("--delta-snapshot-lease-name={ETCD}-delta-snap"),
            "--storage-provider=Local".into(),
            format!("--store-prefix={PREFIX}"),
            "--delta-snapshot-period=2s".into(),
            format!("--delta-snapshot-memory-limit={}", 100 * 1024 * 1024),
            "--garbage-collection-policy=LimitBased".into(),
            "--max-backups=7".into(),
            "--compress-snapshots=true".into(),
            "--compression-policy=gzip".into(),
            "--etcd-snapshot-timeout=15m".into(),
        ]);
        a.extend([
            "--etcd-defrag-timeout=15m".to_string(),
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=30m".into(),
        ]);
        let client = format!("{}://127.0.0.1:{}", self.scheme(), self.client_port);
        if self.tls {
            a.extend([
                format!("--cacert={ssl}/ca.crt"),
                format!("--cert={ssl}/client.crt"),
                format!("--key={ssl}/client.key"),
                "--insecure-transport=false".into(),
                "--insecure-skip-tls-verify=false".into(),
                format!("--endpoints={client}"),
                format!("--service-endpoints={client}"),
                format!("--server-cert={ssl}/backup.crt"),
                format!("--server-key={ssl}/backup.key"),
            ]);
        } else {
            a.extend([
                "--insecure-transport=true".to_string(),
                "--insecure-skip-tls-verify=true".into(),
                format!("--endpoints={client}"),
                format!("--service-endpoints={client}"),
            ]);
        }
        a.extend([
            format!("--data-dir={data}/new.etcd"),
            format!("--restoration-temp-snapshots-dir={data}/restoration.temp"),
            format!("--snapstore-temp-directory={data}/temp"),
            "--etcd-connection-timeout=5m".into(),
            "--use-etcd-wrapper=true".into(),
            "--enable-member-lease-renewal=true".into(),
            "--k8s-heartbeat-duration=10s".into(),
            format!("--embedded-etcd-quota-bytes={}", 8u64 * 1024 * 1024 * 1024),
        ]);
        a
    }

    /// `curl` against the sidecar: (status, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("{}://127.0.0.1:{}{path}", self.scheme(), self.server_port);
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--max-time", "30", "-w", "\n%{http_code}"]);
        if self.tls {
            cmd.arg("--cacert").arg(self.path("ssl/ca.crt"));
        }
        let out = cmd.arg(&url).output().expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_string()))
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 90 s\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        let log = fs::read_to_string(self.path("sidecar.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("sidecar log (last 40 lines):\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    fn store(&self) -> PathBuf {
        self.path("home").join(CONTAINER).join(PREFIX).join("v2")
    }

    fn objects(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store())
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.retain(|n| n.starts_with("Full-") || n.starts_with("Incr-"));
        v.sort();
        v
    }
}

/// Starts `etcdbrctl` with druid's environment: POD_NAME, POD_NAMESPACE, STORAGE_CONTAINER
/// (internal/utils/envvar.go), `$HOME` (the Local store's root) and the etcd config's path.
fn start_sidecar(pod: &Pod, kubeconfig: &Path) -> Proc {
    let log = fs::File::create(pod.path("sidecar.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(pod.sidecar_args())
        .env("POD_NAME", POD)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("STORAGE_CONTAINER", CONTAINER)
        .env("HOME", pod.path("home"))
        .env("ETCD_CONF", pod.path("var/etcd/config/etcd.conf.yaml"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .current_dir(pod.root.path())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcdbrctl server");
    Proc(child)
}

/// What etcd-wrapper does: start initialization, wait for `Successful`, fetch `/config`, and
/// run etcd with it.
fn wrapper_starts_etcd(pod: &Pod) -> Proc {
    pod.wait_for(
        "the sidecar answers /initialization/status",
        || matches!(pod.get("/initialization/status"), Some((200, s)) if s == "New"),
    );
    assert_eq!(pod.get("/initialization/start?mode=full").map(|r| r.0), Some(200), "{}", pod.log());
    pod.wait_for("initialization succeeds", || match pod.get("/initialization/status") {
        Some((200, s)) if s == "Successful" => true,
        Some((200, s)) if s == "Failed" => panic!("initialization failed\n{}", pod.log()),
        _ => false,
    });
    let (code, config) = pod.get("/config").expect("/config answers");
    assert_eq!(code, 200, "/config: {config}\n{}", pod.log());
    assert!(config.contains(&format!("name: {POD}")), "the member is named after the pod: {config}");
    let conf_file = pod.path("etcd.conf.yaml");
    fs::write(&conf_file, &config).unwrap();
    let log = fs::File::create(pod.path("etcd.log")).unwrap();
    let child = Command::new(EtcdVersion::V3_5.etcd_bin())
        .arg("--config-file")
        .arg(&conf_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start etcd");
    Proc(child)
}

/// etcdctl against the etcd started from the served config.
fn etcdctl(pod: &Pod, args: &[&str]) -> String {
    let out = etcdctl_output(pod, args);
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcdctl_ok(pod: &Pod, args: &[&str]) -> bool {
    etcdctl_output(pod, args).status.success()
}

fn etcdctl_output(pod: &Pod, args: &[&str]) -> Output {
    let mut cmd = Command::new(EtcdVersion::V3_5.etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}://127.0.0.1:{}", pod.scheme(), pod.client_port))
        .arg("--dial-timeout=10s");
    if pod.tls {
        let ssl = pod.path("ssl");
        cmd.arg(format!("--cacert={}/ca.crt", ssl.display()))
            .arg(format!("--cert={}/client.crt", ssl.display()))
            .arg(format!("--key={}/client.key", ssl.display()));
    }
    cmd.args(args).output().expect("etcdctl")
}

fn revision_and_hash(pod: &Pod) -> (i64, u32) {
    let v: serde_json::Value = serde_json::from_str(&etcdctl(pod, &["endpoint", "hashkv", "-w", "json"])).unwrap();
    (v[0]["HashKV"]["header"]["revision"].as_i64().unwrap(), v[0]["HashKV"]["hash"].as_u64().unwrap() as u32)
}

fn druid_sidecar(tls: bool) {
    let pod = Pod::new(tls);
    fs::write(pod.path("var/etcd/config/etcd.conf.yaml"), pod.etcd_config()).unwrap();
    // The Leases druid creates beside the StatefulSet.
    let kube = KubeApi::start();
    for lease in [format!("{ETCD}-full-snap"), format!("{ETCD}-delta-snap"), POD.to_string()] {
        kube.create_lease(NAMESPACE, &lease);
    }
    let kubeconfig = kube.kubeconfig(NAMESPACE, DEFAULT_TOKEN);

    let mut sidecar = start_sidecar(&pod, &kubeconfig);
    let etcd = wrapper_starts_etcd(&pod);
    pod.wait_for("etcd serves", || etcdctl_ok(&pod, &["endpoint", "health"]));
    for i in 0..20 {
        etcdctl(&pod, &["put", &format!("/registry/pods/p{i}"), &format!("v{i}")]);
    }

    // The snapshotter starts once etcd answers: a full snapshot, then deltas.
    pod.wait_for("a full snapshot in the store", || pod.objects().iter().any(|n| n.starts_with("Full-")));
    pod.wait_for("/healthz is 200", || matches!(pod.get("/healthz"), Some((200, _))));
    etcdctl(&pod, &["put", "/registry/pods/late", "after the full snapshot"]);
    etcdctl(&pod, &["del", "/registry/pods/p3"]);
    let (revision, hash) = revision_and_hash(&pod);
    pod.wait_for("a delta snapshot up to the last revision", || {
        pod.objects().iter().any(|n| n.starts_with("Incr-") && n.contains(&format!("-{revision:08}-")))
    });
    let (code, latest) = pod.get("/snapshot/latest").unwrap();
    assert_eq!(code, 200, "{latest}");
    assert!(latest.contains(&format!("\"lastRevision\":{revision}")), "{latest}");

    // The operator's checks with the sidecar's etcd flags (TLS included): status and verify.
    let container = format!("--store-container={}", pod.path("home").join(CONTAINER).display());
    let etcd_flags: Vec<String> = pod
        .sidecar_args()
        .into_iter()
        .filter(|a| {
            ["--cacert=", "--cert=", "--key=", "--insecure-transport=", "--endpoints="].iter().any(|f| a.starts_with(f))
        })
        .collect();
    for (command, key, want) in [("status", "verdict", "healthy"), ("verify", "outcome", "bit-exact")] {
        let out = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
            .args([command, "-w", "json", "--storage-provider=Local", &container, &format!("--store-prefix={PREFIX}")])
            .args(&etcd_flags)
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(json[key], want, "{command}: {json:#}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0));
    }

    // SIGTERM: the sidecar stops cleanly (exit 0), as a pod's container is stopped.
    let pid = sidecar.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = sidecar.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the sidecar did not stop on SIGTERM\n{}", pod.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{}", pod.log());
    drop(etcd);

    // The store restores to exactly what etcd served.
    let restored = pod.path("restored.etcd");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(["restore", "--storage-provider=Local", "--name=n1"])
        .arg(format!("--store-container={}", pod.path("home").join(CONTAINER).display()))
        .arg(format!("--store-prefix={PREFIX}"))
        .arg(format!("--data-dir={}", restored.display()))
        .arg(format!("--initial-cluster=n1={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", String::from_utf8_lossy(&out.stderr));
    let back = Etcd::start_on(EtcdVersion::V3_5, &restored, "n1", peer, free_port());
    assert_eq!(back.hashkv(revision).0, hash, "the restored store serves what etcd served");
    drop(kube);
}

#[test]
fn druid_sidecar_without_tls_initializes_and_snapshots() {
    druid_sidecar(false);
}

#[test]
fn druid_sidecar_with_tls_initializes_and_snapshots() {
    druid_sidecar(true);
}
