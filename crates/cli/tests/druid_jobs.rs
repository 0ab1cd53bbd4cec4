//! etcd-druid's Jobs run with the argument lists druid builds, against the Local store as
//! druid mounts it (a container under `$HOME`): the compaction Job
//! (internal/controller/compaction/reconciler.go, `getCompactionJobArgs`) and the
//! EtcdCopyBackupsTask Job (internal/controller/etcdcopybackupstask/reconciler.go,
//! `createJobArgs`). Each must finish with the Go tool's exit code: 0 when done and 0 when there
//! is nothing to do. Results are judged by restoring them and booting real etcd.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testsupport::kube::{DEFAULT_TOKEN, KubeApi};
use testsupport::{Etcd, EtcdVersion, free_port, go_testdata};

const STORE_35: &str = "etcdbrctl-0.43.0-etcd-3.5.30";
/// The Etcd resource the Jobs belong to, as druid names things after it.
const ETCD: &str = "etcd-main";
const PREFIX: &str = "etcd-main";
const CONTAINER: &str = "backups";
const NAMESPACE: &str = "shoot--dev--main";

/// The Kubernetes API with the snapshot Leases druid creates beside an Etcd (the compaction Job
/// renews the full-snapshot one), and the kubeconfig that reaches it.
fn druid_leases() -> (KubeApi, String) {
    let api = KubeApi::start();
    for lease in [format!("{ETCD}-full-snap"), format!("{ETCD}-delta-snap")] {
        api.create_lease(NAMESPACE, &lease);
    }
    let kubeconfig = api.kubeconfig(NAMESPACE, DEFAULT_TOKEN).display().to_string();
    (api, kubeconfig)
}

/// Runs `etcdbrctl` in a Job-like environment: `$HOME` as the Local store's root (druid mounts
/// the host path at `/home/nonroot/<container>`), the Pod's variables set.
fn job(home: &Path, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"));
    cmd.args(args)
        .current_dir(home)
        .env("HOME", home)
        .env("POD_NAME", format!("{ETCD}-compactor"))
        .env("POD_NAMESPACE", NAMESPACE)
        .env_remove("STORAGE_CONTAINER")
        .env_remove("SOURCE_STORAGE_CONTAINER")
        .env_remove("KUBECONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run etcdbrctl")
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn expected_final_hash() -> u32 {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(go_testdata().join(STORE_35).join("hashkv-final.json")).unwrap()).unwrap();
    v[0]["HashKV"]["hash"].as_u64().unwrap() as u32
}

/// Restores the latest backup set under `container`/`prefix` and returns etcd's hashkv at 338.
fn restored_hashkv(container: &Path, prefix: &str) -> u32 {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let peer = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let out = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(["restore", "--storage-provider=Local", "--name=n1"])
        .arg(format!("--store-container={}", container.display()))
        .arg(format!("--store-prefix={prefix}"))
        .arg(format!("--data-dir={}", data.display()))
        .arg(format!("--initial-cluster=n1={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", describe(&out));
    let etcd = Etcd::start_on(EtcdVersion::V3_5, &data, "n1", peer, free_port());
    etcd.hashkv(338).0
}

/// `getCompactionJobArgs` for an Etcd `etcd-main` with a Local store (prefix `etcd-main`,
/// container `backups`), the default quota, and the controller's metrics scrape wait; the
/// `/var/etcd/data` volume is `data`.
fn compaction_job_args(data: &Path, metrics_scrape_wait: &str) -> Vec<String> {
    let d = data.display();
    vec![
        "compact".into(),
        format!("--data-dir={d}/compaction.etcd"),
        format!("--restoration-temp-snapshots-dir={d}/compaction.restoration.temp"),
        format!("--snapstore-temp-directory={d}/tmp"),
        format!("--metrics-scrape-wait-duration={metrics_scrape_wait}"),
        "--enable-snapshot-lease-renewal=true".into(),
        format!("--full-snapshot-lease-name={ETCD}-full-snap"),
        format!("--delta-snapshot-lease-name={ETCD}-delta-snap"),
        format!("--embedded-etcd-quota-bytes={}", 8u64 * 1024 * 1024 * 1024),
        "--storage-provider=Local".into(),
        format!("--store-prefix={PREFIX}"),
        format!("--store-container={CONTAINER}"),
    ]
}

/// The compaction Job folds the Go-made chain (a full snapshot and 9 deltas) into one full
/// snapshot that restores to exactly the source's data; its scratch data dir is left as it was.
#[test]
fn the_compaction_job_compacts_and_exits_0() {
    let home = tempfile::tempdir().unwrap();
    let store = home.path().join(CONTAINER).join(PREFIX);
    common::copy_go_store(STORE_35, &store);
    let volume = home.path().join("var-etcd-data");
    fs::create_dir_all(&volume).unwrap();
    let before = names(&store.join("v2"));
    let (kube, kubeconfig) = druid_leases();
    let env = [("STORAGE_CONTAINER", CONTAINER), ("KUBECONFIG", kubeconfig.as_str())];
    let out = job(home.path(), &compaction_job_args(&volume, "1s"), &env);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // druid reads the full-snapshot Lease to see the compaction and schedule the next one.
    let lease = kube.lease(NAMESPACE, &format!("{ETCD}-full-snap")).unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "338", "{lease}");
    let after = names(&store.join("v2"));
    let new: Vec<&String> = after.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(new.len(), 1, "one new object: {after:?}");
    assert!(new[0].starts_with("Full-00000000-00000338-") && new[0].ends_with(".gz"), "{new:?}");
    assert!(before.iter().all(|n| after.contains(n)), "compact deleted or renamed an object");
    assert!(!volume.join("compaction.etcd").exists(), "the scratch dir it created is gone");
    assert_eq!(names(&volume.join("compaction.restoration.temp")), Vec::<String>::new(), "no temp file left");
    assert_eq!(restored_hashkv(&home.path().join(CONTAINER), PREFIX), expected_final_hash());

    // Again: the latest full snapshot has no deltas now; nothing to do is still success.
    let out = job(home.path(), &compaction_job_args(&volume, "0s"), &env);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to compact"), "{}", describe(&out));
    assert_eq!(names(&store.join("v2")), after, "nothing written");
}

/// No backups at all: the Go tool logs "No base snapshot found" and exits 0; so do we, and so
/// does `restore` (a Job or an init container is not marked failed).
#[test]
fn compact_and_restore_without_backups_exit_0() {
    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join(CONTAINER)).unwrap();
    let volume = home.path().join("var-etcd-data");
    let (_kube, kubeconfig) = druid_leases();
    let out = job(home.path(), &compaction_job_args(&volume, "0s"), &[("KUBECONFIG", kubeconfig.as_str())]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to compact"), "{}", describe(&out));
    let data = home.path().join("new.etcd");
    let restore: Vec<String> = vec![
        "restore".into(),
        "--storage-provider=Local".into(),
        format!("--store-container={CONTAINER}"),
        format!("--store-prefix={PREFIX}"),
        format!("--data-dir={}", data.display()),
    ];
    let out = job(home.path(), &restore, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to restore"), "{}", describe(&out));
    assert!(!data.exists(), "no data dir without a backup");
    // A point in time (etcdbr's own flag) without a backup at or before it stays an error.
    let mut ranged = restore.clone();
    ranged.push("--to-revision=5".into());
    let out = job(home.path(), &ranged, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
}

/// `createJobArgs` for an EtcdCopyBackupsTask from the source store (Local, `source`
/// container, prefix `etcd-main`) to the target (Local, `backups` container, prefix
/// `etcd-main`), with `waitForFinalSnapshot`.
fn copy_job_args(home: &Path, wait: Option<(bool, &str)>) -> Vec<String> {
    let mut args = vec![
        "copy".to_string(),
        format!("--snapstore-temp-directory={}/data/tmp", home.display()),
        "--storage-provider=Local".into(),
        format!("--store-prefix={PREFIX}"),
        format!("--store-container={CONTAINER}"),
        "--source-storage-provider=Local".into(),
        format!("--source-store-prefix={PREFIX}"),
        "--source-store-container=source".into(),
    ];
    if let Some((enabled, timeout)) = wait {
        args.push(format!("--wait-for-final-snapshot={enabled}"));
        args.push(format!("--wait-for-final-snapshot-timeout={timeout}"));
    }
    args
}

/// The copy Job's environment: each store's container (druid sets both variables).
const COPY_ENV: &[(&str, &str)] = &[("STORAGE_CONTAINER", CONTAINER), ("SOURCE_STORAGE_CONTAINER", "source")];

/// Without a final full snapshot in the source the Job waits out its timeout, then copies what
/// there is (the Go tool's copier), and exits 0; the copy restores to the source's data.
#[test]
fn the_copy_job_copies_after_the_final_snapshot_timeout() {
    let home = tempfile::tempdir().unwrap();
    common::copy_go_store(STORE_35, &home.path().join("source").join(PREFIX));
    let started = Instant::now();
    let out = job(home.path(), &copy_job_args(home.path(), Some((true, "2s"))), COPY_ENV);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited for the final snapshot first");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("no final full snapshot") && stdout.contains("copied 10 objects"), "{stdout}");
    assert_eq!(
        names(&home.path().join(CONTAINER).join(PREFIX).join("v2")),
        names(&home.path().join("source").join(PREFIX).join("v2"))
    );
    assert_eq!(restored_hashkv(&home.path().join(CONTAINER), PREFIX), expected_final_hash());
}

/// A final full snapshot in the source ends the wait at once; the copy drops `.final` (so the
/// target's own sidecar does not take it for a final one), as the Go tool's copier does.
#[test]
fn the_copy_job_copies_once_the_final_snapshot_is_there() {
    let home = tempfile::tempdir().unwrap();
    let source = home.path().join("source").join(PREFIX);
    let etcd = Etcd::start(EtcdVersion::V3_5);
    etcd.etcdctl(&["put", "/registry/a", "1"]);
    etcd.etcdctl(&["put", "/registry/b", "2"]);
    let revision = etcd.revision();
    // The source's sidecar takes its final full snapshot (what druid asks for before a
    // control-plane migration): `/snapshot/full?final=true`.
    let port = free_port();
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_etcdbrctl"))
        .args(["server", "--storage-provider=Local", "--delta-snapshot-period=0s"])
        .arg(format!("--server-port={port}"))
        .arg(format!("--endpoints={}", etcd.endpoint()))
        .arg("--store-container=source")
        .arg(format!("--store-prefix={PREFIX}"))
        .arg(format!("--data-dir={}", home.path().join("sidecar.etcd").display()))
        .env("HOME", home.path())
        .env_remove("STORAGE_CONTAINER")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let final_name = loop {
        let got = Command::new("curl")
            .args(["-s", "-X", "POST", &format!("http://127.0.0.1:{port}/snapshot/full?final=true")])
            .output()
            .expect("curl (apt-get install curl)");
        let body = String::from_utf8_lossy(&got.stdout).into_owned();
        if body.contains("\"isFinal\":true") {
            break names(&source.join("v2")).into_iter().find(|n| n.ends_with(".final")).expect(".final object");
        }
        assert!(Instant::now() < deadline, "no final full snapshot: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = sidecar.kill();
    let _ = sidecar.wait();
    assert!(final_name.starts_with(&format!("Full-00000000-{revision:08}-")), "{final_name}");

    let started = Instant::now();
    let out = job(home.path(), &copy_job_args(home.path(), Some((true, "10m"))), COPY_ENV);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(started.elapsed() < Duration::from_secs(60), "the final snapshot ended the wait");
    assert!(String::from_utf8_lossy(&out.stdout).contains("final full snapshot found"), "{}", describe(&out));
    let copied = names(&home.path().join(CONTAINER).join(PREFIX).join("v2"));
    let plain = final_name.trim_end_matches(".final").to_string();
    assert!(copied.contains(&plain), "the final snapshot is copied without .final: {copied:?}");
    assert!(copied.iter().all(|n| !n.ends_with(".final")), "{copied:?}");
}

/// The copy Job's checks and its "nothing to do".
#[test]
fn the_copy_job_without_backups_exits_0_and_refuses_a_negative_timeout() {
    let home = tempfile::tempdir().unwrap();
    fs::create_dir_all(home.path().join("source")).unwrap();
    let out = job(home.path(), &copy_job_args(home.path(), None), COPY_ENV);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to copy"), "{}", describe(&out));
    let out = job(home.path(), &copy_job_args(home.path(), Some((true, "-1s"))), COPY_ENV);
    // Go refuses it too (exit 1, as every Go failure); here a bad flag value is exit 2.
    assert_eq!(out.status.code(), Some(2), "Go: must not be less than 0; {}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--wait-for-final-snapshot-timeout"), "{stderr}");
}
