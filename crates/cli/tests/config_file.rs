//! `server --config-file`: the Go tool's component config runs the server, replacing the Go
//! tool's flags as the Go tool does.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testsupport::{Etcd, EtcdVersion, free_port};

#[test]
fn the_go_component_config_runs_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(EtcdVersion::V3_5);
    etcd.etcdctl(&["put", "/registry/a", "1"]);
    let port = free_port();
    let store = tmp.path().join("store");
    let config = tmp.path().join("br.yaml");
    // The shape of the Go repository's example/00-backup-restore-server-config.yaml.
    std::fs::write(
        &config,
        format!(
            "etcdConnectionConfig:\n  endpoints:\n  - \"{endpoint}\"\n  connectionTimeout: 10s\n\
             serverConfig:\n  port: {port}\n\
             snapshotterConfig:\n  schedule: \"0 */1 * * *\"\n  deltaSnapshotPeriod: 1s\n\
             snapstoreConfig:\n  provider: \"Local\"\n  container: \"{container}\"\n  prefix: \"etcd-test\"\n\
             restorationConfig:\n  dataDir: \"{data}\"\n\
             compressionConfig:\n   enabled: false\n",
            endpoint = etcd.endpoint(),
            container = store.display(),
            data = tmp.path().join("data.etcd").display(),
        ),
    )
    .unwrap();
    let log = tmp.path().join("server.log");
    // A Go flag beside the file is ignored, as in the Go tool (the file says Local).
    let mut server = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(["server", "--storage-provider=S3", "--config-file"])
        .arg(&config)
        .env_remove("STORAGE_CONTAINER")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = store.join("etcd-test/v2");
    let full = loop {
        let names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        if let Some(f) = names.into_iter().find(|n| n.starts_with("Full-")) {
            break f;
        }
        if let Some(status) = server.try_wait().unwrap() {
            panic!("server exited {status}: {}", std::fs::read_to_string(&log).unwrap());
        }
        assert!(Instant::now() < deadline, "no full snapshot: {}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!full.ends_with(".gz"), "compressionConfig.enabled=false: {full}");
    let health = Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/healthz")]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "{\"health\":true}", "serverConfig.port is the port");
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let status = server.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("--storage-provider"), "the ignored flag is named in a warning: {text}");
}
