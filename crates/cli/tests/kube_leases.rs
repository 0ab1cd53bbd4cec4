//! The Kubernetes Leases etcd-druid reads, kept by the `etcdbrctl` binary against real etcd and
//! the Kubernetes API stand-in (`testsupport::kube`; no kube-apiserver can be installed here),
//! reached through `KUBECONFIG` as in a pod with druid's environment (`POD_NAME`,
//! `POD_NAMESPACE`, `ETCD_CONF`):
//!
//! - `server`: after snapshots the full- and delta-snapshot Leases carry the revisions of the
//!   newest full snapshot and delta in the store; the member Lease is renewed every
//!   `--k8s-heartbeat-duration` with `<member id>:<cluster id>:Leader` and the TLS annotation;
//!   the API going away and coming back loses no snapshot.
//! - `compact` with druid's Job arguments renews the full-snapshot Lease with the compacted
//!   snapshot's revision.
//! - Renewal asked for without a namespace stops the command at start.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use testsupport::kube::{DEFAULT_TOKEN, KubeApi, micro_time_utc};
use testsupport::{Etcd, EtcdVersion, free_port};

const NS: &str = "shoot--dev--leases";
const POD: &str = "etcd-main-0";
/// The etcd config's `member-name-prefix`: the member (and its Lease) is `<prefix>-<pod>`.
const MEMBER_PREFIX: &str = "shoot--dev";
const FULL: &str = "etcd-main-full-snap";
const DELTA: &str = "etcd-main-delta-snap";
const PREFIX: &str = "etcd-main";

fn member_lease() -> String {
    format!("{MEMBER_PREFIX}-{POD}")
}

fn holder(api: &KubeApi, name: &str) -> Option<String> {
    api.lease(NS, name).and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

fn wait_for(what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !done() {
        if Instant::now() >= deadline {
            let text = fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            panic!("{what}: not within 90 s\nlog:\n{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (newest full snapshot's revision, newest delta's revision after it) by the object names.
fn newest(store: &Path) -> (Option<u64>, Option<u64>) {
    let mut names: Vec<(u64, bool)> = fs::read_dir(store.join(PREFIX).join("v2"))
        .map(|d| {
            d.filter_map(|e| {
                let n = e.ok()?.file_name().to_string_lossy().into_owned();
                let mut parts = n.split('-');
                let kind = parts.next()?;
                let _start = parts.next()?;
                let last: u64 = parts.next()?.parse().ok()?;
                matches!(kind, "Full" | "Incr").then_some((last, kind == "Full"))
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    let full = names.iter().filter(|(_, f)| *f).map(|(r, _)| *r).max();
    let delta = names.iter().filter(|(r, f)| !*f && Some(*r) > full).map(|(r, _)| *r).max();
    (full, delta)
}

/// The member id and cluster id etcd reports, in hex (`etcdctl endpoint status`).
fn ids(etcd: &Etcd) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&etcd.etcdctl(&["endpoint", "status", "-w", "json"])).unwrap();
    let h = &v[0]["Status"]["header"];
    (format!("{:x}", h["member_id"].as_u64().unwrap()), format!("{:x}", h["cluster_id"].as_u64().unwrap()))
}

fn etcd_config(dir: &Path, etcd: &Etcd) -> PathBuf {
    // As druid writes it for one replica with peer TLS: URL maps keyed by the member name.
    let member = member_lease();
    let text = format!(
        "name: etcd-config\n\
         member-name-prefix: {MEMBER_PREFIX}\n\
         advertise-client-urls:\n  {member}:\n  - {client}\n\
         initial-advertise-peer-urls:\n  {member}:\n  - https://127.0.0.1:{peer}\n\
         initial-cluster: {member}=https://127.0.0.1:{peer}\n",
        client = etcd.endpoint(),
        peer = free_port(),
    );
    let path = dir.join("etcd.conf.yaml");
    fs::write(&path, text).unwrap();
    path
}

fn etcdbrctl(kubeconfig: &Path, etcd_conf: &Path, log: &Path, args: &[String]) -> Command {
    let out = fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    cmd.args(args)
        .env("POD_NAME", POD)
        .env("POD_NAMESPACE", NS)
        .env("ETCD_CONF", etcd_conf)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    cmd
}

#[test]
fn server_and_compact_keep_the_leases_druid_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    for i in 0..10 {
        etcd.etcdctl(&["put", &format!("/registry/a{i}"), "v"]);
    }
    let mut api = KubeApi::start();
    for lease in [FULL.to_string(), DELTA.to_string(), member_lease()] {
        api.create_lease(NS, &lease);
    }
    let kubeconfig = api.kubeconfig(NS, DEFAULT_TOKEN);
    let conf = etcd_config(tmp.path(), &etcd);
    let store = tmp.path().join("store");
    let log = tmp.path().join("server.log");
    let port = free_port();
    let args: Vec<String> = [
        "server".to_string(),
        format!("--server-port={port}"),
        format!("--endpoints={}", etcd.endpoint()),
        "--storage-provider=Local".into(),
        format!("--store-container={}", store.display()),
        format!("--store-prefix={PREFIX}"),
        "--delta-snapshot-period=1s".into(),
        "--enable-snapshot-lease-renewal=true".into(),
        format!("--full-snapshot-lease-name={FULL}"),
        format!("--delta-snapshot-lease-name={DELTA}"),
        "--enable-member-lease-renewal=true".into(),
        "--k8s-heartbeat-duration=1s".into(),
        format!("--data-dir={}", tmp.path().join("data").display()),
        format!("--snapstore-temp-directory={}", tmp.path().join("temp").display()),
    ]
    .into();
    let mut server = Proc(etcdbrctl(&kubeconfig, &conf, &log, &args).spawn().expect("start etcdbrctl server"));

    // The first full snapshot; idle delta rounds: 0.
    let first = etcd.revision() as u64;
    wait_for("the full-snapshot lease", &log, || holder(&api, FULL) == Some(first.to_string()));
    assert_eq!(newest(&store), (Some(first), None));
    wait_for("the delta-snapshot lease at 0", &log, || holder(&api, DELTA).as_deref() == Some("0"));

    // The member Lease: this member's ids, leader of its one-member cluster, peer TLS on.
    let (member_id, cluster_id) = ids(&etcd);
    let identity = format!("{member_id}:{cluster_id}:Leader");
    wait_for("the member lease", &log, || holder(&api, &member_lease()) == Some(identity.clone()));
    let lease = api.lease(NS, &member_lease()).unwrap();
    assert_eq!(lease["metadata"]["annotations"]["member.etcd.gardener.cloud/tls-enabled"], "true");
    assert_eq!(lease["metadata"]["labels"]["app.kubernetes.io/managed-by"], "etcd-druid", "druid's labels are kept");
    // Renewed on schedule: more renewals come, each later than the one before.
    let renewals = |api: &KubeApi| -> Vec<String> {
        api.requests()
            .into_iter()
            .filter(|r| {
                r.method == "PATCH" && r.status == 200 && r.path.contains(&format!("/leases/{}", member_lease()))
            })
            .map(|r| r.json()["spec"]["renewTime"].as_str().unwrap().to_string())
            .collect()
    };
    let before = renewals(&api).len();
    wait_for("three more member lease renewals", &log, || renewals(&api).len() >= before + 3);
    let times = renewals(&api);
    assert!(times.iter().all(|t| micro_time_utc(t).as_deref() == Some(t.as_str())), "MicroTime, UTC: {times:?}");
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");

    // Writes: the delta Lease follows the newest delta.
    for i in 0..10 {
        etcd.etcdctl(&["put", &format!("/registry/b{i}"), "w"]);
    }
    let target = etcd.revision() as u64;
    wait_for("the delta-snapshot lease at the newest delta", &log, || holder(&api, DELTA) == Some(target.to_string()));
    assert_eq!(newest(&store), (Some(first), Some(target)));

    // The API goes away: snapshots go on; it comes back: the Leases catch up.
    api.stop();
    for i in 0..10 {
        etcd.etcdctl(&["put", &format!("/registry/c{i}"), "x"]);
    }
    let during = etcd.revision() as u64;
    wait_for("deltas while the API is down", &log, || newest(&store).1 == Some(during));
    api.start_again();
    wait_for("the delta-snapshot lease after the outage", &log, || holder(&api, DELTA) == Some(during.to_string()));
    wait_for("the member lease renewed after the outage", &log, || {
        api.requests()
            .iter()
            .rev()
            .take(20)
            .any(|r| r.method == "PATCH" && r.path.contains(&format!("/leases/{}", member_lease())))
    });

    // SIGTERM: a clean stop.
    assert!(Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0), "{}", fs::read_to_string(&log).unwrap_or_default());
    let (_, last_delta) = newest(&store);
    let last = last_delta.expect("deltas after the full snapshot");

    // The compaction Job (druid's arguments): the full-snapshot Lease gets its revision.
    let clog = tmp.path().join("compact.log");
    let cargs: Vec<String> = [
        "compact".to_string(),
        format!("--data-dir={}", tmp.path().join("compaction.etcd").display()),
        format!("--restoration-temp-snapshots-dir={}", tmp.path().join("compaction.restoration.temp").display()),
        format!("--snapstore-temp-directory={}", tmp.path().join("tmp").display()),
        "--metrics-scrape-wait-duration=0s".into(),
        "--enable-snapshot-lease-renewal=true".into(),
        format!("--full-snapshot-lease-name={FULL}"),
        format!("--delta-snapshot-lease-name={DELTA}"),
        format!("--embedded-etcd-quota-bytes={}", 8u64 * 1024 * 1024 * 1024),
        "--storage-provider=Local".into(),
        format!("--store-prefix={PREFIX}"),
        format!("--store-container={}", store.display()),
    ]
    .into();
    let out = etcdbrctl(&kubeconfig, &conf, &clog, &cargs).status().unwrap();
    assert!(out.success(), "compact: {}", fs::read_to_string(&clog).unwrap_or_default());
    assert_eq!(newest(&store), (Some(last), None), "the compacted full snapshot reaches the last delta");
    assert_eq!(holder(&api, FULL), Some(last.to_string()));
    let renew = api.lease(NS, FULL).unwrap()["spec"]["renewTime"].as_str().unwrap().to_string();
    let created: u64 = fs::read_dir(store.join(PREFIX).join("v2"))
        .unwrap()
        .filter_map(|e| {
            let n = e.ok()?.file_name().to_string_lossy().into_owned();
            n.starts_with(&format!("Full-00000000-{last:08}-"))
                .then(|| n.split('-').nth(3)?.split('.').next()?.parse().ok())?
        })
        .next()
        .expect("the compacted full snapshot");
    let expected = humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + Duration::from_secs(created)).to_string();
    assert_eq!(renew, expected, "renewTime is the compacted snapshot's creation time");
    drop(server);
}

#[test]
fn renewal_without_a_namespace_stops_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    for (cmd, flag) in
        [("server", "--enable-member-lease-renewal=true"), ("compact", "--enable-snapshot-lease-renewal=true")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
            .args([cmd, flag, "--storage-provider=Local", &format!("--store-container={}", tmp.path().display())])
            .env_remove("POD_NAMESPACE")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {err}");
        assert!(err.contains("POD_NAMESPACE"), "{cmd}: {err}");
    }
    assert!(fs::read_dir(tmp.path()).unwrap().next().is_none(), "nothing was written");
}
