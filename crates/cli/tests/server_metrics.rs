//! The metrics that used to stand still move: `etcdbrctl server` restores a missing data dir
//! through `/initialization/start`, and `/metrics` then shows the restoration's duration
//! (`etcdbr_restoration_duration_seconds`), the cluster size, the standard `process_*` metrics
//! and the Go tool's network byte counters, with values that describe this process.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testsupport::{free_port, http_get};

/// The value of the sample line `name` (with its labels) in a `/metrics` body.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn an_initialization_that_restores_moves_the_restoration_and_process_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    common::copy_go_store("etcdbrctl-0.43.0-etcd-3.5.30", &store);
    let port = free_port();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let log = std::fs::File::create(tmp.path().join("server.log")).unwrap();
    let child = common::etcdbrctl()
        .args(["server", "--server-port", &port.to_string()])
        .args(["--storage-provider", "Local", "--store-container", store.to_str().unwrap()])
        .args(["--data-dir", tmp.path().join("data").to_str().unwrap()])
        .args(["--name", "n1", "--initial-cluster", &format!("n1={peer}"), "--initial-advertise-peer-urls", &peer])
        // No etcd runs: the snapshotter waits for it, initialization does not need it.
        .args(["--endpoints", &format!("http://127.0.0.1:{}", free_port())])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcdbrctl server");
    let _server = common::Proc(child);
    let log = || std::fs::read_to_string(tmp.path().join("server.log")).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/healthz").is_none() {
        assert!(Instant::now() < deadline, "the server never answered:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, before) = http_get(port, "/metrics").expect("metrics");
    let restored_ok = "etcdbr_restoration_duration_seconds_count{restore=\"single_node\",succeeded=\"true\"}";
    assert_eq!(sample(&before, restored_ok), 0.0);
    assert_eq!(sample(&before, "etcdbr_cluster_size"), 1.0, "set at start from --initial-cluster");

    assert_eq!(http_get(port, "/initialization/start?mode=sanity").map(|r| r.0), Some(200));
    loop {
        let (_, status) = http_get(port, "/initialization/status").expect("status");
        match status.as_str() {
            "Successful" => break,
            "Progress" => {}
            other => panic!("initialization ended {other}:\n{}", log()),
        }
        assert!(Instant::now() < deadline, "initialization still running:\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tmp.path().join("data/member/snap/db").is_file());

    let (code, text) = http_get(port, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert_eq!(sample(&text, restored_ok), 1.0, "the restore was observed");
    let seconds = sample(&text, "etcdbr_restoration_duration_seconds_sum{restore=\"single_node\",succeeded=\"true\"}");
    assert!(seconds > 0.0 && seconds < 60.0, "{seconds}");
    assert_eq!(sample(&text, "etcdbr_cluster_size"), 1.0);

    // The standard process metrics, about this server process.
    let rss = sample(&text, "process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 4e9, "{rss}");
    let start = sample(&text, "process_start_time_seconds");
    assert!((start - started).abs() < 120.0, "started at {started}, process says {start}");
    assert!(sample(&text, "process_cpu_seconds_total") > 0.0);
    assert!(sample(&text, "process_open_fds") >= 3.0);
    assert!(sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"));
    assert!(sample(&text, "process_threads") >= 2.0);
    assert!(sample(&text, "process_virtual_memory_bytes") >= rss);
    // Every request above crossed the loopback interface of this network namespace.
    assert!(sample(&text, "etcdbr_network_received_bytes") > 0.0);
    assert!(sample(&text, "etcdbr_network_transmitted_bytes") > 0.0);
    let (_, again) = http_get(port, "/metrics").expect("metrics");
    assert!(sample(&again, "etcdbr_network_received_bytes") >= sample(&text, "etcdbr_network_received_bytes"));
}
