//! The status page at `/`, rendered by a real headless Chromium (Debian `chromium`) against a
//! real server: real etcd, a running snapshotter, a Local store in a temp dir.
//!
//! `--dump-dom` gives the DOM after Chromium parsed the page (so broken markup that a `contains`
//! on the raw body would miss shows up here), `--screenshot` proves the page paints. Set
//! `ETCDBR_KEEP_SCREENSHOT=/some/page.png` to keep the screenshot for a look.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brcore::etcd::{EtcdClient, EtcdConfig, EtcdSource};
use brcore::metrics::Metrics;
use brcore::snapshotter::full::FullOptions;
use brcore::snapshotter::{Snapshotter, SnapshotterConfig};
use brcore::verify::{Verifier, VerifyPlan};
use common::local_store;
use httpd::{LiveSnapshots, Server, ServerConfig, SnapshotControl, StoreSnapshots, VerificationFeed};
use testsupport::{Etcd, EtcdVersion};
use tokio::sync::oneshot;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";
/// A safeguard against a hung browser, far above the second or two a page needs.
const BROWSER_LIMIT: Duration = Duration::from_secs(60);

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.text().await.expect("body"))
}

/// Runs headless Chromium with `args` and a fresh profile; returns its stdout.
async fn chromium(work: &Path, args: &[String]) -> String {
    let bin = testsupport::require_binary(CHROMIUM.into(), "Debian chromium (apt-get install -y chromium)");
    let profile = tempfile::tempdir_in(work).unwrap();
    let out = work.join(format!("chromium-{}.out", profile.path().file_name().unwrap().to_string_lossy()));
    let err = work.join(format!("chromium-{}.err", profile.path().file_name().unwrap().to_string_lossy()));
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        // Files, not pipes: nobody reads while the browser runs, and a full pipe would stall it.
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let status = match tokio::time::timeout(BROWSER_LIMIT, child.wait()).await {
        Ok(status) => status.expect("wait for chromium"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("chromium {args:?} still running after {BROWSER_LIMIT:?}");
        }
    };
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium {args:?} failed ({status}):\n{stderr}");
    std::fs::read_to_string(&out).expect("chromium's stdout")
}

/// Asks for a delta until one reaches `target` (the watch may not have seen the last write yet).
async fn delta_up_to(client: &reqwest::Client, base: &str, target: i64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(client, &format!("{base}/snapshot/delta")).await;
        if code == 200 && body.contains(&format!("\"lastRevision\":{target},")) {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            return json["snapName"].as_str().expect("snapName").to_string();
        }
        assert!(Instant::now() < deadline, "no delta up to revision {target}: {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    for i in 0..10 {
        etcd.etcdctl(&["put", &format!("/registry/pods/p{i:02}"), &format!("spec-{i}")]);
    }
    let store = local_store(tmp.path());
    let metrics = Metrics::new();
    let source: Arc<dyn EtcdSource> = Arc::new(EtcdClient::new(EtcdConfig::new(vec![etcd.endpoint()])));
    let mut options = FullOptions::new("");
    options.timeout = Duration::from_secs(120);
    let live =
        Arc::new(LiveSnapshots::new(StoreSnapshots::new(source.clone(), store.clone(), options, metrics.clone())));
    // The snapshotter takes deltas only when asked (a long period), so the chain is the test's.
    let mut config = SnapshotterConfig::new("");
    config.delta_period = Some(Duration::from_secs(3600));
    config.gc_period = None;
    let snapshotter = Snapshotter::new(source.clone(), store.clone(), config, metrics.clone());
    live.attach(snapshotter.handle());
    let (stop_snapshotter, until) = oneshot::channel::<()>();
    let snapshotter = tokio::spawn(snapshotter.run(async {
        let _ = until.await;
    }));

    let snapshots: Arc<dyn SnapshotControl> = live.clone();
    // Scheduled verification, run by hand below (a real verify against the real etcd).
    let verify_tmp = tmp.path().join("verify-tmp");
    let verifier = Verifier::new(store.clone(), source.clone(), VerifyPlan::new("", &verify_tmp), metrics.clone());
    // An etcd config that is not there: `/config` fails, and the page lists the failure.
    let missing_conf = tmp.path().join("no <such> etcd.conf.yaml");
    let mut config = ServerConfig::default();
    config.etcd_conf = Some(missing_conf);
    config.verification = Some(VerificationFeed { period: Duration::from_secs(3600), results: verifier.subscribe() });
    let server = Server::new(
        config,
        common::init(store, etcd.data_dir().to_path_buf(), &etcd.peer_url()),
        Some(snapshots),
        metrics,
    );
    let handle = server.handle();
    handle.set_healthy(true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    let (stop_server, rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(listener, async {
        let _ = rx.await;
    }));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();

    // A full snapshot on demand, then two deltas after more writes.
    let (code, body) = get(&client, &format!("{base}/snapshot/full")).await;
    assert_eq!(code, 200, "{body}");
    let full: serde_json::Value = serde_json::from_str(&body).unwrap();
    let full_name = full["snapName"].as_str().expect("snapName").to_string();
    assert!(full_name.starts_with("Full-") && full_name.ends_with(".gz"), "{full_name}");
    let mut deltas = Vec::new();
    for round in 0..2 {
        for i in 0..5 {
            etcd.etcdctl(&["put", &format!("/registry/leases/r{round}-{i}"), "x"]);
        }
        deltas.push(delta_up_to(&client, &base, etcd.revision()).await);
    }

    let (code, body) = get(&client, &format!("{base}/config")).await;
    assert_eq!(code, 500, "{body}");

    // Verification: nothing yet, then one run of the chain just stored, bit-exact with etcd.
    assert_eq!(get(&client, &format!("{base}/snapshot/verify/latest")).await, (200, "null".into()));
    let run = verifier.run_once().await;
    assert!(run.succeeded, "{run:?}");
    let target = etcd.revision();
    let (code, body) = get(&client, &format!("{base}/snapshot/verify/latest")).await;
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (json["report"]["outcome"].as_str(), json["report"]["revision"].as_i64()),
        (Some("bit-exact"), Some(target))
    );
    let r = client.post(format!("{base}/snapshot/verify/latest")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert!(std::fs::read_dir(&verify_tmp).unwrap().next().is_none(), "the rebuilt db was left behind");

    // What Chromium parsed.
    let url = format!("{base}/");
    let dom = chromium(tmp.path(), &["--dump-dom".into(), url.clone()]).await;
    assert!(dom.contains("<html") && dom.contains("</html>"), "{dom}");
    assert!(dom.contains(&full_name), "the full snapshot's name is missing:\n{dom}");
    for d in &deltas {
        assert!(dom.contains(d.as_str()), "delta {d} is missing:\n{dom}");
    }
    assert!(dom.contains(r#"<b id="init-status">New</b>"#), "the initialization state is missing:\n{dom}");
    assert!(dom.contains(r#"id="health">healthy<"#), "{dom}");
    assert!(dom.contains(&format!("reaches revision {target}")), "{dom}");
    let bit_exact =
        format!(r#"<span class="ok" id="verification">bit-exact</span> with etcd at revision {target} (hashkv "#);
    assert!(dom.contains(&bit_exact), "the verification result is missing:\n{dom}");
    assert!(dom.contains(&format!("{full_name} + 2 deltas fetched and checked")), "{dom}");
    // The chain on the timeline, oldest first, and the error with its text escaped, not parsed.
    let timeline = dom.find(r#"id="timeline""#).expect("no timeline");
    let mut at = timeline;
    for name in std::iter::once(&full_name).chain(&deltas) {
        let found = dom[at..]
            .find(&format!(r#"title="{name}""#))
            .unwrap_or_else(|| panic!("{name} not on the timeline after byte {at}:\n{dom}"));
        at += found;
    }
    assert!(dom.contains("no &lt;such&gt; etcd.conf.yaml"), "the /config failure is missing:\n{dom}");
    assert!(!dom.contains("<such>"), "{dom}");
    assert!(!dom.contains("<script"), "the page is meant to be script-free:\n{dom}");

    // What Chromium painted.
    let png = tmp.path().join("page.png");
    chromium(tmp.path(), &[format!("--screenshot={}", png.display()), "--window-size=1200,900".into(), url]).await;
    let bytes = std::fs::read(&png).expect("chromium wrote no screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG: {:02x?}", &bytes[..bytes.len().min(8)]);
    assert!(bytes.len() > 8 * 1024, "a {} B screenshot cannot show the page", bytes.len());
    // The IHDR chunk right after the signature carries the painted size.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!((width, height), (1200, 900));
    if let Some(keep) = std::env::var_os("ETCDBR_KEEP_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("copy the screenshot");
    }

    let _ = stop_server.send(());
    serving.await.expect("server task").expect("server ends cleanly");
    let _ = stop_snapshotter.send(());
    snapshotter.await.expect("snapshotter task").expect("snapshotter ends cleanly");
}
